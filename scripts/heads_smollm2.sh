#!/usr/bin/env bash
# Every draft-head type trained on SmolLM2-135M-Instruct on the same conversations for the same steps
# (so the same training tokens), then compared on the same held-out prompts: EAGLE-3, EAGLE-1 (chain
# and EAGLE-2 tree), MTP D = 1 and D = 3. Writes outputs/heads/heads.json (benchmarks/heads-smollm2.json).
# Needs: the target (`specforge target install smollm2-135m-instruct`) and the data, regenerated as in
# recipes/smollm2-135m-eagle3.yaml (TRAIN, HELDOUT below). Resumable: finished runs and benches are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
TARGET="${TARGET:?set TARGET to the installed SmolLM2 directory}"
STEPS="${STEPS:-300}"
TRAIN="${TRAIN:-outputs/smollm2/data/train.regen.jsonl}"
HELDOUT="${HELDOUT:-outputs/smollm2/data/heldout.regen.jsonl}"
RUNS="${RUNS:-runs/heads}"
PY=.venv/bin/python
common=(target="$TARGET" data.train="$TRAIN" data.eval="$HELDOUT" optim.max_steps="$STEPS"
  eval_every="$STEPS" save_every="$STEPS" served_eval.prompts=0)
# One capture serves every head: EAGLE-3 reads layers 2, 15, 27; EAGLE-1 the last hidden state
# (stored in every capture); MTP the last layer's output before the final norm (layer id 30), as
# vLLM hands MiMo's MTP layers (the export serves it with the target re-expressed as MiMo).
CAPTURE="${CAPTURE:-outputs/smollm2/capture-all}"
.venv/bin/specforge capture --target "$TARGET" --data "$TRAIN" --out "$CAPTURE" --layers 2,15,27,30 \
  --max-length 512 --dtype float32
train() {  # name recipe [overrides...]
  local name=$1 recipe=$2
  shift 2
  $PY -m specforge.train --config "recipes/$recipe" output_dir="$RUNS/$name" capture_dir="$CAPTURE" \
    "${common[@]}" "$@"
}
train eagle3 smollm2-135m-eagle3.yaml
train eagle1 smollm2-135m-eagle1.yaml
train mtp-d1 smollm2-135m-mtp.yaml 'draft.aux_layers=[30]'
train mtp-d3 smollm2-135m-mtp.yaml 'draft.aux_layers=[30]' 'draft.options={num_modules: 3}'
.venv/bin/specforge bench heads --target "$TARGET" --data "$HELDOUT" --out outputs/heads \
  --head eagle3="$RUNS/eagle3" --head eagle1="$RUNS/eagle1" --head mtp-d1="$RUNS/mtp-d1" \
  --head mtp-d3="$RUNS/mtp-d3" --k 4 --tree "${TREE:-tree:4:4:16}" --prompts "${PROMPTS:-12}" \
  --max-new-tokens "${MAX_NEW_TOKENS:-64}" --vllm-temperatures "${VLLM_TEMPERATURES:-0}" "$@"
