"""What an engine that carries a draft pays when it does not speculate: vLLM with the plugin pinned to
k = 0 (the draft skipped) against vLLM without a draft, paired in one process.

Both engines serve the same closed loop (B clients, 4 requests each, fixed answer length) at each
batch size, alternated in a shuffled order per repeat after a warm-up pass. Per measurement it records
output tokens/s and the steady decode steps at exactly B (steps, mean seconds), so the gap splits
into decode steps and everything else (prefill, scheduling, the engine loop). The plugin's adaptive
policy can do no better than this arm wherever it chooses no speculation: it is the ceiling of
"plugin >= best static" at the batch sizes where no speculation wins. ``--no-prefix-caching`` and
``--block-size`` set vLLM's prefix cache and KV block size in both engines (the prompts are cycled,
so the prefix cache matters: docs/adaptive-speculation.md). Writes --out/k0-cost.json.

    python scripts/k0_cost_smollm2.py --target TARGET --draft DRAFT_VLLM \
        --data outputs/demo/data/heldout.regen.jsonl --out outputs/k0-cost
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from datetime import date
from pathlib import Path

from serving.vllm_plugin.adaptive import ENV, STEP_LOG_ENV
from serving.vllm_plugin.harness.progress import PROGRESS_ENV, ProgressReader
from serving.vllm_plugin.harness.runner import run_vllm
from serving.vllm_plugin.policy_file import write_explore_file
from specforge.bench.vllm_workload import SWEEP_ENV, WORKLOADS, long_answer_prompts, sweep_request
from specforge.files import write_json_atomic
from specforge.targets.dtype import cpu_name

ARMS = {"none": "plain", "k0-skip": 0}


def summarise(rows: list[dict], sizes: list[int]) -> dict:
    """Per batch size: each arm's median tokens/s and decode step, and the paired ratios k0-skip / none
    (per repeat, then their geometric mean and range)."""
    out = {}
    for b in sizes:
        at = [r for r in rows if r["batch_size"] == b]
        per = {
            arm: {
                "tokens_per_s": [round(r["tokens_per_s"], 1) for r in at if r["config"] == arm],
                "decode_step_ms": [
                    round(1000 * r["decode"]["seconds"] / r["decode"]["steps"], 2)
                    for r in at
                    if r["config"] == arm and r.get("decode", {}).get("steps")
                ],
                "decode_steps": sum(r.get("decode", {}).get("steps", 0) for r in at if r["config"] == arm),
                "seconds": round(sum(r["seconds"] for r in at if r["config"] == arm), 1),
            }
            for arm in ARMS
        }
        ratios = {}
        for what in ("tokens_per_s", "decode_step_ms"):
            pairs = list(zip(per["k0-skip"][what], per["none"][what]))
            if pairs:
                rs = [a / b for a, b in pairs]
                ratios[what] = {
                    "geomean": round(math.exp(statistics.fmean(math.log(x) for x in rs)), 3),
                    "min": round(min(rs), 3),
                    "max": round(max(rs), 3),
                }
        out[str(b)] = {**per, "k0_skip_over_none": ratios}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, type=Path)
    ap.add_argument("--draft", required=True, type=Path, help="the exported vLLM-format draft")
    ap.add_argument("--data", required=True, type=Path, help="held-out conversations (regenerated)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--batch-sizes", default="1,16,64")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument(
        "--no-prefix-caching", action="store_true", help="switch vLLM's prefix cache off in both engines"
    )
    ap.add_argument("--block-size", type=int, help="vLLM's KV block size in both engines (default: vLLM's)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = long_answer_prompts(args.target, args.data, args.max_tokens)
    req = sweep_request(
        args.target, prompts, args.max_tokens, sizes, args.repeats, per_slot=WORKLOADS["closed"]
    )
    req.update(
        draft=str(args.draft),
        num_speculative_tokens=2,
        num_speculative_tokens_per_batch_size=[[1, max(sizes), 2]],
    )
    req["sweep"]["arms"] = ARMS
    if args.no_prefix_caching:
        req["enable_prefix_caching"] = False
    if args.block_size:
        req["block_size"] = args.block_size
    # pure decode steps only in both engines (the plain engine's recorder never times mixed steps)
    explore = write_explore_file(args.out / "explore.json", [0], hold=1, skip_draft_at_k0=True)
    progress = ProgressReader(args.out / "progress.jsonl")

    def show() -> None:
        for p in progress.new():
            print(
                f"[{p['done']}/{p['total']}] b={p['batch_size']} {p.get('arm')}: {p.get('tokens_per_s', 'warm-up')}"
            )

    env = {**SWEEP_ENV, ENV: str(explore), STEP_LOG_ENV: str(args.out / "steps.json")}
    res = run_vllm(
        req, args.out / "run", timeout=3600, env={**env, PROGRESS_ENV: str(progress.path)}, poll=show
    )
    result = {
        "what": __doc__.split("\n\n")[0],
        "date": date.today().isoformat(),
        "machine": cpu_name(),
        "target": str(args.target),
        "draft": str(args.draft),
        "dtype": "float32",
        "max_tokens": args.max_tokens,
        "prefix_caching": not args.no_prefix_caching,
        "block_size": args.block_size or "vLLM's default (128 on CPU)",
        "repeats": args.repeats,
        "batch_sizes": sizes,
        "per_batch_size": summarise(res["sweep"], sizes),
        "identical_outputs": all(
            len({r["outputs_sha"] for r in res["sweep"] if r["batch_size"] == b and r["repeat"] == rep}) == 1
            for b in sizes
            for rep in range(args.repeats)
        ),
    }
    write_json_atomic(args.out / "k0-cost.json", result)
    print(json.dumps(result["per_batch_size"], indent=1))


if __name__ == "__main__":
    main()
