"""The serving sweep's summary: medians per cell, best static setting, and the bar."""

from __future__ import annotations

import pytest

from specforge.bench.sweep import decode_summary, decode_table, plot_sweep, serve_summary, summary_table


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
    # the oracle's headroom over the table: best static per batch size (k2 at 1, none at 8)
    assert s["bar"]["best_static_vs_table_geomean"] == pytest.approx(((155 / 140) * (800 / 600)) ** 0.5)
    assert s["bar"]["min_vs_none"] == pytest.approx(795 / 800)
    # 1.19x the table (< 1.25), 0.99x no speculation at batch 8 (< 1.0), 1.51x it at batch 1 (>= 1.5)
    assert s["bar"]["met"] == {
        "vs_best_static": True,
        "vs_table": False,
        "vs_none": False,
        "first_vs_none": True,
    }
    assert "| 1 |" in summary_table(s)
    assert plot_sweep(s, tmp_path / "p.png", "t").stat().st_size > 1000


def test_variants_of_the_adaptive_config_are_compared_with_it_not_counted_as_static():
    rows = _rows(
        {
            "none": {1: [100, 100, 100], 8: [800, 800, 800]},
            "adaptive": {1: [150, 150, 150], 8: [790, 800, 810]},
            "adaptive-noprobe": {1: [300, 300, 300], 8: [760, 780, 800]},  # would be "best static"
        }
    )
    for i, r in enumerate(rows):
        r["round"], r["repeat"] = 0, i % 3  # paired samples, for the intervals
    s = serve_summary(rows, [1, 8], adaptive="adaptive", table=None)
    b1, b8 = s["per_batch_size"]
    assert b1["best_static"] == "none" and b1["vs_best_static"] == pytest.approx(1.5)
    assert b1["variants"]["adaptive-noprobe"]["vs_adaptive"] == pytest.approx(2.0)
    assert b8["variants"]["adaptive-noprobe"]["vs_adaptive"] == pytest.approx(780 / 800)
    lo, hi = b8["variants"]["adaptive-noprobe"]["interval"]
    assert lo <= 780 / 800 <= hi
    assert s["variants_vs_adaptive_geomean"]["adaptive-noprobe"] == pytest.approx((2.0 * 780 / 800) ** 0.5)
    assert "variants_vs_adaptive_geomean" not in serve_summary(rows[:6], [1], "adaptive", None)


def test_a_calibrated_schedule_is_reported_beside_the_static_settings_not_among_them():
    rows = _rows(
        {
            "none": {1: [100], 8: [800]},
            "k2": {1: [160], 8: [700]},
            "native-table": {1: [170], 8: [820]},  # would be "best static" at both sizes
            "adaptive": {1: [165], 8: [810]},
        }
    )
    s = serve_summary(rows, [1, 8], adaptive="adaptive", table=None, schedules=("native-table",))
    b1, b8 = s["per_batch_size"]
    assert (b1["best_static"], b8["best_static"]) == ("k2", "none")
    assert b1["tokens_per_s"]["native-table"] == 170 and "native-table" in s["configs"]
    assert s["bar"]["met"]["first_vs_none"] and s["bar"]["first_vs_none"] == pytest.approx(1.65)


def test_bar_fails_when_adaptive_lags():
    rows = _rows({"none": {1: [100]}, "k2": {1: [200]}, "table": {1: [190]}, "adaptive": {1: [180]}})
    met = serve_summary(rows, [1], adaptive="adaptive", table="table")["bar"]["met"]
    assert met == {"vs_best_static": False, "vs_table": False, "vs_none": True, "first_vs_none": True}


def test_tau_and_prefix_hit_rate_pool_the_counters_of_a_cell():
    rows = _rows({"none": {4: [100, 100]}, "k2": {4: [120, 120]}})
    for r, spec, prefix in zip(
        rows,
        [{}, {}, {"drafts": 10, "accepted_tokens": 5}, {"drafts": 30, "accepted_tokens": 25}],
        [{"queries": 100, "hits": 90}, {"queries": 100, "hits": 70}, {"queries": 200, "hits": 0}, {}],
    ):
        r["spec"], r["prefix_cache"] = spec, prefix
    (row,) = serve_summary(rows, [4], adaptive="adaptive", table=None)["per_batch_size"]
    assert row["tau"] == {"none": None, "k2": pytest.approx(1 + 30 / 40)}
    assert row["prefix_hit_rate"] == {"none": pytest.approx(0.8), "k2": 0.0}


