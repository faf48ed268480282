"""Run the real vLLM offline on token prompts, with or without an EAGLE-3 draft, and read its counters.

Contract: ``python -m serving.vllm_plugin.offline REQUEST.json RESULT.json`` (a fresh process, since
vLLM spawns workers) loads ``LLM(target, speculative_config=...)`` in float32 with eager execution,
generates for every prompt, and writes the outputs' token ids, the generate wall time (best of
``repeats``), and vLLM's speculative-decoding counters: drafts, draft tokens, accepted tokens and
accepted tokens per position. vLLM's mean acceptance length (tau, bonus token included) is
``1 + accepted / drafts``. :func:`run_vllm` is the in-Python front door that does the subprocess.
Sampled requests (``temperature`` > 0) carry ``seed`` unless ``"seed_requests": false``.

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
(time to first token + decode time, from vLLM's own per-request timestamps), time per output token
the speculative counters of that measurement, and a digest of its output token ids (greedy
outputs must not depend on the configuration). Its result holds ``"sweep": [ {...}, ... ]``.

Paired sweep (``"arms": {name: k | table | null | "plain" | {"policy": overrides}}`` in ``"sweep"``, with the adaptive plugin
on and the engine core in this process): one engine serves every speculative configuration, and a
second engine without a draft, in the same process, serves the arm ``"plain"`` (no speculation),
so it is paired like the others. Before each measurement
the plugin's lookup is pinned (:meth:`~serving.vllm_plugin.lookup.AdaptiveLookup.pin`) to a fixed
``k`` (an int), to vLLM's own table (a ``num_speculative_tokens_per_batch_size`` list, expanded by
vLLM's ``build_dynamic_sd_schedule_lookup``), or left to the policy (null); a variant of the plugin
(``{"policy": overrides}``: the policy file with some keys overridden) swaps in a lookup of its own,
which learns from its own steps only. Every (repeat, batch
size) measures all arms back to back in a shuffled order (``"seed"``), so engine-to-engine
differences and slow drifts of the machine cancel out of their ratios. Rows carry ``"config"`` (the
arm) and ``"decode"``: the steady decode steps at exactly that batch size timed during the
measurement (``steps``, ``seconds``, ``tokens``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

SPEC_METRICS = {
    "vllm:spec_decode_num_drafts": "drafts",
    "vllm:spec_decode_num_draft_tokens": "draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "accepted_tokens",
    "vllm:spec_decode_num_accepted_tokens_per_pos": "accepted_per_pos",
}
# Prompt tokens looked up in, and found in, the prefix cache (draft_skip evicts what it must).
PREFIX_METRICS = {"vllm:prefix_cache_queries": "queries", "vllm:prefix_cache_hits": "hits"}
# A paired sweep's arm served by a second engine in the same process, one without a draft: no
# speculation, paired with the speculative arms like any other (engines in separate processes differed
# by up to 20 % between runs; in one process, alternated, a k = 0 arm with the draft skipped and this
# engine measured 0.93-1.07x of each other).
PLAIN = "plain"


def vllm_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_vllm(request: dict, workdir: Path, timeout: float = 900, env: dict[str, str] | None = None) -> dict:
    """Run one request in a subprocess; raise RuntimeError with vLLM's last output on failure (or
    when it runs past ``timeout`` seconds).
    ``env`` adds environment variables (e.g. SPECFORGE_ADAPTIVE_SPEC for the adaptive plugin)."""
    workdir.mkdir(parents=True, exist_ok=True)
    req, res = workdir / "vllm_request.json", workdir / "vllm_result.json"
    req.write_text(json.dumps(request))
    res.unlink(missing_ok=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "serving.vllm_plugin.offline", str(req), str(res)],
            env={**vllm_env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"vLLM run did not finish within {timeout:.0f} s (request: {req})") from e
    if proc.returncode != 0 or not res.is_file():
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"vLLM run failed (exit {proc.returncode}):\n{tail}")
    return json.loads(res.read_text())


def _counters(llm, names: dict[str, str] = SPEC_METRICS) -> dict:
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


def _diff(after: dict, before: dict) -> dict:
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


def main(request_path: str, result_path: str) -> None:
    from vllm import LLM, SamplingParams

    req = json.loads(Path(request_path).read_text())
    spec = None
    if req.get("draft"):
        spec = {
            "method": req.get("method", "eagle3"),
            "model": req["draft"],
            "num_speculative_tokens": int(req["num_speculative_tokens"]),
        }
        if req.get("num_speculative_tokens_per_batch_size"):
            spec["num_speculative_tokens_per_batch_size"] = req["num_speculative_tokens_per_batch_size"]
    engine_args = {
        "model": req["target"],
        "enforce_eager": True,
        "dtype": "float32",
        "max_model_len": int(req.get("max_model_len", 2048)),
        "seed": int(req.get("seed", 0)),
        "disable_log_stats": False,
        "max_num_seqs": int(req.get("max_num_seqs", 64)),
    }
    if (req.get("sweep") or {}).get("design") == "lockstep":
        rows = _lockstep(req, engine_args)
        Path(result_path).write_text(json.dumps({"sweep": rows}))
        return
    # A paired sweep's plain arm: a second engine, without a draft. It starts first: each engine's
    # metrics replace the last one's in vLLM's (process-wide) registry, and the counters read are the
    # speculative engine's.
    plain = LLM(**engine_args) if PLAIN in ((req.get("sweep") or {}).get("arms") or {}).values() else None
    llm = LLM(**engine_args, speculative_config=spec)
    sampled = float(req.get("temperature", 0.0)) > 0
    params = SamplingParams(
        temperature=float(req.get("temperature", 0.0)),
        max_tokens=int(req["max_tokens"]),
        # A seeded request repeats its samples; "seed_requests": false gives a repeated prompt
        # independent samples (and avoids vLLM-CPU 0.32's crash on a seeded request whose prefill
        # is chunked: "CPU Generator does not use offset").
        seed=int(req.get("seed", 0)) if sampled and req.get("seed_requests", True) else None,
        ignore_eos=bool(req.get("ignore_eos", False)),
        detokenize=not req.get("sweep"),  # a sweep needs token ids only: keep the front end light
    )
    prompts = [{"prompt_token_ids": ids} for ids in req["prompts"]]
    if req.get("sweep"):
        with step_logs_held([llm, plain]):
            rows = _sweep(llm, params, prompts, req["sweep"], plain=plain)
        Path(result_path).write_text(json.dumps({"sweep": rows}))
        return
    best, outputs, counters = float("inf"), None, {}
    with step_logs_held([llm]):
        for _ in range(int(req.get("repeats", 1))):
            before = _counters(llm)
            t0 = time.perf_counter()
            result = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - t0
            if elapsed < best:
                best = elapsed
                outputs = [list(r.outputs[0].token_ids) for r in result]
                counters = _diff(_counters(llm), before)
    Path(result_path).write_text(
        json.dumps(
            {"outputs": outputs, "seconds": best, "spec": counters, "output_tokens": sum(map(len, outputs))}
        )
    )


def _lockstep(req: dict, engine_args: dict) -> list[dict]:
    """A lockstep sweep (:mod:`serving.vllm_plugin.lockstep`): one engine per arm in this process.
    ``req["sweep"]["arms"]``: arm -> ``{"speculative_config": {...} | null, "plugin": bool}``; only a
    ``plugin`` arm's scheduler gets the policy named by ``SPECFORGE_ADAPTIVE_SPEC``, so the others
    run vLLM exactly as configured (every scheduler still times its steps and counts its drafts)."""
    from vllm import LLM, SamplingParams

    from serving.vllm_plugin.adaptive import ENV, STEP_LOG_ENV, register
    from serving.vllm_plugin.lockstep import lockstep_sweep

    saved = {name: os.environ.get(name) for name in (ENV, STEP_LOG_ENV)}
    register()  # patch this process once, with the policy in sight (draft skipping)
    engines, schedulers = {}, {}
    try:
        for arm, spec in req["sweep"]["arms"].items():
            for name, value in saved.items():  # the policy and the step log are the plugin arm's
                if spec.get("plugin") and value:
                    os.environ[name] = value
                else:
                    os.environ.pop(name, None)
            engines[arm] = LLM(**engine_args, speculative_config=spec.get("speculative_config"))
            schedulers[arm] = _scheduler(engines[arm])
            _keep_samples(schedulers[arm])
    finally:
        for name, value in saved.items():
            if value:
                os.environ[name] = value
    params = SamplingParams(
        temperature=0.0,
        max_tokens=int(req["max_tokens"]),
        ignore_eos=bool(req.get("ignore_eos", False)),
        detokenize=False,
    )
    prompts = [{"prompt_token_ids": ids} for ids in req["prompts"]]
    with step_logs_held(list(engines.values())):
        return lockstep_sweep(engines, schedulers, params, prompts, req["sweep"])


def _request_latency(r, fallback: float) -> dict:
    """Seconds from scheduling to the last token, and per output token after the first."""
    m, n = getattr(r, "metrics", None), len(r.outputs[0].token_ids)
    if m is None or not getattr(m, "last_token_ts", 0.0) or not getattr(m, "first_token_ts", 0.0):
        return {"latency": fallback, "tpot": fallback / max(n, 1)}
    decode = m.last_token_ts - m.first_token_ts
    return {"latency": m.first_token_latency + decode, "tpot": decode / max(n - 1, 1)}


def _digest(outputs: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(outputs).encode()).hexdigest()[:16]


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
            sched = _scheduler(llm)
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


def _scheduler(llm):
    """The engine core's scheduler, when the engine core runs in this process."""
    core = getattr(getattr(llm.llm_engine, "engine_core", None), "engine_core", None)
    if core is None:
        raise RuntimeError(
            "a paired sweep needs the engine core in this process: set VLLM_ENABLE_V1_MULTIPROCESSING=0"
        )
    return core.scheduler


