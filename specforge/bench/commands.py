"""The ``specforge bench serve`` and ``specforge calibrate --vllm`` commands (argument parsing and output)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from specforge.errors import SpecforgeError


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SpecforgeError(f"{text!r} is not a comma-separated list of integers") from None
    if not out or min(out) < 1:
        raise SpecforgeError(f"{text!r}: give positive integers, e.g. 1,2,4,8")
    return out


def _need_dir(path: str | None, what: str, flag: str) -> Path:
    if not path:
        raise SpecforgeError(f"{flag} is required: {what}")
    p = Path(path)
    if not p.is_dir():
        raise SpecforgeError(f"{flag} {p} is not a directory: {what}")
    return p


def _need_file(path: str, what: str, flag: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise SpecforgeError(f"{flag} {p} not found: {what}")
    return p


def add_skip_flag(parser) -> None:
    """``--skip-draft-at-k0`` for calibrate --vllm and bench serve (one definition)."""
    parser.add_argument(
        "--skip-draft-at-k0",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(--vllm) a step at k = 0 that the load calls for runs neither the draft nor vLLM's speculative "
        "bookkeeping, as in an engine without a draft (its requests stop speculating; see the README). "
        "On by default; --no-skip-draft-at-k0 keeps vLLM's k = 0, which runs the draft",
    )


def add_serve_parser(bench_sub) -> None:
    bs = bench_sub.add_parser(
        "serve",
        help="throughput per batch size: no speculation vs static k vs vLLM's table vs the adaptive plugin",
    )
    bs.add_argument("--engine", choices=["vllm", "reference"], default="vllm")
    bs.add_argument("--target", help="target model directory (default: the embedded tiny target)")
    bs.add_argument("--run", required=True, help="the draft's training run directory (weights, alpha_k)")
    bs.add_argument("--draft", help="vLLM-format export of the draft (--engine vllm)")
    bs.add_argument("--data", required=True, help="held-out conversations with regenerated answers (JSONL)")
    bs.add_argument("--out", default="outputs/bench/serve")
    bs.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    bs.add_argument("--ks", default="1,2,3,4,5", help="static chain lengths (vLLM)")
    bs.add_argument("--shapes", help="fixed shapes for --engine reference (chain:K, tree:D:K:N)")
    bs.add_argument("--max-tokens", type=int, default=48, help="tokens generated per request")
    bs.add_argument("--rounds", type=int, default=3)
    bs.add_argument("--repeats", type=int, default=2, help="measurements per batch size inside an engine")
    bs.add_argument("--policy", help="an existing plugin policy file (default: calibrate vLLM first)")
    bs.add_argument(
        "--workload",
        choices=["closed", "burst"],
        default="closed",
        help="closed: B clients, each sends its next request when the last one ends (vLLM); "
        "burst: B requests at once, drained before the next B",
    )
    bs.add_argument("--seed", type=int, default=0)
    bs.add_argument(
        "--lengths",
        choices=["fixed", "natural"],
        default="fixed",
        help="fixed: every request decodes --max-tokens tokens; natural: each ends with its answer "
        "(at most --max-tokens), so requests finish at different steps as on a real server (vLLM)",
    )
    bs.add_argument(
        "--design",
        choices=["paired", "lockstep", "engines"],
        default="paired",
        help="paired: every speculative configuration in one engine, switched between measurements "
        "(no speculation in its own); lockstep: an engine per configuration in one process, taking "
        "turns of --turn-steps steps, each timed on its own clock (less noise, but the engines slow "
        "each other; see the README); engines: one process per configuration (vLLM)",
    )
    bs.add_argument(
        "--turn-steps",
        type=int,
        default=32,
        help="--design lockstep: steps an engine takes before the next engine's turn",
    )
    bs.add_argument(
        "--calibration",
        choices=["burst", "closed", "held"],
        default="burst",
        help="how calibrate --vllm times steps before the sweep (see calibrate --workload)",
    )
    bs.add_argument(
        "--variants",
        help="(vLLM, --design paired) comma-separated variants of the plugin to serve as extra arms "
        "specforge-NAME, each compared with the plugin: probe (step ratios per batch size, learnt by "
        "probing the runner-up k), noprobe (without them), or NAME=POLICY.json (the plugin on another "
        "policy file, e.g. another calibration)",
    )
    add_skip_flag(bs)
    bs.set_defaults(func=cmd_bench_serve)


def cmd_bench_serve(args: argparse.Namespace) -> None:
    from specforge.cli import _target_path

    target = _target_path(args.target)
    run = _need_dir(args.run, "the draft's training run (with train_summary.json)", "--run")
    data = _need_file(args.data, "held-out conversations with regenerated answers", "--data")
    sizes = _ints(args.batch_sizes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.engine == "vllm":
        from specforge.bench.serve_vllm import bench_serve_vllm

        draft = _need_dir(
            args.draft, "the vLLM export of the draft (specforge export --format vllm)", "--draft"
        )
        res = bench_serve_vllm(
            target,
            draft,
            run,
            data,
            out,
            batch_sizes=sizes,
            static_ks=_ints(args.ks),
            max_tokens=args.max_tokens,
            rounds=args.rounds,
            repeats=args.repeats,
            seed=args.seed,
            policy=_need_file(args.policy, "a plugin policy file", "--policy") if args.policy else None,
            workload=args.workload,
            calibration=args.calibration,
            design=args.design,
            turn_steps=args.turn_steps,
            lengths=args.lengths,
            skip_draft_at_k0=args.skip_draft_at_k0,
            variants=[v for v in (args.variants or "").split(",") if v],
        )
        title = "vLLM: throughput vs no speculation"
    else:
        from specforge.bench.serve_engine import DEFAULT_SHAPES, bench_serve_engine

        res = bench_serve_engine(
            target,
            run,
            data,
            batch_sizes=sizes,
            shapes=args.shapes or DEFAULT_SHAPES,
            max_tokens=args.max_tokens,
            rounds=args.rounds,
            seed=args.seed,
        )
        title = "reference engine: throughput vs no speculation"
    write_serve_outputs(res, out, title)


def write_serve_outputs(res: dict, out: Path, title: str) -> None:
    """``result.json`` (atomically), ``serve.png`` and ``table.md`` of a sweep in ``out``; prints the
    table and the bar."""
    from specforge.bench.sweep import decode_table, plot_sweep, summary_table

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(out / "result.json")
    plot_sweep(res["summary"], out / "serve.png", title)
    table = "end-to-end throughput (tokens/s, median over rounds and repeats)\n\n" + summary_table(
        res["summary"]
    )
    if res["summary"].get("decode_steps"):
        table += "\n\ndecode goodput from the engines' step timings (tokens/s)\n\n"
        table += decode_table(res["summary"]["decode_steps"])
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(json.dumps(res["summary"].get("bar"), indent=1))


def add_pool_parser(bench_sub) -> None:
    bp = bench_sub.add_parser(
        "pool",
        help="one summary (table, bar, intervals) from several bench serve runs of the same sweep",
    )
    bp.add_argument("results", nargs="+", help="the runs' result.json files (at least two)")
    bp.add_argument("--out", required=True, help="directory for the pooled result.json, table.md, serve.png")
    bp.set_defaults(func=cmd_bench_pool)


def cmd_bench_pool(args: argparse.Namespace) -> None:
    from specforge.bench.pool import pool_sweeps

    res = pool_sweeps([Path(p) for p in args.results])
    write_serve_outputs(res, Path(args.out), f"{len(args.results)} pooled runs: throughput vs no speculation")


def cmd_calibrate_vllm(args: argparse.Namespace) -> None:
    from specforge.bench.calibrate_vllm import calibrate_vllm
    from specforge.bench.vllm_workload import draft_alpha, long_answer_prompts, min_answer_tokens
    from specforge.cli import _target_path

    target = _target_path(args.target)
    run = _need_dir(args.draft, "the draft's training run (with train_summary.json)", "--draft")
    draft = _need_dir(args.vllm, "the vLLM export of the draft", "--vllm")
    data = (
        _need_file(args.data, "held-out conversations with regenerated answers", "--data")
        if args.data
        else None
    )
    if data is None:
        raise SpecforgeError("--data is required with --vllm: held-out conversations to time vLLM on")
    k_max = args.k_max
    prompts = long_answer_prompts(target, data, min_answer_tokens(args.max_tokens, args.lengths, 16))
    out = Path(args.out) if args.out else Path("outputs/calibrate-vllm")
    policy, table = calibrate_vllm(
        target,
        draft,
        draft_alpha(run, k_max),
        prompts,
        out,
        k_max,
        _ints(args.batch_sizes),
        max_tokens=args.max_tokens,
        workload=args.workload,
        lengths=args.lengths,
        skip_draft_at_k0=args.skip_draft_at_k0,
        **({"repeats": args.repeats} if args.repeats else {}),
    )
    print(json.dumps({"policy": str(policy), "step_seconds": table.to_json()}, indent=1))
