#!/usr/bin/env bash
# Builds an arm64 (aarch64) root in which scripts/numeric_paths/runner.py runs under
# qemu-aarch64-static on an x86 machine: onnxruntime's ARM (NEON) CPU kernels without a board,
# to check that our ONNX models compute the same numbers there (tests/test_numeric_path_arm64.py).
#
#   scripts/numeric_paths/arm64_root.sh           # build (a second run only checks the stamp)
#   scripts/numeric_paths/arm64_python.sh runner.py IN.npz OUT.npz
#
# The root, at ${ARM64_ROOT:-/var/cache/crack-inspector/arm64-root}:
#   * Debian bookworm arm64, `debootstrap --foreign --variant=minbase` (first stage only: the second
#     stage would need binfmt_misc) plus python3.11 unpacked with `dpkg-deb -x` (no maintainer
#     scripts run; none are needed to run python),
#   * ROOT/site: PyPI manylinux aarch64 wheels onnxruntime==1.19.2 and numpy==1.26.4 (and
#     onnxruntime's own dependencies), installed by the host's pip. onnxruntime 1.32.0 segfaults on
#     import under qemu 7.2; 1.19.2 works. Its wheel is tagged manylinux_2_28 and numpy 1.26's
#     manylinux2014, hence both --platform (bookworm's glibc 2.36 satisfies both).
# Measured (2 busy cores, qemu 7.2, deb.debian.org and PyPI over the network): 24-37 s to build
# (~40 MB of .debs and ~32 MB of wheels downloaded), 361 MB of disk (site/ 114 MB of it; the .debs
# are deleted once unpacked). A second run only reads the stamp: 0.02 s.
#
# Needs: root (debootstrap), debootstrap, qemu-aarch64-static (Debian qemu-user-static), a host
# python3 with pip ($HOST_PYTHON), network to the Debian mirror ($ARM64_MIRROR) and PyPI.
# The build happens in ROOT.partial and is renamed to ROOT when it worked: a failed or interrupted
# build leaves no half root behind (only ROOT/../arm64-root.debootstrap.log).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=${ARM64_ROOT:-/var/cache/crack-inspector/arm64-root}
ROOT=${ROOT%/}
MIRROR=${ARM64_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
HOST_PYTHON=${HOST_PYTHON:-python3}
ORT_VERSION=1.19.2
NUMPY_VERSION=1.26.4
STAMP_NAME=.crack-inspector-arm64-root
STAMP_TEXT="suite=$SUITE python=3.11 onnxruntime=$ORT_VERSION numpy=$NUMPY_VERSION"

die() { echo "arm64_root: $*" >&2; exit 1; }
run_hint() {
    echo "arm64_root: ready in $ROOT ($STAMP_TEXT). Run its python with:"
    echo "  $HERE/arm64_python.sh -c 'import onnxruntime, platform; print(onnxruntime.__version__, platform.machine())'"
    echo "which is:"
    echo "  PYTHONPATH=$ROOT/site PYTHONNOUSERSITE=1 qemu-aarch64-static -L $ROOT $ROOT/usr/bin/python3.11 -s ARGS"
}

if [ -f "$ROOT/$STAMP_NAME" ] && [ "$(cat "$ROOT/$STAMP_NAME")" = "$STAMP_TEXT" ]; then
    run_hint
    exit 0
fi
[ -e "$ROOT" ] && die "$ROOT exists but is not a finished root of this version ($STAMP_TEXT; stamp: $(cat "$ROOT/$STAMP_NAME" 2>/dev/null || echo none)): remove it (rm -rf $ROOT) and run again"

command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static not found: apt-get install qemu-user-static"
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || die "debootstrap not found: apt-get install debootstrap"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (a Debian/Ubuntu host is needed)"
[ "$(id -u)" = 0 ] || die "debootstrap needs root: run this as root (sudo $0)"
"$HOST_PYTHON" -m pip --version >/dev/null 2>&1 || die "no pip for $HOST_PYTHON: set HOST_PYTHON to a python with pip"
PATH=$PATH:/usr/sbin:/sbin

T0=$(date +%s)
WORK=$ROOT.partial
rm -rf "$WORK"
trap 'rm -rf "$WORK"' EXIT   # gone after the final mv; after a failure only the log stays
mkdir -p "$(dirname "$ROOT")"

echo "arm64_root: debootstrap --foreign $SUITE arm64 into $WORK (downloads ~40 MB of .debs)" >&2
LOG=$(dirname "$ROOT")/arm64-root.debootstrap.log
if ! debootstrap --arch=arm64 --foreign --variant=minbase --include=python3.11 \
        "$SUITE" "$WORK" "$MIRROR" >"$LOG" 2>&1; then
    tail -n 20 "$LOG" >&2
    die "debootstrap failed (log: $LOG; mirror: $MIRROR)"
fi

# The first stage unpacked only the Essential set; unpack every other package it downloaded
# (python3.11 and its dependencies) the way the second stage would, minus the maintainer scripts.
ARCHIVES=$WORK/var/cache/apt/archives
ls "$ARCHIVES"/python3.11-minimal_*_arm64.deb "$ARCHIVES"/libpython3.11-stdlib_*_arm64.deb >/dev/null 2>&1 \
    || die "debootstrap did not download python3.11 (no python3.11-minimal / libpython3.11-stdlib in $ARCHIVES)"
n=0
for deb in "$ARCHIVES"/*.deb; do
    dpkg-deb -x "$deb" "$WORK" || die "dpkg-deb -x $deb failed"
    n=$((n + 1))
done
echo "arm64_root: unpacked $n packages" >&2
rm -f "$ARCHIVES"/*.deb   # 38 MB nothing reads again
[ -x "$WORK/usr/bin/python3.11" ] || die "no usr/bin/python3.11 in the root after unpacking"

echo "arm64_root: pip install aarch64 wheels onnxruntime==$ORT_VERSION numpy==$NUMPY_VERSION into $WORK/site" >&2
if ! "$HOST_PYTHON" -m pip install -q --disable-pip-version-check --no-cache-dir --no-compile \
        --target "$WORK/site" --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
        --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 \
        "onnxruntime==$ORT_VERSION" "numpy==$NUMPY_VERSION" >&2; then
    die "pip could not install the aarch64 wheels onnxruntime==$ORT_VERSION numpy==$NUMPY_VERSION (PyPI reachable?)"
fi

echo "arm64_root: checking the root's python under qemu" >&2
out=$(PYTHONPATH="$WORK/site" PYTHONNOUSERSITE=1 PYTHONHOME= \
    qemu-aarch64-static -L "$WORK" "$WORK/usr/bin/python3.11" -s -c \
    'import platform, numpy, onnxruntime; print(platform.machine(), numpy.__version__, onnxruntime.__version__)' 2>&1) \
    || die "the root's python cannot import numpy + onnxruntime under qemu-aarch64-static: $out"
[ "$out" = "aarch64 $NUMPY_VERSION $ORT_VERSION" ] || die "unexpected answer from the root's python: $out"

echo "$STAMP_TEXT" >"$WORK/$STAMP_NAME"
mv "$WORK" "$ROOT"
echo "arm64_root: built in $(( $(date +%s) - T0 )) s, $(du -sh "$ROOT" | cut -f1) on disk" >&2
run_hint