def _arm_lookups(llm, arms: dict) -> tuple[object, dict]:
    """The scheduler and, per arm, what to pin the plugin's lookup to (None: the policy), or, for an
    arm ``{"policy": overrides}`` (a variant of the plugin: the policy file with ``overrides``), a
    lookup of its own that the arm's measurements swap in."""
    from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

    from serving.vllm_plugin.adaptive import ENV, policy_lookup
    from serving.vllm_plugin.lookup import AdaptiveLookup

    sched = _scheduler(llm)
    lookup = getattr(sched, "dynamic_sd_lookup", None)
    # a policy, or an explore file (calibrate --vllm --workload held pins every arm)
    if not isinstance(lookup, AdaptiveLookup) or (lookup.policy is None and not lookup.explore):
        raise RuntimeError(
            "a paired sweep needs the specforge plugin on with a policy (SPECFORGE_ADAPTIVE_SPEC and "
            "num_speculative_tokens_per_batch_size in the speculative config)"
        )
    _keep_samples(sched)
    pins = {}
    for name, arm in arms.items():
        if arm == PLAIN:
            continue
        if isinstance(arm, dict):  # a variant of the plugin, learning from its own steps only
            raw = {**json.loads(Path(os.environ[ENV]).read_text()), **arm["policy"]}
            pins[name] = policy_lookup(sched, raw, lookup.k_max, getattr(sched, "_specforge_stale", None))
            continue
        if isinstance(arm, list):  # vLLM's table, expanded exactly as vLLM expands it
            arm = build_dynamic_sd_schedule_lookup(
                arm, vllm_max_batch_size=sched.max_num_running_reqs, vllm_num_speculative_tokens=lookup.k_max
            )
        pins[name] = arm
    return sched, pins


