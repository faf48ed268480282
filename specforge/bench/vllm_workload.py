"""The workload every vLLM benchmark here serves: prompts, batch sizes, and the sweep engine's request.

Contract: :func:`long_answer_prompts` picks held-out chat prompts whose regenerated (target-greedy)
answer is long enough (:func:`min_answer_tokens`); :func:`sweep_request` is the request one sweep
engine runs (:mod:`serving.vllm_plugin.harness.child`), in the measuring process (:data:`SWEEP_ENV`);
:func:`arm_decode_cells` reads back each arm's own decode steps from a paired engine's rows.
Shared by ``specforge bench serve`` (:mod:`specforge.bench.serve_vllm`), ``specforge calibrate
--vllm`` (:mod:`specforge.bench.calibrate_vllm`) and the reference engine's sweep.
"""

from __future__ import annotations

import json
from pathlib import Path

from specforge.data.formats import load_rows
from specforge.errors import SpecforgeError
from specforge.targets.loader import load_tokenizer

BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64]
# Each measurement serves at least this many distinct prompts (batch 1: eight requests in a row), so a
# small batch's figure is not one prompt's acceptance.
MIN_REQUESTS = 8
# The engine core in the measuring process: on a 2-core machine a separate engine-core process
# competes with the front end for one core, which made identical measurements differ by up to 1.6x.
SWEEP_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
WORKLOADS = {"closed": 4, "burst": 0}  # workload -> requests per client (0: B at once, then drain)
# fixed: every request decodes max_tokens tokens (ignore_eos); natural: each request ends where the
# target ends its answer, at most max_tokens (prompts whose regenerated answer has >= max_tokens / 4).
LENGTHS = ("fixed", "natural")
# One engine's run in a sweep (a paired round serves every arm at every batch size: 15-19 minutes
# with 9 arms on the AVX2 machine, natural lengths up to 128 tokens, 3 repeats)
ROUND_TIMEOUT_S = 4 * 3600


def check_choice(what: str, value: str, choices) -> None:
    if value not in choices:
        raise SpecforgeError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")


def min_answer_tokens(max_tokens: int, lengths: str, fixed: int) -> int:
    """The shortest regenerated answer a prompt needs: ``fixed`` tokens with fixed lengths; with
    natural lengths a quarter of ``max_tokens``, so requests end at different steps."""
    return max_tokens // 4 if lengths == "natural" else fixed


def long_answer_prompts(target_dir: Path, regen_data: Path, min_answer_tokens: int) -> list[list[int]]:
    """Token prompts (first user turn, chat template) whose first assistant answer in ``regen_data``
    (the target's own regenerated answers) has at least ``min_answer_tokens`` tokens."""
    tok = load_tokenizer(target_dir)
    rows, _ = load_rows(regen_data)
    prompts = []
    for r in rows:
        msgs = r["messages"]
        i = next((j for j, m in enumerate(msgs) if m["role"] == "assistant"), None)
        if i is None or len(tok(msgs[i]["content"])["input_ids"]) < min_answer_tokens:
            continue
        ids = tok.apply_chat_template(msgs[:i], add_generation_prompt=True)
        prompts.append(list(ids["input_ids"] if hasattr(ids, "input_ids") else ids))
    if not prompts:
        raise SpecforgeError(
            f"no conversation in {regen_data} has an answer of >= {min_answer_tokens} tokens: "
            "lower --max-tokens or regenerate with more new tokens"
        )
    return prompts


def draft_alpha(run_dir: Path, k: int) -> list[float]:
    """The head's conditional acceptance alpha_1..alpha_k as training estimated it: the served
    estimate at temperature 0 when the run has one (the reference engine, closed loop), else the
    teacher-forced alphas of its last evaluation."""
    path = Path(run_dir) / "train_summary.json"
    if not path.is_file():
        raise SpecforgeError(f"{path} not found: pass the training run directory of the draft (--run)")
    summary = json.loads(path.read_text())
    served = (summary.get("served") or {}).get("t0") or {}
    if served.get("alpha") and served.get("k", 0) >= k:
        return list(served["alpha"][:k])
    final = summary.get("final", summary)  # a training run keeps its last evaluation under "final"
    alpha = [final[f"eval/alpha_{i}"] for i in range(k) if f"eval/alpha_{i}" in final]
    if not alpha:
        raise SpecforgeError(f"{path} has no eval/alpha_* entries: train with evaluation switched on")
    return alpha


def sweep_request(
    target: Path,
    prompts: list[list[int]],
    max_tokens: int,
    batch_sizes: list[int],
    repeats: int,
    per_slot: int = 0,
) -> dict:
    """The request of one sweep engine (:mod:`serving.vllm_plugin.harness.child`): greedy, ``B`` up to the
    largest batch size, ``repeats`` measurements per batch size, ``per_slot`` requests per client
    (0: bursts)."""
    return {
        "target": str(target),
        "prompts": prompts,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "max_num_seqs": max(batch_sizes),
        "max_model_len": 1024,
        "sweep": {
            "batch_sizes": batch_sizes,
            "repeats": repeats,
            "min_requests": MIN_REQUESTS,
            "closed_loop": per_slot,
        },
    }


def arm_decode_cells(rows: list[dict]) -> dict[str, list[dict]]:
    """A paired engine's per-measurement decode steps, as step-log cells per arm (one per batch size)."""
    acc: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        d = r.get("decode") or {}
        cell = acc.setdefault((r["config"], r["batch_size"]), [0, 0.0, 0.0])
        cell[0] += d.get("steps", 0)
        cell[1] += d.get("seconds", 0.0)
        cell[2] += d.get("tokens", 0.0)
    out: dict[str, list[dict]] = {}
    for (arm, b), (n, sec, tok) in acc.items():
        if n:
            out.setdefault(arm, []).append(
                # k = -1: an arm's steps may mix k (the plugin's, vLLM's table); the summary ignores k
                {"batch_size": b, "k": -1, "steps": n, "seconds": sec / n, "emitted": tok / (n * b)}
            )
    return out
