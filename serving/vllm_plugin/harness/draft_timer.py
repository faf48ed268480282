"""Wall time vLLM spends drafting, measured in the benchmark's own process (benchmark-only).

:func:`install` wraps the V1 model runner's ``propose_draft_token_ids`` (everything a step does for
the draft: gathering the target's hidden states, the draft forwards, sampling the draft tokens) with
a ``perf_counter`` timer. On CPU every call is synchronous, so the timer measures the draft's real
share of a step. It sees the runner only when the engine core runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``); otherwise :func:`install` returns None and nothing is timed.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass


@dataclass
class DraftTimer:
    seconds: float = 0.0  # total wall time inside propose_draft_token_ids
    calls: int = 0


_TIMER: DraftTimer | None = None


def install() -> DraftTimer | None:
    """The process's draft timer (installed once); None when the engine core runs in another process."""
    global _TIMER
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0":
        return None
    if _TIMER is not None:
        return _TIMER
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    timer = DraftTimer()
    original = GPUModelRunner.propose_draft_token_ids

    @functools.wraps(original)
    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            timer.seconds += time.perf_counter() - t0
            timer.calls += 1

    GPUModelRunner.propose_draft_token_ids = timed
    _TIMER = timer
    return timer
