#!/usr/bin/env bash
# The main job: the conformance suite over every bundled plugin on the bare-metal harness,
# with a readable summary. Extra arguments go to `ioasis conformance` (--filter, --seed,
# --format json, --plugin PATH for a vendor's cdylib).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -q -p ioasis-cli
exec ./target/release/ioasis conformance "$@"
