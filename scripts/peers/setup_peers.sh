#!/usr/bin/env bash
# Set up the peer-trainer benchmark: the two peer venvs, then their inputs (prepare_data.sh).
#   $PEERS_DIR/venv-speculators   vllm-project speculators 0.9.0 + hs-connectors 0.9.0 (its
#                                 hidden-state file I/O, imported by the trainer)
#   $PEERS_DIR/venv-sglspecforge  sgl-project SpecForge 0.2.0 (PyPI name `specforge`, the same
#                                 import name as ours, hence a venv of its own)
# Each venv gets torch==2.13.0 first (the CPU build where pip resolves it to 2.13.0+cpu; elsewhere
# point pip at the CPU wheels, e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
# The peer itself goes in with --no-deps, so pip never pulls its GPU-only requirements
# (speculators: torchvision, torchaudio; SpecForge: a CUDA torch 2.11.0, sglang, yunchang, wandb,
# tensorboard, openai-harmony). What their training code imports comes from the lock files next to
# this script (requirements-*.lock: `pip freeze` of the venvs as first built, minus torch and the
# peer), also with --no-deps. Then prepare_data.sh builds the inputs (our capture + both
# conversions), so the timed runs start with everything in place.
# Env: TARGET (target model directory, required), DATA (conversations JSONL, required),
#      PEERS_DIR (work directory, default $HOME/.cache/specforge/peers),
#      PYTHON (interpreter for the venvs; default python3.11, else python3).
# Needs the repository's own .venv (scripts/setup.sh). Re-running is safe: existing venvs are
# reused, pip skips what is installed, prepared data is kept.
set -euo pipefail
unset PYTHONPATH
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
[ -n "${TARGET:-}" ] || { echo "setup_peers.sh: set TARGET to the target model directory" >&2; exit 1; }
[ -n "${DATA:-}" ] || { echo "setup_peers.sh: set DATA to the conversations JSONL" >&2; exit 1; }
PEERS_DIR=${PEERS_DIR:-$HOME/.cache/specforge/peers}
mkdir -p "$PEERS_DIR"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
SPEC=$PEERS_DIR/venv-speculators
SGL=$PEERS_DIR/venv-sglspecforge

# --- speculators 0.9.0 ---------------------------------------------------------------------------
[ -x "$SPEC/bin/python" ] || "$PY" -m venv "$SPEC"
"$SPEC/bin/pip" install torch==2.13.0
"$SPEC/bin/pip" install --no-deps speculators==0.9.0 hs-connectors==0.9.0
# The lock was resolved from speculators' own requirement ranges minus torchvision/torchaudio:
#   aiohttp click "datasets<=5.1.0,>=4.0.0" httpx huggingface-hub "loguru<=0.7.3,>=0.7.2"
#   "numpy<=2.5.4,>=2.0.0" "openai>=2.0.0" protobuf psutil "pydantic>=2.0.0" "pydantic-settings>=2.0.0"
#   rich safetensors "tqdm<=4.70.1,>=4.66.3" "transformers<=5.19.0,>=5.0.0" "typer>=0.12.0" pyyaml
"$SPEC/bin/pip" install --no-deps -r requirements-speculators.lock
"$SPEC/bin/pip" uninstall -y torchvision torchaudio 2>/dev/null || true

# --- SGL SpecForge 0.2.0 -------------------------------------------------------------------------
[ -x "$SGL/bin/python" ] || "$PY" -m venv "$SGL"
"$SGL/bin/pip" install torch==2.13.0
"$SGL/bin/pip" install --no-deps specforge==0.2.0
# The lock was resolved from SpecForge's requirements minus sglang/yunchang/wandb/tensorboard/
# openai-harmony, with its own pin transformers==5.8.1, plus triton (specforge.core.loss imports it
# at module load; its kernel is not used on CPU, see tools/bench_sglspecforge.py):
#   "transformers==5.8.1" datasets tqdm accelerate huggingface-hub numpy pydantic psutil pyyaml
#   safetensors requests typing-extensions "triton==3.8.0"
"$SGL/bin/pip" install --no-deps -r requirements-sglspecforge.lock
"$SGL/bin/pip" uninstall -y torchvision torchaudio 2>/dev/null || true

"$SPEC/bin/python" -c "import torch, speculators.train.cli, transformers; from importlib.metadata import version; print('speculators', version('speculators'), 'torch', torch.__version__, 'transformers', transformers.__version__)"
"$SGL/bin/python" -c "import torch, specforge.cli, transformers; from importlib.metadata import version; print('specforge', version('specforge'), 'torch', torch.__version__, 'transformers', transformers.__version__)"

# --- inputs: our capture, converted for each peer ------------------------------------------------
PEERS_DIR=$PEERS_DIR bash "$HERE/prepare_data.sh" all
