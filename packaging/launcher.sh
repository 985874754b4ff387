#!/bin/sh
# mlsched-lite launcher: runs the vendored runtime on the host's system Python of the
# minor version this tarball was built for, isolated from the host's site-packages and
# PYTHON* variables (-I -S), writing no bytecode into the install directory (-B).
# MLSCHED_PYTHON names another interpreter of that version.
set -u
want="@PYTHON_MINOR@"
self=$(readlink -f -- "$0") || self=$0
here=$(cd -- "$(dirname -- "$self")/.." && pwd -P) || exit 2

py=""
seen=""
for cand in ${MLSCHED_PYTHON:-} "/usr/bin/python$want" "/usr/local/bin/python$want" \
            /usr/bin/python3 /usr/local/bin/python3; do
    [ -x "$cand" ] || continue
    ver=$("$cand" -I -S -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
    if [ "$ver" = "$want" ]; then py=$cand; break; fi
    case " $seen " in *" $cand ($ver) "*) ;; *) seen="$seen $cand ($ver)";; esac
done
if [ -z "$py" ]; then
    if [ -n "${MLSCHED_PYTHON:-}" ] && [ ! -x "$MLSCHED_PYTHON" ]; then
        seen="$seen $MLSCHED_PYTHON (not executable)"
    fi
    echo "mlsched-lite: this build needs Python $want; found:${seen:- no python3}." \
         "Install python$want (Debian/Ubuntu: apt install python$want)," \
         "set MLSCHED_PYTHON=/path/to/python$want, or use the tarball built for your Python." >&2
    exit 2
fi

# The runtime does no linear algebra: one BLAS thread keeps the footprint small.
OPENBLAS_NUM_THREADS=1 exec "$py" -I -S -B "$here/lib/boot.py" "$@"
