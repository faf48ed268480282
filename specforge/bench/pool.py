"""`specforge bench pool`: one summary from several `bench serve` runs of the same sweep.

A single sweep's cells are medians of a handful of samples, each ±10-15 % on the 2-core machine here
(identical configurations, paired in the same engine, differed by 0.10-0.17 in log ratio per
sample). Repeating the same sweep and pooling the samples is how its bar is read more tightly.

Contract: :func:`pool_sweeps` takes ``bench serve`` results (their ``result.json``), checks that they
measured the same thing: the same engine, design, workload, lengths, token budget and prompt count
and, for the plugin, the same policy file (a run that calibrated its own is a different
plugin); renumbers rounds so that every (run, round, repeat) stays one paired sample; and summarises
the union of their rows as ``bench serve`` does (:func:`specforge.bench.sweep.serve_summary`:
medians, paired-bootstrap intervals, held-out ratios, the bar) over the batch sizes every run
measured. The rows keep ``"run"``: the index of the result they came from.
"""

from __future__ import annotations

import json
from pathlib import Path

from specforge.bench.sweep import NATIVE, serve_summary
from specforge.errors import SpecforgeError

# What two runs must share to be pooled (the plugin's policy file is checked on its own)
SAME = ("engine", "design", "workload", "lengths", "max_tokens", "prompts")
ROUND_STRIDE = 1000  # pooled round = run index x ROUND_STRIDE + the run's own round


def load_result(path: Path) -> dict:
    """A ``bench serve`` result file, with one clear error for a missing or foreign file."""
    try:
        res = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SpecforgeError(f"{path}: not a readable bench serve result ({e})") from None
    if not isinstance(res, dict) or not isinstance(res.get("rows"), list) or "batch_sizes" not in res:
        raise SpecforgeError(f"{path}: not a bench serve result.json (no rows and batch_sizes)")
    return res


def pool_sweeps(paths: list[Path], adaptive: str = "specforge", table: str = "vllm-table") -> dict:
    """Pool the rows of the results at ``paths`` (see the module docstring)."""
    if len(paths) < 2:
        raise SpecforgeError("bench pool needs at least two bench serve results")
    results = [load_result(p) for p in paths]
    first = results[0]
    for path, res in zip(paths[1:], results[1:]):
        for key in SAME:
            if res.get(key) != first.get(key):
                raise SpecforgeError(
                    f"{path} measured {key} = {res.get(key)!r}, {paths[0]} {first.get(key)!r}: "
                    "only runs of the same sweep can be pooled"
                )
        if res.get("policy") != first.get("policy"):
            raise SpecforgeError(
                f"{path} served the plugin from another policy file than {paths[0]}: pool runs "
                "given the same --policy"
            )
    sizes = [b for b in first["batch_sizes"] if all(b in r["batch_sizes"] for r in results[1:])]
    if not sizes:
        raise SpecforgeError("the runs share no batch size")
    rows = [
        {**row, "run": i, "round": i * ROUND_STRIDE + int(row.get("round", 0))}
        for i, res in enumerate(results)
        for row in res["rows"]
        if row["batch_size"] in sizes
    ]
    measured_table = table if any(r["config"] == table for r in rows) else None
    summary = serve_summary(rows, sizes, adaptive=adaptive, table=measured_table, schedules=(NATIVE,))
    return {
        **{key: first.get(key) for key in SAME},
        "pooled": [str(p) for p in paths],
        "batch_sizes": sizes,
        "policy": first.get("policy"),
        "rows": rows,
        "summary": summary,
    }
