"""``specforge bench heads``: draft heads of every type compared on one target, one prompt set.

Contract: :func:`bench_heads` takes trained runs keyed by a row name (``eagle3``, ``eagle1``,
``mtp-d1``, ...) and, for each run and each temperature, runs :func:`bench_acceptance` in the
reference engine on the same held-out prompts: a chain of ``k`` drafts, plus ``tree_shape`` (an
EAGLE-2 dynamic tree of the same depth) when given. Where vLLM can serve the head (its registry
entry has a :class:`~draft_models.registry.VllmLayout`), the run is exported and the same chain is
also measured in the real vLLM. Each (run, temperature) writes ``result.json`` under
``out_dir/<name>/t<T>/`` and is skipped when that file exists, so a killed comparison resumes.

:func:`heads_table` turns those results and each run's ``train_summary.json`` into one row per
head and shape: ``tau`` (greedy, tokens per target forward, bonus included), ``tau_t1``,
``acceptance_per_position``, ``speedup`` (reference engine, the same run's plain decoding),
``vllm`` (tau and speed-up there, or ``None`` where vLLM cannot serve the head), ``lossless``,
and the training ``steps``, ``train_tokens`` and ``train_tokens_per_s``.
"""

from __future__ import annotations

import json
from pathlib import Path

from draft_models.registry import get_draft_type
from serving.shape import TreeShape
from specforge.bench.acceptance import bench_acceptance
from specforge.errors import SpecforgeError
from specforge.files import write_json_atomic


def _run_info(run: Path) -> dict:
    cfg_file, summary_file = run / "draft_config.json", run / "train_summary.json"
    if not cfg_file.is_file() or not summary_file.is_file():
        raise SpecforgeError(
            f"{run} is not a finished training run (no draft_config.json / train_summary.json)"
        )
    cfg = json.loads(cfg_file.read_text())
    summary = json.loads(summary_file.read_text())
    return {"type": cfg["type"], "config": cfg, "summary": summary}


def _temperature_dir(out_dir: Path, name: str, temperature: float) -> Path:
    return out_dir / name / f"t{temperature:g}"


def bench_heads(
    target_dir: Path,
    runs: dict[str, Path],
    data: Path,
    out_dir: Path,
    k: int = 4,
    tree_shape: TreeShape | None = None,
    temperatures: tuple[float, ...] = (0.0, 1.0),
    prompts: int = 16,
    max_new_tokens: int = 96,
    vllm: bool = True,
    vllm_temperatures: tuple[float, ...] | None = None,
) -> dict:
    """Measure every run (name -> training run directory); return :func:`heads_table`'s table.
    vLLM measures the chain at ``vllm_temperatures`` (default: all of ``temperatures``)."""
    vllm_temperatures = temperatures if vllm_temperatures is None else vllm_temperatures
    infos = {name: _run_info(Path(run)) for name, run in runs.items()}  # every run checked first
    shapes = [TreeShape.chain(k)] + ([tree_shape] if tree_shape is not None else [])
    for name, run in runs.items():
        vllm_draft = vllm_target = None
        layout = get_draft_type(infos[name]["type"]).vllm
        if vllm and layout is not None:
            from specforge.export import export_vllm

            try:
                vllm_draft = export_vllm(
                    run, out_dir / name / "vllm-draft", force=True, target_dir=target_dir
                )
            except SpecforgeError as e:  # e.g. an MTP head with D > 1: the reference engine only
                print(f"[bench heads] {name}: not served in vLLM: {e}")
            # an MTP export is the target with the head's layers: it is the model vLLM serves
            vllm_target = vllm_draft if layout.in_target else target_dir
        for t in temperatures:
            work = _temperature_dir(out_dir, name, t)
            if (work / "result.json").is_file():
                continue
            res = bench_acceptance(
                target_dir, Path(run), data, work / "engine", shapes, prompts=prompts,
                max_new_tokens=max_new_tokens, temperature=t,
            )  # fmt: skip
            if vllm_draft is not None and t in vllm_temperatures:
                from specforge.bench.vllm_chain import bench_vllm_chain

                res["results"][f"vllm:chain:{k}"] = bench_vllm_chain(
                    vllm_target, vllm_draft, data, work / f"vllm-chain{k}", k=k, temperature=t,
                    max_tokens=max_new_tokens, limit=prompts, batch_sizes=(1,),
                )  # fmt: skip
            write_json_atomic(work / "result.json", res)
    return heads_table(runs, out_dir, k, tree_shape, temperatures)


def heads_table(
    runs: dict[str, Path],
    out_dir: Path,
    k: int,
    tree_shape: TreeShape | None,
    temperatures: tuple[float, ...],
) -> dict:
    """One row per (head, shape) from the results :func:`bench_heads` wrote."""
    rows = []
    for name, run in runs.items():
        info = _run_info(Path(run))
        results = {}
        for t in temperatures:
            f = _temperature_dir(out_dir, name, t) / "result.json"
            if not f.is_file():
                raise SpecforgeError(f"no result for {name} at temperature {t}: {f} is missing")
            results[t] = json.loads(f.read_text())
        args = results[temperatures[0]]["args"]
        for shape in [TreeShape.chain(k)] + ([tree_shape] if tree_shape is not None else []):
            cells = {t: r["results"][shape.name] for t, r in results.items()}
            greedy = cells[temperatures[0]]
            vllm = None
            served = {t: r["results"].get(f"vllm:chain:{k}") for t, r in results.items()}
            if shape.top_k == 1 and any(served.values()):
                vllm = {
                    f"t{t:g}": {
                        key: v[key] for key in ("tau", "acceptance_per_position", "speedup", "lossless")
                    }
                    for t, v in served.items()
                    if v is not None
                }
            summary = info["summary"]
            rows.append(
                {
                    "head": f"{name}-{'chain' if shape.top_k == 1 else 'tree'}",
                    "draft_type": info["type"],
                    "run": str(run),
                    "shape": shape.name,
                    "tau": greedy["tau"],
                    "acceptance_per_position": greedy["acceptance_per_position"],
                    "speedup": greedy["speedup"],
                    "lossless": greedy["lossless"],
                    **{f"tau_t{t:g}": c["tau"] for t, c in cells.items() if t != temperatures[0]},
                    **{f"speedup_t{t:g}": c["speedup"] for t, c in cells.items() if t != temperatures[0]},
                    **{
                        f"acceptance_per_position_t{t:g}": c["acceptance_per_position"]
                        for t, c in cells.items()
                        if t != temperatures[0]
                    },
                    "vllm": vllm,
                    "steps": summary.get("steps"),
                    "train_tokens": summary.get("train_tokens"),
                    "train_tokens_per_s": summary.get("train_tokens_per_s"),
                    "train_seconds": summary.get("seconds"),
                    "heldout_tau_teacher_forced": summary.get("final", {}).get("eval/tau"),
                }
            )
    return {
        "k": k,
        "tree": tree_shape.name if tree_shape is not None else None,
        "temperatures": list(temperatures),
        "prompts": args["prompts"],
        "max_new_tokens": args["max_new_tokens"],
        "data": args["data"],
        "target": args["target"],
        "speedup_engine": "reference engine (HF target, batch 1, plain decoding in the same run)",
        "heads": rows,
    }
