#!/usr/bin/env bash
# Fetches what the real-Xen testbed (hosts/xen/tests/common) boots under QEMU, without installing
# any of it system-wide: Debian's Xen 4.17 hypervisor, the current bookworm kernel and a static
# busybox, downloaded with `apt-get download` and unpacked with `dpkg -x` into a project-local
# folder (default target/xen-guest, or $IOASIS_XEN_DIR). It leaves there:
#   xen.elf           the hypervisor as a multiboot ELF (QEMU's -kernel)
#   vmlinux           the dom0 kernel, uncompressed (Xen would spend long decompressing it under TCG)
#   busybox           static busybox for the initramfs
#   modules/*.ko      the dom0 kernel's Xen modules and what they depend on, uncompressed
#   modules/order     those modules' file names, one a line, each after its dependencies
#   kernel-version    the dom0 kernel's release string
#   versions          the packages used
#   .done             the stamp: when it is there with the outputs, nothing is done
#                     (IOASIS_XEN_REFETCH=1 redoes it all)
set -euo pipefail
trap 'echo "fetch-xen: failed at line $LINENO" >&2' ERR
cd "$(dirname "$0")/.."

dir="${IOASIS_XEN_DIR:-$PWD/target/xen-guest}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

# Outputs already there: done, without touching the network (apt-cache may not even be usable).
if [ -f "$dir/.done" ] && [ -f "$dir/xen.elf" ] && [ -f "$dir/vmlinux" ] && [ -f "$dir/busybox" ] \
  && [ -f "$dir/modules/order" ] && [ "${IOASIS_XEN_REFETCH:-}" != 1 ]; then
  echo "fetch-xen: already done in $dir ($(tr '\n' ' ' <"$dir/versions"))"
  exit 0
fi

for tool in apt-get apt-cache dpkg xz zcat od; do
  command -v "$tool" >/dev/null 2>&1 || { echo "fetch-xen: needs $tool (run scripts/setup-debian.sh)" >&2; exit 1; }
done

