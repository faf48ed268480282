"""`specforge bench pool`: several runs of the same sweep summarised as one."""

from __future__ import annotations

import json

import pytest

from specforge.bench.pool import ROUND_STRIDE, pool_sweeps
from specforge.errors import SpecforgeError


def _run(path, tput: dict[str, dict[int, list[float]]], policy=None, **meta) -> str:
    """A bench serve result: one round, repeats as listed, the same outputs for every config."""
    rows = [
        {
            "config": c,
            "batch_size": b,
            "round": 0,
            "repeat": i,
            "tokens_per_s": t,
            "latency_mean": 1.0,
            "spec": {},
            "outputs_sha": f"sha{b}",
        }
        for c, per_b in tput.items()
        for b, ts in per_b.items()
        for i, t in enumerate(ts)
    ]
    sizes = sorted({b for per_b in tput.values() for b in per_b})
    res = {
        "engine": "vllm",
        "design": "paired",
        "workload": "closed",
        "lengths": "natural",
        "max_tokens": 128,
        "prompts": 50,
        "batch_sizes": sizes,
        "policy": policy or {"alpha": [0.7], "steps": {}},
        "rows": rows,
        **meta,
    }
    path.write_text(json.dumps(res))
    return path


def test_pooled_runs_are_one_summary_of_every_paired_sample(tmp_path):
    a = _run(
        tmp_path / "a.json",
        {
            "none": {1: [100, 100, 100], 8: [800, 800, 800]},
            "k2": {1: [150, 140, 160], 8: [700, 700, 700]},
            "vllm-table": {1: [140, 140, 140], 8: [600, 600, 600]},
            "specforge": {1: [145, 150, 140], 8: [790, 800, 810]},
        },
    )
    b = _run(
        tmp_path / "b.json",
        {  # the second run measured batch 1 only, and slower
            "none": {1: [90, 90, 90]},
            "k2": {1: [130, 135, 125]},
            "vllm-table": {1: [120, 120, 120]},
            "specforge": {1: [131, 134, 128]},
        },
    )
    res = pool_sweeps([a, b])
    assert res["batch_sizes"] == [1]  # the batch sizes every run measured
    rows = res["rows"]
    assert len(rows) == 4 * 6 and {r["run"] for r in rows} == {0, 1}
    # every (run, round, repeat) stays its own sample: six paired samples per configuration
    assert len({(r["round"], r["repeat"]) for r in rows}) == 6
    assert {r["round"] for r in rows} == {0, ROUND_STRIDE}
    (b1,) = res["summary"]["per_batch_size"]
    assert b1["tokens_per_s"]["k2"] == pytest.approx((135 + 140) / 2)  # median of all six samples
    assert b1["best_static"] == "k2" and b1["lossless"]
    assert res["summary"]["bar"]["vs_table_geomean"] == pytest.approx(b1["tokens_per_s"]["specforge"] / 130)


def test_only_runs_of_the_same_sweep_pool(tmp_path):
    tput = {"none": {1: [1, 1, 1]}, "k1": {1: [1, 1, 1]}, "specforge": {1: [1, 1, 1]}}
    a = _run(tmp_path / "a.json", tput)
    with pytest.raises(SpecforgeError, match="at least two"):
        pool_sweeps([a])
    other_policy = _run(tmp_path / "p.json", tput, policy={"alpha": [0.5], "steps": {}})
    with pytest.raises(SpecforgeError, match="policy file"):
        pool_sweeps([a, other_policy])
    longer = _run(tmp_path / "m.json", tput, max_tokens=64)
    with pytest.raises(SpecforgeError, match="max_tokens"):
        pool_sweeps([a, longer])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SpecforgeError, match="not a readable"):
        pool_sweeps([a, tmp_path / "bad.json"])
    (tmp_path / "foreign.json").write_text("{}")
    with pytest.raises(SpecforgeError, match="no rows"):
        pool_sweeps([a, tmp_path / "foreign.json"])
    with pytest.raises(SpecforgeError, match="not a readable"):
        pool_sweeps([a, tmp_path / "missing.json"])
