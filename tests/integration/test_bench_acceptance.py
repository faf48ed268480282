"""`specforge bench acceptance` end to end on the micro target with a small EAGLE-3 draft."""

from __future__ import annotations

import json

from specforge.cli import main


def test_bench_acceptance_writes_json_and_plot(micro_target_dir, micro_draft, tmp_path, capsys):
    work, run, _ = micro_draft  # a trained head: drafts are accepted, so "lossless" is not vacuous

    rc = main(
        [
            "bench",
            "acceptance",
            "--target",
            str(micro_target_dir),
            "--draft",
            str(run),
            "--data",
            str(work / "data" / "heldout.jsonl"),
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
        assert r["lossless"] is True and r["tokens_per_s"] > 0 and r["speedup"] > 0
        assert r["tau"] > 1.2 and 0 < r["accepted_over_drafted"] <= 1  # drafts were accepted
    assert (tmp_path / "bench" / "acceptance.png").stat().st_size > 1000
    assert result["args"]["batch_size"] == 2


def test_bench_acceptance_on_humaneval_by_name(micro_target_dir, micro_draft, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPECFORGE_HOME", str(tmp_path / "home"))  # where the named set is written
    _, run, _ = micro_draft
    argv = ["bench", "acceptance", "--target", str(micro_target_dir), "--draft", str(run)]
    argv += ["--data", "humaneval", "--out", str(tmp_path / "bench"), "--shapes", "chain:2"]
    rc = main([*argv, "--prompts", "2", "--max-new-tokens", "8"])
    assert rc == 0
    capsys.readouterr()
    result = json.loads((tmp_path / "bench" / "result.json").read_text())
    assert result["args"]["data"] == "humaneval" and result["args"]["prompts"] == 2
    assert result["results"]["chain:2"]["tau"] >= 1 and result["results"]["chain:2"]["lossless"] is True
    assert (tmp_path / "home" / "prompts" / "humaneval.jsonl").is_file()
