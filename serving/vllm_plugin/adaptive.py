"""The vLLM general plugin: adaptive speculation length per step, from specforge's policy.

Contract
--------
* ``register()`` is the ``vllm.general_plugins`` entry point. vLLM calls it in every process; it
  does nothing unless ``SPECFORGE_ADAPTIVE_SPEC`` names a policy file (:func:`write_policy_file`),
  and it patches the scheduler once per process (idempotent).
* Switch it on: set ``SPECFORGE_ADAPTIVE_SPEC=/path/policy.json`` and give vLLM a speculative config
  with ``num_speculative_tokens`` = the largest k and ``num_speculative_tokens_per_batch_size`` =
  ``[[1, max_num_seqs, k]]``, which turns on vLLM's per-step k path. The plugin then replaces the
  scheduler's batch-size table with :class:`AdaptiveLookup`: each step, k is the policy's choice
  for the live batch size (chains only: this vLLM has no tree attention).
* Acceptance is tracked online from what each step emits per request (EMA), and step times come
  from the calibrated cost model (``specforge calibrate``).
* Anything that goes wrong (a bad policy file, an exception in the policy) logs one warning and
  falls back to plain decoding (k = 0). It never takes the server down.

Only this package imports vllm.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from serving.policy import AcceptanceTracker, CostModel, Profile, SpeculationPolicy
from serving.shape import TreeShape

ENV = "SPECFORGE_ADAPTIVE_SPEC"
logger = logging.getLogger("specforge.vllm_plugin")
_PATCHED = False


def write_policy_file(
    path: str | Path, cost: CostModel, alpha: list[float], ks: list[int], beta: float = 0.05
) -> Path:
    """Everything the plugin needs, in one JSON file."""
    payload = {
        "cost": {"target": cost.target.__dict__, "draft": cost.draft.__dict__ if cost.draft else None},
        "alpha": list(alpha),
        "ks": list(ks),
        "beta": beta,
    }
    p = Path(path)
    p.write_text(json.dumps(payload, indent=1))
    return p


def load_policy(path: str | Path, k_max: int) -> SpeculationPolicy:
    raw = json.loads(Path(path).read_text())
    cost = CostModel(
        Profile(**raw["cost"]["target"]),
        Profile(**raw["cost"]["draft"]) if raw["cost"].get("draft") else None,
    )
    shapes = [TreeShape.chain(k) for k in raw["ks"] if 0 < k <= k_max]
    if not shapes:
        raise ValueError(f"no k in {raw['ks']} fits the configured num_speculative_tokens={k_max}")
    tracker = AcceptanceTracker.from_alpha(raw["alpha"], shapes, beta=float(raw.get("beta", 0.05)))
    return SpeculationPolicy(cost, tracker, shapes)


class AdaptiveLookup:
    """Stands in for vLLM's dense ``dynamic_sd_lookup`` list: ``lookup[batch_size] -> k``."""

    def __init__(self, policy: SpeculationPolicy | None, k_max: int):
        self.policy, self.k_max = policy, k_max
        self.last_k = 0
        self.choices: dict[int, int] = {}  # batch size -> last k chosen (for inspection)
        self._warned = False

    def _fail(self, err: Exception) -> int:
        if not self._warned:
            logger.warning("specforge adaptive speculation disabled, decoding without speculation: %s", err)
            self._warned = True
        self.policy = None
        return 0

    def __getitem__(self, batch_size: int) -> int:
        if self.policy is None:
            self.last_k = 0
            return 0
        try:
            k = min(self.policy.choose(int(batch_size)).num_draft_tokens, self.k_max)
        except Exception as e:  # never take the server down
            k = self._fail(e)
        self.last_k = self.choices[int(batch_size)] = k
        return k

    def observe(self, batch_size: int, emitted_per_request: float) -> None:
        if self.policy is None or self.last_k == 0:
            return
        try:
            self.policy.observe(TreeShape.chain(self.last_k), batch_size, emitted_per_request)
        except Exception as e:
            self._fail(e)


def _install(scheduler) -> None:
    path = os.environ.get(ENV)
    if not path or getattr(scheduler, "dynamic_sd_lookup", None) is None:
        if path:
            logger.warning(
                "%s is set but vLLM's per-step k path is off: set num_speculative_tokens_per_batch_size "
                "in the speculative config (see the README); specforge leaves k as configured",
                ENV,
            )
        return
    k_max = int(scheduler.num_spec_tokens)
    try:
        policy = load_policy(path, k_max)
    except Exception as e:
        lookup = AdaptiveLookup(None, k_max)
        lookup._fail(e)
    else:
        lookup = AdaptiveLookup(policy, k_max)
        logger.info(
            "specforge adaptive speculation on: k per batch size %s", policy.table([1, 2, 4, 8, 16, 32, 64])
        )
    scheduler.dynamic_sd_lookup = lookup


def register() -> None:
    global _PATCHED
    if _PATCHED or not os.environ.get(ENV):
        return
    from vllm.v1.core.sched.scheduler import Scheduler

    if getattr(Scheduler, "_specforge_patched", False):
        _PATCHED = True
        return
    original_init = Scheduler.__init__
    original_update = Scheduler.update_from_output

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        try:
            _install(self)
        except Exception as e:  # pragma: no cover - defensive
            logger.warning("specforge adaptive speculation not installed: %s", e)

    def update_from_output(self, scheduler_output, model_runner_output):
        result = original_update(self, scheduler_output, model_runner_output)
        lookup = getattr(self, "dynamic_sd_lookup", None)
        if isinstance(lookup, AdaptiveLookup):
            try:
                drafted = scheduler_output.scheduled_spec_decode_tokens or {}
                sampled = model_runner_output.sampled_token_ids or []
                index = model_runner_output.req_id_to_index or {}
                counts = [len(sampled[index[r]]) for r in drafted if r in index and index[r] < len(sampled)]
                if counts:
                    lookup.observe(len(index), sum(counts) / len(counts))
            except Exception as e:
                lookup._fail(e)
        return result

    Scheduler.__init__ = __init__
    Scheduler.update_from_output = update_from_output
    Scheduler._specforge_patched = True
    _PATCHED = True
