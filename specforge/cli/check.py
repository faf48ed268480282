"""``specforge check``: the collapse check of an exported draft (see :mod:`specforge.check`)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from specforge.cli.options import add_target, need_dir, target_path


def cmd_check(args: argparse.Namespace) -> int:
    from specforge.check import check_draft, parse_speculative_config

    draft = need_dir(args.draft, "the vLLM export of the draft (specforge export --format vllm)", "--draft")
    method, k = parse_speculative_config(args.speculative_config, draft, args.k)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="specforge-check-"))
    rep = check_draft(
        target_path(args.target),
        draft,
        Path(args.data),
        out,
        method=method or args.method,
        k=k or 4,
        temperature=args.temperature,
        prompts=args.prompts,
        max_tokens=args.max_tokens,
        dtype=args.dtype,
        min_ratio=args.min_ratio,
        reference=not args.no_reference,
    )
    exp = f"{rep.expected_tau:.2f} ({rep.expected_from})" if rep.expected_tau is not None else "none recorded"
    got = f"{rep.vllm_tau:.2f}" if rep.vllm_tau is not None else "not served"
    ref = f"{rep.reference_tau:.2f}" if rep.reference_tau is not None else "-"
    print(
        f"[check] {rep.method}, k={rep.k}, temperature {rep.temperature:g}, {rep.dtype}, {rep.prompts} prompts: "
        f"vLLM tau {got}; reference engine {ref}; training estimate {exp}"
    )
    for f in rep.findings:
        print(f"[check] PROBLEM ({f.cause}): {f.message}")
    print(f"[check] {'OK' if rep.ok else 'FAILED'}; report: {out / 'check.json'}")
    if args.json:
        print(json.dumps(rep.to_json(), indent=1))
    return 0 if rep.ok else 1


def add_parsers(sub) -> None:
    c = sub.add_parser(
        "check",
        help="serve an exported draft in the real vLLM as deployed and compare its acceptance with training's",
    )
    add_target(c)
    c.add_argument("--draft", required=True, help="the draft's vLLM export directory")
    c.add_argument(
        "--data", required=True, help="held-out prompts: a dataset file or a built-in set (humaneval)"
    )
    c.add_argument(
        "--speculative-config",
        help='the speculative config you deploy, as vLLM takes it, e.g. \'{"method": "eagle3", '
        '"num_speculative_tokens": 4}\' (overrides --method and --k)',
    )
    c.add_argument(
        "--method", default=None, help="vLLM speculative method (default: the one the draft needs)"
    )
    c.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    c.add_argument("--temperature", type=float, default=0.0)
    c.add_argument("--prompts", type=int, default=8)
    c.add_argument("--max-tokens", type=int, default=64)
    c.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    c.add_argument(
        "--min-ratio",
        type=float,
        default=0.5,
        help="collapsed when vLLM accepts fewer than this share of the estimated accepted tokens per step",
    )
    c.add_argument("--no-reference", action="store_true", help="skip the reference-engine comparison")
    c.add_argument("--out", help="where check.json and vLLM's files go (default: a temporary directory)")
    c.add_argument("--json", action="store_true", help="also print the whole report as JSON")
    c.set_defaults(func=cmd_check)
