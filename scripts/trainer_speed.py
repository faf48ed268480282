"""Training throughput and memory, specforge beside the peer trainers, measured in one run.

Runs each arm as its own process, arms interleaved, ``--repeats`` rounds; each arm trains
``--warmup`` + ``--steps`` optimizer steps and reports real tokens/s over the steps after the
warm-up, loss tokens/s, and the peak resident memory of its whole process tree (sampled every
50 ms). Writes one JSON (per-run figures, medians per arm, ratios to the first peer) and prints a
table.

specforge arms run ``python -m specforge.train`` on ``--data`` (the conversations) with the stated
overrides; the offline arms share one capture made before any timing. Peer arms run a command
that prints one JSON line with ``real_tokens_per_s`` (``--peer NAME=COMMAND``; docs/trainer-speed.md
says how the peers were installed and run).

    python scripts/trainer_speed.py --target DIR --data train.jsonl --out benchmarks/trainer-speed.json \
        --peer speculators="bash /work/peers/run_speculators.sh"
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from specforge.targets.dtype import cpu_flags, cpu_name
from specforge.train.loop import WARMUP_STEPS

ARMS = {  # name -> (overrides, what it is)
    "specforge-offline-padded": (
        ["hidden_states=offline", "optim.batch_size=5"],
        "offline shards, rows of similar length batched 5 at a time (padded)",
    ),
    "specforge-offline-packed": (
        ["hidden_states=offline", "optim.batch_size=1", "data.pack_length=1024"],
        "offline shards, rows packed into one row of <= 1,024 tokens",
    ),
    "specforge-online-packed": (
        ["hidden_states=online", "optim.batch_size=1", "data.pack_length=1024"],
        "target run per step on the packed row (block-diagonal attention)",
    ),
    "specforge-online-packed-target-auto": (
        ["hidden_states=online", "optim.batch_size=1", "data.pack_length=1024", "target_dtype=auto"],
        "as online-packed, the target in the dtype chosen for the machine (bf16 with AMX)",
    ),
    "specforge-offline-packed-bf16": (
        ["hidden_states=offline", "optim.batch_size=1", "data.pack_length=1024", "mixed_precision=bf16"],
        "as offline-packed, bf16 autocast",
    ),
}


def sample_tree_rss(proc: subprocess.Popen, stop: threading.Event, peak: list[int]) -> None:
    """Largest summed RSS of ``proc`` and its descendants, sampled every 50 ms."""
    try:
        root = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            peak[0] = max(peak[0], sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        stop.wait(0.05)


def run_measured(cmd: list[str], env: dict, log: Path) -> tuple[int, float, float]:
    """(return code, wall seconds, peak tree RSS in GB)."""
    stop, peak = threading.Event(), [0]
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        sampler = threading.Thread(target=sample_tree_rss, args=(proc, stop, peak), daemon=True)
        sampler.start()
        rc = proc.wait()
    stop.set()
    sampler.join()
    return rc, time.time() - t0, peak[0] / 1e9


def recipe(args: argparse.Namespace, work: Path) -> Path:
    path = work / "recipe.yaml"
    path.write_text(
        json.dumps(
            {
                "target": str(args.target),
                "data": {"train": str(args.data), "max_length": 2048},
                "capture_dir": str(work / "capture"),
                "draft": {"type": "eagle3", "draft_vocab_size": 8192},
                "ttt": {"steps": 7},
                "optim": {"lr": 1e-4, "max_steps": args.warmup + args.steps, "warmup_ratio": 0.0},
                "served_eval": {"prompts": 0},
                "save_every": 1_000_000,
                "log_with": [],
                "progress": False,
            }
        )
    )
    return path


def train_command(work: Path, out: Path) -> list[str]:
    """Our trainer on the work directory's recipe, writing to ``out``."""
    return [
        sys.executable,
        "-m",
        "specforge.train",
        "--config",
        str(work / "recipe.yaml"),
        f"output_dir={out}",
    ]


