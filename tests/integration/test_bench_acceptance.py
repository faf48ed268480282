"""`specforge bench acceptance` end to end on the micro target with a small EAGLE-3 draft."""

from __future__ import annotations

import json

from specforge.cli import main
from specforge.data.demo import write_demo_dataset
from specforge.targets.loader import load_target
from tests.helpers import small_eagle3, small_eagle3_config, write_draft_run


def test_bench_acceptance_writes_json_and_plot(micro_target_dir, tmp_path, capsys):
    target = load_target(micro_target_dir)
    cfg = small_eagle3_config(64, target.vocab_size, 128, head_dim=32)
    draft = small_eagle3(cfg, list(range(target.vocab_size)))
    run = write_draft_run(tmp_path / "run", draft)
    write_demo_dataset(tmp_path / "data", max_train=2, max_heldout=4)

    rc = main(
        [
            "bench",
            "acceptance",
            "--target",
            str(micro_target_dir),
            "--draft",
            str(run),
            "--data",
            str(tmp_path / "data" / "heldout.jsonl"),
            "--out",
            str(tmp_path / "bench"),
            "--shapes",
            "chain:2,tree:2:2:3",
            "--prompts",
            "3",
            "--max-new-tokens",
            "10",
            "--batch-size",
            "2",
        ]
    )
    assert rc == 0
    capsys.readouterr()
    result = json.loads((tmp_path / "bench" / "result.json").read_text())
    res = result["results"]
    assert set(res) == {"plain", "chain:2", "tree:2:2:3"}
    assert res["plain"]["tau"] == 1.0
    for name in ("chain:2", "tree:2:2:3"):
        r = res[name]
        assert r["lossless"] is True
        assert r["tau"] >= 1.0 and r["tokens_per_s"] > 0 and r["speedup"] > 0
        assert 0 <= r["accepted_over_drafted"] <= 1
    assert (tmp_path / "bench" / "acceptance.png").stat().st_size > 1000
    assert result["args"]["batch_size"] == 2
