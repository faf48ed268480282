#!/usr/bin/env bash
# The main job: set up (once), then run the demo on SmolLM2-135M-Instruct (--target tiny: the embedded toy target).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/specforge demo "$@"
