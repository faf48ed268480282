"""A loaded target's fingerprint (:class:`serving.draft_check.TargetFingerprint`), recorded with every
trained draft so that serving can tell a draft trained for another target."""

from __future__ import annotations

import json

from serving.draft_check import PROBE_DIMS, make_fingerprint, probe_rows
from specforge.targets.loader import Target


def target_fingerprint(target: Target) -> dict:
    cfg = target.config
    emb = target.tensor("model.embed_tokens.weight")
    rows = emb[probe_rows(int(cfg.vocab_size))][:, :PROBE_DIMS].float().cpu().tolist()
    vocab = _file_vocab(target.tokenizer)
    fp = make_fingerprint(int(cfg.vocab_size), int(cfg.hidden_size), int(cfg.num_hidden_layers), vocab, rows)
    return fp.model_dump()


def _file_vocab(tokenizer) -> dict[str, int] | None:
    """token -> id as the directory's tokenizer.json holds it (what fingerprint_target_dir reads)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    raw = json.loads(backend.to_str())
    vocab = raw.get("model", {}).get("vocab")
    if not isinstance(vocab, dict):
        return None
    return {**vocab, **{t["content"]: t["id"] for t in raw.get("added_tokens", [])}}
