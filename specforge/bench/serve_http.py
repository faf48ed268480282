"""`specforge bench serve --engine http`: the sweep measured through the real OpenAI server, as a
user's load generator measures it.

Contract
--------
* :func:`drive` sends token prompts to a running server's ``/v1/completions`` with the ``openai``
  client, streaming, with ``concurrency`` requests in flight (a closed loop: each client sends its
  next prompt when its last answer ends). Per request it records time to first token, time per
  output token after the first and the tokens (``return_token_ids``); per run, throughput and the
  change in vLLM's speculative-decoding counters (``/metrics``).
* :func:`bench_serve_http` starts one server per arm and round (:class:`OpenAIServer`): ``none``,
  static ``k1``..``kK``, ``vllm-table`` (a ``num_speculative_tokens_per_batch_size`` table) and
  ``specforge`` (the plugin, from a policy file), and drives every concurrency on it after one
  untimed request. Arms run in a shuffled order each round, concurrencies alternate their order.
  Rows have the sweep's layout, so :func:`~specforge.bench.sweep.serve_summary` summarises them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from serving.vllm_plugin.adaptive import ENV
from serving.vllm_plugin.harness.request import draft_speculative_fields
from serving.vllm_plugin.harness.server import OpenAIServer, spec_counters
from specforge.bench.sweep import serve_summary

MODEL_NAME = "target"


async def _complete(client, prompt: list[int], max_tokens: int, temperature: float, ignore_eos: bool) -> dict:
    t0 = time.perf_counter()
    first: float | None = None
    ids: list[int] = []
    stream = await client.completions.create(
        model=MODEL_NAME,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        stream=True,
        extra_body={"ignore_eos": ignore_eos, "return_token_ids": True},
    )
    async for chunk in stream:
        for choice in chunk.choices:
            delta = (choice.model_extra or {}).get("token_ids") or []
            if delta and first is None:
                first = time.perf_counter()
            ids += delta
    end = time.perf_counter()
    first = first if first is not None else end
    return {
        "ttft": first - t0,
        "latency": end - t0,
        "tpot": (end - first) / max(len(ids) - 1, 1),
        "token_ids": ids,
    }


async def _drive(
    url: str,
    prompts: list[list[int]],
    concurrency: int,
    max_tokens: int,
    temperature: float,
    ignore_eos: bool,
) -> tuple[list[dict], float]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=1800)
    results: list[dict | None] = [None] * len(prompts)
    next_index = iter(range(len(prompts)))

    async def worker() -> None:
        for i in next_index:  # a shared iterator: each client takes the next prompt
            results[i] = await _complete(client, prompts[i], max_tokens, temperature, ignore_eos)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prompts)))))
    elapsed = time.perf_counter() - t0
    await client.close()
    return [r for r in results if r is not None], elapsed


def drive(
    url: str,
    prompts: list[list[int]],
    concurrency: int,
    max_tokens: int,
    temperature: float = 0.0,
    ignore_eos: bool = True,
) -> dict:
    """Every prompt through the server at ``concurrency`` requests in flight: per-request timings and
    tokens, throughput, and vLLM's speculative-decoding counters over the run."""
    before = spec_counters(url)
    requests, elapsed = asyncio.run(_drive(url, prompts, concurrency, max_tokens, temperature, ignore_eos))
    after = spec_counters(url)
    tokens = sum(len(r["token_ids"]) for r in requests)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "seconds": elapsed,
        "output_tokens": tokens,
        "tokens_per_s": tokens / elapsed,
        "ttft_median": statistics.median(r["ttft"] for r in requests),
        "tpot_median": statistics.median(r["tpot"] for r in requests),
        "latency_mean": statistics.fmean(r["latency"] for r in requests),
        "spec": {k: after[k] - before[k] for k in after},
    }


