#!/usr/bin/env bash
# One timed offline EAGLE-3 training run of sgl-project SpecForge 0.2.0 on CPU, on DATA's
# conversations, from our float32 hidden-state capture converted for SpecForge (prepare_data.sh;
# made here if missing). Prints ONE JSON line with real_tokens_per_s and peak_rss_gb; per-step
# detail in $RUN_DIR/result.json, the training log in $RUN_DIR/train.log.
# Env: TARGET, DATA (required, as for prepare_data.sh), PEERS_DIR (default
#      $HOME/.cache/specforge/peers), RUN_DIR (default $PEERS_DIR/runs/sglspecforge),
#      STEPS (timed optimizer steps, default 40), WARMUP (untimed first steps, default 5),
#      DTYPE=float32|bfloat16, BATCH (sequences per step, default 5: about 1,000 real tokens at a
#      mean conversation length near 190), ATTN (default sdpa; flex_attention cannot run backward
#      on CPU), WORKERS (dataloader workers, default 0), SGL_LOSS=compiled|eager (default
#      compiled), SEED (default 0), THREADS (torch threads, default torch's own).
#      STEPS + WARMUP must fit in one epoch: rows // BATCH steps.
# Setup: setup_peers.sh. Nothing is installed here. Callable from any directory.
set -euo pipefail
unset PYTHONPATH
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -n "${TARGET:-}" ] || { echo "run_sglspecforge.sh: set TARGET to the target model directory" >&2; exit 1; }
[ -n "${DATA:-}" ] || { echo "run_sglspecforge.sh: set DATA to the conversations JSONL" >&2; exit 1; }
export TARGET DATA
export PEERS_DIR=${PEERS_DIR:-$HOME/.cache/specforge/peers}
PY=$PEERS_DIR/venv-sglspecforge/bin/python
[ -x "$PY" ] || { echo "run_sglspecforge.sh: $PEERS_DIR/venv-sglspecforge missing: run setup_peers.sh" >&2; exit 1; }
export STEPS_TIMED=${STEPS:-40}
export WARMUP=${WARMUP:-5}
export STEPS=$((STEPS_TIMED + WARMUP)) # the runner counts the warm-up steps too
export DTYPE=${DTYPE:-float32}
if [ -n "${THREADS:-}" ]; then export OMP_NUM_THREADS=$THREADS; fi
bash "$HERE/prepare_data.sh" sglspecforge
export SGL_DATA=$PEERS_DIR/data-sglspecforge
export RUN_DIR=${RUN_DIR:-$PEERS_DIR/runs/sglspecforge}
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"
export BENCH_NOTES="SpecForge train (eagle3 offline, LlamaForCausalLMEagle3 1 layer, BF16Optimizer=AdamW on fp32 masters, lr 1e-4 cosine), batch ${BATCH:-5} sequences right-padded to the batch max (no packing), ttt 7, draft vocab 8192 (SpecForge's own map from the feature files), inputs converted from our fp32 capture; teacher = full-vocab target logits from the stored after-norm hidden state, softmax restricted to the draft vocab; real_tokens = attention-mask sum; timed steps $((WARMUP + 1))..${STEPS}; attn ${ATTN:-sdpa} (default flex_attention cannot backward on CPU); CPU patches: Triton loss -> SpecForge's reference loss (${SGL_LOSS:-compiled}), target head kept in run dtype (stock: always bf16)"
"$PY" tools/measure.py "$RUN_DIR/result.json" "$RUN_DIR/train.log" -- "$PY" tools/bench_sglspecforge.py