def test_decode_summary_from_step_timings():
    def cell(b, k, steps, sec, em):
        return {
            "batch_size": b,
            "k": k,
            "steps": steps,
            "seconds": sec,
            "emitted": em,
        }

    logs = {
        "none": [[cell(4, 0, 50, 0.010, 1.0)], [cell(4, 0, 50, 0.012, 1.0)]],
        "k2": [[cell(4, 2, 50, 0.015, 2.4), cell(3, 2, 2, 0.001, 3.0)]],  # batch 3: too few steps
        "adaptive": [[cell(4, 2, 40, 0.015, 2.3), cell(4, 0, 5, 0.010, 1.0)]],  # every k at batch 4 counts
    }
    d = decode_summary(logs, [3, 4], adaptive="adaptive", table=None)
    at3, at4 = d["per_batch_size"]
    assert at3["tokens_per_s"] == {}
    assert at4["tokens_per_s"]["none"] == pytest.approx((4 / 0.010 + 4 / 0.012) / 2)  # median of two rounds
    adaptive = (40 * 4 * 2.3 + 5 * 4 * 1.0) / (40 * 0.015 + 5 * 0.010)  # tokens / time over both cells
    assert at4["tokens_per_s"]["adaptive"] == pytest.approx(adaptive)
    assert at4["best_static"] == "k2" and at4["vs_best_static"] == pytest.approx(adaptive / (4 * 2.4 / 0.015))
    assert "| 4 |" in decode_table(d)


def test_paired_rows_give_each_arm_its_own_decode_goodput():
    """A paired engine serves every arm; each measurement reads back its own decode steps, and the
    decode summary pools them per (arm, batch size) exactly like an engine's step log."""
    from specforge.bench.vllm_workload import arm_decode_cells

    def row(arm, b, steps, sec, tokens):
        return {"config": arm, "batch_size": b, "decode": {"steps": steps, "seconds": sec, "tokens": tokens}}

    rows = [row("k2", 4, 30, 0.45, 240.0), row("k2", 4, 20, 0.35, 150.0), row("specforge", 4, 40, 0.6, 380.0)]
    rows.append(row("k2", 8, 0, 0.0, 0.0))  # no steady step at batch 8: no cell
    cells = arm_decode_cells(rows)
    assert set(cells) == {"k2", "specforge"} and [c["batch_size"] for c in cells["k2"]] == [4]
    d = decode_summary({arm: [c] for arm, c in cells.items()}, [4], adaptive="specforge", table=None)
    good = d["per_batch_size"][0]["tokens_per_s"]
    assert good["k2"] == pytest.approx(390 / 0.8) and good["specforge"] == pytest.approx(380 / 0.6)


def test_step_table_fits_a_line_per_k_through_noisy_cells():
    from specforge.bench.step_fit import step_table

    def cell(b, k, steps, ms):
        return {"batch_size": b, "k": k, "steps": steps, "seconds": ms / 1000, "emitted": 1.0}

    # k = 2 costs 6 + 0.2 x batch ms, with one noisy cell (+30 % at batch 16) and a cell too small to count
    cells = [cell(b, 2, 30, 6 + 0.2 * b) for b in (1, 4, 32, 64)] + [cell(16, 2, 30, 1.3 * 9.2)]
    cells += [cell(9, 2, 2, 100.0), cell(1, 0, 30, 5.0), cell(64, 0, 30, 12.0)]
    table = step_table(cells, [0, 2])
    k2 = table.seconds[table.shapes[1]]
    assert k2.tokens == [1, 64]
    assert k2(16) == pytest.approx(0.0092, rel=0.08)  # the spike is averaged out, not interpolated
    assert table.step_time(64, table.shapes[0]) == pytest.approx(0.012)