def http_arms(k_max: int, ks: list[int], table: list[list[int]] | None, policy: Path | None) -> dict:
    """Arm name -> (speculative config without the draft's keys, plugin policy file or None)."""
    arms: dict[str, tuple[dict | None, Path | None]] = {"none": (None, None)}
    for k in ks:
        arms[f"k{k}"] = ({"num_speculative_tokens": k}, None)
    if table:
        arms["vllm-table"] = (
            {"num_speculative_tokens": k_max, "num_speculative_tokens_per_batch_size": table},
            None,
        )
    if policy is not None:
        # the plugin rides on vLLM's per-step k path: a one-range table switches it on
        arms["specforge"] = (
            {"num_speculative_tokens": k_max, "num_speculative_tokens_per_batch_size": [[1, 4096, k_max]]},
            policy,
        )
    return arms


def bench_serve_http(
    target: Path,
    draft: Path,
    prompts: list[list[int]],
    out: Path,
    concurrencies: list[int],
    ks: list[int],
    table: list[list[int]] | None = None,
    policy: Path | None = None,
    max_tokens: int = 48,
    rounds: int = 1,
    requests_per_client: int = 2,
    min_requests: int = 8,
    seed: int = 0,
    method: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    k_max = max([*ks, *(k for _, _, k in table or [])] or [1])
    fields = draft_speculative_fields(draft)
    method = method or fields["method"]
    del fields["method"]
    arms = http_arms(k_max, ks, table, policy)
    rng = random.Random(seed)
    needed = max(max(min_requests, requests_per_client * c) for c in concurrencies)
    prompts = [prompts[i % len(prompts)] for i in range(needed)]
    rows: list[dict] = []
    for rnd in range(rounds):
        order = list(arms)
        rng.shuffle(order)
        for name in order:
            spec, policy_file = arms[name]
            config = {"method": method, **fields, "model": str(draft), **spec} if spec is not None else None
            env = {ENV: str(policy_file)} if policy_file is not None else {}
            with OpenAIServer(
                target,
                out / "logs" / f"{name}-r{rnd}.log",
                speculative_config=config,
                env=env,
                max_num_seqs=max(concurrencies),
                model_name=MODEL_NAME,
            ) as server:
                drive(server.url, prompts[:1], 1, max_tokens)  # untimed: the first request warms up
                for c in concurrencies if rnd % 2 == 0 else concurrencies[::-1]:
                    n = max(min_requests, requests_per_client * c)
                    res = drive(server.url, prompts[:n], c, max_tokens)
                    ids = [r["token_ids"] for r in res.pop("requests")]
                    rows.append(
                        {
                            "config": name,
                            "round": rnd,
                            "batch_size": c,
                            **res,
                            "outputs_sha": hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16],
                        }
                    )
                    log(
                        f"round {rnd + 1}/{rounds} {name} concurrency {c}: {res['tokens_per_s']:.1f} tokens/s, "
                        f"TTFT {res['ttft_median'] * 1e3:.0f} ms, TPOT {res['tpot_median'] * 1e3:.1f} ms"
                    )
    return {
        "engine": "http",
        "target": str(target),
        "draft": str(draft),
        "max_tokens": max_tokens,
        "batch_sizes": concurrencies,
        "rounds": rounds,
        "table": table,
        "policy": str(policy) if policy is not None else None,
        "rows": rows,
        "latency_ms": _latency_table(rows),
        "summary": serve_summary(
            rows, concurrencies, adaptive="specforge", table="vllm-table" if table else None
        ),
    }


def _latency_table(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per arm and concurrency: median time to first token and per output token (ms) over rounds."""
    cells: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["config"], r["batch_size"]), []).append(r)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (arm, c), rs in sorted(cells.items()):
        out.setdefault(arm, {})[str(c)] = {
            "ttft": round(1e3 * statistics.median(r["ttft_median"] for r in rs), 2),
            "tpot": round(1e3 * statistics.median(r["tpot_median"] for r in rs), 3),
        }
    return out