def _keep_samples(sched) -> None:
    recorder = getattr(sched, "_specforge_recorder", None)
    if recorder is not None:
        recorder.max_samples = 10**7  # every measurement's own steps are read back (_decode_since)


def _recorded(sched) -> dict[tuple[int, int], int]:
    """Steps timed so far per recorder cell (empty without a scheduler or recorder)."""
    recorder = getattr(sched, "_specforge_recorder", None)
    return {key: len(sec) for key, (sec, _) in recorder.cells.items()} if recorder is not None else {}


def _decode_since(sched, before: dict[tuple[int, int], int], b: int) -> dict:
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


def _sweep(llm, params, prompts: list[dict], sweep: dict, plain=None) -> list[dict]:
    """``plain``: the engine without a draft that serves the arm named :data:`PLAIN`."""
    from serving.vllm_plugin.lookup import AdaptiveLookup

    sizes = [int(b) for b in sweep["batch_sizes"]]
    arms = sweep.get("arms")  # paired sweep: arm name -> what to pin the plugin to
    sched, pins = _arm_lookups(llm, arms) if arms else (None, {None: None})
    # arm -> (engine, its scheduler); the plain arm runs on its own engine, the others on llm
    engines = {arm: (llm, sched) for arm in pins}
    for arm, what in (arms or {}).items():
        if what == PLAIN:
            if plain is None:
                raise RuntimeError(f"arm {arm!r} asks for the plain engine, and none was given")
            engines[arm] = (plain, _scheduler(plain))
            _keep_samples(engines[arm][1])
            recorder = getattr(engines[arm][1], "_specforge_recorder", None)
            if recorder is not None:  # the step log file is the plugin's engine's (its choices, probes)
                recorder.path = None
    rng = random.Random(int(sweep.get("seed", 0)))
    min_requests = int(sweep.get("min_requests", 1))
    per_slot = int(sweep.get("closed_loop", 0))
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
        if sched is not None and arm in pins:
            if isinstance(pins[arm], AdaptiveLookup):  # a variant of the plugin: its own lookup
                sched.dynamic_sd_lookup = pins[arm]
            else:
                sched.dynamic_sd_lookup = served
                served.pin(pins[arm])

    # Warm-up: one full unrecorded pass. The first time a kernel meets a shape (token count,
    # sequence length) costs extra on CPU; a shorter warm-up left the first repeat up to 1.6x slower.
    for b in sizes if sweep.get("warmup", True) else []:
        for arm, (engine, _) in engines.items():  # every arm meets every shape before anything is recorded
            pin(arm)
            measure(b, engine)
    rows = []
    for rep in range(int(sweep.get("repeats", 1))):
        for b in sizes if rep % 2 == 0 else sizes[::-1]:
            order = list(engines)
            rng.shuffle(order)
            for arm in order:
                pin(arm)
                engine, arm_sched = engines[arm]
                row = _measured(engine, lambda b, e=engine: measure(b, e), b, rep, arm, arm_sched)
                if engine is plain:  # vLLM's registry holds the other engine's counters (see main)
                    row["spec"], row["prefix_cache"] = {}, None
                rows.append(row)
    if sched is not None:
        sched.dynamic_sd_lookup = served
        served.pin(None)
    return rows


