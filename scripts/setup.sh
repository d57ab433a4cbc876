#!/usr/bin/env bash
# Creates .venv and installs the project with everything the app, the distillation engine and
# the tests need. Safe to run again: it reinstalls only when the dependency files changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.deps-$(cat pyproject.toml requirements.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    echo "setup: installing dependencies into .venv (first run takes a few minutes)" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements.txt
    .venv/bin/python -m pip install -q -e ".[app,distill,test]"
    rm -f .venv/.deps-*
    touch "$stamp"
fi
