#!/usr/bin/env bash
# Mutation testing (README, "Mutation testing"): cargo-mutants over the VT-d driver and its
# layouts, with the VT-d crate's tests as the oracle (its driver on its model, the conformance
# suite on every model generation, the broken variants, and QEMU's intel-iommu as the check that
# does not share our layouts); and over the framework's page-table walker, with the framework's
# tests. It takes hours on 2 cores, so it runs outside CI (CI runs the broken variants).
#
#   scripts/mutants.sh [vtd|walker|all] [extra cargo-mutants options, e.g. --iterate, -j 2]
#
# Results: mutants.out/<part>/mutants.out/{caught,missed,timeout,unviable}.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

part=${1:-all}
mkdir -p mutants.out/vtd mutants.out/walker
shift || true
command -v cargo-mutants >/dev/null 2>&1 || cargo install cargo-mutants --locked
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  echo "mutants: qemu-system-x86_64 is missing; QEMU's intel-iommu is part of the oracle" >&2
  echo "         (scripts/setup-debian.sh installs it)" >&2
  exit 2
fi
# Each mutant relinks the test binaries; mold makes that quick where it is installed.
if command -v mold >/dev/null 2>&1; then
  export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"
fi

vtd() {
  # hostile_guest only drives the model with random memory; it is left out of the oracle.
  cargo mutants -p ioasis-plugin-vtd \
    -f 'plugins/vtd/src/driver/**' -f 'plugins/vtd/src/layout/**' \
    --cargo-test-arg=--lib --cargo-test-arg=--test=on_model --cargo-test-arg=--test=on_qemu \
    --cargo-test-arg=--test=viommu \
    --minimum-test-timeout 60 -o mutants.out/vtd "$@"
}

walker() {
  cargo mutants -p ioasis -f framework/src/pt/mod.rs --minimum-test-timeout 60 -o mutants.out/walker "$@"
}

case "$part" in
  vtd) vtd "$@" ;;
  walker) walker "$@" ;;
  all) vtd "$@" && walker "$@" ;;
  *) echo "usage: $0 [vtd|walker|all] [cargo-mutants options]" >&2; exit 2 ;;
esac
