#!/usr/bin/env bash
# Build libbpf and bpftool from the kernel source tree that build-kernel.sh unpacked,
# into a cache directory outside the repository, or reuse them when already there.
#
#   guest/build-tools.sh CACHE_ROOT
#
# Why not Debian's: the tree's sched_ext headers (tools/sched_ext/include) define a
# scheduler with SCX_OPS_DEFINE (a ".struct_ops.link" section) and load it with
# SCX_OPS_OPEN/LOAD/ATTACH, which use the skeleton's struct_ops members; Debian 12's
# libbpf 1.1 and bpftool 7.1 know neither. As tools/sched_ext/Makefile does, the
# scheduler's skeleton comes from this bpftool and its loader links this libbpf.a.
#
# The cache key is <package version>-<sha256 of this script>; the directory holds:
#   sbin/bpftool
#   lib/libbpf.a
#   include/bpf/   libbpf's headers (bpf_helpers.h of the same tree for the BPF side too)
# Prints the directory on stdout as its last line. Progress goes to stderr.
set -euo pipefail

cache_root=${1:?cache root}
pkg=${KERNEL_SOURCE_PKG:-linux-source-6.12}
jobs=${JOBS:-$(nproc)}
here=$(cd "$(dirname "$0")" && pwd)

log() { echo "guest-tools: $*" >&2; }

version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) || {
    log "$pkg is not installed: apt-get install $pkg"; exit 1; }
src="$cache_root/src/$version"
[ -e "$src/.complete" ] || { log "no source tree at $src: run build-kernel.sh first"; exit 1; }

key=$(sha256sum < "$here/build-tools.sh" | cut -c1-12)
out="$cache_root/guest-tools/$version-$key"
if [ -e "$out/.complete" ]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

build="$out/build"
rm -rf "$out" && mkdir -p "$build/libbpf" "$build/bpftool" "$build/bpftool-libbpf"
start=$(date +%s)
log "building libbpf and bpftool from $src"
nice -n 10 make -s -j"$jobs" -C "$src/tools/lib/bpf" OUTPUT="$build/libbpf/" \
    DESTDIR="$out" prefix= "$build/libbpf/libbpf.a" install_headers >&2
mkdir -p "$out/lib"
cp "$build/libbpf/libbpf.a" "$out/lib/libbpf.a"
nice -n 10 make -s -j"$jobs" -C "$src/tools/bpf/bpftool" OUTPUT="$build/bpftool/" \
    LIBBPF_OUTPUT="$build/bpftool-libbpf/" LIBBPF_DESTDIR="$build/bpftool-libbpf/" \
    prefix= DESTDIR="$out" install-bin >&2
"$out/sbin/bpftool" version >&2
rm -rf "$build"
touch "$out/.complete"
log "built in $(( $(date +%s) - start )) s: $out"
echo "$out"
