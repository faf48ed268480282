"""The notebooks run top to bottom on the public API: the micro target, a small EAGLE-3 draft and a
real reference-engine serving sweep, and they report what they measured."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from specforge.cli import main
from specforge.data.demo import write_demo_dataset
from tests.helpers import small_eagle3, small_eagle3_config, write_draft_run

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _last_stdout(nb) -> str:
    code = [c for c in nb.cells if c.cell_type == "code"]
    return "".join(o.get("text", "") for o in code[-1].outputs if o.get("name") == "stdout")


def test_acceptance_notebook_measures_every_shape_and_reads_a_serve_sweep(
    micro_target_dir, micro_target, tmp_path, monkeypatch, capsys
):
    cfg = small_eagle3_config(micro_target.hidden_size, micro_target.vocab_size, 64, 32)
    run = write_draft_run(tmp_path / "run", small_eagle3(cfg, list(range(64))))
    (run / "train_summary.json").write_text(json.dumps({"final": {"eval/alpha_0": 0.6, "eval/alpha_1": 0.5}}))
    write_demo_dataset(tmp_path / "data", max_train=4, max_heldout=12)
    data = tmp_path / "data" / "heldout.jsonl"
    serve_args = ["bench", "serve", "--engine", "reference", "--target", str(micro_target_dir), "--run"]
    serve_args += [str(run), "--data", str(data), "--out", str(tmp_path / "serve"), "--batch-sizes", "1,2"]
    assert main([*serve_args, "--shapes", "chain:2", "--max-tokens", "6", "--rounds", "1"]) == 0
    capsys.readouterr()

    out = tmp_path / "nb"
    for name, value in {
        "TARGET": micro_target_dir,
        "RUN": run,
        "DATA": data,
        "SERVE": tmp_path / "serve" / "result.json",
        "OUT": out,
        "SHAPES": "chain:2,tree:2:2:3",
        "BATCH_SIZES": "1,2",
        "PROMPTS": "3",
        "MAX_NEW_TOKENS": "8",
    }.items():
        monkeypatch.setenv(f"SPECFORGE_NB_{name}", str(value))
    nb = nbformat.read(NOTEBOOKS / "acceptance.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()

    summary = json.loads(_last_stdout(nb))
    assert summary == json.loads((out / "summary.json").read_text())
    assert set(summary["acceptance"]) == {"1", "2"}
    for per_shape in summary["acceptance"].values():
        assert set(per_shape) == {"plain", "chain:2", "tree:2:2:3"}
        assert per_shape["plain"]["tau"] == 1.0
        for name in ("chain:2", "tree:2:2:3"):
            r = per_shape[name]
            assert r["lossless"] is True and r["tau"] >= 1.0 and r["speedup"] > 0
            # tau = 1 + the accepted tokens per sequence step, one per depth (less where
            # max_new_tokens cut a step short)
            acc = r["acceptance_per_position"]
            assert len(acc) <= 2 and all(0.0 <= a <= 1.0 for a in acc)
            assert r["tau"] <= 1.0 + sum(acc) + 1e-9
    assert summary["serve_batch_sizes"] == [1, 2]
    assert (out / "acceptance.png").stat().st_size > 1000 and (out / "serve.png").stat().st_size > 1000
