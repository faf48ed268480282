"""`specforge bench serve`: throughput per batch size of the real vLLM, with and without the plugin.

Contract
--------
* The prompts: held-out chat prompts whose regenerated (target-greedy) answer has at least
  ``max_tokens`` tokens, so every request decodes ``max_tokens`` real answer tokens (``ignore_eos``
  keeps the batch size fixed without running past the end of an answer). With ``lengths="natural"``:
  answers of at least ``max_tokens // 4`` tokens, each request ending where the target ends it (at
  most ``max_tokens``), so requests finish at different steps for every configuration. Fixed
  lengths keep no speculation in lock-step (a whole batch ends, and is refilled, in one step).
* The workload at batch size (concurrency) ``B``:
  - ``closed`` (default): ``B`` clients each send their next request as soon as their last one
    finishes, ``max(8, 4 B)`` requests in all; throughput counts the tokens and seconds until the
    last request is sent, the window in which exactly ``B`` requests are in flight. This is how a
    loaded server runs: a finished request's slot is refilled at once.
  - ``burst``: ``B`` prompts are submitted at once and the batch drains before the next group, in
    ``max(1, 8 // B)`` groups. A speculative batch then waits for its slowest request: the drain
    steps at a shrinking batch (static k = 2, batch 16: 90-220 ms) cost about as much as the
    full-batch steps before them (~150 ms).
* Configurations: ``none`` (no speculation), ``k1``..``kK`` (static EAGLE-3
  chains), ``vllm-table`` (vLLM's ``num_speculative_tokens_per_batch_size``, set as vLLM's docs set
  it for EAGLE-3), and ``specforge`` (the adaptive plugin with a policy from
  :func:`calibrate_vllm`).
* Design ``paired`` (default): one process serves every configuration as an *arm*. No speculation
  is a second engine without a draft (a speculative engine always carries its draft); every other
  configuration is an arm of one engine with the plugin on, whose lookup is pinned to the arm's k (``k1``..``kK``), to vLLM's table expanded by vLLM's own function
  (``vllm-table``), or left to the policy (``specforge``) before each measurement; at every (repeat,
  batch size) all arms run back to back in a shuffled order. Engine-to-engine noise (±25 % between
  rounds here) then cancels out of the ratios the bar is about. The arms' engine is configured as
  a user configures vLLM's table (``num_speculative_tokens`` = K plus a batch-size schedule), so a
  static arm is vLLM's table with one k, not an engine started with ``num_speculative_tokens=k``.
  Design ``engines``: a fresh engine per configuration, as before. Design ``lockstep``
  (:mod:`serving.vllm_plugin.lockstep`): one engine per configuration, each configured as a user
  would (static k: ``num_speculative_tokens=k``), all in one process, taking turns of
  ``turn_steps`` steps, each timed on its own clock. Identical engines then differed by 2-4 %
  (standard deviation of the log ratio) instead of 15-20 %, but the engines slow each other down
  (one step per turn: ~15 % slower than alone), and the slow-down favoured speculation (static k = 1
  / none at batch 16: 1.065 in lockstep, 1.015 alone, 20 paired samples each); with turns of 32
  steps (the default), 1.023 (0.97 alone), the spread halved, not more. Opt-in, for that reason.
* Noise: every round runs every engine once, in a shuffled order; inside an engine each batch size
  is measured ``repeats`` times in alternating order. A cell's figure is the median over rounds and
  repeats. :func:`serve_summary` checks the bar in ``BAR``.
* Every engine also times its own steady decode steps (the plugin's step recorder, switched on by
  ``SPECFORGE_STEP_LOG`` without a policy for the other configurations): the summary's
  ``decode_steps`` gives decode goodput per (configuration, batch size), ``B x emitted / step``,
  from medians over hundreds of steps: a far less noisy view than end-to-end throughput.
* :func:`calibrate_vllm` measures whole vLLM steps per (batch size, k) in one engine whose k the
  plugin cycles (explore mode), and writes the policy file the plugin serves with. ``burst`` (the
  default): each (batch size, k) is whole batches at one k, steady decode steps timed. ``closed``:
  the closed loop above while k changes every few steps, steps with prefills timed too; with the
  policies it gave, the plugin served at 0.70-0.88x and 0.74-0.83x the best static setting in two
  sweeps here (cause not separated from engine-to-engine noise), so it is not the default.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable
from pathlib import Path

from serving.acceptance import alpha_from_histograms
from serving.step_cost import StepTable
from serving.vllm_plugin.adaptive import ENV, STEP_LOG_ENV
from serving.vllm_plugin.lockstep import TURN_STEPS
from serving.vllm_plugin.offline import PLAIN, run_vllm
from serving.vllm_plugin.policy_file import write_explore_file, write_policy_file
from specforge.bench.step_fit import start_cost, step_table
from specforge.bench.sweep import decode_summary, serve_summary
from specforge.data.formats import load_rows
from specforge.errors import SpecforgeError
from specforge.targets import load_tokenizer

BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64]
# Each measurement serves at least this many distinct prompts (batch 1: eight requests in a row), so a
# small batch's figure is not one prompt's acceptance.
MIN_REQUESTS = 8
# The engine core in the measuring process: on a 2-core machine a separate engine-core process
# competes with the front end for one core, which made identical measurements differ by up to 1.6x.
SWEEP_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# vLLM's documented EAGLE-3 schedule (docs/features/speculative_decoding/dynamic_speculative_decoding.md).
VLLM_DOCS_TABLE = [[1, 16, 5], [17, 32, 4], [33, 64, 3], [65, 128, 1], [129, 512, 0]]
WORKLOADS = {"closed": 4, "burst": 0}  # workload -> requests per client (0: B at once, then drain)
# paired: every speculative configuration in one engine, switched between measurements (see offline.py);
# engines: a fresh engine per configuration.
DESIGNS = ("paired", "lockstep", "engines")
# fixed: every request decodes max_tokens tokens (ignore_eos); natural: each request ends where the
# target ends its answer, at most max_tokens (prompts whose regenerated answer has >= max_tokens / 4).
LENGTHS = ("fixed", "natural")
# Closed-loop calibration: k changes every EXPLORE_HOLD steps; the first EXPLORE_SKIP after a change
# are not timed (the first steps at a new k run slower).
EXPLORE_HOLD, EXPLORE_SKIP = 10, 3
# Variants of the plugin a paired sweep can add (--variants): name -> policy-file keys overridden
VARIANTS: dict[str, dict] = {
    "probe": {"cell_prior": 5.0},  # per-batch-bucket step ratios, learnt with probes of the runner-up k
    "noprobe": {"cell_prior": None},
}
# One engine's run in a sweep (a paired round serves every arm at every batch size: 15-19 minutes
# with 9 arms on the AVX2 machine, natural lengths up to 128 tokens, 3 repeats)
ROUND_TIMEOUT_S = 4 * 3600
CALIBRATE_WORKLOADS = ("burst", "closed", "held")  # calibrate --vllm --workload (see calibrate_vllm)
CALIBRATE_PER_SLOT = 8  # requests per client while calibrating: ~40 timed steps per k at batch 64


def min_answer_tokens(max_tokens: int, lengths: str, fixed: int) -> int:
    """The shortest regenerated answer a prompt needs: ``fixed`` tokens with fixed lengths; with
    natural lengths a quarter of ``max_tokens``, so requests end at different steps."""
    return max_tokens // 4 if lengths == "natural" else fixed


def long_answer_prompts(target_dir: Path, regen_data: Path, min_answer_tokens: int) -> list[list[int]]:
    """Token prompts (first user turn, chat template) whose first assistant answer in ``regen_data``
    (the target's own regenerated answers) has at least ``min_answer_tokens`` tokens."""
    tok = load_tokenizer(target_dir)
    rows, _ = load_rows(regen_data)
    prompts = []
    for r in rows:
        msgs = r["messages"]
        i = next((j for j, m in enumerate(msgs) if m["role"] == "assistant"), None)
        if i is None or len(tok(msgs[i]["content"])["input_ids"]) < min_answer_tokens:
            continue
        ids = tok.apply_chat_template(msgs[:i], add_generation_prompt=True)
        prompts.append(list(ids["input_ids"] if hasattr(ids, "input_ids") else ids))
    if not prompts:
        raise SpecforgeError(
            f"no conversation in {regen_data} has an answer of >= {min_answer_tokens} tokens: "
            "lower --max-tokens or regenerate with more new tokens"
        )
    return prompts


def draft_alpha(run_dir: Path, k: int) -> list[float]:
    """The head's offline conditional acceptance alpha_1..alpha_k from its training summary."""
    path = Path(run_dir) / "train_summary.json"
    if not path.is_file():
        raise SpecforgeError(f"{path} not found: pass the training run directory of the draft (--run)")
    summary = json.loads(path.read_text())
    summary = summary.get("final", summary)  # a training run keeps its last evaluation under "final"
    alpha = [summary[f"eval/alpha_{i}"] for i in range(k) if f"eval/alpha_{i}" in summary]
    if not alpha:
        raise SpecforgeError(f"{path} has no eval/alpha_* entries: train with evaluation switched on")
    return alpha


def _base(
    target: Path,
    prompts: list[list[int]],
    max_tokens: int,
    batch_sizes: list[int],
    repeats: int,
    per_slot: int = 0,
) -> dict:
    return {
        "target": str(target),
        "prompts": prompts,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "max_num_seqs": max(batch_sizes),
        "max_model_len": 1024,
        "sweep": {
            "batch_sizes": batch_sizes,
            "repeats": repeats,
            "min_requests": MIN_REQUESTS,
            "closed_loop": per_slot,
        },
    }


def _engine_configs(
    draft: Path,
    ks: list[int],
    sizes: list[int],
    policy: Path,
    design: str,
    variants: dict[str, dict] | None = None,
) -> dict[str, tuple[dict, dict]]:
    """Per engine: the request's speculative settings and the environment. ``engines``: one engine per
    configuration. ``paired``: one process, every configuration an arm: the speculative ones of one
    engine with the plugin on, no speculation of a second engine without a draft beside it; each
    name in ``variants`` (name -> policy-file keys, :func:`variant_overrides`) adds the arm
    ``specforge-<name>``: the plugin with those
    policy-file keys overridden, learning from its own steps."""
    spec = {"draft": str(draft)}
    plugin = (
        {
            **spec,
            "num_speculative_tokens": max(ks),
            "num_speculative_tokens_per_batch_size": [[1, max(sizes), max(ks)]],
        },
        {**SWEEP_ENV, ENV: str(policy)},
    )
    if design == "lockstep":
        chain = {"method": "eagle3", "model": str(draft)}
        steps: dict = {"none": {"speculative_config": None}}
        steps.update({f"k{k}": {"speculative_config": {**chain, "num_speculative_tokens": k}} for k in ks})
        steps["vllm-table"] = {
            "speculative_config": {
                **chain,
                "num_speculative_tokens": max(ks),
                "num_speculative_tokens_per_batch_size": VLLM_DOCS_TABLE,
            }
        }
        steps["specforge"] = {
            "speculative_config": {
                **chain,
                "num_speculative_tokens": max(ks),
                "num_speculative_tokens_per_batch_size": [[1, max(sizes), max(ks)]],
            },
            "plugin": True,
        }
        return {"lockstep": ({"sweep": {"design": "lockstep", "arms": steps}}, plugin[1])}
    if design == "paired":
        arms: dict = {"none": PLAIN}
        arms.update({f"k{k}": k for k in ks})
        arms.update({"vllm-table": VLLM_DOCS_TABLE, "specforge": None})
        arms.update({f"specforge-{name}": {"policy": keys} for name, keys in (variants or {}).items()})
        return {"paired": ({**plugin[0], "sweep": {"arms": arms}}, plugin[1])}
    configs: dict[str, tuple[dict, dict]] = {"none": ({}, SWEEP_ENV)}
    for k in ks:
        configs[f"k{k}"] = ({**spec, "num_speculative_tokens": k}, SWEEP_ENV)
    configs["vllm-table"] = (
        {**spec, "num_speculative_tokens": max(ks), "num_speculative_tokens_per_batch_size": VLLM_DOCS_TABLE},
        SWEEP_ENV,
    )
    configs["specforge"] = plugin
    return configs


def _arm_decode_cells(rows: list[dict]) -> dict[str, list[dict]]:
    """A paired engine's per-measurement decode steps, as step-log cells per arm (one per batch size)."""
    acc: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        d = r.get("decode") or {}
        cell = acc.setdefault((r["config"], r["batch_size"]), [0, 0.0, 0.0])
        cell[0] += d.get("steps", 0)
        cell[1] += d.get("seconds", 0.0)
        cell[2] += d.get("tokens", 0.0)
    out: dict[str, list[dict]] = {}
    for (arm, b), (n, sec, tok) in acc.items():
        if n:
            out.setdefault(arm, []).append(
                # k = -1: an arm's steps may mix k (the plugin's, vLLM's table); the summary ignores k
                {"batch_size": b, "k": -1, "steps": n, "seconds": sec / n, "emitted": tok / (n * b)}
            )
    return out


def variant_overrides(spec: str) -> tuple[str, dict]:
    """A ``--variants`` entry: a name in :data:`VARIANTS`, or ``NAME=POLICY.json``, the plugin served
    from another policy file (every key of that file overrides the sweep's, e.g. another
    calibration's step table), as arm ``specforge-NAME``."""
    if "=" not in spec:
        _check_choice("variant", spec, VARIANTS)
        return spec, VARIANTS[spec]
    name, path = (x.strip() for x in spec.split("=", 1))
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SpecforgeError(f"variant {spec!r}: name it with letters, digits, - or _ before the '='")
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SpecforgeError(f"variant {name!r}: {path} is not a readable policy file ({e})") from None
    if not isinstance(raw, dict) or "alpha" not in raw or not ({"steps", "cost"} & set(raw)):
        raise SpecforgeError(
            f"variant {name!r}: {path} is not a plugin policy file (no alpha and steps): "
            "write one with specforge calibrate --vllm"
        )
    return name, raw


def held_cells(rows: list[dict]) -> list[dict]:
    """Step-log cells (batch size, k, steps, mean seconds) from the rows of arms pinned to ``k<K>``:
    per (arm, batch size), the decode steps at exactly that batch size of every timed measurement
    (with a ``time_mixed`` explore file, as ``held`` writes it, steps that start requests too)."""
    return [{**c, "k": int(arm[1:])} for arm, cells in _arm_decode_cells(rows).items() for c in cells]


def _check_choice(what: str, value: str, choices) -> None:
    if value not in choices:
        raise SpecforgeError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")


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
    seeds the rest (``meta`` in the file keeps both)."""
    _check_choice("workload", workload, CALIBRATE_WORKLOADS)
    _check_choice("lengths", lengths, LENGTHS)
    sizes = batch_sizes or BATCH_SIZES
    workdir.mkdir(parents=True, exist_ok=True)
    ks = list(range(k_max + 1))
    log = workdir / "explore_steps.json"
    log.unlink(missing_ok=True)
    spec = {
        "draft": str(draft),
        "num_speculative_tokens": k_max,
        "num_speculative_tokens_per_batch_size": [[1, max(sizes), k_max]],
    }
    if workload == "closed":
        explore = write_explore_file(
            workdir / "explore.json",
            ks,
            hold=EXPLORE_HOLD,
            skip_steps=EXPLORE_SKIP,
            time_mixed=True,
            skip_draft_at_k0=skip_draft_at_k0,
        )
        req = {**_base(target, prompts, max_tokens, sizes, repeats, per_slot=CALIBRATE_PER_SLOT), **spec}
    elif workload == "held":
        # Pinned arms take over the lookup; the explore file only switches the plugin on and times
        # every step, those that start requests too (time_mixed): a loaded server's step at B.
        explore = write_explore_file(
            workdir / "explore.json", ks, hold=1, time_mixed=True, skip_draft_at_k0=skip_draft_at_k0
        )
        req = {**_base(target, prompts, max_tokens, sizes, repeats, per_slot=WORKLOADS["closed"]), **spec}
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
        req = {**_base(target, prompts, max_tokens, sizes, repeats=1), **spec}
        order = [b for b in sizes for _ in ks for _ in range(1 + repeats)]
        req["sweep"] = {**req["sweep"], "batch_sizes": order, "warmup": False}
    req["ignore_eos"] = lengths != "natural"
    res = run_vllm(
        req,
        workdir / "explore",
        timeout=ROUND_TIMEOUT_S,
        env={**SWEEP_ENV, ENV: str(explore), STEP_LOG_ENV: str(log)},
    )
    recorded = json.loads(log.read_text())
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
    return policy, table


def bench_serve_vllm(
    target: Path,
    draft: Path,
    run_dir: Path,
    regen_data: Path,
    workdir: Path,
    batch_sizes: list[int] | None = None,
    static_ks: list[int] | None = None,
    max_tokens: int = 48,
    rounds: int = 3,
    repeats: int = 2,
    seed: int = 0,
    policy: Path | None = None,
    workload: str = "closed",
    calibration: str = "burst",
    design: str = "paired",
    lengths: str = "fixed",
    skip_draft_at_k0: bool = True,
    log: Callable[[str], None] = print,
    turn_steps: int = TURN_STEPS,
    variants: list[str] | None = None,
) -> dict:
    _check_choice("workload", workload, WORKLOADS)
    _check_choice("calibration", calibration, CALIBRATE_WORKLOADS)
    arms_of_variants = dict(variant_overrides(v) for v in variants or ())
    if variants and design != "paired":
        raise SpecforgeError(
            "--variants needs --design paired (the variants are arms of the plugin's engine)"
        )
    _check_choice("design", design, DESIGNS)
    _check_choice("lengths", lengths, LENGTHS)
    sizes = batch_sizes or BATCH_SIZES
    ks = static_ks or [1, 2, 3, 4, 5]
    k_max = max(ks)
    workdir.mkdir(parents=True, exist_ok=True)
    prompts = long_answer_prompts(target, regen_data, min_answer_tokens(max_tokens, lengths, max_tokens))
    alpha = draft_alpha(run_dir, k_max)
    policy_given = policy
    if policy is None:
        log(f"calibrating vLLM step times for k <= {k_max} at batch sizes {sizes}")
        policy, _ = calibrate_vllm(
            target,
            draft,
            alpha,
            prompts,
            workdir / "calibrate",
            k_max,
            sizes,
            max_tokens=max_tokens,
            workload=calibration,
            lengths=lengths,
            skip_draft_at_k0=skip_draft_at_k0,
        )
    base = _base(target, prompts, max_tokens, sizes, repeats, per_slot=WORKLOADS[workload])
    base["ignore_eos"] = lengths != "natural"
    configs = _engine_configs(draft, ks, sizes, policy, design, arms_of_variants)
    rows, choices = [], []
    step_logs: dict[str, list[list[dict]]] = {}  # config -> per round, the engine's timed steps
    rng = random.Random(seed)
    partial = workdir / "partial.json"
    for rnd in range(rounds):
        order = list(configs)
        rng.shuffle(order)
        for name in order:
            extra, env = configs[name]
            wd = workdir / f"round{rnd}" / name
            steps_log = wd / "steps.json"
            steps_log.unlink(missing_ok=True)
            req = {
                **base,
                **extra,
                "sweep": {
                    **base["sweep"],
                    **extra.get("sweep", {}),
                    "seed": rng.randrange(2**31),
                    "turn_steps": turn_steps,
                },
            }
            try:
                res = run_vllm(req, wd, env={**env, STEP_LOG_ENV: str(steps_log)}, timeout=ROUND_TIMEOUT_S)
            except RuntimeError as e:
                done = f"; the rows of the runs that finished are in {partial}" if rows else ""
                raise SpecforgeError(f"round {rnd + 1}/{rounds}, {name}: {e}{done}") from e
            for r in res["sweep"]:
                rows.append({"config": name, "round": rnd, **r})  # a paired arm's row names its own
            logged = json.loads(steps_log.read_text()) if steps_log.is_file() else None
            if "arms" in extra.get("sweep", {}):  # one engine, many arms: each row's own steps
                for arm, cells in _arm_decode_cells(res["sweep"]).items():
                    step_logs.setdefault(arm, []).append(cells)
            elif logged is not None:
                step_logs.setdefault(name, []).append(logged["steps"])
            if logged is not None and ENV in env:  # the engine the plugin served
                choices.append(logged)
            tmp = partial.with_name(partial.name + ".tmp")  # never lose a finished run's rows
            tmp.write_text(json.dumps({"rows": rows}))
            tmp.replace(partial)
            med = statistics.median(r["tokens_per_s"] for r in res["sweep"])
            log(f"round {rnd + 1}/{rounds} {name:>10}: median {med:.0f} tok/s over batch sizes")
    result = {
        "engine": "vllm",
        "target": str(target),
        "draft": str(draft),
        "max_tokens": max_tokens,
        "workload": workload,
        "design": design,
        "lengths": lengths,
        "calibration": calibration if policy_given is None else "given",
        "prompts": len(prompts),
        "batch_sizes": sizes,
        "rounds": rounds,
        "repeats": repeats,
        "policy": json.loads(Path(policy).read_text()),
        "plugin_steps": choices,
        "rows": rows,
    }
    result["summary"] = serve_summary(rows, sizes, adaptive="specforge", table="vllm-table")
    result["summary"]["decode_steps"] = decode_summary(
        step_logs, sizes, adaptive="specforge", table="vllm-table"
    )
    return result
