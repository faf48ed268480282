"""The ``specforge`` command line: the parser of every sub-command, and :func:`main`.

Contract: every sub-command takes any local Hugging Face causal-LM directory as ``--target``
(default: the embedded tiny target, built on first use). Errors in the user's input print one
``error:`` line that says what to fix, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from specforge.cli.bench import add_parsers as add_bench_parsers
from specforge.cli.check import add_parsers as add_check_parsers
from specforge.cli.commands import add_parsers as add_command_parsers
from specforge.errors import SpecforgeError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="specforge", description="Train, serve and measure speculative-decoding draft heads."
    )
    sub = p.add_subparsers(dest="command", required=True)
    add_command_parsers(sub)
    add_bench_parsers(sub)
    add_check_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)  # a command returns its exit status, or None for success
    except SpecforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
