"""The committed form of a serving sweep: medians per arm and batch size, the bar's ratios with their
intervals, the k the plugin served, and the step times its cost model predicted beside the measured.

Contract: :func:`sweep_report` reads a ``bench serve`` (or ``bench pool``) ``result.json`` and returns

* ``batch_sizes``; ``tokens_per_s[arm]``: the median end-to-end throughput per batch size, in the
  order of ``batch_sizes`` (``None`` where the arm did not run at that size);
* ``best_static``, ``vs_best_static``, ``held_out``, ``vs_none``, ``vs_table``: per batch size,
  the adaptive arm against the best static setting (in hindsight, and chosen without the sample it
  is compared on), against no speculation and against vLLM's documented table, each ratio with its
  90 % interval where the sweep had enough paired samples; ``bar`` as the summary states it;
* ``plugin_k``: per batch size, the adaptive arm's draft tokens per request-step (its mean k, the
  steps where it skipped the draft counted as 0);
* ``step_seconds``: per static chain length k (0: no speculation), the median decode step time the
  arm measured at each batch size (``measured``) and what the policy's step table predicts there
  (``predicted``), when the sweep served a calibrated step table;
* ``provenance``: date, commit, machine, dtype, and the sweep's settings.

The report is written atomically beside ``result.json`` as ``report.json``.
"""

from __future__ import annotations

import datetime
import json
import re
import statistics
import subprocess
from pathlib import Path

from serving.shape import TreeShape
from serving.step_cost import StepTable
from specforge.targets.dtype import cpu_flags, cpu_name

SETTINGS = (
    "engine",
    "design",
    "workload",
    "lengths",
    "max_tokens",
    "prompts",
    "rounds",
    "repeats",
    "target",
    "draft",
    "prefix_caching",
)


def commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def machine() -> str:
    """The CPU's name and its widest vector extension, e.g. ``AMD EPYC (AVX2 only)``."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        isa = "AVX-512, AMX"
    elif "avx512f" in flags:
        isa = "AVX-512"
    elif "avx2" in flags:
        isa = "AVX2 only"
    else:
        isa = "no AVX2"
    return f"{cpu_name()} ({isa})"


def _ratio(row: dict, name: str) -> dict | None:
    value = row.get(name)
    if value is None:
        return None
    interval = (row.get("interval") or {}).get(name)
    return {"ratio": value, "interval": list(interval) if interval else None}


def _plugin_k(rows: list[dict], adaptive: str, sizes: list[int]) -> list[float | None]:
    """Draft tokens per request-step of the adaptive arm per batch size. Every request-step emits one
    token plus those it accepted, so a cell's request-steps are its output tokens less its accepted
    tokens."""
    out = []
    for b in sizes:
        mine = [r for r in rows if r["config"] == adaptive and r["batch_size"] == b]
        spec = [r.get("spec") or {} for r in mine]
        tokens = sum(s.get("draft_tokens", 0) for s in spec)
        steps = sum(r.get("output_tokens", 0) for r in mine) - sum(s.get("accepted_tokens", 0) for s in spec)
        out.append(tokens / steps if steps > 0 else None)
    return out


def _step_seconds(result: dict, sizes: list[int]) -> dict:
    measured: dict[str, list] = {}
    for r in result["rows"]:
        m = re.fullmatch(r"k(\d+)", r["config"])
        k = "0" if r["config"] == "none" else m.group(1) if m else None
        dec = r.get("decode") or {}
        if k is None or not dec.get("steps"):
            continue
        cell = measured.setdefault(k, [[] for _ in sizes])
        if r["batch_size"] in sizes:
            cell[sizes.index(r["batch_size"])].append(dec["seconds"] / dec["steps"])
    out: dict = {
        "measured": {
            k: [statistics.median(v) if v else None for v in cells]
            for k, cells in sorted(measured.items(), key=lambda kv: int(kv[0]))
        }
    }
    steps = (result.get("policy") or {}).get("steps")
    if steps:
        table = StepTable.from_json(steps)
        out["predicted"] = {str(k): [table.step_time(b, TreeShape.chain(k)) for b in sizes] for k in table.ks}
    return out


def sweep_report(result: dict, adaptive: str = "specforge", table: str = "vllm-table") -> dict:
    """The committed layout of a sweep's ``result.json`` (see the module contract)."""
    summary, sizes = result["summary"], list(result["batch_sizes"])
    per = summary["per_batch_size"]
    report: dict = {
        "batch_sizes": sizes,
        "tokens_per_s": {c: [row["tokens_per_s"].get(c) for row in per] for c in summary["configs"]},
        "best_static": [row["best_static"] for row in per],
        "lossless": [row.get("lossless") for row in per],
        "vs_best_static": [_ratio(row, "vs_best_static") for row in per],
        "held_out": [
            {"ratio": h["ratio"], "interval": list(h["interval"]), "picks": h["picks"]} if h else None
            for h in (row.get("held_out") for row in per)
        ],
        "vs_none": [_ratio(row, "vs_none") for row in per],
        "vs_table": [row.get("vs_table") for row in per] if any("vs_table" in r for r in per) else None,
        "tau": {c: [row["tau"].get(c) for row in per] for c in summary["configs"]},
        "bar": summary.get("bar"),
    }
    if any(r["config"] == adaptive for r in result["rows"]):
        report["plugin_k"] = _plugin_k(result["rows"], adaptive, sizes)
    report["step_seconds"] = _step_seconds(result, sizes)
    if result.get("native_table"):
        report["native_table"] = result["native_table"]
    report["provenance"] = {
        "date": datetime.date.today().isoformat(),
        "commit": commit(),
        "machine": machine(),
        "dtype": result.get("dtype", "float32"),
        **{k: result[k] for k in SETTINGS if k in result},
        **({"pooled": result["pooled"]} if "pooled" in result else {}),
    }
    return report


def write_report(result: dict, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(sweep_report(result), indent=1))
    tmp.replace(path)
    return path
