"""The plugin's policy file: one JSON file, one typed schema, checked once when it is loaded.

Contract
--------
* :class:`ServedPolicyFile` is a served policy: a step cost (``"steps"``: whole vLLM steps measured
  by ``specforge calibrate --vllm``; or ``"cost"``: profiled forwards), the acceptance alpha_k that
  seeds it, the chain lengths it may choose from, and the knobs of the live choice. Every key is
  typed and ranged, and an unknown key is an error. :class:`ExplorePolicyFile` (``"mode":
  "explore"``) makes the plugin cycle k through given values (step-time calibration).
* :func:`read_policy_file` validates a file (or its parsed JSON) and raises :class:`PolicyFileError`,
  whose message names the file and every bad key; the plugin turns that into one warning and its
  fallback. :func:`write_policy_file` and :func:`write_explore_file` write through the same schema,
  atomically.
* :func:`load_policy` builds the :class:`~serving.policy.SpeculationPolicy` a served file describes,
  keeping only the chain lengths the engine was configured for (``k <= k_max``);
  :func:`native_schedule` turns it into vLLM's own ``num_speculative_tokens_per_batch_size`` table.

Why the defaults are what they are: docs/adaptive-speculation.md. No vllm import here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serving.acceptance import AcceptanceTracker
from serving.controller import PROBE_EVERY, PROBE_STEPS, SWITCH_MARGIN
from serving.policy import SpeculationPolicy
from serving.shape import TreeShape
from serving.step_cost import CostModel, OnlineStepCost, Profile, StartCost, StepTable

# A step of n requests weighs like n / ALPHA_REFERENCE_BATCH steps in the acceptance EMA.
ALPHA_REFERENCE_BATCH = 256

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(ge=0.0)]
Rate = Annotated[float, Field(gt=0.0, le=1.0)]
Count = Annotated[int, Field(ge=0)]


class PolicyFileError(ValueError):
    """A policy file that cannot be used; the message names the file and what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProfileJson(_Strict):
    """Seconds per step (or forward) at each token count or batch size."""

    tokens: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    seconds: list[Seconds] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> ProfileJson:
        if len(self.tokens) != len(self.seconds):
            raise ValueError(
                f"tokens ({len(self.tokens)}) and seconds ({len(self.seconds)}) differ in length"
            )
        return self


class CostJson(_Strict):
    target: ProfileJson
    draft: ProfileJson | None = None
    parallel_drafts: bool = False  # a parallel-drafting head: one draft pass a step (serving.step_cost)


class StartsJson(_Strict):
    seconds: dict[str, Seconds]  # shape key -> seconds per request started
    tokens_per_request: Annotated[float, Field(gt=0.0)]


# What becomes of the KV blocks a skipped step wrote (their draft KV has holes; draft_skip.StaleDrafts):
# "mark" keeps them in the prefix cache, marked; "evict" drops them from it; "keep" leaves the prefix
# cache alone (a later request may draft over the holes: slower, still lossless).
SkippedBlocks = Literal["mark", "evict", "keep"]


class ServedPolicyFile(_Strict):
    mode: Literal["serve"] = "serve"
    steps: dict[str, ProfileJson] | None = None  # shape key -> step seconds per batch size
    cost: CostJson | None = None
    alpha: list[Probability] = Field(min_length=1)  # conditional acceptance per chain position
    ks: list[Count] = Field(min_length=1)  # chain lengths the policy may choose from
    beta: Rate = 0.05  # EMA weight of the acceptance per position
    meta: dict[str, Any] = Field(default_factory=dict)
    starts: StartsJson | None = None
    skip_draft_at_k0: bool = False
    skipped_blocks: SkippedBlocks = "mark"
    per_request: bool = True  # k from the acceptance of the requests in the batch
    switch_margin: Annotated[float, Field(ge=0.0)] = SWITCH_MARGIN
    probe_every: Count = PROBE_EVERY
    probe_steps: Annotated[int, Field(ge=1)] = PROBE_STEPS
    cell_prior: Annotated[float, Field(gt=0.0)] | None = None  # None: no per-bucket step ratios
    cost_beta: Rate = 0.01
    cost_min_steps: Annotated[int, Field(ge=1)] = 10**9  # a factor per shape after this many steps

    @model_validator(mode="after")
    def _one_cost(self) -> ServedPolicyFile:
        if (self.steps is None) == (self.cost is None):
            raise ValueError('give exactly one step cost: "steps" (calibrate --vllm) or "cost" (calibrate)')
        return self


class ExplorePolicyFile(_Strict):
    mode: Literal["explore"]
    ks: list[Count] = Field(min_length=1)
    hold: Count = 4  # steps per k; 0: per drain
    drains_per_k: Annotated[int, Field(ge=1)] = 1
    skip_drains: Count = 0
    skip_steps: Count = 0
    time_mixed: bool = False
    skip_draft_at_k0: bool = False
    skipped_blocks: SkippedBlocks = "mark"


PolicyFile = ServedPolicyFile | ExplorePolicyFile


