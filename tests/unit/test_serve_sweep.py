"""The serving sweep's summary: medians per cell, best static setting, and the bar."""

from __future__ import annotations

import pytest

from specforge.bench.sweep import plot_sweep, serve_summary, summary_table


def _rows(table: dict[str, dict[int, list[float]]]) -> list[dict]:
    return [
        {"config": c, "batch_size": b, "tokens_per_s": t, "latency_mean": 1.0 / t, "spec": {}}
        for c, per_b in table.items()
        for b, ts in per_b.items()
        for t in ts
    ]


def test_summary_medians_best_static_and_bar(tmp_path):
    rows = _rows(
        {
            "none": {1: [100, 110, 90], 8: [800, 790, 810]},
            "k2": {1: [150, 160, 155], 8: [700, 650, 720]},
            "table": {1: [140, 140, 140], 8: [600, 600, 600]},
            "adaptive": {1: [149, 152, 151], 8: [790, 800, 795]},
        }
    )
    s = serve_summary(rows, [1, 8], adaptive="adaptive", table="table")
    b1, b8 = s["per_batch_size"]
    assert b1["best_static"] == "k2" and b8["best_static"] == "none"  # the table is not a static setting
    assert b1["tokens_per_s"]["k2"] == 155 and b1["spread"]["none"] == pytest.approx(110 / 90)
    assert b1["vs_best_static"] == pytest.approx(151 / 155) and b8["vs_best_static"] == pytest.approx(
        795 / 800
    )
    assert s["bar"]["vs_table_geomean"] == pytest.approx(((151 / 140) * (795 / 600)) ** 0.5)
    assert s["bar"]["min_vs_none"] == pytest.approx(795 / 800)
    assert s["bar"]["met"] == {"vs_best_static": True, "vs_table": True, "vs_none": True}
    assert "| 1 |" in summary_table(s)
    assert plot_sweep(s, tmp_path / "p.png", "t").stat().st_size > 1000


def test_bar_fails_when_adaptive_lags():
    rows = _rows({"none": {1: [100]}, "k2": {1: [200]}, "table": {1: [190]}, "adaptive": {1: [180]}})
    met = serve_summary(rows, [1], adaptive="adaptive", table="table")["bar"]["met"]
    assert met == {"vs_best_static": False, "vs_table": False, "vs_none": True}
