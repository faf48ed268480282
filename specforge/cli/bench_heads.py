"""``specforge bench heads``: every draft-head type compared on one target (:mod:`specforge.bench.heads`)."""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from specforge.cli.options import HELD_OUT_PROMPTS_HELP, add_target, need_dir, shapes_arg, target_path
from specforge.errors import SpecforgeError


def cmd_bench_heads(args: argparse.Namespace) -> None:
    from specforge.bench.heads import bench_heads
    from specforge.bench.serve_report import commit, machine
    from specforge.files import write_json_atomic

    runs = {}
    for item in args.head:
        name, sep, run = item.partition("=")
        if not sep or not name or not run:
            raise SpecforgeError(f"--head {item!r}: write NAME=RUN_DIR, e.g. eagle3=runs/smollm2-135m-eagle3")
        runs[name] = need_dir(run, f"the training run of head {name!r}", "--head")
    tree = shapes_arg(args.tree)[0] if args.tree else None
    table = bench_heads(
        target_path(args.target),
        runs,
        Path(args.data),
        Path(args.out),
        k=args.k,
        tree_shape=tree,
        temperatures=tuple(float(t) for t in args.temperatures.split(",")),
        prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
        vllm=not args.no_vllm,
        vllm_temperatures=tuple(float(t) for t in args.vllm_temperatures.split(","))
        if args.vllm_temperatures
        else None,
    )
    table = {"date": datetime.date.today().isoformat(), "commit": commit(), "machine": machine(), **table}
    write_json_atomic(Path(args.out) / "heads.json", table)
    keys = ("head", "tau", "speedup", "train_tokens_per_s")
    print(json.dumps([{k: r[k] for k in keys} | {"vllm": r["vllm"]} for r in table["heads"]], indent=1))


def add_heads_parser(be) -> None:
    """``heads`` on the ``bench`` sub-parsers ``be``."""
    bh = be.add_parser(
        "heads", help="draft heads of every type on one target: tau, acceptance, speed-up, training tokens/s"
    )
    add_target(bh)
    bh.add_argument(
        "--head",
        action="append",
        required=True,
        help="NAME=RUN_DIR, a finished training run; repeat per head",
    )
    bh.add_argument("--data", required=True, help=HELD_OUT_PROMPTS_HELP)
    bh.add_argument("--out", required=True, help="work directory; heads.json is written there (resumable)")
    bh.add_argument("--k", type=int, default=4, help="the chain's draft tokens")
    bh.add_argument("--tree", help="also an EAGLE-2 tree per head, tree:DEPTH:TOPK:TOKENS (e.g. tree:4:4:16)")
    bh.add_argument("--temperatures", default="0,1", help="comma-separated; the first is the headline")
    bh.add_argument("--prompts", type=int, default=16)
    bh.add_argument("--max-new-tokens", type=int, default=96)
    bh.add_argument("--no-vllm", action="store_true", help="the reference engine only")
    bh.add_argument("--vllm-temperatures", help="comma-separated temperatures vLLM measures (default: all)")
    bh.set_defaults(func=cmd_bench_heads)
