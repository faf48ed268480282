"""Summaries and plots shared by the serving sweeps (vLLM and the reference engine).

Contract: a sweep is a list of rows ``{"config", "batch_size", "tokens_per_s", "latency_mean", ...}``,
several per (config, batch size) from rounds and repeats. :func:`serve_summary` takes the median of
each cell, names the best *static* configuration per batch size (every config except the adaptive
one, its variants and the batch-size table), and checks the bar of the adaptive configuration:

* ``vs_best_static >= 0.97`` at every batch size;
* the geometric mean over batch sizes of ``adaptive / table`` >= 1.25;
* ``vs_none >= 1.0`` at every batch size (``met_within_noise``: every 90 % interval reaches 1.0);
* ``vs_none >= 1.5`` at the smallest batch size, where decoding is memory-bound.

*Schedules* (``schedules``: batch-size tables such as vLLM's documented one, or the one a calibration
implies) are neither static settings nor the adaptive configuration: they are reported beside them.

Per batch size, ``lossless`` says whether every configuration's greedy outputs (digests in the
rows' ``outputs_sha``) equal no speculation's. It also reports the spread of each cell (max/min over
its samples) and, for the adaptive configuration's ratios, a 90 % paired-bootstrap interval
(:func:`bootstrap_ratio`): samples taken in the same round and repeat are resampled together, and
the best static configuration is chosen again in every resample, so the interval also carries the
upward bias of "the best of several noisy cells". ``bar["met_within_noise"]`` says whether each
ratio's interval reaches its threshold (the point estimate may miss it by noise alone).

That bias is real: with six static configurations within a few % of each other and 10-30 % noise per
sample, the largest of six medians overstates the best one's true throughput, and the adaptive
configuration is measured against that. :func:`held_out_ratio` removes it: each sample's best static
configuration is chosen from the *other* samples (leave one out), and the adaptive configuration is
compared with that choice on the held-out sample, as a user who picked k from earlier measurements
would be served. ``held_out`` per batch size and ``bar["min_held_out_vs_best_static"]`` report it.

*Variants* of the adaptive configuration (configs named ``<adaptive>-<name>``: the plugin with some
of its options changed) are compared with it, not with the bar: per batch size
``variants[name]`` = variant / adaptive (ratio of medians) with its 90 % paired-bootstrap interval,
and ``variants_vs_adaptive_geomean`` over batch sizes.
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

BAR = {"vs_best_static": 0.97, "vs_table_geomean": 1.25, "vs_none": 1.0, "first_vs_none": 1.5}
BOOTSTRAP = 2000  # resamples per interval
NATIVE = "native-table"  # the sweeps' arm serving the table a calibrated policy implies (no plugin)


def is_variant(config: str, adaptive: str) -> bool:
    """Whether ``config`` is a variant of the adaptive configuration (``<adaptive>-<name>``)."""
    return config.startswith(adaptive + "-")


def _shared_keys(samples: dict[str, dict[tuple, float]], configs: list[str]) -> list[tuple] | None:
    """The sample keys (round, repeat) every configuration has, sorted; None when fewer than 3 (too
    few to resample)."""
    keys = sorted(set.intersection(*(set(samples.get(c, {})) for c in configs)))
    return keys if len(keys) >= 3 else None


def bootstrap_ratio(
    samples: dict[str, dict[tuple, float]], adaptive: str, versus: list[str], seed: int = 0
) -> tuple[float, float] | None:
    """5th and 95th percentiles of ``median(adaptive) / max over versus of median(config)`` when the
    sample keys (round, repeat) are resampled with replacement, jointly for every configuration.
    ``samples[config][key]`` is one throughput sample. None when fewer than 3 keys are shared."""
    configs = [adaptive, *versus]
    keys = _shared_keys(samples, configs)
    if keys is None:
        return None
    rng = random.Random(seed)
    ratios = []
    for _ in range(BOOTSTRAP):
        pick = [rng.choice(keys) for _ in keys]
        med = {c: statistics.median(samples[c][k] for k in pick) for c in configs}
        ratios.append(med[adaptive] / max(med[c] for c in versus))
    ratios.sort()
    return ratios[int(0.05 * BOOTSTRAP)], ratios[int(0.95 * BOOTSTRAP) - 1]


def held_out_ratio(
    samples: dict[str, dict[tuple, float]], adaptive: str, versus: list[str], seed: int = 0
) -> dict | None:
    """Adaptive / best of ``versus``, the best chosen without the sample it is compared on.

    For every sample key (round, repeat) shared by all configurations, the best of ``versus`` is the
    one with the highest median over the *other* keys, and the sample's ratio is
    ``adaptive[key] / best[key]`` (paired: both ran in the same round and repeat). Returns the
    geometric mean of those ratios, a 90 % bootstrap interval of it (keys resampled), and how often
    each configuration was the held-out choice; None with fewer than 3 shared keys."""
    keys = _shared_keys(samples, [adaptive, *versus])
    if keys is None:
        return None
    logs, picks = [], {}
    for key in keys:
        rest = [k for k in keys if k != key]
        best = max(versus, key=lambda c: statistics.median(samples[c][k] for k in rest))
        picks[best] = picks.get(best, 0) + 1
        logs.append(math.log(samples[adaptive][key] / samples[best][key]))
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(logs) for _ in logs) / len(logs) for _ in range(BOOTSTRAP))
    return {
        "ratio": math.exp(sum(logs) / len(logs)),
        "interval": (math.exp(means[int(0.05 * BOOTSTRAP)]), math.exp(means[int(0.95 * BOOTSTRAP) - 1])),
        "picks": picks,
    }


def _keyed(rows: list[dict], b: int) -> dict[str, dict[tuple, float]]:
    """Throughput samples at batch size ``b`` per configuration, keyed by (round, repeat), or by the
    sample's rank within its cell where rows carry neither."""
    out: dict[str, dict[tuple, float]] = {}
    for r in rows:
        if int(r["batch_size"]) == b:
            cell = out.setdefault(r["config"], {})
            key = (r["round"], r.get("repeat", 0)) if "round" in r else (len(cell),)
            cell[key] = float(r["tokens_per_s"])
    return out


