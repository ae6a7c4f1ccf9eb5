#!/usr/bin/env bash
# Boot a two-NUMA-node qemu guest (TCG, no KVM needed) whose /init runs cella's
# test binaries with CELLA_NUMA_VM=1, and report the result.
#
#   scripts/numa-vm/run.sh [guest go-test flags, e.g. -test.run=VM]
#
# Needs: go, apt-get, dpkg-deb (no root-owned install: qemu and a Debian cloud
# kernel are fetched with `apt-get download` and unpacked into a cache).
#
# Environment:
#   CELLA_VM_PACKAGES  packages whose tests run in the guest, in order
#                      (default "./memclass"); each becomes /tests/NN-name/
#                      with its test binary and testdata (see guestinit)
#   CELLA_VM_TIMEOUT   seconds before the guest is killed (default 600)
#   CELLA_VM_CACHE     where qemu and the kernel are unpacked
#                      (default ${XDG_CACHE_HOME:-$HOME/.cache}/cella-numa-vm)
#   CELLA_VM_MEM       MiB of memory per node (default 512)
#
# Exit status: 0 when every test binary passed in the guest, 1 otherwise
# (including a guest that did not finish within the timeout).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${CELLA_VM_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/cella-numa-vm}
timeout_s=${CELLA_VM_TIMEOUT:-600}
packages=${CELLA_VM_PACKAGES:-./memclass}
mem=${CELLA_VM_MEM:-512}
started=$(date +%s)

log() { printf 'numa-vm: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# --- 1. qemu and a kernel, fetched once into the cache ----------------------
qemu_root=$cache/qemu
kernel_dir=$cache/kernel

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

apt_update_once() {
	[ -n "${apt_updated:-}" ] && return 0
	apt_updated=1
	log "apt-get update"
	apt-get update -qq >/dev/null 2>&1 || log "apt-get update failed (not root?); using the package lists as they are"
}

fetch_qemu() {
	[ -x "$qemu_root/usr/bin/qemu-system-x86_64" ] && return 0
	apt_update_once
	local debs=$cache/debs
	rm -rf "$qemu_root" "$debs"
	mkdir -p "$qemu_root" "$debs"
	# qemu and every dependency this machine lacks (virtual packages, shown
	# as <name>, are skipped; the real package behind them is listed too).
	local pkgs
	pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
		--no-breaks --no-replaces --no-enhances qemu-system-x86 | grep -v '^[ <]' | sort -u)
	local want=()
	for p in $pkgs; do
		installed "$p" || want+=("$p")
	done
	log "downloading ${#want[@]} packages for qemu"
	(
		cd "$debs"
		apt-get download -qq "${want[@]}" >/dev/null 2>&1 && exit 0
		# One at a time, so that one package that cannot be fetched does
		# not stop the rest; ldd below says if a needed one is missing.
		for p in "${want[@]}"; do apt-get download -qq "$p" >/dev/null 2>&1 || log "skip $p"; done
	)
	for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$qemu_root"; done
	rm -rf "$debs"
	[ -x "$qemu_root/usr/bin/qemu-system-x86_64" ] || die "qemu-system-x86_64 missing after unpacking"
}

fetch_kernel() {
	ls "$kernel_dir"/vmlinuz-* >/dev/null 2>&1 && return 0
	apt_update_once
	local pkg tmp
	pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
	[ -n "$pkg" ] || die "cannot resolve linux-image-cloud-amd64"
	log "downloading $pkg"
	tmp=$(mktemp -d)
	(cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
	mkdir -p "$kernel_dir"
	# Only the kernel image is needed: the guest loads no modules. tar may
	# stop reading once it has the image, so dpkg-deb's broken pipe is not
	# an error; the image being there is what counts.
	dpkg-deb --fsys-tarfile "$tmp"/*.deb 2>/dev/null | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*' || true
	ls "$tmp"/boot/vmlinuz-* >/dev/null 2>&1 || die "no kernel image in $pkg"
	mv "$tmp"/boot/vmlinuz-* "$kernel_dir"/
	rm -rf "$tmp"
}

fetch_qemu
fetch_kernel
qemu=$qemu_root/usr/bin/qemu-system-x86_64
libdirs=$(find "$qemu_root" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)
export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
missing=$(ldd "$qemu" | awk '/not found/{print $1}' | paste -sd' ')
[ -z "$missing" ] || die "qemu still lacks libraries: $missing (delete $cache and retry)"
kernel=$(ls "$kernel_dir"/vmlinuz-* | head -n1)
fetched=$(date +%s)

# --- 2. static test binaries packed as an initramfs -------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$repo"
export CGO_ENABLED=0
go build -o "$work/init" ./scripts/numa-vm/guestinit
specs=("/init=$work/init")
i=0
for pkg in $packages; do
	i=$((i + 1))
	name=$(printf '%02d-%s' "$i" "$(basename "$pkg")")
	go test -c -o "$work/$name.test" "$pkg"
	specs+=("/tests/$name/test=$work/$name.test")
	if [ -d "$pkg/testdata" ]; then
		specs+=("/tests/$name/testdata=$pkg/testdata")
	fi
done
go run ./scripts/numa-vm/mkcpio -o "$work/initramfs.cpio" "${specs[@]}"
built=$(date +%s)
log "fetch $((fetched - started))s, build $((built - fetched))s; booting $(basename "$kernel") with 2 nodes x ${mem} MiB (timeout ${timeout_s}s)"

# --- 3. boot two NUMA nodes under TCG ----------------------------------------
serial=$work/serial.log
set +e
timeout -k 10 "$timeout_s" "$qemu" \
	-L "$qemu_root/usr/share/seabios" -L "$qemu_root/usr/share/qemu" \
	-machine pc -accel tcg -cpu max -smp 2 -m "$((2 * mem))M" \
	-object memory-backend-ram,id=m0,size="${mem}M" \
	-object memory-backend-ram,id=m1,size="${mem}M" \
	-numa node,nodeid=0,cpus=0,memdev=m0 \
	-numa node,nodeid=1,cpus=1,memdev=m1 \
	-kernel "$kernel" -initrd "$work/initramfs.cpio" \
	-append "console=ttyS0 panic=-1 loglevel=4 CELLA_NUMA_VM=1 -- $*" \
	-nographic -no-reboot -nic none </dev/null 2>&1 | tee "$serial"
status=${PIPESTATUS[0]}
set -e
done_at=$(date +%s)

# --- 4. verdict from the serial console --------------------------------------
result=$(grep -a 'CELLA-VM: RESULT' "$serial" | tail -n1 | tr -d '\r' || true)
log "guest ran $((done_at - built))s, total $((done_at - started))s; qemu exit $status"
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
	die "FAIL: the guest did not finish within ${timeout_s}s"
fi
case "$result" in
*"fail=0"*)
	pass=${result#*pass=}
	pass=${pass%% *}
	[ "$pass" -gt 0 ] || die "FAIL: no test binary ran ($result)"
	log "PASS: $result"
	;;
"") die "FAIL: no result line on the serial console" ;;
*) die "FAIL: $result" ;;
esac
