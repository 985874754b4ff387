#!/usr/bin/env bash
# Build the guest kernel from Debian's linux-source package into a cache
# directory outside the repository, or reuse it when it is already there.
#
#   guest/build-kernel.sh CACHE_ROOT FRAGMENT
#
# The cache key is <package version>-<sha256 of fragment + this script>; the
# directory holds what the rest of guest/ needs and nothing else:
#   bzImage       the kernel qemu boots
#   vmlinux.h     C types from the kernel's BTF (schedulers compile against it)
#   scx-include/  tools/sched_ext/include of the same source tree
#   config        the final .config
# Prints the directory on stdout as its last line. Progress goes to stderr.
set -euo pipefail

cache_root=${1:?cache root}
fragment=${2:?config fragment}
pkg=${KERNEL_SOURCE_PKG:-linux-source-6.12}
jobs=${JOBS:-$(nproc)}
here=$(cd "$(dirname "$0")" && pwd)

log() { echo "guest-kernel: $*" >&2; }

version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) || {
    log "$pkg is not installed: apt-get install $pkg"; exit 1; }
tarball=$(dpkg -L "$pkg" | grep -E '/usr/src/linux-source-.*\.tar\.xz$' | head -1)
[ -r "$tarball" ] || { log "no source tarball in $pkg"; exit 1; }

key=$(cat "$fragment" "$here/build-kernel.sh" | sha256sum | cut -c1-12)
out="$cache_root/guest-kernel/$version-$key"
if [ -e "$out/.complete" ]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

# One extracted source tree per package version, shared by every config.
src="$cache_root/src/$version"
if [ ! -e "$src/.complete" ]; then
    log "extracting $tarball"
    rm -rf "$src" && mkdir -p "$src"
    tar -xf "$tarball" -C "$src" --strip-components=1
    touch "$src/.complete"
fi

build="$out/build"
rm -rf "$out" && mkdir -p "$build"
kmake() { nice -n 10 make -s -C "$src" O="$build" "$@"; }

log "configuring (tinyconfig + $(basename "$fragment"))"
kmake tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >/dev/null
kmake olddefconfig >/dev/null

# Kconfig drops options whose dependencies are missing without a word: check.
bad=0
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    opt=${line%%=*}; want=${line#*=}
    if [ "$want" = n ]; then
        grep -qx "$opt=y" "$build/.config" && { log "$opt is set, wanted n"; bad=1; }
    else
        grep -qx "$line" "$build/.config" || { log "$line did not stick (got: $(grep "^$opt=\|$opt is not set" "$build/.config" || echo nothing))"; bad=1; }
    fi
done < "$fragment"
[ $bad = 0 ] || { log "config fragment not satisfied"; exit 1; }

log "building bzImage with $jobs jobs (a few minutes)"
start=$(date +%s)
kmake -j"$jobs" bzImage
log "built in $(( $(date +%s) - start )) s"

cp "$build/arch/x86/boot/bzImage" "$out/bzImage"
cp "$build/.config" "$out/config"
bpftool btf dump file "$build/vmlinux" format c > "$out/vmlinux.h"
cp -r "$src/tools/sched_ext/include" "$out/scx-include"
rm -rf "$build"
touch "$out/.complete"
log "done: $out"
echo "$out"
