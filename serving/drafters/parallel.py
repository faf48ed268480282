"""A parallel-drafting (P-EAGLE) head as a drafter for the reference engine: one draft forward a step.

Contract: :meth:`ParallelDrafter.extend` runs the verified pairs (target feature at ``p``, token at
``p + 1``) and, in the same forward, ``max_depth - 1`` mask slots after them (the head's mask token
and mask feature at positions ``p_last + 1 ..``), as vLLM's parallel drafter lays out its query.
Mask slot ``j`` sees the sequence's cache, every verified pair of this call and mask slots ``1..j``.
Only the verified pairs' keys and values are kept; the mask slots' log-probs are the proposal.
:meth:`ParallelDrafter.propose` then costs no forward: the chain is the last verified pair's argmax
followed by each mask slot's argmax. A parallel head proposes chains only (its depth-``j`` token
does not depend on the tokens before it, so a tree would repeat the same distribution).
"""

from __future__ import annotations

import torch

from draft_models.peagle import ParallelEagle3Draft
from serving.drafters.eagle import EagleDrafter
from serving.tree import DraftTree


class ParallelDrafter(EagleDrafter):
    def __init__(self, draft: ParallelEagle3Draft, max_depth: int = 4):
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        super().__init__(draft)
        self.max_depth = max_depth
        self._mask_logp: list[torch.Tensor | None] = []  # per sequence [max_depth - 1, target_vocab]

    def reset(self, batch_size: int) -> None:
        super().reset(batch_size)
        self._mask_logp = [None] * batch_size

    def drop(self, keep: list[int]) -> None:
        super().drop(keep)
        self._mask_logp = [self._mask_logp[i] for i in keep]

    @torch.no_grad()
    def extend(self, b: int, features: torch.Tensor, next_tokens: torch.Tensor, start_pos: int) -> None:
        """features [m, feature width] at positions start_pos.., next_tokens [m]."""
        seq = self._seqs[b]
        m, slots = features.shape[0], self.max_depth - 1
        mask_ids, mask_hidden = self.draft.mask_inputs(1, slots)  # [1, slots], [1, slots, H]
        hidden = torch.cat([self.draft.combine(features[None]), mask_hidden], dim=1)  # [1, m + slots, H]
        ids = torch.cat([next_tokens[None], mask_ids], dim=1)  # [1, m + slots]
        out = self._causal_step(seq, ids, hidden, start_pos, keep=m)  # the mask slots are not cached
        seq.last_hidden = out.hidden[0, m - 1]
        logp = self._to_target_logp(out.logits[0, m - 1 :])  # [1 + slots, target_vocab]
        seq.last_logp = logp[0]
        self._mask_logp[b] = logp[1:]

    @torch.no_grad()
    def propose(self, b: int, root_pos: int, depth: int, top_k: int, num_draft_tokens: int) -> DraftTree:
        seq, rest = self._seqs[b], self._mask_logp[b]
        if seq.last_logp is None or rest is None:
            raise RuntimeError("extend() must run before propose()")
        if top_k != 1:
            raise ValueError(f"a parallel-drafting head proposes chains (top_k 1), not top_k {top_k}")
        n = min(depth, num_draft_tokens)
        if n > self.max_depth:
            raise ValueError(f"this drafter was built for depth <= {self.max_depth}, asked for {n}")
        logp = torch.cat([seq.last_logp[None], rest])[:n]  # [n, target_vocab]
        best, tokens = logp.max(dim=-1)
        return DraftTree(
            tokens=tokens,
            parents=torch.arange(-1, n - 1),
            depth=torch.arange(1, n + 1),
            logp=best.cumsum(0),
        )


def make_drafter(draft, max_depth: int = 4) -> EagleDrafter:
    """The engine's drafter for a head: :class:`ParallelDrafter` for a parallel-drafting head (built
    for chains up to ``max_depth``), else :class:`EagleDrafter`."""
    if getattr(draft, "parallel_drafting", False):
        return ParallelDrafter(draft, max_depth)
    return EagleDrafter(draft)
