#!/usr/bin/env bash
# Build both peers' offline inputs from ONE hidden-state capture of ours, so both train on
# identical token ids, loss masks and hidden states. Everything goes under $PEERS_DIR:
#   tokenized.jsonl     DATA tokenized by our package (tools/tokenize_rows.py: one
#                       {"input_ids", "loss_mask"} per row, max length 2048); the reference that
#                       both conversions check every row against.
#   capture-ours/       `specforge capture` (the repository's .venv) of DATA, layers 2,15,27,30,
#                       float32, max length 2048. Layer 30 is the output of the last decoder layer
#                       before the final norm (what speculators takes as its last hidden state);
#                       the after-norm last hidden state is stored too.
#   data-speculators/   speculators 0.9.0 layout (HF dataset + hidden_states/hs_<i>.safetensors)
#   data-sglspecforge/  SGL SpecForge 0.2.0 layout (features/rows_*/data_<i>.ckpt, a target dir
#                       with an index.json, draft_config.json)
#   inputs.txt          TARGET path + sha256 of DATA that all of the above were made from
# Each step is skipped when its output is complete. If PEERS_DIR was prepared from another TARGET
# or DATA, this stops (delete the prepared data or use another PEERS_DIR).
# usage: prepare_data.sh [speculators|sglspecforge|all]   (default all)
# Env: TARGET (target model directory, required; it must have 30 decoder layers, as
#      SmolLM2-135M-Instruct does), DATA (conversations JSONL, required),
#      PEERS_DIR (default $HOME/.cache/specforge/peers). Needs the venvs from setup_peers.sh and
#      the repository's .venv (scripts/setup.sh).
set -euo pipefail
unset PYTHONPATH
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$HERE"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WHICH=${1:-all}
case $WHICH in all | speculators | sglspecforge) ;; *)
  echo "prepare_data.sh: argument must be speculators, sglspecforge or all, not '$WHICH'" >&2; exit 1 ;;
esac
[ -n "${TARGET:-}" ] || { echo "prepare_data.sh: set TARGET to the target model directory" >&2; exit 1; }
[ -n "${DATA:-}" ] || { echo "prepare_data.sh: set DATA to the conversations JSONL" >&2; exit 1; }
[ -f "$TARGET/config.json" ] || { echo "prepare_data.sh: TARGET=$TARGET has no config.json" >&2; exit 1; }
[ -f "$DATA" ] || { echo "prepare_data.sh: DATA=$DATA is not a file" >&2; exit 1; }
TARGET=$(cd "$TARGET" && pwd)
DATA=$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")
PEERS_DIR=${PEERS_DIR:-$HOME/.cache/specforge/peers}
OURS=$REPO/.venv
[ -x "$OURS/bin/specforge" ] || { echo "prepare_data.sh: $OURS has no specforge: run scripts/setup.sh" >&2; exit 1; }
SPEC=$PEERS_DIR/venv-speculators
SGL=$PEERS_DIR/venv-sglspecforge
TOKENIZED=$PEERS_DIR/tokenized.jsonl
CAPTURE=$PEERS_DIR/capture-ours
mkdir -p "$PEERS_DIR"

# The capture's layer 30 must be the last decoder layer (speculators' "last" hidden state).
layers=$("$OURS/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' \
  "$TARGET/config.json")
[ "$layers" = 30 ] || { echo "prepare_data.sh: TARGET has $layers decoder layers; this harness captures layers 2,15,27,30 and needs 30 (SmolLM2-135M-Instruct)" >&2; exit 1; }

inputs="target=$TARGET data_sha256=$(sha256sum "$DATA" | cut -d' ' -f1)"
if [ -f "$PEERS_DIR/inputs.txt" ] && [ "$(cat "$PEERS_DIR/inputs.txt")" != "$inputs" ]; then
  echo "prepare_data.sh: $PEERS_DIR was prepared from other inputs ($(cat "$PEERS_DIR/inputs.txt")); run: rm -rf $PEERS_DIR/{inputs.txt,tokenized.jsonl,capture-ours,data-speculators,data-sglspecforge} or set another PEERS_DIR" >&2
  exit 1
fi
echo "$inputs" >"$PEERS_DIR/inputs.txt"

if [ ! -f "$TOKENIZED" ]; then
  echo "[prepare] tokenizing $DATA -> $TOKENIZED" >&2
  "$OURS/bin/python" tools/tokenize_rows.py --target "$TARGET" --data "$DATA" --out "$TOKENIZED" >&2
fi

if ! grep -q '"complete": true' "$CAPTURE/manifest.json" 2>/dev/null; then
  echo "[prepare] capturing hidden states with our specforge -> $CAPTURE" >&2
  "$OURS/bin/specforge" capture --target "$TARGET" --data "$DATA" --out "$CAPTURE" \
    --layers 2,15,27,30 --dtype float32 --max-length 2048 >&2
fi
grep -q '"dtype": "float32"' "$CAPTURE/manifest.json" || { echo "prepare_data.sh: $CAPTURE is not a float32 capture" >&2; exit 1; }

if [[ $WHICH == all || $WHICH == speculators ]] && [ ! -f "$PEERS_DIR/data-speculators/peer_conversion.json" ]; then
  [ -x "$SPEC/bin/python" ] || { echo "prepare_data.sh: $SPEC missing: run setup_peers.sh" >&2; exit 1; }
  echo "[prepare] converting for speculators" >&2
  "$SPEC/bin/python" tools/convert_speculators.py --capture "$CAPTURE" --target "$TARGET" \
    --tokenized "$TOKENIZED" --out "$PEERS_DIR/data-speculators" >&2
fi
if [[ $WHICH == all || $WHICH == sglspecforge ]] && [ ! -f "$PEERS_DIR/data-sglspecforge/peer_conversion.json" ]; then
  [ -x "$SGL/bin/python" ] || { echo "prepare_data.sh: $SGL missing: run setup_peers.sh" >&2; exit 1; }
  echo "[prepare] converting for SGL SpecForge" >&2
  rm -rf "$PEERS_DIR/data-sglspecforge"
  "$SGL/bin/python" tools/convert_sglspecforge.py --capture "$CAPTURE" --target "$TARGET" \
    --tokenized "$TOKENIZED" --out "$PEERS_DIR/data-sglspecforge" >&2
fi