# The kernel package that bookworm's linux-image-amd64 points at now.
resolve_kernel() { apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'; }
kpkg="$(resolve_kernel || true)"
if [ -z "$kpkg" ] || ! apt-cache show xen-hypervisor-4.17-amd64 >/dev/null 2>&1; then
  echo "fetch-xen: refreshing the package lists"
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  kpkg="$(resolve_kernel || true)"
fi
[ -n "$kpkg" ] || { echo "fetch-xen: cannot resolve linux-image-amd64's kernel package" >&2; exit 1; }
pkgs=(xen-hypervisor-4.17-amd64 "$kpkg" busybox-static)

work="$dir/.work"
rm -rf "$work"
mkdir -p "$work/debs" "$work/root"
echo "fetch-xen: downloading ${pkgs[*]} into $dir"
# apt-get download writes into the current folder. As root it warns that the download is not
# sandboxed (the _apt user cannot write here); that is harmless.
(cd "$work/debs" && apt-get download -q "${pkgs[@]}" 2>&1 | grep -v 'unsandboxed as root' || true)
: >"$work/versions"
for pkg in "${pkgs[@]}"; do
  deb="$(ls "$work/debs/${pkg}"_*.deb 2>/dev/null | head -n1)"
  [ -n "$deb" ] || { echo "fetch-xen: apt-get download gave no .deb for $pkg" >&2; exit 1; }
  basename "$deb" .deb >>"$work/versions"
  dpkg -x "$deb" "$work/root"
done

# The hypervisor: gzip-compressed multiboot ELF.
xengz="$(ls "$work/root/boot"/xen-4.17*-amd64.gz 2>/dev/null | head -n1)"
[ -n "$xengz" ] || { echo "fetch-xen: no boot/xen-4.17*-amd64.gz in the hypervisor package" >&2; exit 1; }
zcat "$xengz" >"$work/xen.elf"

# The kernel: a bzImage whose payload is XZ. Read the boot-protocol header (setup_sects at 0x1f1;
# payload_offset and payload_length at 0x248 and 0x24c, relative to the protected-mode code that
# starts after the (setup_sects + 1) 512-byte sectors) and decompress the payload.
kver="${kpkg#linux-image-}"
bz="$work/root/boot/vmlinuz-$kver"
[ -f "$bz" ] || { echo "fetch-xen: no boot/vmlinuz-$kver in $kpkg" >&2; exit 1; }
u32() { od -An -t u4 -j "$2" -N 4 "$1" | tr -d ' '; }
u8() { od -An -t u1 -j "$2" -N 1 "$1" | tr -d ' '; }
setup_sects="$(u8 "$bz" $((0x1f1)))"
[ "$setup_sects" -ne 0 ] || setup_sects=4
payload_offset="$(u32 "$bz" $((0x248)))"
payload_length="$(u32 "$bz" $((0x24c)))"
start=$(((setup_sects + 1) * 512 + payload_offset))
magic="$(od -An -t x1 -j "$start" -N 6 "$bz" | tr -d ' \n')"
[ "$magic" = "fd377a585a00" ] || { echo "fetch-xen: the kernel's payload is not XZ (magic $magic)" >&2; exit 1; }
dd if="$bz" bs=64K skip="$start" count="$payload_length" iflag=skip_bytes,count_bytes status=none \
  | xz -dc --single-stream >"$work/vmlinux"
[ "$(od -An -t x1 -N 4 "$work/vmlinux" | tr -d ' \n')" = "7f454c46" ] \
  || { echo "fetch-xen: the decompressed kernel is not an ELF" >&2; exit 1; }

# busybox-static ships bin/busybox.
cp "$work/root/bin/busybox" "$work/busybox"
chmod 755 "$work/busybox"

# The Xen modules and their dependencies, each after what it needs; built-in ones are skipped.
# Debian's package has no modules.dep (its postinst runs depmod), so the dependencies are read
# from each module's .modinfo ("depends=a,b") and names are found through modules.order.
moddir="$work/root/lib/modules/$kver"
[ -f "$moddir/modules.order" ] || { echo "fetch-xen: no modules.order in $kpkg" >&2; exit 1; }
mkdir -p "$work/modules"
: >"$work/modules/order"
declare -A path_of=() seen=()
while read -r rel; do
  name="$(basename "$rel" .ko)"
  path_of[${name//-/_}]="$rel"
done <"$moddir/modules.order"
add_module() { # $1: a module name, '-' or '_' alike
  local key="${1//-/_}" rel src deps dep
  [ -z "${seen[$key]:-}" ] || return 0
  seen[$key]=1
  rel="${path_of[$key]:-}"
  if [ -z "$rel" ]; then
    if grep -qE "/${1//[-_]/[-_]}\.ko$" "$moddir/modules.builtin" 2>/dev/null; then
      echo "fetch-xen: $1 is built into $kver"
      return 0
    fi
    echo "fetch-xen: $1 is neither a module nor built into $kver" >&2
    exit 1
  fi
  src="$moddir/$rel"
  if [ -f "$src" ]; then
    cp "$src" "$work/modules/"
  elif [ -f "$src.xz" ]; then
    xz -dc "$src.xz" >"$work/modules/$(basename "$rel")"
  else
    echo "fetch-xen: $rel is listed but not shipped" >&2
    exit 1
  fi
  deps="$(tr '\0' '\n' <"$work/modules/$(basename "$rel")" | sed -n 's/^depends=//p' | head -n1)"
  for dep in ${deps//,/ }; do add_module "$dep"; done
  basename "$rel" >>"$work/modules/order"
}
for mod in xen-privcmd xenfs xen-evtchn xen-gntdev xen-pciback; do add_module "$mod"; done
echo "$kver" >"$work/kernel-version"

# Move the outputs into place, then drop the unpacked packages (hundreds of MB of modules).
rm -rf "$dir/modules"
mv "$work/xen.elf" "$work/vmlinux" "$work/busybox" "$work/kernel-version" "$work/versions" "$work/modules" "$dir/"
rm -rf "$work"
date -u +%FT%TZ >"$dir/.done"
echo "fetch-xen: ready in $dir: $(tr '\n' ' ' <"$dir/versions")"
echo "fetch-xen: modules: $(tr '\n' ' ' <"$dir/modules/order")"
