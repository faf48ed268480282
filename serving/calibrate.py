"""Profile a target (and a draft) on the machine at hand into a :class:`serving.policy.CostModel`.

Contract: :func:`calibrate` times one decode forward of the target for ``n`` query tokens, each a
separate sequence holding a ``prefix``-token KV cache (decode at batch ``n``), for ``n`` in
``token_counts``; the draft's one-step forward likewise. Each point is the median of ``repeats``
runs after a warm-up. :func:`cost_model_path` names the cache file by target, draft and machine, so
a cost model is measured once per model and machine. :func:`calibrate_engine_steps` instead times
whole steps of the reference engine per shape (a :class:`serving.policy.StepTable`), which is what
the engine's policy should be priced with: per-sequence Python work makes an engine step cost far
more than its forwards at large batch.
"""

from __future__ import annotations

import hashlib
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import DynamicCache

from serving.step_cost import CostModel, Profile, StepTable

DEFAULT_TOKEN_COUNTS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def machine_id() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return f"{platform.node()}|{platform.processor() or platform.machine()}|{gpu}|threads={torch.get_num_threads()}"


def cost_model_path(root: Path, target_dir: Path, draft_dir: Path | None) -> Path:
    key = hashlib.sha256(
        f"{Path(target_dir).resolve()}|{draft_dir and Path(draft_dir).resolve()}|{machine_id()}".encode()
    )
    return Path(root) / f"cost-{key.hexdigest()[:16]}.json"


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def time_target(model: torch.nn.Module, n: int, prefix: int, repeats: int) -> float:
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    ctx = torch.randint(0, vocab, (n, prefix), device=device)
    cache = DynamicCache()
    model(input_ids=ctx, past_key_values=cache, use_cache=True)
    step = torch.randint(0, vocab, (n, 1), device=device)
    pos = torch.full((n, 1), prefix, device=device)

    def run():
        model(input_ids=step, position_ids=pos, past_key_values=cache, use_cache=True)
        cache.crop(prefix)  # drop the token just added, so every run sees the same cache

    return _median_time(run, repeats)


@torch.no_grad()
def time_draft(draft: torch.nn.Module, n: int, prefix: int, repeats: int) -> float:
    from draft_models.layers import attend

    cfg = draft.config
    k = torch.randn(n, cfg.num_key_value_heads, prefix, cfg.head_dim)
    v = torch.randn_like(k)
    ids = torch.randint(0, cfg.vocab_size, (n, 1))
    hidden = torch.randn(n, 1, cfg.hidden_size)
    pos = torch.full((n, 1), prefix)

    def attn(q, k_new, v_new):
        return attend(q, torch.cat([k, k_new], 2), torch.cat([v, v_new], 2), None)

    return _median_time(lambda: draft.step(ids, hidden, pos, attn), repeats)


def calibrate(
    target: torch.nn.Module,
    draft: torch.nn.Module | None = None,
    token_counts: list[int] | None = None,
    prefix: int = 128,
    repeats: int = 5,
) -> CostModel:
    counts = token_counts or DEFAULT_TOKEN_COUNTS
    target_prof = Profile(counts, [time_target(target, n, prefix, repeats) for n in counts])
    draft_prof = (
        Profile(counts, [time_draft(draft, n, prefix, repeats) for n in counts])
        if draft is not None
        else None
    )
    # a parallel-drafting head runs one pass a step (serving.step_cost.CostModel.parallel_drafts)
    return CostModel(
        target_prof, draft_prof, parallel_drafts=bool(getattr(draft, "parallel_drafting", False))
    )


def calibrate_engine_steps(
    engine,
    prompts: list[list[int]],
    shapes: list,
    batch_sizes: list[int],
    max_new_tokens: int = 16,
    progress: Callable[[str], None] | None = None,
) -> StepTable:
    """Time whole steps of a :class:`serving.engine.SpeculativeEngine` (drafting, the target
    forward, verification and its Python overheads) per shape and batch size: the median step of a
    ``max_new_tokens`` generation (the first step left out) for the first ``B`` prompts, cycled.
    The engine must decode every row to ``max_new_tokens`` (no EOS) so the batch stays ``B``."""
    from serving.shape import NO_SPECULATION

    prompts = [prompts[i % len(prompts)] for i in range(max(batch_sizes))]
    table: dict = {}
    for shape in [NO_SPECULATION, *[s for s in shapes if not s.is_none]]:
        seconds = []
        for b in batch_sizes:
            steps: list[float] = []
            engine.generate(
                prompts[:b],
                max_new_tokens,
                shape,
                on_step=lambda _s, batch, _e, sec, _accepted, b=b, steps=steps: (
                    steps.append(sec) if batch == b else None
                ),
            )
            seconds.append(statistics.median(steps[1:] or steps))
        table[shape] = Profile(list(batch_sizes), seconds)
        if progress is not None:
            progress(f"timed {shape} at batch sizes {batch_sizes}")
    return StepTable(table)
