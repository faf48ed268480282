"""vLLM's counters, the plugin's step recorder and the engine core's scheduler, read for benchmarks.

Counters come from ``LLM.get_metrics()`` (summed over engines) and are diffed around a
measurement. Decode steps come from the plugin's step recorder (``_specforge_recorder`` on the
scheduler), which needs the engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json

SPEC_METRICS = {
    "vllm:spec_decode_num_drafts": "drafts",
    "vllm:spec_decode_num_draft_tokens": "draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "accepted_tokens",
    "vllm:spec_decode_num_accepted_tokens_per_pos": "accepted_per_pos",
}
# Prompt tokens looked up in, and found in, the prefix cache (draft_skip evicts what it must).
PREFIX_METRICS = {"vllm:prefix_cache_queries": "queries", "vllm:prefix_cache_hits": "hits"}


def spec_counters(llm, names: dict[str, str] = SPEC_METRICS) -> dict:
    """vLLM's counters named in ``names`` (metric -> key), summed over engines."""
    out: dict = {}
    for m in llm.get_metrics():
        key = names.get(m.name)
        if key is None:
            continue
        if hasattr(m, "values"):
            prev = out.get(key) or [0] * len(m.values)
            out[key] = [a + b for a, b in zip(prev, m.values)]
        else:
            out[key] = out.get(key, 0) + m.value
    return out


def diff(after: dict, before: dict) -> dict:
    """Counters ``after`` minus ``before``, key by key; lists element-wise, a position ``before``
    lacks counting from 0 (a recorder's per-position list grows with the longest chain seen)."""
    out = {}
    for k, v in after.items():
        b = before.get(k)
        if isinstance(v, list):
            b = b or []
            out[k] = [x - (b[i] if i < len(b) else 0) for i, x in enumerate(v)]
        else:
            out[k] = v - (b or 0)
    return out


def digest(outputs: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(outputs).encode()).hexdigest()[:16]


def scheduler(llm):
    """The engine core's scheduler, when the engine core runs in this process."""
    core = getattr(getattr(llm.llm_engine, "engine_core", None), "engine_core", None)
    if core is None:
        raise RuntimeError(
            "a paired sweep needs the engine core in this process: set VLLM_ENABLE_V1_MULTIPROCESSING=0"
        )
    return core.scheduler


def keep_samples(sched) -> None:
    recorder = getattr(sched, "_specforge_recorder", None)
    if recorder is not None:
        recorder.max_samples = 10**7  # every measurement's own steps are read back (decode_since)


def recorded_steps(sched) -> dict[tuple[int, int], int]:
    """Steps timed so far per recorder cell (empty without a scheduler or recorder)."""
    recorder = getattr(sched, "_specforge_recorder", None)
    return {key: len(sec) for key, (sec, _) in recorder.cells.items()} if recorder is not None else {}


def decode_since(sched, before: dict[tuple[int, int], int], b: int) -> dict:
    """Steady decode steps at batch size ``b`` timed since ``before``: count, seconds, tokens."""
    recorder = getattr(sched, "_specforge_recorder", None)
    out = {"steps": 0, "seconds": 0.0, "tokens": 0.0}
    for key, (sec, emitted) in recorder.cells.items() if recorder is not None else ():
        if key[0] == b:
            n = before.get(key, 0)
            out["steps"] += len(sec) - n
            out["seconds"] += sum(sec[n:])
            out["tokens"] += b * sum(emitted[n:])
    return out


@contextlib.contextmanager
def step_logs_held(llms: list):
    """While measuring, the step recorders of these engines' schedulers (those in this process) write
    no step log when their engine drains; each writes it once at the end. A write inside a timed
    step would be measured: at batch 1 the engine drains after every request."""
    from serving.vllm_plugin.lookup import AdaptiveLookup

    held = []
    for llm in llms:
        if llm is None:
            continue
        try:
            sched = scheduler(llm)
        except RuntimeError:  # the engine core runs in another process: nothing to hold here
            continue
        recorder = getattr(sched, "_specforge_recorder", None)
        if recorder is not None:
            recorder.hold = True
            held.append((recorder, sched))
    try:
        yield
    finally:
        for recorder, sched in held:
            recorder.hold = False
            lookup = getattr(sched, "dynamic_sd_lookup", None)
            recorder.flush(lookup if isinstance(lookup, AdaptiveLookup) else None)
