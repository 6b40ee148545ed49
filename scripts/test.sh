#!/usr/bin/env bash
# Every test of the workspace: unit tests, scenario tests, the plugin-boundary tests that load
# the cdylibs, the CLI on the bundled examples, and the doc examples (README included).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --workspace --locked "$@"