def read_policy_file(source: str | Path | dict) -> PolicyFile:
    """The validated policy file (``source``: its path, or its parsed JSON)."""
    name = "policy file" if isinstance(source, dict) else str(source)
    if isinstance(source, dict):
        raw = source
    else:
        try:
            raw = json.loads(Path(source).read_text())
        except FileNotFoundError:
            raise PolicyFileError(f"{name}: no such file") from None
        except (OSError, json.JSONDecodeError) as e:
            raise PolicyFileError(f"{name}: not readable JSON ({e})") from None
    if not isinstance(raw, dict):
        raise PolicyFileError(f"{name}: expected a JSON object, got {type(raw).__name__}")
    if "evict_skipped_blocks" in raw:  # the key before 2026-12-08
        raise PolicyFileError(
            f'{name}: evict_skipped_blocks is now skipped_blocks: "mark" (the default), "evict" (was true) '
            'or "keep" (was false)'
        )
    schema = ExplorePolicyFile if raw.get("mode") == "explore" else ServedPolicyFile
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(file)'}: {err['msg']}" for err in e.errors()
        )
        raise PolicyFileError(f"{name}: {problems}") from None


def _write(path: str | Path, policy: PolicyFile) -> Path:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(policy.model_dump(exclude_unset=True, mode="json"), indent=1))
    tmp.replace(p)
    return p


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
    """A served policy file: ``cost`` (whole measured vLLM steps, or profiled forwards), the alpha_k
    that seeds the policy, and the chain lengths it may choose from. ``skip_draft_at_k0``: a step at
    k = 0 runs neither the draft nor the runner's speculative bookkeeping
    (:mod:`serving.vllm_plugin.draft_skip`). ``starts``: what a step pays per request it starts, per k."""
    if isinstance(cost, StepTable):
        step_cost: dict = {"steps": cost.to_json()}
    else:
        step_cost = {
            "cost": {
                "target": asdict(cost.target),
                "draft": asdict(cost.draft) if cost.draft else None,
                "parallel_drafts": cost.parallel_drafts,
            }
        }
    policy = read_policy_file(
        {
            **step_cost,
            "alpha": list(alpha),
            "ks": list(ks),
            "beta": beta,
            "meta": meta or {},
            **({"starts": starts.to_json()} if starts is not None else {}),
            "skip_draft_at_k0": bool(skip_draft_at_k0),
        }
    )
    return _write(path, policy)


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
    policy = ExplorePolicyFile(
        mode="explore",
        ks=list(ks),
        hold=hold,
        drains_per_k=drains_per_k,
        skip_drains=skip_drains,
        skip_steps=skip_steps,
        time_mixed=time_mixed,
        skip_draft_at_k0=skip_draft_at_k0,
    )
    return _write(path, policy)


def load_policy(source: str | Path | dict | ServedPolicyFile, k_max: int) -> SpeculationPolicy:
    """The policy a served policy file describes (``source``: the file, its parsed JSON, or the
    validated file)."""
    f = source if isinstance(source, ServedPolicyFile) else read_policy_file(source)
    if not isinstance(f, ServedPolicyFile):
        raise PolicyFileError(f'{source}: a "mode": "explore" file describes no policy to serve')
    if f.steps is not None:
        prior: CostModel | StepTable = StepTable.from_json({k: p.model_dump() for k, p in f.steps.items()})
        usable = set(prior.ks)
    else:
        assert f.cost is not None  # the schema asks for one of the two
        prior = CostModel(
            Profile(**f.cost.target.model_dump()),
            Profile(**f.cost.draft.model_dump()) if f.cost.draft else None,
            parallel_drafts=f.cost.parallel_drafts,
        )
        usable = set(f.ks)
    shapes = [TreeShape.chain(k) for k in f.ks if 0 < k <= k_max and k in usable]
    if not shapes:
        raise PolicyFileError(f"no k in {f.ks} fits the configured num_speculative_tokens={k_max}")
    tracker = AcceptanceTracker.from_alpha(
        f.alpha, shapes, beta=f.beta, per_position=True, reference_batch=ALPHA_REFERENCE_BATCH
    )
    # One online factor for all shapes follows the machine's speed; per-shape factors and
    # per-bucket ratios are opt-in (docs/adaptive-speculation.md).
    cost = OnlineStepCost(prior, beta=f.cost_beta, min_count=f.cost_min_steps, cell_prior=f.cell_prior)
    starts = StartCost.from_json(f.starts.model_dump()) if f.starts is not None else None
    return SpeculationPolicy(cost, tracker, shapes, start=starts)


def native_schedule(policy: SpeculationPolicy, max_batch: int, k_max: int) -> list[list[int]]:
    """The ``num_speculative_tokens_per_batch_size`` table the policy implies, for vLLM without the
    plugin: inclusive ``[first batch, last batch, k]`` ranges covering 1..``max_batch``, from the
    policy's choice on its seeded acceptance (no per-request acceptance, no online learning). vLLM
    carries the last range's k past ``max_batch``."""
    policy.freeze_costs(max_batch)
    ranges: list[list[int]] = []
    for b in range(1, max_batch + 1):
        k = min(policy.choose(b).num_draft_tokens, k_max)  # choose() is monotone in b
        if ranges and ranges[-1][2] == k:
            ranges[-1][1] = b
        else:
            ranges.append([b, b, k])
    return ranges