def _cells(rows: list[dict], key: str) -> dict[tuple[str, int], list[float]]:
    out: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        out.setdefault((r["config"], int(r["batch_size"])), []).append(float(r[key]))
    return out


def _summed(
    rows: list[dict], field: str, keys: tuple[str, str]
) -> dict[tuple[str, int], tuple[float, float]]:
    """Per (configuration, batch size): the sums of two counters of the rows' ``field``."""
    acc: dict[tuple[str, int], tuple[float, float]] = {}
    for r in rows:
        counters, cell = r.get(field) or {}, (r["config"], int(r["batch_size"]))
        first, second = acc.get(cell, (0.0, 0.0))
        acc[cell] = (first + (counters.get(keys[0]) or 0), second + (counters.get(keys[1]) or 0))
    return acc


def _tau(rows: list[dict]) -> dict[tuple[str, int], float | None]:
    """vLLM's mean acceptance length, 1 + accepted / drafts (bonus token included)."""
    summed = _summed(rows, "spec", ("drafts", "accepted_tokens"))
    return {k: (1 + a / d if d else None) for k, (d, a) in summed.items()}


def _prefix_hit_rate(rows: list[dict]) -> dict[tuple[str, int], float | None]:
    """The share of prompt tokens found in the prefix cache."""
    summed = _summed(rows, "prefix_cache", ("queries", "hits"))
    return {k: (h / q if q else None) for k, (q, h) in summed.items()}


def _lossless(rows: list[dict], b: int) -> bool | None:
    """Whether every configuration's greedy outputs at batch size ``b`` equal no speculation's."""
    ref = {
        r["outputs_sha"]
        for r in rows
        if r["config"] == "none" and r["batch_size"] == b and "outputs_sha" in r
    }
    if len(ref) != 1:
        return None
    return all(r["outputs_sha"] in ref for r in rows if r["batch_size"] == b and "outputs_sha" in r)


