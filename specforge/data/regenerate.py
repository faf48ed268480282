"""Regenerate assistant turns with the target's own responses.

Contract: :func:`regenerate` reads a dataset (any format :mod:`formats` accepts) and writes an
OpenAI-messages JSONL in which every assistant turn is replaced by the target's response to the
conversation so far (earlier turns already regenerated), decoded greedily (``temperature=0``) or
sampled; a conversation that ends in a user turn (a prompt-only row) gets the target's answer
appended, as :mod:`specforge.data.regenerate_vllm` does. Conversations are processed in batches with left padding and a KV cache. Output is
appended to ``<out>.partial`` batch by batch and renamed to ``out`` when complete, so a killed run
resumes after the last finished batch. ``<out>.meta.json`` records the input's hash, the target and
the settings; an existing output made from anything else is refused, never silently reused.
Plain-text rows are copied unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from specforge.data.formats import load_rows
from specforge.errors import SpecforgeError
from specforge.files import file_sha256, write_json_atomic
from specforge.targets.loader import Target, generate_left_padded


def _count_complete_lines(path: Path) -> int:
    """Lines that end in a newline; a torn last line (from a kill) is cut off."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with path.open("r+b") as fh:
            fh.truncate(keep)
    return data[:keep].count(b"\n")


def target_fingerprint(path: Path) -> dict:
    """What identifies a target without hashing its weights: its config and its weight files' sizes."""
    p = Path(path)
    weights = sorted(f for pat in ("*.safetensors", "*.bin") for f in p.glob(pat))
    return {
        "path": str(p.resolve()),
        "config_sha256": file_sha256(p / "config.json") if (p / "config.json").is_file() else None,
        "weights": {f.name: f.stat().st_size for f in weights},
    }


def regeneration_meta(data_path: str | Path, target_dir: str | Path, settings: dict) -> dict:
    """What a regenerated output records about what produced it: the input, the target, the settings."""
    return {
        "data": str(Path(data_path).resolve()),
        "data_sha256": file_sha256(data_path) if Path(data_path).is_file() else None,
        "target": target_fingerprint(Path(target_dir)),
        "settings": settings,
    }


def check_reuse(meta_path: Path, meta: dict, out_path: Path, partial: Path) -> bool:
    """Whether ``out_path`` is finished and may be reused; an output or partial output (``partial``)
    made from other inputs raises :class:`SpecforgeError` (see :func:`_check_meta`)."""
    if out_path.exists() or partial.exists():
        _check_meta(meta_path, meta, out_path if out_path.exists() else partial)
    return out_path.exists()


def _check_meta(meta_path: Path, meta: dict, existing: Path) -> None:
    """Refuse to reuse ``existing`` unless ``meta_path`` records the same data, target and settings."""
    try:
        recorded = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        raise SpecforgeError(
            f"{existing} exists but records nothing about what produced it (no readable {meta_path.name}): "
            "choose another --out, or delete it to regenerate"
        ) from None
    changed = [key for key in ("data_sha256", "target", "settings") if recorded.get(key) != meta[key]]
    if changed:
        what = {"data_sha256": "the input data", "target": "the target", "settings": "the settings"}
        detail = []
        if "settings" in changed:
            old, new = recorded.get("settings") or {}, meta["settings"]
            detail = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
        raise SpecforgeError(
            f"{existing} was regenerated from other inputs ({', '.join(what[k] for k in changed)} changed"
            + (f": {', '.join(detail)}" if detail else "")
            + "): choose another --out, or delete it (and its .partial) to regenerate"
        )


def generate_responses(
    target: Target,
    conversations: list[list[dict]],
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
) -> list[str]:
    """The target's next assistant message for each conversation (batched, left-padded)."""
    tok, model = target.tokenizer, target.model
    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    sample = temperature > 0
    new = generate_left_padded(
        model,
        encoded,
        tok.pad_token_id,
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=top_p if sample else None,
        top_k=None,
        eos_token_id=tok.eos_token_id,
    )
    return [tok.decode(row, skip_special_tokens=True).strip() for row in new]


def regenerate(
    target: Target,
    data_path: str | Path,
    out_path: str | Path,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    limit: int | None = None,
    skip_bad_rows: bool = False,
    progress: bool = True,
) -> dict:
    """Rewrite assistant turns; return ``{"rows", "resumed_from", "skipped_bad_rows", "cached"}``.

    What produced the output (the input file's hash, the target, the settings) is recorded in
    ``OUT.meta.json``; an existing output or partial output is reused only when it matches."""
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    meta_path = out_path.with_name(out_path.name + ".meta.json")
    settings = {
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "limit": limit,
        "skip_bad_rows": skip_bad_rows,
    }
    meta = regeneration_meta(data_path, target.path, settings)
    if check_reuse(meta_path, meta, out_path, partial):
        return {
            "rows": sum(1 for _ in out_path.open()),
            "resumed_from": None,
            "skipped_bad_rows": 0,
            "cached": True,
        }
    ds, report = load_rows(data_path, skip_bad_rows=skip_bad_rows, allow_prompt_only=True)
    n = len(ds) if limit is None else min(limit, len(ds))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(meta_path, meta)
    done = _count_complete_lines(partial)
    if done > n:
        raise SpecforgeError(f"{partial} has {done} rows but the input has {n}; delete it to start over")
    start = done - done % batch_size  # restart the batch a kill interrupted, for identical sampling
    if start != done:
        with partial.open("r+b") as fh:
            lines = fh.read().split(b"\n")[:start]
            fh.seek(0)
            fh.write(b"".join(line + b"\n" for line in lines))
            fh.truncate()
    bar = tqdm(total=n, initial=start, desc="regenerate", unit="conv", disable=not progress)
    with partial.open("a", encoding="utf-8") as fh:
        for lo in range(start, n, batch_size):
            torch.manual_seed(seed + lo)
            rows = [ds[i] for i in range(lo, min(n, lo + batch_size))]
            convs = [[dict(m) for m in r["messages"]] if r["messages"] is not None else None for r in rows]
            for c in convs:
                if c is not None and c[-1]["role"] != "assistant":
                    c.append({"role": "assistant", "content": ""})  # the answer to write
            turn_idx = [[i for i, m in enumerate(c) if m["role"] == "assistant"] if c else [] for c in convs]
            for t in range(max((len(x) for x in turn_idx), default=0)):
                todo = [(ci, turn_idx[ci][t]) for ci in range(len(convs)) if len(turn_idx[ci]) > t]
                replies = generate_responses(
                    target, [convs[ci][:mi] for ci, mi in todo], max_new_tokens, temperature, top_p
                )
                for (ci, mi), reply in zip(todo, replies):
                    convs[ci][mi]["content"] = reply
            for r, c in zip(rows, convs):
                fh.write(
                    json.dumps({"messages": c} if c is not None else {"text": r["text"]}, ensure_ascii=False)
                    + "\n"
                )
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(rows))
    bar.close()
    os.replace(partial, out_path)
    return {"rows": n, "resumed_from": start or None, "skipped_bad_rows": report.skipped, "cached": False}
