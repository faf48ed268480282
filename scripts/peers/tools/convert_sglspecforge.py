"""Convert our capture into sgl-project SpecForge 0.2.0's offline EAGLE-3 feature layout.

Run with $PEERS_DIR/venv-sglspecforge/bin/python (prepare_data.sh does). Output (``--out``):

  <out>/features/rows_<lo:07d>-<hi:07d>/data_<i:07d>.ckpt   (5,000 rows per directory; SpecForge
      walks the whole tree and sorts the paths, which keeps the capture's row order)
      torch.save'd dict, the layout of SpecForge's scripts/prepare_hidden_states.py:
        input_ids        [T]            int64
        loss_mask        [T]            int64
        hidden_state     [1, T, H]      fp32  last hidden state *after* the final norm
                                              (SpecForge re-applies only lm_head to it)
        aux_hidden_state [1, T, 3H]     fp32  inputs of target layers 2, 15, 27
  <out>/target/        the target directory as symlinks plus, when the target ships a single
                       model.safetensors, a model.safetensors.index.json (SpecForge's TargetHead
                       insists on an *.index.json)
  <out>/draft_config.json  SpecForge's own auto-generated EAGLE-3 draft config for this target
                       (1 layer, LlamaForCausalLMEagle3) with draft_vocab_size = 8192
  <out>/peer_conversion.json  rows, tokens, draft config summary and the target's lm_head key
                       (lm_head.weight, or model.embed_tokens.weight for tied embeddings); written
                       last, so its presence means the conversion is complete

Row order = the ``--tokenized`` file's order (every row checked).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from capture_reader import check_against_tokenized, iter_rows
from safetensors import safe_open

ROWS_PER_DIR = 5000


def make_target_dir(src: Path, dst: Path) -> str:
    """Symlink the target into ``dst`` (adding an index for a single-file checkpoint); returns the
    key of the weight SpecForge should use as the teacher lm_head."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        link = dst / f.name
        if not link.exists():
            link.symlink_to(f)
    index_path = src / "model.safetensors.index.json"
    if index_path.is_file():
        keys = list(json.loads(index_path.read_text())["weight_map"])
    elif (src / "model.safetensors").is_file():
        with safe_open(str(src / "model.safetensors"), framework="pt") as f:
            keys = list(f.keys())
        index = {"metadata": {}, "weight_map": {k: "model.safetensors" for k in keys}}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    else:
        raise SystemExit(f"{src}: no model.safetensors or model.safetensors.index.json")
    return "lm_head.weight" if "lm_head.weight" in keys else "model.embed_tokens.weight"


def make_draft_config(target_dir: Path, out: Path, draft_vocab: int) -> dict:
    # SGL SpecForge's modules (its venv), not ours; ruff groups them as if they were
    from specforge.algorithms.builtin import builtin_algorithm_registry
    from specforge.training.model_loading import _generate_draft_config

    from specforge.config import Config

    cfg = Config.model_validate(
        {
            "model": {"target_model_path": str(target_dir)},
            "data": {"hidden_states_path": str(out / "features")},
        }
    )
    algorithm = builtin_algorithm_registry().resolve("eagle3")
    draft = _generate_draft_config(cfg, algorithm.providers.model.draft_config)
    payload = draft.to_dict()
    payload["draft_vocab_size"] = draft_vocab
    (out / "draft_config.json").write_text(json.dumps(payload, indent=1, default=str))
    return payload


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--capture", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--tokenized", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--draft-vocab", type=int, default=8192)
    args = ap.parse_args()

    t0 = time.time()
    out = Path(args.out)
    ids_masks = []
    for i, row in enumerate(iter_rows(args.capture)):
        lo = i - i % ROWS_PER_DIR
        feat = out / "features" / f"rows_{lo:07d}-{lo + ROWS_PER_DIR:07d}"
        feat.mkdir(parents=True, exist_ok=True)
        ids_masks.append((row["input_ids"].tolist(), row["loss_mask"].tolist()))
        torch.save(
            {
                "input_ids": row["input_ids"],
                "loss_mask": row["loss_mask"],
                "hidden_state": row["last"].unsqueeze(0).contiguous(),
                "aux_hidden_state": row["aux"][:, :3]
                .reshape(len(row["input_ids"]), -1)
                .unsqueeze(0)
                .contiguous(),
            },
            feat / f"data_{i:07d}.ckpt",
        )
    check_against_tokenized(ids_masks, args.tokenized)
    lm_head_key = make_target_dir(Path(args.target), out / "target")
    payload = make_draft_config(out / "target", out, args.draft_vocab)
    info = {
        "rows": len(ids_masks),
        "tokens": int(sum(len(r[0]) for r in ids_masks)),
        "assistant_tokens": int(sum(sum(r[1]) for r in ids_masks)),
        "lm_head_key": lm_head_key,
        "draft_config": {
            k: payload.get(k)
            for k in ("architectures", "num_hidden_layers", "draft_vocab_size", "vocab_size", "hidden_size")
        },
        "seconds": round(time.time() - t0, 1),
    }
    (out / "peer_conversion.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
