"""Draft vocabulary: the N target tokens most frequent among the training data's assistant tokens.

Contract: :func:`build_draft_vocab` counts target token ids where ``loss_mask == 1`` and keeps the
``draft_vocab_size`` most frequent (ties broken by lower id; ids never seen fill the remainder in
id order, so the size is always exact). It returns :class:`DraftVocab` with
``d2t[d] = target_id - d`` (vLLM's offset convention: ``target = d + d2t[d]``), a boolean ``t2d``
mask over the target vocabulary, and the *coverage*: the fraction of counted training tokens that
fall inside the draft vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from specforge.errors import SpecforgeError


@dataclass
class DraftVocab:
    draft_to_target: torch.Tensor  # [draft_vocab] int64 target ids, ascending
    d2t: torch.Tensor  # [draft_vocab] int64 offsets: target_id = draft_id + d2t[draft_id]
    t2d: torch.Tensor  # [target_vocab] bool, True where the target token is in the draft vocabulary
    coverage: float  # fraction of counted assistant tokens inside the draft vocabulary
    counted_tokens: int


def build_draft_vocab(
    token_rows: Iterable[tuple[list[int], list[int]]], target_vocab_size: int, draft_vocab_size: int
) -> DraftVocab:
    """``token_rows`` yields (input_ids, loss_mask) pairs."""
    if not 0 < draft_vocab_size <= target_vocab_size:
        raise SpecforgeError(
            f"draft_vocab_size must be in 1..{target_vocab_size} (the target's vocabulary), got {draft_vocab_size}"
        )
    counts = torch.zeros(target_vocab_size, dtype=torch.long)
    for ids, mask in token_rows:
        ids_t = torch.as_tensor(ids, dtype=torch.long)[torch.as_tensor(mask, dtype=torch.bool)]
        if ids_t.numel() and int(ids_t.max()) >= target_vocab_size:
            raise SpecforgeError(
                f"token id {int(ids_t.max())} is outside the target's vocabulary ({target_vocab_size}): "
                "the data was tokenized with another tokenizer"
            )
        counts += torch.bincount(ids_t, minlength=target_vocab_size)
    total = int(counts.sum())
    if total == 0:
        raise SpecforgeError("the training data has no assistant tokens to build a draft vocabulary from")
    # Stable sort on -count keeps lower ids first among equal counts.
    order = torch.sort(-counts, stable=True).indices
    chosen = torch.sort(order[:draft_vocab_size]).values
    t2d = torch.zeros(target_vocab_size, dtype=torch.bool)
    t2d[chosen] = True
    return DraftVocab(
        draft_to_target=chosen,
        d2t=chosen - torch.arange(draft_vocab_size),
        t2d=t2d,
        coverage=float(counts[chosen].sum()) / total,
        counted_tokens=total,
    )
