"""The main job on the embedded default, end to end (``specforge demo``).

Contract: :func:`run_demo` builds (or reuses) the tiny target, writes the demo conversations,
regenerates their assistant turns with the target (greedy), trains an EAGLE-3 head from offline
hidden-state shards with ``recipes/tiny-eagle3.yaml``, exports it for vLLM, serves it in the real
vLLM (k-token chain) at temperature 0 and 1, and writes ``summary.json`` with tau, acceptance per
position, the speed-up over plain decoding and the distinct-4-gram ratio of the measured outputs.
Every stage is cached or resumable, so a second run only repeats what changed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from specforge.config import load_train_config
from specforge.data.demo import write_demo_dataset
from specforge.data.regenerate import regenerate
from specforge.targets.loader import load_target
from specforge.targets.tiny import build_tiny_target

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny-eagle3.yaml"


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_demo(
    workdir: Path,
    max_train: int = 3000,
    max_heldout: int = 200,
    regen_tokens: int = 128,
    max_prompt_chars: int = 360,
    k: int = 4,
    bench_prompts: int = 32,
    bench_tokens: int = 128,
    train_overrides: list[str] | None = None,
    serve: bool = True,
) -> dict:
    t0 = time.time()
    stages: dict[str, float] = {}
    target_dir = build_tiny_target()
    report = json.loads((target_dir / "build_report.json").read_text())
    _log(
        f"target {target_dir}: {report['parameters'] / 1e6:.2f}M parameters, {report['shape']['num_layers']} layers x "
        f"{report['shape']['hidden_size']}, held-out loss {report['heldout_loss']}, distinct-4 {report['distinct4_mean']}"
    )
    stages["target"] = time.time() - t0

    data = workdir / "data"
    if not (data / "train.jsonl").is_file():
        # Short prompts: the tiny target was trained on 256-token windows, so prompt + response
        # should stay within ~256 positions.
        counts = write_demo_dataset(data, max_train, max_heldout, max_prompt_chars=max_prompt_chars)
        _log(f"demo conversations {counts}")
    t = time.time()
    target = load_target(target_dir)
    for split in ("heldout", "train"):
        res = regenerate(
            target,
            data / f"{split}.jsonl",
            data / f"{split}.regen.jsonl",
            batch_size=32,
            max_new_tokens=regen_tokens,
        )
        _log(f"regenerated {split}: {res['rows']} conversations{' (cached)' if res.get('cached') else ''}")
    del target
    stages["regenerate"] = time.time() - t

    t = time.time()
    cfg = load_train_config(
        RECIPE,
        [
            f"output_dir={workdir / 'run'}",
            f"capture_dir={workdir / 'capture'}",
            f"data.train={data / 'train.regen.jsonl'}",
            f"data.eval={data / 'heldout.regen.jsonl'}",
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
    _log(
        f"trained EAGLE-3 head: simulated tau {final.get('eval/tau', float('nan')):.2f} on held-out "
        f"({cfg.ttt.steps}-step chain), alphas {[round(final.get(f'eval/alpha_{i}', 0), 3) for i in range(cfg.ttt.steps)]}"
    )
    stages["train"] = time.time() - t

    from specforge.export import export_vllm

    draft_dir = export_vllm(workdir / "run", workdir / "draft-vllm", force=True)  # the demo owns its workdir
    _log(f"exported the vLLM draft to {draft_dir}")
    summary: dict = {
        "target": str(target_dir),
        "target_report": {k2: report[k2] for k2 in ("parameters", "heldout_loss", "distinct4_mean")},
        "train": final,
        "draft": str(draft_dir),
    }
    if serve:
        from specforge.bench.vllm_chain import bench_vllm_chain

        t = time.time()
        for temp in (0.0, 1.0):
            res = bench_vllm_chain(
                target_dir,
                draft_dir,
                data / "heldout.jsonl",
                workdir / f"vllm-t{temp:g}",
                k=k,
                temperature=temp,
                max_tokens=bench_tokens,
                limit=bench_prompts,
            )
            summary[f"vllm_temperature_{temp:g}"] = res
            _log(
                f"vLLM k={k} temperature {temp:g}: tau {res['tau']:.2f}, acceptance per position "
                f"{[round(a, 3) for a in res['acceptance_per_position']]}, speed-up {res['speedup']:.2f}x, "
                f"distinct-4 {res['distinct4']:.3f}" + (f", lossless {res['lossless']}" if temp == 0 else "")
            )
        stages["vllm"] = time.time() - t
    summary["stage_seconds"] = {k2: round(v, 1) for k2, v in stages.items()}
    summary["seconds"] = round(time.time() - t0, 1)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    _log(f"done in {summary['seconds']:.0f} s; summary in {workdir / 'summary.json'}")
    return summary
