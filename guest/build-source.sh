#!/usr/bin/env bash
# Fetch the C project the guest's parallel-build workload compiles, and everything
# its compile needs, into a directory the initramfs copies.
#
#   guest/build-source.sh CACHE_ROOT OUT_DIR
#
# 1. `apt-get source --download-only` of Debian bookworm's mbedtls through a private
#    source list and list directory under CACHE_ROOT/srcpkg (the host's apt
#    configuration is left alone); reused when already downloaded.
# 2. `dpkg-source -x` into OUT_DIR/src (Debian's patches applied), keeping the
#    parts build.mk compiles: include/, library/, programs/, tests/include/.
# 3. Compiles every translation unit build.mk names once with tcc on the host (each
#    must compile), then preprocesses each (`tcc -E`, whose line markers name every
#    header read) and copies the system headers among them under OUT_DIR/sysroot:
#    the guest gets those, not all of /usr/include.
#
# Needs apt-get, dpkg-source, tcc, make. Writes OUT_DIR.tmp and renames it.
set -euo pipefail

cache_root=${1:?cache root}
out=${2:?output directory}
pkg=${BUILD_SOURCE_PKG:-mbedtls}
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "build-source: $*" >&2; }

dl="$cache_root/srcpkg"
mkdir -p "$dl/lists/partial"
dsc=$(ls "$dl"/${pkg}_*.dsc 2>/dev/null | head -1 || true)
if [ -z "$dsc" ]; then
    printf 'deb-src http://deb.debian.org/debian bookworm main\n' > "$dl/sources.list"
    apt_opts=(-o "Dir::Etc::sourcelist=$dl/sources.list" -o Dir::Etc::sourceparts=-
              -o "Dir::State::Lists=$dl/lists" -o APT::Sandbox::User=root)
    log "downloading the $pkg source package (bookworm)"
    apt-get "${apt_opts[@]}" update -qq >&2
    (cd "$dl" && apt-get "${apt_opts[@]}" source --download-only -qq "$pkg" >&2)
    dsc=$(ls "$dl"/${pkg}_*.dsc 2>/dev/null | head -1 || true)
    [ -n "$dsc" ] || { log "apt-get source $pkg left no .dsc in $dl"; exit 1; }
fi

tmp="$out.tmp"
rm -rf "$tmp" && mkdir -p "$tmp/sysroot"
dpkg-source --no-check -x "$dsc" "$tmp/full" >&2
rm -f "$tmp/${pkg}_"*          # dpkg-source leaves the tarballs beside the tree
mkdir -p "$tmp/src/tests"
for d in include library programs; do mv "$tmp/full/$d" "$tmp/src/$d"; done
mv "$tmp/full/tests/include" "$tmp/src/tests/include"
rm -rf "$tmp/full"

# One host compile: every unit must build with tcc.
make -s -C "$tmp/src" -f "$here/build.mk" -j"$(nproc)" >&2
units=$(make -s -C "$tmp/src" -f "$here/build.mk" units)
[ "$(echo "$units" | wc -w)" -ge 100 ] || { log "only $(echo "$units" | wc -w) units"; exit 1; }
make -s -C "$tmp/src" -f "$here/build.mk" clean >&2
for u in $units; do
    (cd "$tmp/src" && tcc -Iinclude -Ilibrary -Itests/include -E "$u")
done | sed -n 's/^# [0-9]* "\(\/usr\/[^"]*\)".*/\1/p' | sort -u |
    while read -r h; do
        mkdir -p "$tmp/sysroot$(dirname "$h")"
        cp -L "$h" "$tmp/sysroot$h"
    done
units=$(echo "$units" | wc -w)
echo "$units" > "$tmp/units"
rm -rf "$out" && mv "$tmp" "$out"
log "$pkg: $units translation units, $(find "$out/sysroot" -type f | wc -l) system headers"