def specforge_arm(name: str, args, work: Path, run: int) -> dict:
    overrides, _ = ARMS[name]
    out = work / f"{name}-{run}"
    cmd = train_command(work, out)
    rc, wall, rss = run_measured(cmd + overrides, dict(os.environ), work / f"{name}-{run}.log")
    if rc != 0:
        raise SystemExit(f"{name} failed (exit {rc}); see {work / f'{name}-{run}.log'}")
    summary = json.loads((out / "train_summary.json").read_text())
    return {
        "real_tokens_per_s": summary["steady_tokens_per_s"],
        "loss_tokens_per_s": summary["steady_loss_tokens_per_s"],
        "peak_rss_gb": round(rss, 3),
        "padding_fraction": summary["padding_fraction"],
        "wall_s": round(wall, 1),
    }


def peer_arm(name: str, command: str, args, work: Path, run: int) -> dict:
    env = {**os.environ, "STEPS": str(args.steps), "WARMUP": str(args.warmup)}
    log = work / f"{name}-{run}.log"
    rc, wall, rss = run_measured(["bash", "-c", command], env, log)
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{") and "real_tokens_per_s" in ln]
    if rc != 0 or not lines:
        raise SystemExit(f"peer {name} failed (exit {rc}); see {log}")
    got = json.loads(lines[-1])
    return {
        "real_tokens_per_s": got["real_tokens_per_s"],
        "loss_tokens_per_s": got.get("loss_tokens_per_s"),
        "peak_rss_gb": round(rss, 3),
        "version": got.get("version"),
        "notes": got.get("notes"),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="conversations JSONL (specforge data demo)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=25, help="timed optimizer steps per run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--arms", default=",".join(ARMS), help="specforge arms: " + ", ".join(ARMS))
    ap.add_argument("--peer", action="append", default=[], metavar="NAME=COMMAND")
    ap.add_argument("--rescore", action="store_true", help="recompute medians and ratios of --out's runs")
    ap.add_argument(
        "--quality",
        type=Path,
        metavar="HELDOUT",
        help="instead: train padded and packed on the same rows and seed (--epochs) and add their "
        "held-out loss and tau (HELDOUT: conversations JSONL) to --out as 'quality'",
    )
    ap.add_argument("--epochs", type=float, default=3.0, help="--quality: epochs of each run")
    args = ap.parse_args()
    if args.rescore:
        report = json.loads(args.out.read_text())
        base = next((a for a in report["runs"] if a not in ARMS), None)
        report["median"], ratios = summarize(report["runs"], base)
        report.pop(f"real_tokens_per_s_vs_{base}", None)
        report[f"real_tokens_per_s_vs_{base}"] = ratios
        args.out.write_text(json.dumps(report, indent=1))
        print_table(report["median"], ratios, base)
        return
    args.warmup = WARMUP_STEPS  # the trainer's own steady-state rates start after these steps
    if args.quality:
        quality(args)
        return
    peers = dict(p.split("=", 1) for p in args.peer)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    work = Path(tempfile.mkdtemp(prefix="trainer-speed-"))
    recipe(args, work)
    print(f"[trainer-speed] work dir {work}; capturing once (untimed)", flush=True)
    subprocess.run(
        [*train_command(work, work / "capture-run"), "hidden_states=offline", "optim.max_steps=1"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    runs: dict[str, list[dict]] = {a: [] for a in [*arms, *peers]}
    for r in range(args.repeats):
        for name in runs:
            res = (
                specforge_arm(name, args, work, r)
                if name in ARMS
                else peer_arm(name, peers[name], args, work, r)
            )
            runs[name].append(res)
            print(
                f"[trainer-speed] round {r + 1}/{args.repeats} {name}: {res['real_tokens_per_s']:.0f} tok/s, "
                f"{res['peak_rss_gb']:.2f} GB",
                flush=True,
            )
    median, ratios = summarize(runs, next(iter(peers), None))
    base = next(iter(peers), None)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    cpu, flags = cpu_name(), cpu_flags()
    report = {
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "machine": f"{os.cpu_count()}-core {cpu}; amx_bf16={'amx_bf16' in flags}, avx512_bf16={'avx512_bf16' in flags}",
        "setup": {
            "target": str(args.target),
            "data": str(args.data),
            "draft_vocab": 8192,
            "ttt_steps": 7,
            "real_tokens_per_step": "about 1,000",
            "timed_steps": args.steps,
            "warmup_steps": args.warmup,
            "repeats": args.repeats,
            "order": "arms interleaved within each round",
        },
        "arms": {a: ARMS[a][1] for a in arms} | {p: peers[p] for p in peers},
        "runs": runs,
        "median": median,
        **({f"real_tokens_per_s_vs_{base}": ratios} if base else {}),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(args.out)
    print_table(median, ratios, base)


def quality(args: argparse.Namespace) -> None:
    """Packed vs padded after the same tokens: the same rows, seed and epochs, evaluated on the
    held-out conversations at the end (teacher-forced and walked tau, loss)."""
    work = Path(tempfile.mkdtemp(prefix="trainer-quality-"))
    recipe(args, work)
    arms = {
        "padded": ["optim.batch_size=5"],
        "packed": ["optim.batch_size=1", "data.pack_length=1024"],
    }
    common = [
        "hidden_states=offline",
        f"data.eval={args.quality}",
        "data.eval_limit=null",
        "optim.max_steps=null",
        f"optim.epochs={args.epochs}",
        "optim.lr=2e-3",
        "optim.warmup_ratio=0.05",
        "eval_every=1000000",
    ]
    result = {}
    for name, extra in arms.items():
        out = work / name
        cmd = train_command(work, out)
        rc, wall, _ = run_measured(cmd + common + extra, dict(os.environ), work / f"{name}.log")
        if rc != 0:
            raise SystemExit(f"quality run {name} failed (exit {rc}); see {work / f'{name}.log'}")
        summary = json.loads((out / "train_summary.json").read_text())
        final = summary["final"]
        result[name] = {
            "steps": summary["steps"],
            "train_tokens": summary["train_tokens"],
            "heldout_loss": round(final["eval/loss"], 4),
            "heldout_tau_teacher_forced": round(final["eval/tau"], 4),
            "heldout_walk_tau": round(final["eval/walk_tau"], 4),
            "alpha": [round(final[f"eval/alpha_{k}"], 4) for k in range(7) if f"eval/alpha_{k}" in final],
            "wall_s": round(wall, 1),
        }
        print(f"[trainer-speed] quality {name}: {result[name]}", flush=True)
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report["quality"] = {
        "setup": f"the same {args.data} rows, seed 0, {args.epochs} epochs, lr 2e-3, evaluated on all of {args.quality}",
        **result,
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(args.out)


def summarize(runs: dict[str, list[dict]], base: str | None) -> tuple[dict, dict]:
    """Medians per arm, and each arm's tokens/s over the base arm's: the median of the per-round
    ratios (each round runs every arm once, interleaved) with their range."""
    median = {
        name: {k: round(statistics.median(x[k] for x in rs), 3) for k in ("real_tokens_per_s", "peak_rss_gb")}
        for name, rs in runs.items()
    }
    ratios = {}
    if base:
        for name, rs in runs.items():
            per_round = [a["real_tokens_per_s"] / b["real_tokens_per_s"] for a, b in zip(rs, runs[base])]
            ratios[name] = {
                "median": round(statistics.median(per_round), 3),
                "range": [round(min(per_round), 3), round(max(per_round), 3)],
            }
    return median, ratios


def print_table(median: dict, ratios: dict, base: str | None) -> None:
    print(f"{'arm':36} {'real tok/s':>10} {'peak RSS GB':>12} {'vs ' + (base or '-'):>22}")
    for name, m in median.items():
        r = ratios.get(name)
        vs = f"{r['median']:.2f} ({r['range'][0]:.2f}-{r['range'][1]:.2f})" if r else "-"
        print(f"{name:36} {m['real_tokens_per_s']:10.0f} {m['peak_rss_gb']:12.2f} {vs:>22}")


if __name__ == "__main__":
    main()
