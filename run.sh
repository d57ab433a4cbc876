#!/usr/bin/env bash
# Sets everything up, then opens the app on the built-in defaults with a simulated device: a
# device agent on this laptop (loopback) running the shipped INT8 student (models/) on the shipped
# sample video (resources/), paired with the code it wrote to its data folder (inspector --demo).
# The whole loop works against it: live verdicts, flags, review, Update model and push.
# With arguments, they go to the app instead of --demo, e.g. ./run.sh --source 0 (a camera) or
# ./run.sh --device HOST:PORT (a real device).
# Without a display (SSH, CI) it runs the app's self-test offscreen instead and says so.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
    echo "run.sh: no display found; running the app's self-test offscreen (inspector --selftest)." >&2
    echo "run.sh: on a desktop, ./run.sh opens the window on the demo device; or use: xvfb-run -a ./run.sh" >&2
    exec .venv/bin/inspector --selftest "$@"
fi
if [ "$#" -eq 0 ]; then
    exec .venv/bin/inspector --demo
fi
exec .venv/bin/inspector "$@"
