"""The notebooks run top to bottom on the public API: the micro target, a small EAGLE-3 draft and a
real reference-engine serving sweep, and they report what they measured."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from specforge.cli import main

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _last_stdout(nb) -> str:
    code = [c for c in nb.cells if c.cell_type == "code"]
    return "".join(o.get("text", "") for o in code[-1].outputs if o.get("name") == "stdout")


def _run_notebook(name: str, settings: dict, monkeypatch, timeout: int = 300) -> dict:
    """Execute ``notebooks/<name>`` with ``SPECFORGE_NB_<KEY>`` set from ``settings``; the JSON its
    last cell printed."""
    for key, value in settings.items():
        monkeypatch.setenv(f"SPECFORGE_NB_{key}", str(value))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    return json.loads(_last_stdout(nb))


def test_acceptance_notebook_measures_every_shape_and_reads_a_serve_sweep(
    micro_target_dir, micro_draft, tmp_path, monkeypatch, capsys
):
    work, run, _ = micro_draft  # a trained head: drafts are accepted, so "lossless" is not vacuous
    data = work / "data" / "heldout.jsonl"
    serve_args = ["bench", "serve", "--engine", "reference", "--target", str(micro_target_dir), "--run"]
    serve_args += [str(run), "--data", str(data), "--out", str(tmp_path / "serve"), "--batch-sizes", "1,2"]
    assert main([*serve_args, "--shapes", "chain:2", "--max-tokens", "6", "--rounds", "1"]) == 0
    capsys.readouterr()

    out = tmp_path / "nb"
    settings = {
        "TARGET": micro_target_dir,
        "RUN": run,
        "DATA": data,
        "SERVE": tmp_path / "serve" / "result.json",
        "OUT": out,
        "SHAPES": "chain:2,tree:2:2:3",
        "BATCH_SIZES": "1,2",
        "PROMPTS": "3",
        "MAX_NEW_TOKENS": "8",
    }
    summary = _run_notebook("acceptance.ipynb", settings, monkeypatch, timeout=600)
    assert summary == json.loads((out / "summary.json").read_text())
    assert set(summary["acceptance"]) == {"1", "2"}
    for per_shape in summary["acceptance"].values():
        assert set(per_shape) == {"plain", "chain:2", "tree:2:2:3"}
        assert per_shape["plain"]["tau"] == 1.0
        for name in ("chain:2", "tree:2:2:3"):
            r = per_shape[name]
            assert r["lossless"] is True and r["tau"] > 1.2 and r["speedup"] > 0
            # tau = 1 + the accepted tokens per sequence step, one per depth (less where
            # max_new_tokens cut a step short)
            acc = r["acceptance_per_position"]
            assert len(acc) <= 2 and all(0.0 <= a <= 1.0 for a in acc)
            assert r["tau"] <= 1.0 + sum(acc) + 1e-9
    assert summary["serve_batch_sizes"] == [1, 2]
    assert (out / "acceptance.png").stat().st_size > 1000 and (out / "serve.png").stat().st_size > 1000


def test_fidelity_notebook_plots_the_committed_comparison(tmp_path, monkeypatch):
    results = NOTEBOOKS.parent / "benchmarks" / "fidelity.json"
    record = json.loads(results.read_text())
    summary = _run_notebook("fidelity.ipynb", {"FIDELITY": results, "OUT": tmp_path}, monkeypatch)
    expected = {f"{name}/{key}" for name, r in record["targets"].items() for key in r["vllm"]}
    assert set(summary) == expected
    for key, s in summary.items():
        name, temp = key.split("/")
        r = record["targets"][name]
        assert (
            s["vllm"] == r["vllm"][temp]["tau"] and s["served_estimate"] == r["served_estimate"][temp]["tau"]
        )
        assert s["error"] == s["served_estimate"] / s["vllm"] - 1
    assert (tmp_path / "fidelity.png").stat().st_size > 5000


def test_batch_tradeoff_notebook_plots_the_committed_serving_sweep(tmp_path, monkeypatch):
    sweep = NOTEBOOKS.parent / "benchmarks" / "serve-smollm2.json"
    report = json.loads(sweep.read_text())
    summary = _run_notebook("batch_tradeoff.ipynb", {"SWEEP": sweep, "OUT": tmp_path}, monkeypatch)
    # every arm the issue asks for, at every batch size it asks for
    assert {"none", "k1", "k2", "k3", "k4", "k5", "vllm-table", "native-table", "specforge"} <= set(
        summary["arms"]
    )
    assert summary["batch_sizes"] == [1, 2, 4, 8, 16, 32, 64] == report["batch_sizes"]
    assert summary["bar"] == report["bar"]
    # the cost model's prediction was compared with a measurement for every static k and no speculation
    assert set(summary["predicted_over_measured"]) == {"0", "1", "2", "3", "4", "5"}
    assert all(0.2 < r < 5 for r in summary["predicted_over_measured"].values())
    for name in ("throughput", "plugin_k", "step_times"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
