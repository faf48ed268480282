#!/usr/bin/env bash
# Set up (once), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check specforge draft_models serving tests notebooks
exec .venv/bin/python -m pytest -q "$@"
