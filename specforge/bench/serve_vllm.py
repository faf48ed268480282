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
  it for EAGLE-3), ``native-table`` (the table the calibrated policy implies, as ``calibrate``
  writes it for users without the plugin), and ``specforge`` (the adaptive plugin with a policy
  from :func:`calibrate_vllm`).
* Design ``paired`` (default): one process serves every configuration as an *arm*. No speculation
  is a second engine without a draft (a speculative engine always carries its draft); every other
  configuration is an arm of one engine with the plugin on, whose lookup is pinned to the arm's k (``k1``..``kK``), to vLLM's table expanded by vLLM's own function
  (``vllm-table``), or left to the policy (``specforge``) before each measurement; at every (repeat,
  batch size) all arms run back to back in a shuffled order. Engine-to-engine noise (±25 % between
  rounds here) then cancels out of the ratios the bar is about. The arms' engine is configured as
  a user configures vLLM's table (``num_speculative_tokens`` = K plus a batch-size schedule), so a
  static arm is vLLM's table with one k, not an engine started with ``num_speculative_tokens=k``.
  Design ``engines``: a fresh engine per configuration, as before. Design ``lockstep``
  (:mod:`serving.vllm_plugin.harness.lockstep`): one engine per configuration, each configured as a user
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
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable
from pathlib import Path

from serving.vllm_plugin.adaptive import ENV, STEP_LOG_ENV
from serving.vllm_plugin.harness.progress import PROGRESS_ENV, ProgressReader, describe
from serving.vllm_plugin.harness.request import TURN_STEPS, draft_speculative_fields
from serving.vllm_plugin.harness.runner import run_vllm
from serving.vllm_plugin.harness.sweeps import PLAIN
from serving.vllm_plugin.policy_file import (
    PolicyFileError,
    ServedPolicyFile,
    load_policy,
    native_schedule,
    read_policy_file,
)
from specforge.bench.calibrate_vllm import CALIBRATE_WORKLOADS, calibrate_vllm
from specforge.bench.sweep import NATIVE, decode_summary, serve_summary
from specforge.bench.vllm_workload import (
    BATCH_SIZES,
    LENGTHS,
    ROUND_TIMEOUT_S,
    SWEEP_ENV,
    WORKLOADS,
    arm_decode_cells,
    check_choice,
    draft_alpha,
    long_answer_prompts,
    min_answer_tokens,
    sweep_request,
)
from specforge.errors import SpecforgeError

# vLLM's documented EAGLE-3 schedule (docs/features/speculative_decoding/dynamic_speculative_decoding.md).
VLLM_DOCS_TABLE = [[1, 16, 5], [17, 32, 4], [33, 64, 3], [65, 128, 1], [129, 512, 0]]
# paired: every speculative configuration in one engine, switched between measurements (see harness/sweeps.py);
# engines: a fresh engine per configuration.
DESIGNS = ("paired", "lockstep", "engines")
# Variants of the plugin a paired sweep can add (--variants): name -> policy-file keys overridden
VARIANTS: dict[str, dict] = {
    "probe": {"cell_prior": 5.0},  # per-batch-bucket step ratios, learnt with probes of the runner-up k
    "noprobe": {"cell_prior": None},
}