def test_a_variant_can_be_the_plugin_on_another_policy_file(tmp_path):
    """--variants NAME=POLICY.json: the arm specforge-NAME serves every key of that file; a missing,
    malformed or non-policy file is one clear error naming the file."""
    import json

    from specforge.bench.serve_vllm import _engine_configs, native_table, variant_overrides
    from specforge.errors import SpecforgeError

    good = tmp_path / "other.json"
    good.write_text(
        json.dumps(
            {
                "alpha": [0.6],
                "ks": [1],
                "steps": {
                    "0:1:1": {"tokens": [1, 4], "seconds": [0.01, 0.012]},
                    "1:1:1": {"tokens": [2, 8], "seconds": [0.012, 0.03]},
                },
            }
        )
    )
    name, keys = variant_overrides(f"burst={good}")
    assert name == "burst" and keys["alpha"] == [0.6] and "steps" in keys
    assert variant_overrides("probe") == ("probe", {"cell_prior": 5.0})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    notpolicy = tmp_path / "rows.json"
    notpolicy.write_text(json.dumps({"rows": []}))
    for spec, msg in [
        (f"x={tmp_path / 'missing.json'}", "missing.json: no such file"),
        (f"x={bad}", "bad.json: not readable JSON"),
        (f"x={notpolicy}", r"rows.json: .*alpha: Field required.*rows: Extra inputs are not permitted"),
        (f"={good}", "name it with letters"),
    ]:
        with pytest.raises(SpecforgeError, match=msg):
            variant_overrides(spec)
    native = native_table(good, [1], [1, 4])
    configs = _engine_configs(
        tmp_path, [1], [1, 4], good, "paired", native, dict([variant_overrides(f"burst={good}")])
    )
    arms = configs["paired"][0]["sweep"]["arms"]
    assert arms["specforge-burst"] == {"policy": keys}
    # the calibrated policy's own table is an arm, covering every batch size of the sweep
    assert arms["native-table"] == native and native[0][0] == 1 and native[-1][1] == 4


def test_held_calibration_cells_pool_each_pinned_arms_decode_steps():
    """calibrate --vllm --workload held: a cell per (k, batch size) is the mean step over the steady
    decode steps of that arm's timed measurements; arms and measurements without steps give none."""
    from specforge.bench.calibrate_vllm import held_cells

    def row(arm, b, steps, seconds):
        return {"config": arm, "batch_size": b, "decode": {"steps": steps, "seconds": seconds, "tokens": 0.0}}

    rows = [row("k0", 4, 10, 0.1), row("k0", 4, 30, 0.5), row("k3", 4, 20, 0.6), row("k3", 1, 0, 0.0)]
    rows.append({"config": "k2", "batch_size": 1})  # a measurement whose decode steps were not read back
    cells = {(c["k"], c["batch_size"]): c for c in held_cells(rows)}
    assert set(cells) == {(0, 4), (3, 4)}
    assert cells[(0, 4)]["steps"] == 40 and cells[(0, 4)]["seconds"] == pytest.approx(0.6 / 40)
    assert cells[(3, 4)]["seconds"] == pytest.approx(0.03)


def test_start_cost_is_the_slope_of_start_steps_beyond_a_decode_step():
    from serving.shape import NO_SPECULATION, TreeShape
    from serving.step_cost import Profile, StepTable
    from specforge.bench.step_fit import start_cost

    # decode steps: 5 + 0.1 x batch ms at k = 0, 8 + 0.3 x batch ms at k = 2
    table = StepTable.chains({0: Profile([1, 64], [0.0051, 0.0114]), 2: Profile([1, 64], [0.0083, 0.0272])})
    # burst start steps (every request of the batch new): 2 ms + 1.1 ms a request at k = 0 (the draft
    # skipped), 3 ms + 2.3 ms a request at k = 2; k = 1 was seen at one batch size only
    starts = {
        "0": [[b, b, 0.002 + 0.0011 * b] for b in (1, 4, 16, 64)],
        "2": [[b, b, 0.003 + 0.0023 * b] for b in (1, 4, 16, 64)],
        "1": [[4, 4, 0.01]] * 5,
    }
    cost = start_cost(starts, table, {"requests": 10, "tokens": 850}, max_tokens=128)
    assert cost.seconds == {NO_SPECULATION: pytest.approx(0.0010), TreeShape.chain(2): pytest.approx(0.0020)}
    assert cost.tokens_per_request == pytest.approx(85)
    assert start_cost(starts, table, {}, max_tokens=128).tokens_per_request == 128
    assert start_cost({"2": starts["2"][:2]}, table, {}, max_tokens=128) is None  # too few steps


