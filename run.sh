#!/usr/bin/env bash
# Sets everything up, then opens the app on the built-in defaults with a simulated device: a
# device agent on this laptop (loopback) running the shipped INT8 student (models/) on the shipped
# sample video (resources/), paired with the code it wrote to its data folder (inspector --demo).
# The whole loop works against it: live verdicts, flags, review, Update model and push.
# With arguments, they go to the app instead of --demo, e.g. ./run.sh --source 0 (a camera) or
# ./run.sh --device HOST:PORT (a real device).
# Without a display (SSH, CI) it runs the app's self-test offscreen instead and says so.
# With an X display it first checks the X libraries Qt needs (see below).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
    echo "run.sh: no display found; running the app's self-test offscreen (inspector --selftest)." >&2
    echo "run.sh: on a desktop, ./run.sh opens the window on the demo device; or use: xvfb-run -a ./run.sh" >&2
    exec .venv/bin/inspector --selftest "$@"
fi
# Qt's xcb platform plugin needs X libraries a fresh Debian/Ubuntu lacks (libxcb-cursor0, …):
# platform_check prints the missing apt packages. As root with apt-get they are installed here;
# otherwise run.sh prints the command to run and stops.
missing=$(.venv/bin/python -m inspector.qt.platform_check | tr '\n' ' ')
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "run.sh: installing the libraries Qt's xcb platform plugin needs: $missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086  # one word per package
    apt-get install -y -qq $missing || { apt-get update -qq && apt-get install -y -qq $missing; } || true
    missing=$(.venv/bin/python -m inspector.qt.platform_check | tr '\n' ' ')
fi
if [ -n "$missing" ]; then
    echo "run.sh: Qt's xcb platform plugin needs libraries this system lacks. Install them with:" >&2
    echo "    sudo apt-get install -y ${missing% }" >&2
    exit 1
fi
if [ "$#" -eq 0 ]; then
    exec .venv/bin/inspector --demo
fi
exec .venv/bin/inspector "$@"
