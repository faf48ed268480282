"""Sweeps on one engine: every batch size, repeated, with paired arms served back to back.

Sweep mode (``"sweep": {"batch_sizes": [...], "repeats": r, "min_requests": m}`` in the request):
one engine serves every batch size ``B`` in turn, once unrecorded (warm-up) and then ``r`` times,
alternating the order of batch sizes between repeats.
Each measurement generates ``max_tokens`` tokens (``ignore_eos``) for ``B`` prompts submitted at
once, so the decode batch is exactly ``B``, and does so for ``max(1, m // B)`` consecutive groups of
distinct prompts (the first ``B``, the next ``B``, ...), so that a small batch is not measured on one
or two prompts alone. With ``"closed_loop": n`` (> 0) it instead keeps ``B`` requests in flight,
submitting the next prompt as soon as one finishes, for ``max(m, n B)`` requests, and ``tokens_per_s``
counts only the window until the last request is submitted (``tokens_per_s_all``: the whole run,
drain included). It records output tokens/s, the per-request latency
(time to first token + decode time, from vLLM's own per-request timestamps), time per output token,
the speculative counters of that measurement, and a digest of its output token ids (greedy
outputs must not depend on the configuration). Its result holds ``"sweep": [ {...}, ... ]``.

Paired sweep (``"arms": {name: k | table | null | "plain" | {"policy": overrides}}`` in ``"sweep"``,
with the adaptive plugin on and the engine core in this process; without the plugin, only ``null``
(the engine as configured) and ``"plain"``): one engine serves every
speculative configuration, and a second engine without a draft, in the same process, serves the arm
``"plain"`` (no speculation), so it is paired like the others. Before each measurement the plugin's
lookup is pinned (:meth:`~serving.vllm_plugin.lookup.AdaptiveLookup.pin`) to a fixed ``k`` (an
int), to vLLM's own table (a ``num_speculative_tokens_per_batch_size`` list, expanded by vLLM's
``build_dynamic_sd_schedule_lookup``), or left to the policy (null); a variant of the plugin
(``{"policy": overrides}``: the policy file with some keys overridden) swaps in a lookup of its own,
which learns from its own steps only. Every (repeat, batch size) measures all arms back to back in
a shuffled order (``"seed"``), so engine-to-engine differences and slow drifts of the machine cancel
out of their ratios. Rows carry ``"config"`` (the arm) and ``"decode"``: the steady decode steps at
exactly that batch size timed during the measurement (``steps``, ``seconds``, ``tokens``).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from serving.vllm_plugin.harness import draft_timer
from serving.vllm_plugin.harness.counters import (
    PREFIX_METRICS,
    decode_since,
    diff,
    digest,
    keep_samples,
    recorded_steps,
    scheduler,
    spec_counters,
)
from serving.vllm_plugin.harness.progress import SweepProgress
from serving.vllm_plugin.harness.request import LockstepArm, PairedArm, PolicyVariant, SweepSpec

# A paired sweep's arm served by a second engine in the same process, one without a draft: no
# speculation, paired with the speculative arms like any other (engines in separate processes differed
# by up to 20 % between runs; in one process, alternated, a k = 0 arm with the draft skipped and this
# engine measured 0.93-1.07x of each other).
PLAIN = "plain"


def _request_latency(r, fallback: float) -> dict:
    """Seconds from scheduling to the last token, and per output token after the first."""
    m, n = getattr(r, "metrics", None), len(r.outputs[0].token_ids)
    if m is None or not getattr(m, "last_token_ts", 0.0) or not getattr(m, "first_token_ts", 0.0):
        return {"latency": fallback, "tpot": fallback / max(n, 1)}
    decode = m.last_token_ts - m.first_token_ts
    return {"latency": m.first_token_latency + decode, "tpot": decode / max(n - 1, 1)}


def _arm_lookups(llm, arms: dict[str, PairedArm | LockstepArm]) -> tuple[object, dict]:
    """The scheduler and, per arm, what to pin the plugin's lookup to (None: the policy), or, for an
    arm ``{"policy": overrides}`` (a variant of the plugin: the policy file with ``overrides``), a
    lookup of its own that the arm's measurements swap in."""
    from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

    from serving.vllm_plugin.adaptive import ENV, policy_lookup
    from serving.vllm_plugin.lookup import AdaptiveLookup

    sched = scheduler(llm)
    lookup = getattr(sched, "dynamic_sd_lookup", None)
    if not isinstance(lookup, AdaptiveLookup) and all(a is None or a == PLAIN for a in arms.values()):
        keep_samples(sched)  # arms served as configured, beside the plain engine: nothing to pin
        return sched, {name: None for name, arm in arms.items() if arm != PLAIN}
    # a policy, or an explore file (calibrate --vllm --workload held pins every arm)
    if not isinstance(lookup, AdaptiveLookup) or (lookup.policy is None and not lookup.explore):
        raise RuntimeError(
            "a paired sweep needs the specforge plugin on with a policy (SPECFORGE_ADAPTIVE_SPEC and "
            "num_speculative_tokens_per_batch_size in the speculative config)"
        )
    keep_samples(sched)
    pins = {}
    for name, arm in arms.items():
        if arm == PLAIN:
            continue
        if isinstance(arm, PolicyVariant):  # a variant of the plugin, learning from its own steps only
            raw = {**json.loads(Path(os.environ[ENV]).read_text()), **arm.policy}
            pins[name] = policy_lookup(sched, raw, lookup.k_max, getattr(sched, "_specforge_stale", None))
            continue
        if isinstance(arm, list):  # vLLM's table, expanded exactly as vLLM expands it
            arm = build_dynamic_sd_schedule_lookup(
                arm, vllm_max_batch_size=sched.max_num_running_reqs, vllm_num_speculative_tokens=lookup.k_max
            )
        pins[name] = arm
    return sched, pins


