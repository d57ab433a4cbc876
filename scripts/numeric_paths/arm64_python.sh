#!/usr/bin/env bash
# Runs the arm64 root's python 3.11 (numpy + onnxruntime, built by arm64_root.sh) under
# qemu-aarch64-static with the given arguments, e.g.
#
#   scripts/numeric_paths/arm64_python.sh scripts/numeric_paths/runner.py IN.npz OUT.npz
#
# -s and PYTHONNOUSERSITE keep the host's user site out; PYTHONPATH is the root's site only.
set -euo pipefail
ROOT=${ARM64_ROOT:-/var/cache/crack-inspector/arm64-root}
ROOT=${ROOT%/}
if [ ! -f "$ROOT/.crack-inspector-arm64-root" ]; then
    echo "arm64_python: no arm64 root in $ROOT: build it with $(dirname "$0")/arm64_root.sh" >&2
    exit 3
fi
command -v qemu-aarch64-static >/dev/null \
    || { echo "arm64_python: qemu-aarch64-static not found: apt-get install qemu-user-static" >&2; exit 3; }
unset PYTHONHOME PYTHONSTARTUP VIRTUAL_ENV
export PYTHONPATH=$ROOT/site PYTHONNOUSERSITE=1
exec qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" -s "$@"
