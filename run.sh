#!/usr/bin/env bash
# Sets everything up, then runs the main job: for now the distillation demo on real crack data.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/distill demo "$@"
