#!/usr/bin/env bash
# One timed offline EAGLE-3 training run of vllm-project speculators 0.9.0 on CPU, on DATA's
# conversations, from our float32 hidden-state capture converted for speculators (prepare_data.sh;
# made here if missing). Prints ONE JSON line with real_tokens_per_s and peak_rss_gb; per-step
# detail in $RUN_DIR/result.json, the training log in $RUN_DIR/train.log.
# Env: TARGET, DATA (required, as for prepare_data.sh), PEERS_DIR (default
#      $HOME/.cache/specforge/peers), RUN_DIR (default $PEERS_DIR/runs/speculators),
#      STEPS (timed optimizer steps, default 40), WARMUP (untimed first steps, default 5),
#      DTYPE=float32|bfloat16, ATTN=sdpa|eager (default sdpa; flex attention cannot run backward on
#      CPU), LOSS_IMPL (default eager; the fused loss needs Triton), SEQ_LEN (packed row, default
#      1024), WORKERS (dataloader workers, default 0), SEED (default 0), THREADS (torch threads,
#      default torch's own). STEPS + WARMUP must fit in one epoch of packed rows.
# Setup: setup_peers.sh. Nothing is installed here. Callable from any directory.
set -euo pipefail
unset PYTHONPATH
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -n "${TARGET:-}" ] || { echo "run_speculators.sh: set TARGET to the target model directory" >&2; exit 1; }
[ -n "${DATA:-}" ] || { echo "run_speculators.sh: set DATA to the conversations JSONL" >&2; exit 1; }
export TARGET DATA
export PEERS_DIR=${PEERS_DIR:-$HOME/.cache/specforge/peers}
PY=$PEERS_DIR/venv-speculators/bin/python
[ -x "$PY" ] || { echo "run_speculators.sh: $PEERS_DIR/venv-speculators missing: run setup_peers.sh" >&2; exit 1; }
export STEPS_TIMED=${STEPS:-40}
export WARMUP=${WARMUP:-5}
export STEPS=$((STEPS_TIMED + WARMUP)) # the runner counts the warm-up steps too
export DTYPE=${DTYPE:-float32}
if [ -n "${THREADS:-}" ]; then export OMP_NUM_THREADS=$THREADS; fi
bash "$HERE/prepare_data.sh" speculators
export SPEC_DATA=$PEERS_DIR/data-speculators
export RUN_DIR=${RUN_DIR:-$PEERS_DIR/runs/speculators}
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"
export BENCH_NOTES="speculators train (eagle3, 1 layer, adamw, kl_div, norm_before_fc+norm_output defaults), packed rows of ${SEQ_LEN:-1024} tokens (multipack, doc-masked attention), ttt 7, draft vocab 8192 (speculators' d2t/t2d from token_freq.pt), inputs converted from our fp32 capture; teacher = verifier_lm_head restricted to the 8192 draft tokens (not full vocab); real_tokens = unshifted conversation lengths; timed steps $((WARMUP + 1))..${STEPS}; attn ${ATTN:-sdpa} + loss ${LOSS_IMPL:-eager} (speculators defaults flex attention + Triton fused loss cannot run on CPU); CPU patches: device cuda:0->cpu, autocast device cpu, accelerator.synchronize no-op"
"$PY" tools/measure.py "$RUN_DIR/result.json" "$RUN_DIR/train.log" -- "$PY" tools/bench_speculators.py
