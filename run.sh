#!/usr/bin/env bash
# Sets everything up, then opens the live inspection app on the built-in defaults: the shipped
# INT8 student (models/) and the shipped sample video (resources/), since there is no camera
# or none is given. Extra arguments go to the app, e.g. ./run.sh --source 0
# Without a display (SSH, CI) it runs the app's self-test offscreen instead and says so.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
    echo "run.sh: no display found; running the app's self-test offscreen (inspector --selftest)." >&2
    echo "run.sh: on a desktop, ./run.sh opens the window; or use: xvfb-run -a ./run.sh" >&2
    exec .venv/bin/inspector --selftest "$@"
fi
exec .venv/bin/inspector "$@"
