"""Tokenize a conversations file with our package, one JSON row per line, for the peer conversions.

Run with the repository's .venv (prepare_data.sh does). Loads only the target's tokenizer
(``load_target(..., lazy=True)``) and tokenizes ``--data`` exactly as ``specforge capture`` does at
max length 2048 (chat template, assistant-only loss mask, rows without an assistant token dropped).
Writes ``--out`` with one ``{"input_ids": [...], "loss_mask": [...]}`` per row, in the capture's
row order, through ``<out>.tmp`` and an atomic rename. Both converters check every captured row's
ids and mask against this file.

usage: python tokenize_rows.py --target DIR --data CONVERSATIONS.jsonl --out TOKENIZED.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from specforge.data.tokenize import load_tokenized
from specforge.targets.loader import load_target

MAX_LENGTH = 2048  # prepare_data.sh captures with --max-length 2048 too


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    target = load_target(args.target, need_chat_template=False, lazy=True)
    ds, _report = load_tokenized(args.data, target.tokenizer, MAX_LENGTH, False, None)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    rows = tokens = assistant = 0
    with open(tmp, "w") as f:
        for row in ds:
            ids, mask = [int(t) for t in row["input_ids"]], [int(m) for m in row["loss_mask"]]
            f.write(json.dumps({"input_ids": ids, "loss_mask": mask}) + "\n")
            rows, tokens, assistant = rows + 1, tokens + len(ids), assistant + sum(mask)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    print(json.dumps({"out": str(out), "rows": rows, "tokens": tokens, "assistant_tokens": assistant}))


if __name__ == "__main__":
    sys.exit(main())