def run_sweep(llm, params, prompts: list[dict], sweep: SweepSpec, plain=None) -> list[dict]:
    """``plain``: the engine without a draft that serves the arm named :data:`PLAIN`."""
    from serving.vllm_plugin.lookup import AdaptiveLookup

    sizes = list(sweep.batch_sizes)
    arms = sweep.arms  # paired sweep: arm name -> what to pin the plugin to
    sched, pins = _arm_lookups(llm, arms) if arms else (None, {None: None})
    # arm -> (engine, its scheduler); the plain arm runs on its own engine, the others on llm
    engines = {arm: (llm, sched) for arm in pins}
    for arm, what in (arms or {}).items():
        if what == PLAIN:
            if plain is None:
                raise RuntimeError(f"arm {arm!r} asks for the plain engine, and none was given")
            engines[arm] = (plain, scheduler(plain))
            keep_samples(engines[arm][1])
            recorder = getattr(engines[arm][1], "_specforge_recorder", None)
            if recorder is not None:  # the step log file is the plugin's engine's (its choices, probes)
                recorder.path = None
    rng = random.Random(sweep.seed)
    min_requests = sweep.min_requests
    per_slot = sweep.closed_loop
    needed = max(max(b, min_requests, per_slot * b) for b in sizes)
    if needed > len(prompts):
        prompts = [prompts[i % len(prompts)] for i in range(needed)]

    def measure(b: int, engine) -> tuple[list, float | None, int | None]:
        if per_slot:
            return _closed_loop(engine, params, prompts[: max(min_requests, per_slot * b)], b)
        out = []
        for g in range(max(1, min_requests // b)):
            out += engine.generate(prompts[g * b : (g + 1) * b], params, use_tqdm=False)
        return out, None, None

    served = sched.dynamic_sd_lookup if sched is not None else None  # the plugin's own lookup

    def pin(arm) -> None:
        if sched is not None and arm in pins and isinstance(served, AdaptiveLookup):
            if isinstance(pins[arm], AdaptiveLookup):  # a variant of the plugin: its own lookup
                sched.dynamic_sd_lookup = pins[arm]
            else:
                sched.dynamic_sd_lookup = served
                served.pin(pins[arm])

    progress = SweepProgress(len(sizes) * len(engines) * (sweep.repeats + bool(sweep.warmup)))
    # Warm-up: one full unrecorded pass. The first time a kernel meets a shape (token count,
    # sequence length) costs extra on CPU; a shorter warm-up left the first repeat up to 1.6x slower.
    for b in sizes if sweep.warmup else []:
        for arm, (engine, _) in engines.items():  # every arm meets every shape before anything is recorded
            pin(arm)
            measure(b, engine)
            progress.measured(batch_size=b, arm=arm, repeat=-1)
    rows = []
    for rep in range(sweep.repeats):
        for b in sizes if rep % 2 == 0 else sizes[::-1]:
            order = list(engines)
            rng.shuffle(order)
            for arm in order:
                pin(arm)
                engine, arm_sched = engines[arm]
                row = _measured(
                    engine, lambda b, e=engine: measure(b, e), b, rep, arm, arm_sched, sweep.keep_outputs
                )
                if engine is plain:  # vLLM's registry holds the other engine's counters (see main)
                    row["spec"], row["prefix_cache"] = {}, None
                rows.append(row)
                progress.measured(
                    batch_size=b, arm=arm, repeat=rep, tokens_per_s=round(row["tokens_per_s"], 1)
                )
    if sched is not None and isinstance(served, AdaptiveLookup):
        sched.dynamic_sd_lookup = served
        served.pin(None)
    return rows


def _measured(llm, measure, b: int, rep: int, arm: str | None, sched, keep_outputs: bool = False) -> dict:
    """One measurement at batch size ``b``: throughput, latency, counters, output digest (and the
    outputs' token ids with ``keep_outputs``)."""
    before, steps_before = spec_counters(llm), recorded_steps(sched)
    prefix_before = spec_counters(llm, PREFIX_METRICS)
    timer = draft_timer.install()
    draft_before = timer.seconds if timer is not None else 0.0
    t0 = time.perf_counter()
    result, held_s, held_tokens = measure(b)
    elapsed = time.perf_counter() - t0
    draft_s = timer.seconds - draft_before if timer is not None else None
    lat = [_request_latency(r, elapsed) for r in result]
    tokens = sum(len(r.outputs[0].token_ids) for r in result)
    row = {} if arm is None else {"config": arm, "decode": decode_since(sched, steps_before, b)}
    return {
        **row,
        "batch_size": b,
        "repeat": rep,
        "seconds": elapsed,
        # wall time in the runner's draft proposal (None: the engine core ran in another process)
        "draft_seconds": draft_s,
        "output_tokens": tokens,
        # Closed loop: tokens/s while b requests were in flight; otherwise the whole run.
        "tokens_per_s": held_tokens / held_s if held_s else tokens / elapsed,
        "tokens_per_s_all": tokens / elapsed,
        "latency_mean": sum(x["latency"] for x in lat) / len(lat),
        "tpot_mean": sum(x["tpot"] for x in lat) / len(lat),
        "spec": diff(spec_counters(llm), before),
        "prefix_cache": diff(spec_counters(llm, PREFIX_METRICS), prefix_before),
        "outputs_sha": digest([list(r.outputs[0].token_ids) for r in result]),
        **({"outputs": [list(r.outputs[0].token_ids) for r in result]} if keep_outputs else {}),
        "clock": [t0, t0 + elapsed],  # perf_counter at start and end: matches SPECFORGE_STEP_TRACE
    }


def _closed_loop(llm, params, prompts: list[dict], b: int) -> tuple[list, float, int]:
    """Serve ``prompts`` with ``b`` requests in flight: a request is submitted as soon as one finishes,
    as ``b`` clients each sending their next request would. Returns the finished outputs (in
    submission order), and the seconds and output tokens until the last request was submitted (the
    window in which exactly ``b`` requests were in flight; the drain after it is left out)."""
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    params = params.clone()
    params.output_kind = RequestOutputKind.DELTA  # every step's new tokens, to count the window
    order: dict[str, int] = {}
    tokens: dict[str, list[int]] = {}
    finished: dict[str, object] = {}

    def submit(i: int) -> None:
        rid = f"closed-{i}"  # outputs carry this id (vLLM adds a suffix to its internal one)
        engine.add_request(rid, prompts[i], params)
        order[rid], tokens[rid] = i, []

    t0 = time.perf_counter()
    for i in range(min(b, len(prompts))):
        submit(i)
    nxt, held_s, held_tokens = min(b, len(prompts)), None, None
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id] += out.outputs[0].token_ids
            if out.finished:
                finished[out.request_id] = out
                if nxt < len(prompts):
                    submit(nxt)
                    nxt += 1
                elif held_s is None:
                    held_s = time.perf_counter() - t0
                    held_tokens = sum(map(len, tokens.values()))
    for rid, out in finished.items():
        out.outputs[0].token_ids = tokens[rid]
    result = sorted(finished.values(), key=lambda o: order[o.request_id])
    if held_s is None:  # fewer prompts than slots: the whole run is the window
        held_s, held_tokens = time.perf_counter() - t0, sum(map(len, tokens.values()))
    return result, held_s, held_tokens
