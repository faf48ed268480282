"""The plugin's policy file: everything :mod:`serving.vllm_plugin.adaptive` needs, in one JSON file.

Contract
--------
* :func:`write_policy_file` writes a served policy: a step cost (profiled forwards, or whole vLLM
  steps measured by ``specforge calibrate --vllm``), the acceptance alpha_k that seeds it, the chain
  lengths it may choose from, and optionally start costs and ``skip_draft_at_k0``. Written atomically.
* :func:`write_explore_file` writes a calibration policy: k cycles through given values.
* :func:`load_policy` reads a served policy file into a :class:`serving.policy.SpeculationPolicy`,
  keeping only the chain lengths the engine was configured for (``k <= k_max``). A file that cannot
  be used raises; the plugin turns that into its fallback.

No vllm import here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from serving.acceptance import AcceptanceTracker
from serving.policy import SpeculationPolicy
from serving.shape import TreeShape
from serving.step_cost import CostModel, OnlineStepCost, Profile, StartCost, StepTable

# The population's acceptance per position is an EMA in which a step of n requests weighs like
# n / ALPHA_REFERENCE_BATCH steps of weight beta: with beta = 0.05 it spans ~5000 request-steps (80
# steps at batch 64). The requests left when a batch drains accept 0-15 %; with 16 here (5 steps at
# batch 64) a sweep ended with the estimate at position 1 at 0.40 where the plugin's requests had
# accepted 0.64, a level at which the load calls for no speculation at batch 64; the plugin served
# 0.92x static k = 1 there (decode goodput), running k = 1.
ALPHA_REFERENCE_BATCH = 256
# Pseudo-steps of the overall factor behind each (shape, batch bucket)'s own measured / prior ratio
# ("cell_prior" in the policy file; after this many timed steps of a shape in a bucket, its own ratio
# weighs half). Off by default (None): see serving.vllm_plugin.adaptive.PROBE_EVERY.
CELL_PRIOR: float | None = None


def write_policy_file(
    path: str | Path,
    cost: CostModel | StepTable,
    alpha: list[float],
    ks: list[int],
    beta: float = 0.05,
    meta: dict | None = None,
    skip_draft_at_k0: bool = False,
    starts: StartCost | None = None,
) -> Path:
    """Everything the plugin needs, in one JSON file: a step cost (profiled forwards, or whole
    measured vLLM steps from ``specforge calibrate --vllm``), the acceptance alpha_k that seeds the
    policy (the head's offline estimate, or what calibration measured), and the
    chain lengths it may choose from. ``skip_draft_at_k0``: a step at k = 0 runs neither the draft
    nor the runner's speculative bookkeeping (:mod:`serving.vllm_plugin.draft_skip`). ``starts``: what
    a step pays per request it starts, per k (without it, steps are priced as decode steps alone)."""
    if isinstance(cost, StepTable):
        payload: dict = {"steps": cost.to_json()}
    else:
        payload = {
            "cost": {"target": asdict(cost.target), "draft": asdict(cost.draft) if cost.draft else None}
        }
    payload.update({"alpha": list(alpha), "ks": list(ks), "beta": beta, "meta": meta or {}})
    if starts is not None:
        payload["starts"] = starts.to_json()
    payload["skip_draft_at_k0"] = bool(skip_draft_at_k0)
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(p)
    return p


def write_explore_file(
    path: str | Path,
    ks: list[int],
    hold: int = 4,
    drains_per_k: int = 1,
    skip_drains: int = 0,
    skip_steps: int = 0,
    time_mixed: bool = False,
    skip_draft_at_k0: bool = False,
) -> Path:
    """A policy file that makes the plugin cycle k through ``ks`` (step-time calibration): the next k
    every ``hold`` steps, of which the first ``skip_steps`` are not timed; or, with ``hold=0``, every
    ``drains_per_k`` times the engine drains (so that every batch the caller submits runs at one
    constant k), and then the first ``skip_drains`` batches at each k are not timed (the first steps
    after a change of k run slower). ``time_mixed``: also time steps that start new requests (a
    loaded server's usual step: prefills ride along with the decodes). ``skip_draft_at_k0``: time
    k = 0 as a policy file with that flag serves it."""
    p = Path(path)
    raw = {
        "mode": "explore",
        "ks": list(ks),
        "hold": hold,
        "drains_per_k": drains_per_k,
        "skip_drains": skip_drains,
        "skip_steps": skip_steps,
        "time_mixed": time_mixed,
    }
    if skip_draft_at_k0:
        raw["skip_draft_at_k0"] = True
    p.write_text(json.dumps(raw))
    return p


def load_policy(path: str | Path | dict, k_max: int) -> SpeculationPolicy:
    """The policy a served policy file describes (``path``: the file, or its parsed JSON)."""
    raw = path if isinstance(path, dict) else json.loads(Path(path).read_text())
    if "steps" in raw:
        prior: CostModel | StepTable = StepTable.from_json(raw["steps"])
        usable = set(prior.ks)
    else:
        prior = CostModel(
            Profile(**raw["cost"]["target"]),
            Profile(**raw["cost"]["draft"]) if raw["cost"].get("draft") else None,
        )
        usable = {int(k) for k in raw["ks"]}
    shapes = [TreeShape.chain(k) for k in raw["ks"] if 0 < k <= k_max and k in usable]
    if not shapes:
        raise ValueError(f"no k in {raw['ks']} fits the configured num_speculative_tokens={k_max}")
    tracker = AcceptanceTracker.from_alpha(
        raw["alpha"],
        shapes,
        beta=float(raw.get("beta", 0.05)),
        per_position=True,
        reference_batch=ALPHA_REFERENCE_BATCH,
    )
    # The prior was timed in this same engine configuration (calibrate --vllm). Online, one factor
    # for all shapes follows the machine's speed (it does not change the ranking). A factor per shape
    # is off by default: only the shape running at a batch size is observed there, and its
    # factor, pooled over batch sizes, absorbed where it ran (a shape run at batch 8-16 looked 20 %
    # slower than those run at 1 and 64) and pushed the choice away from it.
    # Per (shape, batch bucket), the measured ratio does change the ranking where the prior was wrong
    # (the plugin then probes near-best shapes to measure them); opt-in, with "cell_prior".
    cell_prior = raw.get("cell_prior", CELL_PRIOR)
    cost = OnlineStepCost(
        prior,
        beta=float(raw.get("cost_beta", 0.01)),
        min_count=int(raw.get("cost_min_steps", 10**9)),
        cell_prior=None if cell_prior is None else float(cell_prior),
    )
    starts = StartCost.from_json(raw["starts"]) if raw.get("starts") else None
    return SpeculationPolicy(cost, tracker, shapes, start=starts)
