"""`specforge calibrate --vllm`: vLLM's whole step time per (batch size, k), and the policy file.

Contract: :func:`calibrate_vllm` times whole vLLM steps per (batch size, k <= k_max) in one engine with
the plugin on, and writes the policy file the plugin serves with (step table, acceptance seed,
metadata). The workloads (``--workload``):

* ``burst`` (the default): each (batch size, k) is whole batches submitted at once at one k, the
  steady decode steps timed.
* ``closed``: ``B`` clients in a closed loop while the plugin's explore mode cycles k every few
  steps, steps with prefills timed too. With the policies it gave, the plugin served at 0.70-0.88x
  and 0.74-0.83x the best static setting in two sweeps here (cause not separated from
  engine-to-engine noise), so it is not the default.
* ``held``: every k is a pinned arm of one engine, served in a closed loop as ``bench serve`` serves
  a static k, k held for the whole measurement; a cell is the mean of every step at exactly ``B``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from serving.acceptance import alpha_from_histograms
from serving.step_cost import StepTable
from serving.vllm_plugin.adaptive import ENV, STEP_LOG_ENV
from serving.vllm_plugin.harness.progress import PROGRESS_ENV, ProgressReader, describe
from serving.vllm_plugin.harness.runner import run_vllm
from serving.vllm_plugin.policy_file import (
    load_policy,
    native_schedule,
    write_explore_file,
    write_policy_file,
)
from specforge.bench.step_fit import start_cost, step_table
from specforge.bench.vllm_workload import (
    BATCH_SIZES,
    LENGTHS,
    ROUND_TIMEOUT_S,
    SWEEP_ENV,
    WORKLOADS,
    arm_decode_cells,
    check_choice,
    sweep_request,
)

# Closed-loop calibration: k changes every EXPLORE_HOLD steps; the first EXPLORE_SKIP after a change
# are not timed (the first steps at a new k run slower).
EXPLORE_HOLD, EXPLORE_SKIP = 10, 3
CALIBRATE_WORKLOADS = ("burst", "closed", "held")  # calibrate --vllm --workload (see calibrate_vllm)
CALIBRATE_PER_SLOT = 8  # requests per client while calibrating: ~40 timed steps per k at batch 64


def held_cells(rows: list[dict]) -> list[dict]:
    """Step-log cells (batch size, k, steps, mean seconds) from the rows of arms pinned to ``k<K>``:
    per (arm, batch size), the decode steps at exactly that batch size of every timed measurement
    (with a ``time_mixed`` explore file, as ``held`` writes it, steps that start requests too)."""
    return [{**c, "k": int(arm[1:])} for arm, cells in arm_decode_cells(rows).items() for c in cells]


def calibrate_vllm(
    target: Path,
    draft: Path,
    alpha: list[float],
    prompts: list[list[int]],
    workdir: Path,
    k_max: int = 5,
    batch_sizes: list[int] | None = None,
    max_tokens: int = 96,
    repeats: int = 2,
    workload: str = "burst",
    lengths: str = "fixed",
    skip_draft_at_k0: bool = True,
    prefix_caching: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[Path, StepTable]:
    """Measure vLLM's step time per (batch size, k <= k_max) and write ``workdir/policy.json``.

    ``burst``: each (batch size, k) is ``1 + repeats`` whole batches at constant k, the first
    untimed (steady decode steps only). ``closed``: ``B`` requests kept in flight (8 per client)
    while k cycles every ``EXPLORE_HOLD`` steps (the first ``EXPLORE_SKIP`` of each hold untimed),
    so every k is timed over the same stretch of time and request mix, steps that start new
    requests included. ``held``: every k served as a paired sweep serves a static arm: ``B``
    clients in a closed loop (as ``bench serve --workload closed``), k held for the whole
    measurement, the arms (k = 0..k_max) in a shuffled order at each batch size after one untimed
    pass, ``repeats`` times; a cell is the mean of the decode steps at exactly ``B`` in the timed
    measurements, those that start a request included (no separate start cost), so each batch size
    is timed over the steps a server at that load runs (burst timed few steps at large batch: only
    the first steps of each batch run all ``B``; at B = 64 in a closed loop most steps start one).

    ``lengths`` as in the sweep: calibrate with the lengths the server will see (natural: contexts
    grow and batches shrink as answers end, and every batch size passed on the way is timed). ``skip_draft_at_k0``: k = 0 is timed, and served, without the draft (see
    :mod:`serving.vllm_plugin.draft_skip`). ``alpha``, the head's offline acceptance, seeds the
    policy only at positions the run measured too rarely: the acceptance measured on ``prompts``
    seeds the rest (``meta`` in the file keeps both). ``log`` gets one line per measured batch (or
    closed-loop measurement) as the engine finishes it."""
    check_choice("workload", workload, CALIBRATE_WORKLOADS)
    check_choice("lengths", lengths, LENGTHS)
    sizes = batch_sizes or BATCH_SIZES
    workdir.mkdir(parents=True, exist_ok=True)
    ks = list(range(k_max + 1))
    steps_log = workdir / "explore_steps.json"
    steps_log.unlink(missing_ok=True)
    spec = {
        "draft": str(draft),
        "num_speculative_tokens": k_max,
        "num_speculative_tokens_per_batch_size": [[1, max(sizes), k_max]],
    }
    burst_ks: list[str] = []  # burst: what each measurement runs (its progress line names no arm)
    if workload == "closed":
        explore = write_explore_file(
            workdir / "explore.json",
            ks,
            hold=EXPLORE_HOLD,
            skip_steps=EXPLORE_SKIP,
            time_mixed=True,
            skip_draft_at_k0=skip_draft_at_k0,
        )
        req = {
            **sweep_request(target, prompts, max_tokens, sizes, repeats, per_slot=CALIBRATE_PER_SLOT),
            **spec,
        }
    elif workload == "held":
        # Pinned arms take over the lookup; the explore file only switches the plugin on and times
        # every step, those that start requests too (time_mixed): a loaded server's step at B.
        explore = write_explore_file(
            workdir / "explore.json", ks, hold=1, time_mixed=True, skip_draft_at_k0=skip_draft_at_k0
        )
        req = {
            **sweep_request(target, prompts, max_tokens, sizes, repeats, per_slot=WORKLOADS["closed"]),
            **spec,
        }
        req["sweep"] = {**req["sweep"], "arms": {f"k{k}": k for k in ks}}
    else:
        # The first batch after a change of k, or at a new batch size, ran up to 35 % slower.
        explore = write_explore_file(
            workdir / "explore.json",
            ks,
            hold=0,
            drains_per_k=1 + repeats,
            skip_drains=1,
            skip_draft_at_k0=skip_draft_at_k0,
        )
        req = {**sweep_request(target, prompts, max_tokens, sizes, repeats=1), **spec}
        order = [(b, k) for b in sizes for k in ks for _ in range(1 + repeats)]
        burst_ks = [f"k={k}" for _, k in order]  # the k the plugin runs each measurement at
        req["sweep"] = {**req["sweep"], "batch_sizes": [b for b, _ in order], "warmup": False}
    req["ignore_eos"] = lengths != "natural"
    if not prefix_caching:
        req["enable_prefix_caching"] = False
    progress = ProgressReader(workdir / "progress.jsonl")

    def show() -> None:
        for p in progress.new():  # a calibration runs for tens of minutes on a real target
            log(f"calibrating {describe(p, burst_ks[p['done'] - 1] if burst_ks else None)}")

    log(f"calibrating vLLM step times ({workload}): k = 0..{k_max} at batch sizes {sizes}")
    res = run_vllm(
        req,
        workdir / "explore",
        timeout=ROUND_TIMEOUT_S,
        env={**SWEEP_ENV, ENV: str(explore), STEP_LOG_ENV: str(steps_log), PROGRESS_ENV: str(progress.path)},
        poll=show,
    )
    recorded = json.loads(steps_log.read_text())
    cells = recorded["steps"] if workload != "held" else held_cells(res["sweep"])
    table = step_table(cells, ks)
    # The acceptance the engine measured on these prompts seeds the policy; the head's offline
    # alpha_k (teacher-forced features) fills positions measured too rarely. Offline, this head's
    # alpha_1 read 0.69; vLLM served it at 0.48-0.49, and a policy seeded offline speculated at
    # every batch size until it had learnt that.
    hists = {int(k): h for k, h in recorded.get("accepted", {}).items()}
    measured = alpha_from_histograms(hists)
    seed = measured + list(alpha[len(measured) :])
    # held: a cell's mean step already carries the starts a closed loop at B runs (time_mixed)
    starts = (
        None
        if workload == "held"
        else start_cost(recorded.get("starts", {}), table, recorded.get("finished", {}), max_tokens)
    )
    policy = write_policy_file(
        workdir / "policy.json",
        table,
        starts=starts,
        alpha=seed,
        ks=[k for k in ks if k > 0],
        meta={
            "target": str(target),
            "draft": str(draft),
            "max_tokens": max_tokens,
            "workload": workload,
            "lengths": lengths,
            "alpha_offline": list(alpha),
            "alpha_measured": measured,
        },
        skip_draft_at_k0=skip_draft_at_k0,
    )
    write_native_schedule(workdir / "vllm_schedule.json", policy, k_max, max(sizes))
    return policy, table


def write_native_schedule(path: Path, policy_file: Path, k_max: int, max_batch: int) -> list[list[int]]:
    """The policy's batch-size table in vLLM's own format (``num_speculative_tokens_per_batch_size``),
    for a server without the plugin, written atomically beside the policy file."""
    schedule = native_schedule(load_policy(policy_file, k_max), max_batch, k_max)
    doc = {
        "num_speculative_tokens": k_max,
        "num_speculative_tokens_per_batch_size": schedule,
        "policy": str(policy_file),
        "note": "vLLM's static table from the policy's seeded acceptance; the plugin also follows the "
        "requests in the batch and learns online. vLLM drops this table when data parallelism > 1.",
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return schedule
