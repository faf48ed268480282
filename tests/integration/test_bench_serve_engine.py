"""The reference-engine serving sweep: fixed chains and trees vs the adaptive policy, all lossless."""

from __future__ import annotations

import json

from serving.shape import TreeShape
from serving.step_cost import StepTable
from specforge.bench.serve_engine import bench_serve_engine
from specforge.data.demo import write_demo_dataset
from tests.helpers import small_eagle3, small_eagle3_config, write_draft_run


def test_engine_sweep_runs_every_shape_losslessly(micro_target_dir, micro_target, tmp_path):
    cfg = small_eagle3_config(micro_target.hidden_size, micro_target.vocab_size, 64, 32)
    run = write_draft_run(tmp_path / "run", small_eagle3(cfg, list(range(64))))
    (run / "train_summary.json").write_text(json.dumps({"final": {"eval/alpha_0": 0.6, "eval/alpha_1": 0.5}}))
    write_demo_dataset(tmp_path / "data", max_train=4, max_heldout=12)
    res = bench_serve_engine(
        micro_target_dir,
        run,
        tmp_path / "data" / "heldout.jsonl",
        batch_sizes=[1, 3],
        shapes=[TreeShape.parse("chain:2"), TreeShape.parse("tree:2:2:4")],
        max_tokens=6,
        rounds=1,
        calibrate_tokens=4,
        log=lambda _m: None,
    )
    configs = {(r["config"], r["batch_size"]) for r in res["rows"]}
    assert configs == {(c, b) for c in ["none", "chain:2", "tree:2:2:4", "policy"] for b in [1, 3]}
    # batch 1: 8 prompts one after another (MIN_REQUESTS), batch 3: two batches of distinct prompts
    assert all(r["output_tokens"] == 6 * r["batch_size"] * (8 // r["batch_size"]) for r in res["rows"])
    assert all(row["lossless"] for row in res["summary"]["per_batch_size"])
    # the policy chose a shape at every step, from the candidates
    for c in res["policy_choices"]:
        assert sum(c["steps_per_shape"].values()) > 0
        assert set(c["steps_per_shape"]) <= {"plain", "chain:2", "tree:2:2:4"}
    # the policy was priced by whole engine steps, timed per shape at both batch sizes
    table = StepTable.from_json(res["step_table"])
    assert len(table.shapes) == 3 and all(p.tokens == [1, 3] for p in table.seconds.values())
