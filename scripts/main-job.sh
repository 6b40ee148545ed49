#!/usr/bin/env bash
# The main job: the conformance suite over every bundled plugin on the bare-metal harness,
# with a readable summary; then the VT-d backend again on each of its other model generations
# (an old unit without queued invalidation, a 39-bit unit without superpages, QEMU 7.2's
# legacy unit) and on the scalable unit with completion latency (commands and invalidations
# complete only after a few register reads); then the VT-d backend on QEMU itself (--platform
# qemu), legacy and scalable mode. Extra arguments go to every `ioasis conformance` run
# (--filter, --seed, --format json); `--plugin PATH` runs the suite on a vendor's cdylib
# instead.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -q -p ioasis-cli
ioasis=./target/release/ioasis

status=0
"$ioasis" conformance "$@" || status=1
case " $* " in
  *" --plugin"*|*" --plugin-dir"*) exit "$status" ;;
esac
for model in 'generation = "legacy"' 'generation = "legacy-no-qi"' 'generation = "legacy-39bit"' 'latency = 3'; do
  echo
  echo "== vtd, model: $model =="
  "$ioasis" conformance --backend vtd --unit-model "$model" "$@" || status=1
done
# The same plugin against QEMU's own intel-iommu (the edu device DMAs), legacy and scalable.
for profile in vtd-legacy vtd-scalable; do
  echo
  echo "== vtd on QEMU: $profile =="
  "$ioasis" conformance --backend vtd --platform qemu --qemu-profile "$profile" "$@" || status=1
done
exit "$status"
