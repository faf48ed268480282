"""The served estimate: a draft's acceptance measured by serving it, closed loop, in the reference engine.

Contract: :func:`served_estimate` decodes held-out prompts with the target and the draft drafting a
``k``-token chain in :class:`serving.engine.SpeculativeEngine` (greedy, or lossless rejection
sampling at ``temperature``), stopping at EOS or ``max_new_tokens`` as a server does, and reports
tau (tokens per target forward, bonus included), acceptance per position and alpha, counted as
vLLM counts them. Unlike the teacher-forced estimate, the draft drafts from its own tokens and its
steps start where the previous step's acceptance left them; it is the estimate training reports
next to the teacher-forced alphas (``served/*``) and that an exported draft carries in its metadata.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from serving.drafters.parallel import make_drafter
from serving.engine import GenerationStats, SpeculativeEngine
from serving.shape import TreeShape


@dataclass
class ServedEstimate:
    k: int
    temperature: float
    prompts: int
    max_new_tokens: int
    tau: float  # tokens per target forward per sequence, bonus included
    acceptance_per_position: list[float]  # [k]: P(position i accepted), per verification step
    alpha: list[float]  # [k]: P(position i accepted | positions < i accepted)
    output_tokens: int
    seconds: float

    def to_json(self) -> dict:
        return asdict(self)

    def log_items(self, prefix: str) -> dict[str, float]:
        """Scalars for a tracker: ``{prefix}tau`` and ``{prefix}acc_{i}``."""
        out = {f"{prefix}tau": self.tau}
        out.update({f"{prefix}acc_{i}": a for i, a in enumerate(self.acceptance_per_position)})
        return out


def served_key(temperature: float) -> str:
    """The key a served estimate is filed under, e.g. ``t0`` or ``t1`` (``t0.7`` for 0.7)."""
    return f"t{temperature:g}"


@torch.no_grad()
def served_estimate(
    target: torch.nn.Module,
    draft: torch.nn.Module,
    prompts: list[list[int]],
    k: int,
    temperature: float,
    max_new_tokens: int,
    eos_token_id: int | None,
    seed: int = 0,
    batch_size: int = 8,
) -> ServedEstimate:
    """``draft`` is put in eval mode; the caller restores train mode if it needs it."""
    if not prompts:
        raise ValueError("a served estimate needs at least one prompt")
    engine = SpeculativeEngine(target, make_drafter(draft, k), eos_token_id=eos_token_id)
    stats, tokens = GenerationStats(), 0
    t0 = time.perf_counter()
    try:
        for lo in range(0, len(prompts), batch_size):
            out = engine.generate(
                prompts[lo : lo + batch_size],
                max_new_tokens,
                TreeShape.chain(k),
                temperature=temperature,
                seed=seed + lo,
            )
            stats.merge(out.stats)
            tokens += sum(map(len, out.tokens))
    finally:
        engine.close()
    per_pos = stats.acceptance_per_position + [0.0] * (k - len(stats.accepted_at_depth))
    alpha = stats.alpha + [0.0] * (k - len(stats.accepted_at_depth))
    return ServedEstimate(
        k=k,
        temperature=temperature,
        prompts=len(prompts),
        max_new_tokens=max_new_tokens,
        tau=stats.tau,
        acceptance_per_position=per_pos,
        alpha=alpha,
        output_tokens=tokens,
        seconds=time.perf_counter() - t0,
    )
