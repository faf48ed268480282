"""The commands that measure: ``bench vllm|acceptance|serve|pool`` (``heads``: :mod:`specforge.cli.bench_heads`) and ``calibrate`` (with or without ``--vllm``).

Each ``cmd_*`` takes the parsed arguments, runs the benchmark through :mod:`specforge.bench` and
writes or prints its result; :func:`add_parsers` defines their arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from specforge.cli.bench_heads import add_heads_parser
from specforge.cli.options import (
    HELD_OUT_PROMPTS_HELP,
    add_batch_sizes,
    add_lengths,
    add_skip_flag,
    add_target,
    int_list,
    need_dir,
    need_file,
    shapes_arg,
    target_path,
)
from specforge.errors import SpecforgeError

# How calibrate --vllm times steps (its --workload; bench serve --calibration).
CALIBRATION_WORKLOADS = ("burst", "closed", "held")


def cmd_bench_vllm(args: argparse.Namespace) -> None:
    from specforge.bench.vllm_chain import bench_vllm_chain

    res = bench_vllm_chain(
        target_path(args.target),
        Path(args.draft),
        Path(args.data),
        Path(args.out),
        k=args.k,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        limit=args.limit,
        repeats=args.repeats,
        batch_sizes=tuple(int_list(args.batch_sizes, "--batch-sizes")),
        min_requests=args.min_requests,
        dtype=args.dtype,
    )
    print(json.dumps(res, indent=1))


def cmd_bench_acceptance(args: argparse.Namespace) -> None:
    from specforge.bench.acceptance import bench_acceptance
    from specforge.bench.vllm_chain import bench_vllm_chain

    shapes = shapes_arg(args.shapes)
    target = target_path(args.target, run=args.draft)
    res = bench_acceptance(
        target,
        Path(args.draft),
        Path(args.data),
        Path(args.out),
        shapes,
        batch_size=args.batch_size,
        prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        repeats=args.repeats,
    )
    if args.vllm_draft:
        for s in shapes:
            if s.top_k == 1:
                r = bench_vllm_chain(
                    target,
                    Path(args.vllm_draft),
                    Path(args.data),
                    Path(args.out) / f"vllm-chain{s.num_draft_tokens}",
                    k=s.num_draft_tokens,
                    temperature=args.temperature,
                    max_tokens=args.max_new_tokens,
                    limit=args.prompts,
                )
                res["results"][f"vllm:chain:{s.num_draft_tokens}"] = r
        (Path(args.out) / "result.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res["results"], indent=1))


def cmd_bench_fidelity(args: argparse.Namespace) -> None:
    from specforge.bench.fidelity import bench_fidelity

    res = bench_fidelity(
        target_path(args.target, run=args.run),
        Path(args.run),
        Path(args.draft),
        Path(args.data),
        Path(args.out),
        k=args.k,
        prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
        bf16=not args.no_bf16,
        aux_shift=not args.no_aux_shift,
    )
    print(json.dumps({k: res[k] for k in ("teacher_forced", "served_estimate_vs_vllm", "causes")}, indent=1))


def cmd_calibrate(args: argparse.Namespace) -> None:
    if args.vllm:
        cmd_calibrate_vllm(args)
        return
    from serving.calibrate import calibrate, cost_model_path, machine_id
    from specforge.export import load_draft
    from specforge.targets.loader import default_cache_root, load_target

    target_dir = target_path(args.target, run=args.draft)
    target = load_target(target_dir, need_chat_template=False)
    draft = (
        load_draft(args.draft, target.model.get_input_embeddings().weight.detach()) if args.draft else None
    )
    out = (
        Path(args.out)
        if args.out
        else cost_model_path(default_cache_root() / "costs", target_dir, args.draft)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = int_list(args.token_counts, "--token-counts")
    cost = calibrate(target.model, draft, counts, prefix=args.prefix, repeats=args.repeats or 5)
    cost.save(
        out,
        meta={"target": str(target_dir), "draft": args.draft, "machine": machine_id(), "prefix": args.prefix},
    )
    print(
        json.dumps(
            {
                "out": str(out),
                "target_seconds": dict(zip(counts, cost.target.seconds)),
                "draft_seconds": dict(zip(counts, cost.draft.seconds)) if cost.draft else None,
            },
            indent=1,
        )
    )


def cmd_bench_serve(args: argparse.Namespace) -> None:
    target = target_path(args.target, run=args.run)
    run = need_dir(args.run, "the draft's training run (with train_summary.json)", "--run")
    data = need_file(args.data, "held-out conversations with regenerated answers", "--data")
    sizes = int_list(args.batch_sizes, "--batch-sizes")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.engine == "vllm":
        from specforge.bench.serve_vllm import bench_serve_vllm

        draft = need_dir(
            args.draft, "the vLLM export of the draft (specforge export --format vllm)", "--draft"
        )
        res = bench_serve_vllm(
            target,
            draft,
            run,
            data,
            out,
            batch_sizes=sizes,
            static_ks=int_list(args.ks, "--ks"),
            max_tokens=args.max_tokens,
            rounds=args.rounds,
            repeats=args.repeats,
            seed=args.seed,
            policy=need_file(args.policy, "a plugin policy file", "--policy") if args.policy else None,
            workload=args.workload,
            calibration=args.calibration,
            design=args.design,
            turn_steps=args.turn_steps,
            lengths=args.lengths,
            skip_draft_at_k0=args.skip_draft_at_k0,
            variants=[v for v in (args.variants or "").split(",") if v],
            prefix_caching=args.prefix_caching,
        )
        title = "vLLM: throughput vs no speculation"
    elif args.engine == "http":
        from specforge.bench.serve_http import bench_serve_http
        from specforge.bench.serve_vllm import VLLM_DOCS_TABLE
        from specforge.bench.vllm_workload import long_answer_prompts

        draft = need_dir(
            args.draft, "the vLLM export of the draft (specforge export --format vllm)", "--draft"
        )
        res = bench_serve_http(
            target,
            draft,
            long_answer_prompts(target, data, args.max_tokens),
            out,
            concurrencies=sizes,
            ks=int_list(args.ks, "--ks"),
            table=VLLM_DOCS_TABLE,
            policy=need_file(args.policy, "a plugin policy file", "--policy") if args.policy else None,
            max_tokens=args.max_tokens,
            rounds=args.rounds,
            seed=args.seed,
        )
        title = "vLLM's OpenAI server: throughput vs no speculation"
    else:
        from specforge.bench.serve_engine import DEFAULT_SHAPES, bench_serve_engine

        res = bench_serve_engine(
            target,
            run,
            data,
            batch_sizes=sizes,
            shapes=shapes_arg(args.shapes) if args.shapes else DEFAULT_SHAPES,
            max_tokens=args.max_tokens,
            rounds=args.rounds,
            seed=args.seed,
        )
        title = "reference engine: throughput vs no speculation"
    write_serve_outputs(res, out, title)


def write_serve_outputs(res: dict, out: Path, title: str) -> None:
    """``result.json`` (atomically), ``report.json`` (its committed form), ``serve.png`` and
    ``table.md`` of a sweep in ``out``; prints the table and the bar."""
    from specforge.bench.serve_report import write_report
    from specforge.bench.sweep import decode_table, plot_sweep, summary_table

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(out / "result.json")
    write_report(res, out / "report.json")
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


def cmd_bench_pool(args: argparse.Namespace) -> None:
    from specforge.bench.pool import pool_sweeps

    res = pool_sweeps([Path(p) for p in args.results])
    write_serve_outputs(res, Path(args.out), f"{len(args.results)} pooled runs: throughput vs no speculation")


def cmd_calibrate_vllm(args: argparse.Namespace) -> None:
    from specforge.bench.calibrate_vllm import calibrate_vllm
    from specforge.bench.vllm_workload import draft_alpha, long_answer_prompts, min_answer_tokens

    target = target_path(args.target, run=args.draft)
    run = need_dir(args.draft, "the draft's training run (with train_summary.json)", "--draft")
    draft = need_dir(args.vllm, "the vLLM export of the draft", "--vllm")
    data = (
        need_file(args.data, "held-out conversations with regenerated answers", "--data")
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
        int_list(args.batch_sizes, "--batch-sizes"),
        max_tokens=args.max_tokens,
        workload=args.workload,
        lengths=args.lengths,
        skip_draft_at_k0=args.skip_draft_at_k0,
        prefix_caching=args.prefix_caching,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        **({"repeats": args.repeats} if args.repeats else {}),
    )
    native = json.loads((out / "vllm_schedule.json").read_text())
    print(
        json.dumps(
            {
                "policy": str(policy),
                "step_seconds": table.to_json(),
                "vllm_schedule": str(out / "vllm_schedule.json"),
                "num_speculative_tokens_per_batch_size": native["num_speculative_tokens_per_batch_size"],
            },
            indent=1,
        )
    )


def add_parsers(sub) -> None:
    """``bench`` (vllm, acceptance, serve, pool) and ``calibrate``, on the top-level sub-parsers ``sub``."""
    be = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="sub", required=True)
    bv = be.add_parser(
        "vllm", help="tau, acceptance per position and speed-up of a draft in the real vLLM (chain)"
    )
    add_target(bv)
    bv.add_argument(
        "--draft", required=True, help="vLLM-format draft directory (specforge export --format vllm)"
    )
    bv.add_argument("--data", required=True, help=HELD_OUT_PROMPTS_HELP)
    bv.add_argument("--out", required=True, help="work directory; result.json is written there")
    bv.add_argument("--k", type=int, default=4)
    bv.add_argument("--temperature", type=float, default=0.0)
    bv.add_argument("--max-tokens", type=int, default=128)
    bv.add_argument("--limit", type=int, default=32, help="prompts to read from --data")
    bv.add_argument(
        "--repeats", type=int, default=3, help="paired measurements per batch size, after a warm-up"
    )
    bv.add_argument(
        "--batch-sizes", default="1,8", help="comma-separated; the first one's speed-up is headlined"
    )
    bv.add_argument("--min-requests", type=int, default=8, help="requests per measurement, at least")
    bv.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="float32 for the lossless check"
    )
    bv.set_defaults(func=cmd_bench_vllm)

    bf = be.add_parser(
        "fidelity",
        help="training's estimates (teacher-forced, walked, served) against vLLM's tau, and each cause of a gap",
    )
    add_target(bf, "--run")
    bf.add_argument("--run", required=True, help="the training run directory")
    bf.add_argument("--draft", required=True, help="its vLLM export")
    bf.add_argument("--data", required=True, help="held-out conversations with the target's own answers")
    bf.add_argument("--out", required=True, help="work directory; fidelity.json is written there")
    bf.add_argument("--k", type=int, default=4)
    bf.add_argument("--prompts", type=int, default=16)
    bf.add_argument("--max-new-tokens", type=int, default=96)
    bf.add_argument("--no-bf16", action="store_true", help="skip the bf16 vLLM run")
    bf.add_argument("--no-aux-shift", action="store_true", help="skip the aux-layer-id shift runs")
    bf.set_defaults(func=cmd_bench_fidelity)

    ba = be.add_parser(
        "acceptance", help="tau / acceptance / speed of chains and trees in the reference engine"
    )
    add_target(ba, "--draft")
    ba.add_argument("--draft", required=True, help="training run or HF-format draft export")
    ba.add_argument("--data", required=True, help=HELD_OUT_PROMPTS_HELP)
    ba.add_argument("--out", required=True, help="output directory: result.json and acceptance.png")
    ba.add_argument(
        "--shapes",
        default="chain:1,chain:3,chain:5,tree:5:2:8,tree:5:3:12,tree:5:4:16",
        help="comma-separated chain:K / tree:DEPTH:TOPK:TOKENS",
    )
    ba.add_argument("--batch-size", type=int, default=1)
    ba.add_argument("--prompts", type=int, default=16)
    ba.add_argument("--max-new-tokens", type=int, default=96)
    ba.add_argument("--temperature", type=float, default=0.0)
    ba.add_argument("--repeats", type=int, default=1)
    ba.add_argument(
        "--vllm-draft", help="vLLM-format export of the same draft: also measure its chains in vLLM"
    )
    ba.set_defaults(func=cmd_bench_acceptance)

    bs = be.add_parser(
        "serve",
        help="throughput per batch size: no speculation vs static k vs vLLM's table vs the adaptive plugin",
    )
    bs.add_argument(
        "--engine",
        choices=["vllm", "http", "reference"],
        default="vllm",
        help="vllm: paired arms in one engine; http: one OpenAI server per arm, driven over HTTP "
        "(concurrency = --batch-sizes; reports time to first token and per output token too); "
        "reference: the reference engine, trees included",
    )
    add_target(bs, "--run")
    bs.add_argument("--run", required=True, help="the draft's training run directory (weights, alpha_k)")
    bs.add_argument("--draft", help="vLLM-format export of the draft (--engine vllm)")
    bs.add_argument("--data", required=True, help="held-out conversations with regenerated answers (JSONL)")
    bs.add_argument("--out", default="outputs/bench/serve")
    add_batch_sizes(bs)
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
    add_lengths(bs)
    bs.add_argument(
        "--design",
        choices=["paired", "lockstep", "engines"],
        default="paired",
        help="paired: every speculative configuration in one engine, switched between measurements "
        "(no speculation in its own); lockstep: an engine per configuration in one process, taking "
        "turns of --turn-steps steps, each timed on its own clock (less noise, but the engines slow "
        "each other; see docs/benchmarking.md); engines: one process per configuration (vLLM)",
    )
    bs.add_argument(
        "--turn-steps",
        type=int,
        default=32,
        help="--design lockstep: steps an engine takes before the next engine's turn",
    )
    bs.add_argument(
        "--calibration",
        choices=CALIBRATION_WORKLOADS,
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
    bs.add_argument(
        "--prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(vLLM) vLLM's prefix cache in every engine (default on, as vLLM). The sweep cycles its "
        "held-out prompts, so a resent prompt hits the cache; on CPU (KV blocks of 128 tokens) an "
        "EAGLE engine resumes only a block back from the prompt's last whole block, so prompts under "
        "256 tokens never hit, while an engine without a draft reuses all but one token: "
        "--no-prefix-caching compares the engines' decoding alone",
    )
    add_skip_flag(bs)
    bs.set_defaults(func=cmd_bench_serve)

    add_heads_parser(be)

    bp = be.add_parser(
        "pool",
        help="one summary (table, bar, intervals) from several bench serve runs of the same sweep",
    )
    bp.add_argument("results", nargs="+", help="the runs' result.json files (at least two)")
    bp.add_argument("--out", required=True, help="directory for the pooled result.json, table.md, serve.png")
    bp.set_defaults(func=cmd_bench_pool)

    ca = sub.add_parser(
        "calibrate", help="profile target/draft step times into a cost model (per model and machine)"
    )
    add_target(ca, "--draft")
    ca.add_argument("--draft", help="training run or HF-format draft export")
    ca.add_argument("--out", help="JSON path (default: the cache, keyed by model and machine)")
    ca.add_argument("--token-counts", default="1,2,4,8,16,32,64,128,256")
    ca.add_argument("--prefix", type=int, default=128, help="KV-cache length each profiled sequence holds")
    ca.add_argument(
        "--repeats",
        type=int,
        help="timings per point (default 5); with --vllm, timed batches per (batch size, k) (default 2: "
        "~3.5 min here; 5 fits large batches better, ~8 min)",
    )
    ca.add_argument(
        "--vllm",
        metavar="DRAFT_EXPORT",
        help="time whole vLLM steps per (batch size, k) with this vLLM-format draft instead, and write "
        "the plugin's policy file (--draft must then be the training run)",
    )
    ca.add_argument("--data", help="(--vllm) held-out conversations with regenerated answers")
    ca.add_argument("--k-max", type=int, default=5, help="(--vllm) largest k to time")
    add_batch_sizes(ca, "(--vllm) ")
    ca.add_argument(
        "--max-tokens",
        type=int,
        default=96,
        help="(--vllm) tokens each timed request decodes: your typical answer length (context length "
        "changes step times at large batch)",
    )
    ca.add_argument(
        "--workload",
        choices=CALIBRATION_WORKLOADS,
        default="burst",
        help="(--vllm) burst: whole batches of B at one k, steady decode steps only; closed: B requests "
        "kept in flight, k cycled every 10 steps, steps with prefills timed too; held: B clients in a "
        "closed loop with k held per measurement (as bench serve serves a static k), steady decode "
        "steps at B only",
    )
    add_lengths(ca, "(--vllm) ")
    ca.add_argument(
        "--prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(--vllm) vLLM's prefix cache (default on); time with the setting the server will run",
    )
    add_skip_flag(ca)
    ca.set_defaults(func=cmd_calibrate)