def serve_summary(
    rows: list[dict],
    batch_sizes: list[int],
    adaptive: str,
    table: str | None,
    schedules: tuple[str, ...] = (),
) -> dict:
    tput, lat, taus = _cells(rows, "tokens_per_s"), _cells(rows, "latency_mean"), _tau(rows)
    hits = _prefix_hit_rate(rows)
    configs = sorted({c for c, _ in tput}, key=lambda c: (c != "none", c))
    tables = {table, *schedules}
    static = [c for c in configs if c != adaptive and c not in tables and not is_variant(c, adaptive)]
    variants = [c for c in configs if is_variant(c, adaptive)]
    per_batch = []
    for b in batch_sizes:
        med = {c: statistics.median(tput[(c, b)]) for c in configs if (c, b) in tput}
        best = max((c for c in static if c in med), key=lambda c: med[c])
        row = {
            "batch_size": b,
            "tokens_per_s": med,
            "latency_s": {c: statistics.median(lat[(c, b)]) for c in med},
            "tau": {c: taus.get((c, b)) for c in med},
            "prefix_hit_rate": {c: hits.get((c, b)) for c in med},
            "spread": {c: max(tput[(c, b)]) / min(tput[(c, b)]) for c in med},
            "best_static": best,
            "lossless": _lossless(rows, b),
        }
        if adaptive in med:
            row["vs_best_static"] = med[adaptive] / med[best]
            row["vs_none"] = med[adaptive] / med["none"] if "none" in med else None
            if table and table in med:
                row["vs_table"] = med[adaptive] / med[table]
            keyed, measured = _keyed(rows, b), [c for c in static if c in med]
            row["interval"] = {
                "vs_best_static": bootstrap_ratio(keyed, adaptive, measured),
                "vs_none": bootstrap_ratio(keyed, adaptive, ["none"]) if "none" in med else None,
            }
            row["held_out"] = held_out_ratio(keyed, adaptive, measured)
            row["variants"] = {
                v: {"vs_adaptive": med[v] / med[adaptive], "interval": bootstrap_ratio(keyed, v, [adaptive])}
                for v in variants
                if v in med
            }
        per_batch.append(row)
    out: dict = {"configs": configs, "per_batch_size": per_batch}
    if variants and all("variants" in r for r in per_batch):
        out["variants_vs_adaptive_geomean"] = {
            v: _geomean([r["variants"][v]["vs_adaptive"] for r in per_batch if v in r["variants"]])
            for v in variants
            if any(v in r["variants"] for r in per_batch)
        }
    if all("vs_best_static" in r for r in per_batch):
        vs_table = [r["vs_table"] for r in per_batch if "vs_table" in r]
        out["bar"] = {
            "min_vs_best_static": min(r["vs_best_static"] for r in per_batch),
            "vs_table_geomean": _geomean(vs_table) if vs_table else None,
            "min_vs_none": min(r["vs_none"] for r in per_batch if r["vs_none"] is not None),
            "first_vs_none": per_batch[0]["vs_none"],
            "min_held_out_vs_best_static": min(r["held_out"]["ratio"] for r in per_batch if r["held_out"])
            if any(r["held_out"] for r in per_batch)
            else None,
            # The headroom over the table: an oracle picking the best static setting per batch size.
            "best_static_vs_table_geomean": _geomean(
                [r["tokens_per_s"][r["best_static"]] / r["tokens_per_s"][table] for r in per_batch]
            )
            if table and all(table in r["tokens_per_s"] for r in per_batch)
            else None,
        }
        bar = out["bar"]
        out["bar"]["met"] = {
            "vs_best_static": bar["min_vs_best_static"] >= BAR["vs_best_static"],
            "vs_table": bar["vs_table_geomean"] is not None
            and bar["vs_table_geomean"] >= BAR["vs_table_geomean"],
            "vs_none": bar["min_vs_none"] >= BAR["vs_none"],
            "first_vs_none": bar["first_vs_none"] is not None
            and bar["first_vs_none"] >= BAR["first_vs_none"],
        }
        intervals = {
            name: [r["interval"][name] for r in per_batch if r["interval"][name] is not None]
            for name in ("vs_best_static", "vs_none")
        }
        out["bar"]["met_within_noise"] = {
            name: bool(iv) and all(hi >= BAR[name] for _lo, hi in iv) for name, iv in intervals.items()
        }
    return out


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs))


