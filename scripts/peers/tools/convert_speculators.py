"""Convert our capture into vllm-project/speculators 0.9.0's offline training layout.

Run with $PEERS_DIR/venv-speculators/bin/python (prepare_data.sh does). Output (``--out``):

  <out>/                       HF `datasets` dir (save_to_disk): input_ids, loss_mask, seq_len
  <out>/hidden_states/hs_<i>.safetensors
                               {"hidden_states": [T, 4, H] fp32, "token_ids": [T]}; the 4 slots are
                               target layers 2, 15, 27 (inputs of those layers) and 30 (last decoder
                               layer output *before* the final norm) -- what speculators' vLLM
                               extractor writes with --include-last-layer; speculators applies the
                               verifier's final norm itself.
  <out>/token_freq.pt          speculators' own token-frequency file (assistant tokens only)
  <out>/peer_conversion.json   rows, tokens, the longest row, the train_data_ratio the run must
                               use; written last, so its presence means the conversion is complete

Row order = the capture's row order = the ``--tokenized`` file's order (every row checked).
speculators always holds out a validation split (train_data_ratio in (0, 1); the split index is
int(rows * ratio)), so one extra row (a copy of row 0) is appended at index N and the run uses
train_data_ratio = (N + 0.5) / (N + 1), which puts exactly the N rows in the training split and
the copy in the (never used) validation split.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from capture_reader import check_against_tokenized, iter_rows
from datasets import Dataset
from safetensors.torch import save_file
from speculators.data_generation.preprocessing import build_speculator_training_dataset
from speculators.train.vocab_mapping import save_token_frequency_distribution
from transformers import AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--capture", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--tokenized", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-length", type=int, default=2048)
    args = ap.parse_args()

    t0 = time.time()
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "hidden_states").mkdir(parents=True)

    ids_masks = []
    for i, row in enumerate(iter_rows(args.capture)):
        ids_masks.append((row["input_ids"].tolist(), row["loss_mask"].tolist()))
        save_file(
            {"hidden_states": row["aux"].contiguous(), "token_ids": row["input_ids"].contiguous()},
            str(tmp / "hidden_states" / f"hs_{i}.safetensors"),
        )
    check_against_tokenized(ids_masks, args.tokenized)
    n = len(ids_masks)
    ratio = (n + 0.5) / (n + 1)
    if int((n + 1) * ratio) != n:
        raise SystemExit(f"train_data_ratio {ratio} does not split {n + 1} rows at {n}")
    # validation dummy: a copy of row 0 at index n (speculators insists on a non-empty val split)
    os.link(tmp / "hidden_states" / "hs_0.safetensors", tmp / "hidden_states" / f"hs_{n}.safetensors")
    rows = [*ids_masks, ids_masks[0]]

    raw = Dataset.from_dict({"input_ids": [r[0] for r in rows], "loss_mask": [r[1] for r in rows]})
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    # speculators' own pass-through for pre-tokenized rows (truncate to max_length, drop unsupervised)
    ds = build_speculator_training_dataset(raw, tokenizer, max_length=args.max_length, num_proc=1)
    if len(ds) != n + 1:
        raise SystemExit(f"speculators kept {len(ds)} of {n + 1} rows")
    save_token_frequency_distribution(ds.select(range(n)), tmp / "token_freq.pt")
    ds.save_to_disk(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    info = {
        "rows": n,
        "tokens": int(sum(len(r[0]) for r in ids_masks)),
        "assistant_tokens": int(sum(sum(r[1]) for r in ids_masks)),
        "seconds": round(time.time() - t0, 1),
        "max_row_tokens": int(max(len(r[0]) for r in ids_masks)),
        "out": str(out),
        "train_data_ratio": ratio,
    }
    (out / "peer_conversion.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