def _measured(llm, measure, b: int, rep: int, arm: str | None, sched) -> dict:
    """One measurement at batch size ``b``: throughput, latency, counters, output digest."""
    before, recorded = _counters(llm), _recorded(sched)
    prefix_before = _counters(llm, PREFIX_METRICS)
    t0 = time.perf_counter()
    result, held_s, held_tokens = measure(b)
    elapsed = time.perf_counter() - t0
    lat = [_request_latency(r, elapsed) for r in result]
    tokens = sum(len(r.outputs[0].token_ids) for r in result)
    row = {} if arm is None else {"config": arm, "decode": _decode_since(sched, recorded, b)}
    return {
        **row,
        "batch_size": b,
        "repeat": rep,
        "seconds": elapsed,
        "output_tokens": tokens,
        # Closed loop: tokens/s while b requests were in flight; otherwise the whole run.
        "tokens_per_s": held_tokens / held_s if held_s else tokens / elapsed,
        "tokens_per_s_all": tokens / elapsed,
        "latency_mean": sum(x["latency"] for x in lat) / len(lat),
        "tpot_mean": sum(x["tpot"] for x in lat) / len(lat),
        "spec": _diff(_counters(llm), before),
        "prefix_cache": _diff(_counters(llm, PREFIX_METRICS), prefix_before),
        "outputs_sha": _digest([list(r.outputs[0].token_ids) for r in result]),
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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