def decode_summary(
    step_logs: dict[str, list[list[dict]]],
    batch_sizes: list[int],
    adaptive: str,
    table: str | None,
    schedules: tuple[str, ...] = (),
) -> dict:
    """Decode goodput (tokens/s) per configuration and batch size from the engines' own step timings.

    ``step_logs[config]`` holds, per round, the recorder's cells ``{"batch_size", "k", "steps",
    "seconds" (median), "emitted" (mean per request)}``. A configuration's goodput at ``B`` is
    tokens over time of all its steps at exactly ``B``, whatever their k (``sum steps x B x emitted /
    sum steps x seconds``; at least 3 steps), in each round, then the median over rounds. The
    adaptive configuration is compared with the best static one as in :func:`serve_summary`.
    """
    per_batch = []
    for b in batch_sizes:
        good: dict[str, float] = {}
        for c, rounds in step_logs.items():
            vals = []
            for cells in rounds:
                at_b = [x for x in cells if x["batch_size"] == b]
                if sum(x["steps"] for x in at_b) >= 3:
                    tokens = sum(x["steps"] * b * x["emitted"] for x in at_b)
                    vals.append(tokens / sum(x["steps"] * x["seconds"] for x in at_b))
            if vals:
                good[c] = statistics.median(vals)
        static = [c for c in good if c not in (adaptive, table, *schedules) and not is_variant(c, adaptive)]
        row: dict = {"batch_size": b, "tokens_per_s": good}
        if static:
            best = max(static, key=lambda c: good[c])
            row["best_static"] = best
            if adaptive in good:
                row["vs_best_static"] = good[adaptive] / good[best]
                if table and table in good:
                    row["vs_table"] = good[adaptive] / good[table]
        per_batch.append(row)
    return {"per_batch_size": per_batch}


def summary_table(summary: dict) -> str:
    """A markdown table: throughput (tokens/s) per configuration and batch size, and the ratios (the
    column against a batch-size table only where the sweep has one)."""
    configs = summary["configs"]
    with_table = any("vs_table" in r for r in summary["per_batch_size"])
    head = [
        "batch",
        *configs,
        "best static",
        "adaptive / best (90 % interval)",
        "held out (90 %)",
        *(["adaptive / table"] if with_table else []),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["per_batch_size"]:
        cells = [str(r["batch_size"])] + [f"{r['tokens_per_s'].get(c, float('nan')):.0f}" for c in configs]
        iv = (r.get("interval") or {}).get("vs_best_static")
        held = r.get("held_out")
        cells += [
            r["best_static"],
            f"{r.get('vs_best_static', float('nan')):.2f}" + (f" ({iv[0]:.2f}-{iv[1]:.2f})" if iv else ""),
            f"{held['ratio']:.2f} ({held['interval'][0]:.2f}-{held['interval'][1]:.2f})" if held else "-",
        ]
        if with_table:
            cells.append(f"{r['vs_table']:.2f}" if "vs_table" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def decode_table(decode: dict) -> str:
    """A markdown table of decode goodput (tokens/s) from the engines' step timings."""
    configs = sorted(
        {c for r in decode["per_batch_size"] for c in r["tokens_per_s"]}, key=lambda c: (c != "none", c)
    )
    head = ["batch", *configs, "best static", "adaptive / best", "adaptive / table"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in decode["per_batch_size"]:
        cells = [str(r["batch_size"])] + [f"{r['tokens_per_s'].get(c, float('nan')):.0f}" for c in configs]
        cells += [
            r.get("best_static", "-"),
            f"{r.get('vs_best_static', float('nan')):.2f}",
            f"{r.get('vs_table', float('nan')):.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(summary: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = [r["batch_size"] for r in summary["per_batch_size"]]
    for c in summary["configs"]:
        ys = [r["tokens_per_s"].get(c, float("nan")) for r in summary["per_batch_size"]]
        none = [r["tokens_per_s"].get("none", float("nan")) for r in summary["per_batch_size"]]
        style = {"lw": 2.5, "color": "black"} if c in ("specforge", "policy") else {"lw": 1, "alpha": 0.8}
        ax.plot(sizes, [y / n for y, n in zip(ys, none)], marker="o", label=c, **style)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (concurrent requests)")
    ax.set_ylabel("throughput / no speculation")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
