#!/usr/bin/env bash
# Rebuilds framework/fixtures/interface-0.2/libioasis_mock_0_2.so: the mock plugin's cdylib as
# built against plugin interface 0.2 (commit 5c226f6), in a temporary worktree.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=5c226f6
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/src" 2>/dev/null || true; rm -rf "$tmp"' EXIT
git worktree add -q --detach "$tmp/src" "$commit"
(cd "$tmp/src" && cargo build --release --locked -p ioasis-plugin-mock-so --target-dir "$tmp/target")
strip -o framework/fixtures/interface-0.2/libioasis_mock_0_2.so "$tmp/target/release/libioasis_mock.so"
echo "rebuilt framework/fixtures/interface-0.2/libioasis_mock_0_2.so from $commit"
