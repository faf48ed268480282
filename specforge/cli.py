"""The ``specforge`` command line.

Contract: every sub-command takes any local Hugging Face causal-LM directory as ``--target``
(default: the embedded tiny target, built on first use). Errors in the user's input print one
``error:`` line that says what to fix, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from specforge.bench.commands import add_pool_parser, add_serve_parser, add_skip_flag, cmd_calibrate_vllm
from specforge.errors import SpecforgeError


def _parse_overrides(pairs: list[str], model_cls):
    """``key=value`` pairs checked against a pydantic model (values parsed as JSON when possible)."""
    from pydantic import ValidationError

    values = {}
    for pair in pairs:
        if "=" not in pair:
            raise SpecforgeError(f"override {pair!r} is not key=value")
        key, raw = pair.split("=", 1)
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    try:
        return model_cls(**values)
    except ValidationError as e:
        raise SpecforgeError(f"invalid override: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}") from None


def _default_target(progress: bool = True) -> Path:
    from specforge.tiny_target import build_tiny_target, tiny_target_dir

    d = tiny_target_dir()
    if not (d / "build_report.json").is_file():
        print(
            f"[specforge] building the embedded tiny target into {d} (once; ~15 minutes on 2 cores)",
            file=sys.stderr,
        )
    return build_tiny_target(progress=progress)


def _target_path(arg: str | None) -> Path:
    return Path(arg) if arg else _default_target()


def cmd_target_build_tiny(args: argparse.Namespace) -> None:
    from specforge.tiny_target import TinyTargetConfig, build_tiny_target

    cfg = _parse_overrides(args.overrides, TinyTargetConfig)
    out = build_tiny_target(cfg, out_dir=Path(args.out) if args.out else None, force=args.force)
    report = json.loads((out / "build_report.json").read_text())
    report.pop("samples", None)
    print(json.dumps({"path": str(out), **report}, indent=1))


def cmd_target_info(args: argparse.Namespace) -> None:
    from specforge.targets import load_target

    t = load_target(_target_path(args.target), need_chat_template=False)
    cfg = t.model.config
    print(
        json.dumps(
            {
                "path": str(t.path),
                "model_type": cfg.model_type,
                "num_layers": t.num_layers,
                "hidden_size": t.hidden_size,
                "vocab_size": t.vocab_size,
                "parameters": sum(p.numel() for p in t.model.parameters()),
                "chat_template": bool(t.tokenizer.chat_template),
            },
            indent=1,
        )
    )


def cmd_data_demo(args: argparse.Namespace) -> None:
    from specforge.data.demo import write_demo_dataset

    counts = write_demo_dataset(Path(args.out), args.max_train, args.max_heldout, args.seed)
    print(json.dumps({"out": args.out, **counts}))


def cmd_data_regenerate(args: argparse.Namespace) -> None:
    from specforge.data.regenerate import regenerate
    from specforge.targets import load_target

    target = load_target(_target_path(args.target))
    res = regenerate(
        target,
        args.data,
        args.out,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        limit=args.limit,
        skip_bad_rows=args.skip_bad_rows,
    )
    print(json.dumps({"out": args.out, **res}))


def run_capture(
    target_dir: Path,
    data: Path,
    out: Path,
    layers: list[int] | None,
    max_length: int,
    batch_size: int,
    sequences_per_shard: int,
    dtype: str,
    store_logits: bool,
    limit: int | None,
    skip_bad_rows: bool,
) -> dict:
    from specforge.capture import CaptureConfig, write_shards
    from specforge.data.tokenize import load_tokenized
    from specforge.targets import load_target

    target = load_target(target_dir)
    ds, report = load_tokenized(data, target.tokenizer, max_length, skip_bad_rows, limit)
    t0 = time.time()
    manifest = write_shards(
        target,
        ds,
        out,
        CaptureConfig(aux_layers=layers, store_logits=store_logits, dtype=dtype),
        batch_size=batch_size,
        sequences_per_shard=sequences_per_shard,
    )
    tokens = sum(s.num_tokens for s in manifest.shards)
    return {
        "out": str(out),
        "sequences": manifest.num_sequences,
        "tokens": tokens,
        "shards": len(manifest.shards),
        "aux_layers": manifest.aux_layers,
        "disk_mib": round(manifest.bytes / 2**20, 2),
        "bytes_per_token": round(manifest.bytes / max(1, tokens)),
        "skipped_bad_rows": report.skipped,
        "dropped_truncated_rows": min(report.rows, limit if limit is not None else report.rows)
        - len(ds),  # no assistant token left within max_length
        "seconds": round(time.time() - t0, 1),
    }


def cmd_capture(args: argparse.Namespace) -> None:
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    res = run_capture(
        _target_path(args.target),
        Path(args.data),
        Path(args.out),
        layers,
        args.max_length,
        args.batch_size,
        args.sequences_per_shard,
        args.dtype,
        args.store_logits,
        args.limit,
        args.skip_bad_rows,
    )
    print(json.dumps(res, indent=1))


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job on the embedded default: target, data, regeneration, training, export, vLLM."""
    from specforge.pipeline import run_demo

    run_demo(
        Path(args.workdir),
        max_train=args.max_train,
        max_heldout=args.max_heldout,
        k=args.k,
        bench_prompts=args.bench_prompts,
        train_overrides=args.overrides,
        serve=not args.no_serve,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from specforge.train.__main__ import main as train_main

    rc = train_main((["--config", args.config] if args.config else []) + args.overrides)
    if rc:
        raise SystemExit(rc)


def cmd_export(args: argparse.Namespace) -> None:
    from specforge.export import export_hf, export_vllm

    if args.format == "vllm":
        out = export_vllm(args.run, args.out, dtype=args.dtype)
    else:
        out = export_hf(args.run, args.out)
    print(json.dumps({"format": args.format, "out": str(out)}))


def cmd_bench_vllm(args: argparse.Namespace) -> None:
    from specforge.bench.vllm_chain import bench_vllm_chain

    res = bench_vllm_chain(
        _target_path(args.target),
        Path(args.draft),
        Path(args.data),
        Path(args.out),
        k=args.k,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        limit=args.limit,
        repeats=args.repeats,
    )
    print(json.dumps(res, indent=1))


def cmd_bench_acceptance(args: argparse.Namespace) -> None:
    from specforge.bench.acceptance import bench_acceptance, parse_shape
    from specforge.bench.vllm_chain import bench_vllm_chain

    shapes = [parse_shape(s) for s in args.shapes.split(",")]
    target = _target_path(args.target)
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


def cmd_calibrate(args: argparse.Namespace) -> None:
    if args.vllm:
        cmd_calibrate_vllm(args)
        return
    from serving.calibrate import calibrate, cost_model_path, machine_id
    from specforge.export import load_draft
    from specforge.targets import load_target
    from specforge.tiny_target import default_cache_root

    target_dir = _target_path(args.target)
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
    counts = [int(x) for x in args.token_counts.split(",")]
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specforge", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("target", help="build or inspect target models").add_subparsers(
        dest="sub", required=True
    )
    b = t.add_parser("build-tiny", help="train the embedded tiny Llama target (cached)")
    b.add_argument("--out", help="output directory (default: the cache, keyed by the config)")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.add_argument("overrides", nargs="*", help="TinyTargetConfig key=value overrides, e.g. steps=100")
    b.set_defaults(func=cmd_target_build_tiny)
    i = t.add_parser("info", help="print a target's shape")
    i.add_argument("--target", help="HF model directory (default: the tiny target)")
    i.set_defaults(func=cmd_target_info)

    d = sub.add_parser("data", help="datasets").add_subparsers(dest="sub", required=True)
    dm = d.add_parser("demo", help="write the demo conversation set (train/heldout JSONL)")
    dm.add_argument("--out", required=True)
    dm.add_argument("--max-train", type=int, default=4000)
    dm.add_argument("--max-heldout", type=int, default=200)
    dm.add_argument("--seed", type=int, default=0)
    dm.set_defaults(func=cmd_data_demo)
    r = d.add_parser("regenerate", help="rewrite assistant turns with the target's own responses")
    r.add_argument("--target")
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--max-new-tokens", type=int, default=256)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--limit", type=int)
    r.add_argument("--skip-bad-rows", action="store_true")
    r.set_defaults(func=cmd_data_regenerate)

    c = sub.add_parser("capture", help="write the target's hidden states as safetensors shards")
    c.add_argument("--target")
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--layers", help="comma-separated aux layer ids (default: 2,L/2,L-3)")
    c.add_argument("--max-length", type=int, default=1024)
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--sequences-per-shard", type=int, default=256)
    c.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    c.add_argument("--store-logits", action="store_true")
    c.add_argument("--limit", type=int)
    c.add_argument("--skip-bad-rows", action="store_true")
    c.set_defaults(func=cmd_capture)

    tr = sub.add_parser("train", help="train a draft head (same as python -m specforge.train)")
    tr.add_argument("--config", help="YAML recipe")
    tr.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    tr.set_defaults(func=cmd_train)

    ex = sub.add_parser("export", help="export a trained draft")
    ex.add_argument("--run", required=True, help="training output_dir (or an HF-format draft export)")
    ex.add_argument("--format", choices=["vllm", "hf"], default="vllm")
    ex.add_argument("--out", required=True)
    ex.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ex.set_defaults(func=cmd_export)

    be = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="sub", required=True)
    bv = be.add_parser(
        "vllm", help="tau, acceptance per position and speed-up of a draft in the real vLLM (chain)"
    )
    bv.add_argument("--target")
    bv.add_argument(
        "--draft", required=True, help="vLLM-format draft directory (specforge export --format vllm)"
    )
    bv.add_argument("--data", required=True, help="held-out conversations (JSONL)")
    bv.add_argument("--out", required=True, help="work directory; result.json is written there")
    bv.add_argument("--k", type=int, default=4)
    bv.add_argument("--temperature", type=float, default=0.0)
    bv.add_argument("--max-tokens", type=int, default=128)
    bv.add_argument("--limit", type=int, default=32)
    bv.add_argument("--repeats", type=int, default=2)
    bv.set_defaults(func=cmd_bench_vllm)

    ba = be.add_parser(
        "acceptance", help="tau / acceptance / speed of chains and trees in the reference engine"
    )
    ba.add_argument("--target")
    ba.add_argument("--draft", required=True, help="training run or HF-format draft export")
    ba.add_argument("--data", required=True, help="held-out conversations (JSONL)")
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
    add_serve_parser(be)
    add_pool_parser(be)

    ca = sub.add_parser(
        "calibrate", help="profile target/draft step times into a cost model (per model and machine)"
    )
    ca.add_argument("--target")
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
    ca.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", help="(--vllm) batch sizes to time")
    ca.add_argument(
        "--max-tokens",
        type=int,
        default=96,
        help="(--vllm) tokens each timed request decodes: your typical answer length (context length "
        "changes step times at large batch)",
    )
    ca.add_argument(
        "--workload",
        choices=["burst", "closed", "held"],
        default="burst",
        help="(--vllm) burst: whole batches of B at one k, steady decode steps only; closed: B requests "
        "kept in flight, k cycled every 10 steps, steps with prefills timed too; held: B clients in a "
        "closed loop with k held per measurement (as bench serve serves a static k), steady decode "
        "steps at B only",
    )
    ca.add_argument(
        "--lengths",
        choices=["fixed", "natural"],
        default="fixed",
        help="(--vllm) fixed: every request decodes --max-tokens tokens; natural: each ends with its "
        "answer (at most --max-tokens), as your server's requests will",
    )
    add_skip_flag(ca)
    ca.set_defaults(func=cmd_calibrate)

    dmo = sub.add_parser("demo", help="the main job on the embedded tiny target, end to end")
    dmo.add_argument("--workdir", default="outputs/demo")
    dmo.add_argument("--max-train", type=int, default=3000)
    dmo.add_argument("--max-heldout", type=int, default=200)
    dmo.add_argument("--k", type=int, default=4, help="speculative tokens per step in vLLM")
    dmo.add_argument("--bench-prompts", type=int, default=32)
    dmo.add_argument("--no-serve", action="store_true", help="stop after export (no vLLM)")
    dmo.add_argument("overrides", nargs="*", help="training recipe overrides, e.g. optim.epochs=1")
    dmo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SpecforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
