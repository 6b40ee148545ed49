#!/usr/bin/env bash
# Installs what ioasis needs on a fresh Debian machine: a C toolchain for build scripts and a
# Rust toolchain (kept if one is there), then fetches the crates.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for pkg in build-essential pkg-config ca-certificates curl xz-utils; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  # QEMU, for the QEMU platform (hosts/baremetal/src/qemu) and its tests. Without
  # --no-install-recommends, apt fails on Debian 12 machines that carry qemu-utils from
  # backports (it Breaks qemu-system-common < 8.0); with it, apt may remove qemu-utils, which
  # ioasis does not need.
  qemu_missing=()
  command -v qemu-system-x86_64 >/dev/null 2>&1 || qemu_missing+=(qemu-system-x86)
  command -v qemu-system-aarch64 >/dev/null 2>&1 || qemu_missing+=(qemu-system-arm)
  if [ "${#qemu_missing[@]}" -gt 0 ]; then
    echo "setup: installing ${qemu_missing[*]} (this may remove qemu-utils)"
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${qemu_missing[@]}"
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: no Rust toolchain; installing one with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

cargo --version
# Xen 4.17, a dom0 kernel and busybox for the real-Xen testbed (hosts/xen/tests), in target/xen-guest.
if command -v apt-get >/dev/null 2>&1; then ./scripts/fetch-xen.sh; fi
cargo fetch --locked -q
