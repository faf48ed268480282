"""The committed form of a serving sweep (report.json): medians per arm in batch-size order, the
bar's ratios with intervals, the plugin's k, and predicted beside measured step times."""

from __future__ import annotations

import json

import pytest

from specforge.bench.serve_report import sweep_report, write_report
from specforge.bench.sweep import serve_summary


def _sweep() -> dict:
    # (config, batch) -> per repeat: tokens/s, decode steps, decode seconds, draft tokens, accepted
    cells = {
        ("none", 1): (100, 50, 0.50, 0, 0),
        ("k2", 1): (160, 30, 0.45, 60, 20),
        ("vllm-table", 1): (150, 30, 0.47, 60, 19),
        ("native-table", 1): (158, 30, 0.45, 60, 20),
        ("specforge", 1): (158, 30, 0.45, 60, 20),
        ("none", 4): (300, 50, 0.60, 0, 0),
        ("k2", 4): (280, 40, 0.80, 80, 10),
        ("vllm-table", 4): (270, 40, 0.82, 80, 10),
        ("native-table", 4): (301, 50, 0.60, 0, 0),
        ("specforge", 4): (298, 50, 0.61, 0, 0),
    }
    rows = []
    for rep in range(3):
        for (config, b), (tps, steps, sec, drafted, accepted) in cells.items():
            rows.append(
                {
                    "config": config,
                    "batch_size": b,
                    "round": 0,
                    "repeat": rep,
                    "tokens_per_s": tps * (1 + 0.01 * rep),
                    "latency_mean": 1.0,
                    "output_tokens": 100,
                    "decode": {"steps": steps, "seconds": sec, "tokens": 0.0},
                    "spec": {"drafts": drafted // 2, "draft_tokens": drafted, "accepted_tokens": accepted},
                }
            )
    summary = serve_summary(rows, [1, 4], "specforge", "vllm-table", schedules=("native-table",))
    steps = {
        "0:1:1": {"tokens": [1, 4], "seconds": [0.01, 0.012]},
        "2:2:1": {"tokens": [1, 4], "seconds": [0.015, 0.02]},
    }
    return {
        "batch_sizes": [1, 4],
        "rows": rows,
        "summary": summary,
        "policy": {"steps": steps},
        "native_table": [[1, 2, 2], [3, 4, 0]],
        "max_tokens": 48,
        "rounds": 1,
        "repeats": 3,
    }


def test_report_lays_out_medians_ratios_plugin_k_and_step_times(tmp_path):
    report = sweep_report(_sweep())
    assert report["batch_sizes"] == [1, 4]
    assert report["tokens_per_s"]["none"] == [pytest.approx(101), pytest.approx(303)]
    assert set(report["tokens_per_s"]) == {"none", "k2", "vllm-table", "native-table", "specforge"}
    assert report["best_static"] == ["k2", "none"]  # the schedules are not static settings
    b1 = report["vs_best_static"][0]
    assert b1["ratio"] == pytest.approx(158 / 160) and len(b1["interval"]) == 2
    assert report["vs_none"][1]["ratio"] == pytest.approx(298 / 300)
    assert report["vs_table"][0] == pytest.approx(158 / 150)
    assert report["held_out"][0]["picks"] == {"k2": 3}
    # 60 draft tokens over 100 - 20 request-steps at batch 1; never drafted at batch 4
    assert report["plugin_k"] == [pytest.approx(60 / 80), 0.0]
    measured = report["step_seconds"]["measured"]
    assert set(measured) == {"0", "2"}  # the static arms' own steps: none and k2
    assert measured["2"] == [pytest.approx(0.015), pytest.approx(0.02)]
    assert report["step_seconds"]["predicted"]["2"] == [pytest.approx(0.015), pytest.approx(0.02)]
    assert report["native_table"] == [[1, 2, 2], [3, 4, 0]]
    assert report["provenance"]["repeats"] == 3 and report["provenance"]["machine"]
    path = write_report(_sweep(), tmp_path / "report.json")
    assert json.loads(path.read_text())["best_static"] == ["k2", "none"]
    assert not list(tmp_path.glob("*.tmp"))