def test_bootstrap_interval_reflects_noise_and_the_best_of_bias():
    """Paired bootstrap over (round, repeat): an adaptive config equal in law to the best static one
    gets an interval around 1 that reaches the bar even where its point estimate may not; a config
    10 % slower in every sample gets an interval well below it."""
    from specforge.bench.sweep import bootstrap_ratio

    rounds = range(6)
    noise = [1.00, 1.08, 0.93, 1.05, 0.96, 1.02]
    same = {
        "k2": {(r, 0): 100 * noise[r] for r in rounds},
        "k3": {(r, 0): 100 * noise[(r + 1) % 6] for r in rounds},
        "adaptive": {(r, 0): 100 * noise[(r + 2) % 6] for r in rounds},
    }
    lo, hi = bootstrap_ratio(same, "adaptive", ["k2", "k3"])
    assert lo < 1.0 < hi and hi >= 0.97
    slow = {**same, "adaptive": {k: 0.9 * v for k, v in same["k2"].items()}}
    lo, hi = bootstrap_ratio(slow, "adaptive", ["k2"])
    assert lo == pytest.approx(0.9) and hi == pytest.approx(0.9)  # paired: the noise cancels
    assert bootstrap_ratio({"a": {(0,): 1.0}, "b": {(0,): 1.0}}, "a", ["b"]) is None  # too few samples


def test_summary_reports_intervals_and_verdict_within_noise():
    rows = [
        {"config": c, "batch_size": 1, "round": r, "repeat": 0, "tokens_per_s": t, "latency_mean": 1.0}
        for c, ts in {"none": [100, 104, 98], "k2": [150, 140, 160], "adaptive": [140, 145, 138]}.items()
        for r, t in enumerate(ts)
    ]
    s = serve_summary(rows, [1], adaptive="adaptive", table=None)
    (b1,) = s["per_batch_size"]
    lo, hi = b1["interval"]["vs_best_static"]
    assert lo <= b1["vs_best_static"] <= hi
    assert s["bar"]["met"]["vs_best_static"] is False  # medians: 140 / 150 = 0.93
    assert s["bar"]["met_within_noise"] == {"vs_best_static": True, "vs_none": True}
    assert "(" in summary_table(s)


def test_held_out_ratio_removes_the_best_of_bias():
    """Six static configurations and the adaptive one, all equal in law (10 % noise per sample, plus a
    common factor per round): the naive "adaptive / largest median" sits below 1 on average (the
    largest of six noisy medians overstates the best), the held-out ratio does not; an adaptive
    configuration 10 % slower is found 10 % slower either way."""
    import math
    import random
    import statistics

    from specforge.bench.sweep import held_out_ratio

    rng = random.Random(3)
    arms = [f"k{i}" for i in range(6)]
    naive, held = [], []
    for _ in range(150):
        common = {(r, 0): math.exp(rng.gauss(0, 0.1)) for r in range(6)}
        samples = {
            c: {key: 100 * f * math.exp(rng.gauss(0, 0.1)) for key, f in common.items()} for c in [*arms, "a"]
        }
        best = max(statistics.median(samples[c].values()) for c in arms)
        naive.append(math.log(statistics.median(samples["a"].values()) / best))
        held.append(math.log(held_out_ratio(samples, "a", arms)["ratio"]))
    assert statistics.mean(naive) < -0.04  # the bias the interval of bootstrap_ratio carries
    assert abs(statistics.mean(held)) < 0.02
    slow = {c: {k: 100 * (0.9 if c == "a" else 1.0) for k in common} for c in [*arms, "a"]}
    out = held_out_ratio(slow, "a", arms)
    assert out["ratio"] == pytest.approx(0.9)
    assert out["interval"][0] == pytest.approx(0.9) and sum(out["picks"].values()) == 6
    assert held_out_ratio({"a": {(0,): 1.0}, "k0": {(0,): 1.0}}, "a", ["k0"]) is None


def test_unknown_choices_fail_before_any_work(tmp_path):
    """A misspelt workload, design or lengths is one clear error naming the choices, raised before a
    work directory is made or an engine started."""
    from specforge.bench.calibrate_vllm import calibrate_vllm
    from specforge.bench.serve_vllm import bench_serve_vllm
    from specforge.errors import SpecforgeError

    with pytest.raises(SpecforgeError, match="unknown lengths 'natral': choose one of fixed, natural"):
        calibrate_vllm(tmp_path, tmp_path, [0.5], [[1, 2]], tmp_path / "cal", lengths="natral")
    for kw, msg in [
        ({"design": "pair"}, "unknown design"),
        ({"lengths": "long"}, "unknown lengths"),
        ({"variants": ["prob"]}, "unknown variant 'prob': choose one of probe, noprobe"),
        ({"variants": ["probe"], "design": "engines"}, "--variants needs --design paired"),
    ]:
        with pytest.raises(SpecforgeError, match=msg):
            bench_serve_vllm(tmp_path, tmp_path, tmp_path, tmp_path, tmp_path / "out", **kw)
    assert not (tmp_path / "cal").exists() and not (tmp_path / "out").exists()
