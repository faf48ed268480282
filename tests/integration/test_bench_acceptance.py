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


def test_bench_heads_table_and_resume(micro_target_dir, micro_draft, tmp_path, capsys):
    """`bench heads` measures each run as a chain and a tree at each temperature, writes one row per
    (head, shape) with the training throughput, and a rerun reuses finished measurements."""
    work, run, _ = micro_draft
    args = ["bench", "heads", "--target", str(micro_target_dir), "--head", f"eagle3={run}"]
    args += ["--data", str(work / "data" / "heldout.jsonl"), "--out", str(tmp_path / "heads"), "--k", "2"]
    args += ["--tree", "tree:2:2:4", "--prompts", "3", "--max-new-tokens", "10", "--no-vllm"]
    assert main(args) == 0
    capsys.readouterr()
    table = json.loads((tmp_path / "heads" / "heads.json").read_text())
    rows = {r["head"]: r for r in table["heads"]}
    assert set(rows) == {"eagle3-chain", "eagle3-tree"}
    for r in rows.values():
        assert r["tau"] >= 1.0 and r["tau_t1"] >= 1.0 and r["lossless"] is True and r["vllm"] is None
        assert len(r["acceptance_per_position"]) == 2 and r["speedup"] > 0
        assert r["steps"] > 0 and r["train_tokens_per_s"] > 0
    result = tmp_path / "heads" / "eagle3" / "t0" / "result.json"
    before = result.stat().st_mtime_ns
    assert main(args) == 0
    assert result.stat().st_mtime_ns == before  # resumed: nothing measured twice
    bad = main(["bench", "heads", "--head", "no-equals-sign", "--data", "x", "--out", str(tmp_path / "b")])
    assert bad != 0 and "NAME=RUN_DIR" in capsys.readouterr().err
