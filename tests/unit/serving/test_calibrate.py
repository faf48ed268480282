"""`specforge calibrate` measures a real cost model on the micro target and a draft."""

from __future__ import annotations

import json

from serving.shape import TreeShape
from serving.step_cost import CostModel
from specforge.cli import main
from specforge.targets.loader import load_target
from tests.helpers import small_eagle3, small_eagle3_config, write_draft_run


def test_calibrate_writes_a_usable_cost_model(micro_target_dir, tmp_path, capsys):
    target = load_target(micro_target_dir)
    cfg = small_eagle3_config(64, target.vocab_size, 128, head_dim=32)
    draft = small_eagle3(cfg, list(range(target.vocab_size)))
    run = write_draft_run(tmp_path / "run", draft)
    out = tmp_path / "cost.json"
    rc = main(
        [
            "calibrate",
            "--target",
            str(micro_target_dir),
            "--draft",
            str(run),
            "--out",
            str(out),
            "--token-counts",
            "1,4,16",
            "--prefix",
            "16",
            "--repeats",
            "2",
        ]
    )
    assert rc == 0
    capsys.readouterr()
    cost = CostModel.load(out)
    assert cost.target.tokens == [1, 4, 16] and all(t > 0 for t in cost.target.seconds)
    assert cost.draft is not None and all(t > 0 for t in cost.draft.seconds)
    assert cost.step_time(2, TreeShape.chain(3)) > cost.step_time(2, TreeShape(0, 1, 1))
    assert json.loads(out.read_text())["meta"]["machine"]
