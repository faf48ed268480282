"""``python -m specforge.train --config RECIPE.yaml [key=value ...]`` (also under ``accelerate launch``)."""

from __future__ import annotations

import argparse
import json
import sys

from specforge.config import load_train_config
from specforge.errors import SpecforgeError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="specforge.train")
    p.add_argument("--config", help="YAML recipe")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-3")
    args = p.parse_args(argv)
    try:
        cfg = load_train_config(args.config, args.overrides)
        from specforge.train.loop import train

        result = train(cfg)
    except SpecforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process:  # one summary line, not one per process (they interleave)
        print(
            json.dumps({"final": result["final"], "steps": result["steps"], "coverage": result["coverage"]})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