def _engine_configs(
    draft: Path,
    ks: list[int],
    sizes: list[int],
    policy: Path,
    design: str,
    native: list[list[int]],
    variants: dict[str, dict] | None = None,
) -> dict[str, tuple[dict, dict]]:
    """Per engine: the request's speculative settings and the environment (``native``: the policy's
    own table, :func:`native_table`, for the :data:`NATIVE` arm). ``engines``: one engine per
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
        chain = {**draft_speculative_fields(draft), "model": str(draft)}
        steps: dict = {"none": {"speculative_config": None}}
        steps.update({f"k{k}": {"speculative_config": {**chain, "num_speculative_tokens": k}} for k in ks})
        steps["vllm-table"] = {
            "speculative_config": {
                **chain,
                "num_speculative_tokens": max(ks),
                "num_speculative_tokens_per_batch_size": VLLM_DOCS_TABLE,
            }
        }
        steps[NATIVE] = {
            "speculative_config": {
                **chain,
                "num_speculative_tokens": max(ks),
                "num_speculative_tokens_per_batch_size": native,
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
        arms.update({"vllm-table": VLLM_DOCS_TABLE, NATIVE: native, "specforge": None})
        arms.update({f"specforge-{name}": {"policy": keys} for name, keys in (variants or {}).items()})
        return {"paired": ({**plugin[0], "sweep": {"arms": arms}}, plugin[1])}
    configs: dict[str, tuple[dict, dict]] = {"none": ({}, SWEEP_ENV)}
    for k in ks:
        configs[f"k{k}"] = ({**spec, "num_speculative_tokens": k}, SWEEP_ENV)
    configs["vllm-table"] = (
        {**spec, "num_speculative_tokens": max(ks), "num_speculative_tokens_per_batch_size": VLLM_DOCS_TABLE},
        SWEEP_ENV,
    )
    configs[NATIVE] = (
        {**spec, "num_speculative_tokens": max(ks), "num_speculative_tokens_per_batch_size": native},
        SWEEP_ENV,
    )
    configs["specforge"] = plugin
    return configs


def native_table(policy: Path, ks: list[int], sizes: list[int]) -> list[list[int]]:
    """vLLM's ``num_speculative_tokens_per_batch_size`` table the policy file implies for the sweep's
    chain lengths and batch sizes."""
    return native_schedule(load_policy(policy, max(ks)), max(sizes), max(ks))


def variant_overrides(spec: str) -> tuple[str, dict]:
    """A ``--variants`` entry: a name in :data:`VARIANTS`, or ``NAME=POLICY.json``, the plugin served
    from another policy file (every key of that file overrides the sweep's, e.g. another
    calibration's step table), as arm ``specforge-NAME``."""
    if "=" not in spec:
        check_choice("variant", spec, VARIANTS)
        return spec, VARIANTS[spec]
    name, path = (x.strip() for x in spec.split("=", 1))
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SpecforgeError(f"variant {spec!r}: name it with letters, digits, - or _ before the '='")
    try:
        policy = read_policy_file(path)
    except PolicyFileError as e:
        raise SpecforgeError(f"variant {name!r}: {e} (write one with specforge calibrate --vllm)") from None
    if not isinstance(policy, ServedPolicyFile):
        raise SpecforgeError(f"variant {name!r}: {path} is an explore file, not a served policy file")
    raw = policy.model_dump(exclude_unset=True, mode="json")
    return name, raw


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
    prefix_caching: bool = True,
) -> dict:
    check_choice("workload", workload, WORKLOADS)
    check_choice("calibration", calibration, CALIBRATE_WORKLOADS)
    arms_of_variants = dict(variant_overrides(v) for v in variants or ())
    if variants and design != "paired":
        raise SpecforgeError(
            "--variants needs --design paired (the variants are arms of the plugin's engine)"
        )
    check_choice("design", design, DESIGNS)
    check_choice("lengths", lengths, LENGTHS)
    sizes = batch_sizes or BATCH_SIZES
    ks = static_ks or [1, 2, 3, 4, 5]
    k_max = max(ks)
    workdir.mkdir(parents=True, exist_ok=True)
    prompts = long_answer_prompts(target, regen_data, min_answer_tokens(max_tokens, lengths, max_tokens))
    alpha = draft_alpha(run_dir, k_max)
    policy_given = policy
    if policy is None:
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
            prefix_caching=prefix_caching,
            log=log,
        )
    base = sweep_request(target, prompts, max_tokens, sizes, repeats, per_slot=WORKLOADS[workload])
    base["ignore_eos"] = lengths != "natural"
    if not prefix_caching:  # every engine alike (see the option in `specforge bench serve --help`)
        base["enable_prefix_caching"] = False
    native = native_table(policy, ks, sizes)
    configs = _engine_configs(draft, ks, sizes, policy, design, native, arms_of_variants)
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
            progress = ProgressReader(wd / "progress.jsonl")

            def show(rnd: int = rnd, name: str = name, progress: ProgressReader = progress) -> None:
                for p in progress.new():  # one line per measurement: a sweep runs for hours
                    log(f"round {rnd + 1}/{rounds} {name} {describe(p)}")

            try:
                res = run_vllm(
                    req,
                    wd,
                    env={**env, STEP_LOG_ENV: str(steps_log), PROGRESS_ENV: str(progress.path)},
                    timeout=ROUND_TIMEOUT_S,
                    poll=show,
                )
            except RuntimeError as e:
                done = f"; the rows of the runs that finished are in {partial}" if rows else ""
                raise SpecforgeError(f"round {rnd + 1}/{rounds}, {name}: {e}{done}") from e
            for r in res["sweep"]:
                rows.append({"config": name, "round": rnd, **r})  # a paired arm's row names its own
            logged = json.loads(steps_log.read_text()) if steps_log.is_file() else None
            if "arms" in extra.get("sweep", {}):  # one engine, many arms: each row's own steps
                for arm, cells in arm_decode_cells(res["sweep"]).items():
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
        "dtype": base.get("dtype", "float32"),
        "workload": workload,
        "design": design,
        "lengths": lengths,
        "prefix_caching": prefix_caching,
        "calibration": calibration if policy_given is None else "given",
        "prompts": len(prompts),
        "batch_sizes": sizes,
        "rounds": rounds,
        "repeats": repeats,
        "policy": json.loads(Path(policy).read_text()),
        "native_table": native,
        "plugin_steps": choices,
        "rows": rows,
    }
    result["summary"] = serve_summary(
        rows, sizes, adaptive="specforge", table="vllm-table", schedules=(NATIVE,)
    )
    result["summary"]["decode_steps"] = decode_summary(
        step_logs, sizes, adaptive="specforge", table="vllm-table", schedules=(NATIVE,)
    )
    return result
