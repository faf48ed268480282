"""Read the shards written by our `specforge capture` (layers 2,15,27,30) row by row.

Needs only torch and safetensors, so both peer venvs can import it (it never imports our package).
Each row: input_ids [T] int64, loss_mask [T] int64,
aux [T, 4, H] float32 = hidden states entering target layers 2, 15, 27 and the output of the
last decoder layer (layer id 30 = num_layers of a 30-layer target, *before* the final norm),
last [T, H] float32 = last hidden state *after* the final norm (lm_head input).
``check_against_tokenized`` compares the captured ids / masks with tools/tokenize_rows.py's file.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

EXPECTED_LAYERS = [2, 15, 27, 30]


def iter_rows(capture_dir: str | Path):
    capture_dir = Path(capture_dir)
    manifest = json.loads((capture_dir / "manifest.json").read_text())
    if manifest["aux_layers"] != EXPECTED_LAYERS:
        raise SystemExit(f"{capture_dir}: aux_layers {manifest['aux_layers']} != {EXPECTED_LAYERS}")
    if not manifest.get("complete"):
        raise SystemExit(f"{capture_dir}: capture is not complete")
    hidden = manifest["hidden_size"]
    for shard in manifest["shards"]:
        s = load_file(str(capture_dir / shard["file"]))
        off = s["offsets"].tolist()
        for j in range(len(off) - 1):
            lo, hi = off[j], off[j + 1]
            yield {
                "input_ids": s["input_ids"][lo:hi].clone(),
                "loss_mask": s["loss_mask"][lo:hi].clone(),
                "aux": s["aux_hidden_states"][lo:hi]
                .float()
                .reshape(hi - lo, len(EXPECTED_LAYERS), hidden)
                .clone(),
                "last": s["last_hidden_state"][lo:hi].float().clone(),
            }
        del s


def check_against_tokenized(rows_ids_masks, tokenized_jsonl: str | Path) -> None:
    """Fail unless the capture holds exactly the token ids / loss masks of the tokenized file."""
    with open(tokenized_jsonl) as f:
        ref = [json.loads(line) for line in f]
    if len(ref) != len(rows_ids_masks):
        raise SystemExit(f"capture has {len(rows_ids_masks)} rows, {tokenized_jsonl} has {len(ref)}")
    for i, ((ids, mask), r) in enumerate(zip(rows_ids_masks, ref)):
        if ids != r["input_ids"] or mask != r["loss_mask"]:
            raise SystemExit(f"row {i}: token ids / loss mask differ from {tokenized_jsonl}")
