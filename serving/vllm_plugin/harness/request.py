"""The harness's request: one typed schema for what :func:`~.runner.run_vllm` sends its child process.

:class:`VllmRequest` is checked in the calling process, before vLLM starts (a bad key is one
``ValueError`` naming it), and again when the child reads it. Its ``sweep`` (:class:`SweepSpec`)
selects a sweep (:mod:`.sweeps`) or a lockstep sweep (:mod:`.lockstep`); without it the child runs
one generate. No vllm import here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Positive = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]

# Steps a lockstep engine takes before the next one's turn. Measured at batch 16 (static k = 1 /
# none): turns of 1 step skewed their ratio most, 32 steps least (docs/benchmarking.md).
TURN_STEPS = 32


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyVariant(_Strict):
    """A paired arm served by the plugin on its policy file with these keys overridden."""

    policy: dict[str, Any]


class LockstepArm(_Strict):
    """A lockstep arm: its own engine, configured as a user would, with or without the plugin."""

    speculative_config: dict[str, Any] | None = None
    plugin: bool = False


# A paired arm: a pinned k, "plain" (the engine without a draft), vLLM's batch-size table, a variant
# of the plugin, or None (the plugin's own choice).
PairedArm = Count | Literal["plain"] | list[list[int]] | PolicyVariant | None


class SweepSpec(_Strict):
    batch_sizes: list[Positive] = Field(min_length=1)
    repeats: Positive = 1  # measurements per batch size after the warm-up pass
    min_requests: Positive = 1  # requests per measurement, at least
    closed_loop: Count = 0  # requests per client (0: bursts of B)
    seed: int = 0  # the order of arms within a (repeat, batch size)
    warmup: bool = True  # one unrecorded pass over every batch size first
    design: Literal["paired", "lockstep"] = "paired"
    turn_steps: Positive = TURN_STEPS  # lockstep only
    keep_outputs: bool = False  # paired rows also carry "outputs": each request's token ids
    arms: dict[str, PairedArm | LockstepArm] | None = None

    @model_validator(mode="after")
    def _arms_fit_the_design(self) -> SweepSpec:
        lockstep = [isinstance(a, LockstepArm) for a in (self.arms or {}).values()]
        if self.design == "lockstep" and (not lockstep or not all(lockstep)):
            raise ValueError(
                'a lockstep sweep needs "arms": {name: {"speculative_config": ..., "plugin": ...}}'
            )
        if self.design == "paired" and any(lockstep):
            raise ValueError('"speculative_config" arms need "design": "lockstep"')
        return self


class CaptureChunk(_Strict):
    name: str  # the chunk's directory under CaptureSpec.out_dir
    prompts: list[Count] = Field(min_length=1)  # indices into VllmRequest.prompts
    ids: list[Count] | None = None  # the file name of each prompt's states (default: its index)

    @model_validator(mode="after")
    def _one_id_per_prompt(self) -> CaptureChunk:
        if self.ids is not None and len(self.ids) != len(self.prompts):
            raise ValueError(f"capture chunk {self.name}: ids needs one id per prompt")
        return self


class CaptureSpec(_Strict):
    """Capture mode (:mod:`.capture`): hidden states through vLLM's ``extract_hidden_states``."""

    layers: list[Count] = Field(min_length=1)  # vLLM's eagle_aux_hidden_state_layer_ids
    out_dir: str
    chunks: list[CaptureChunk] = Field(min_length=1)


class VllmRequest(_Strict):
    target: str  # the target's HF directory
    prompts: list[list[int]]  # token ids
    max_tokens: Positive
    draft: str | None = None  # the exported draft's directory (None: no speculation)
    method: str | None = None  # None: the method the draft's config.json architecture is served with
    num_speculative_tokens: Positive | None = None
    num_speculative_tokens_per_batch_size: list[list[int]] | None = None
    temperature: Annotated[float, Field(ge=0.0)] = 0.0
    seed: int = 0
    seed_requests: bool = True  # sampled requests carry ``seed`` (false: independent samples)
    ignore_eos: bool = False
    max_model_len: Positive = 2048
    max_num_seqs: Positive = 64
    repeats: Positive = 1  # plain generate: the best of this many runs
    dtype: Literal["float32", "bfloat16"] = "float32"  # the target's (and draft's) compute dtype
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # Stream mode: outputs are appended to this JSONL, one {"index", "token_ids"} line per prompt, in
    # chunks of ``stream_chunk`` prompts (flushed and synced), instead of being returned at the end.
    stream_to: str | None = None
    stream_ids: list[int] | None = None  # the "index" written for each prompt (default: its position)
    stream_chunk: Positive = 128
    sweep: SweepSpec | None = None
    capture: CaptureSpec | None = None
    # vLLM's parallel settings within one engine, passed through as they are (1: off); data
    # parallelism is several engines (specforge.data.regenerate_vllm runs them)
    tensor_parallel_size: Positive = 1
    pipeline_parallel_size: Positive = 1
    # vLLM's prefix cache (None: vLLM's default, on). With a draft on CPU (blocks of 128 tokens) an
    # EAGLE engine resumes a resent prompt only at a block boundary one block back, so a prompt under
    # 256 tokens never hits, where an engine without a draft reuses all but its last token
    enable_prefix_caching: bool | None = None
    block_size: Positive | None = None  # vLLM's KV block size (None: its default, 128 on CPU)

    @model_validator(mode="after")
    def _draft_has_k(self) -> VllmRequest:
        if self.draft and self.num_speculative_tokens is None:
            raise ValueError("a request with a draft needs num_speculative_tokens")
        if self.stream_to and (self.sweep is not None or self.repeats > 1):
            raise ValueError("stream_to is for one plain generate (no sweep, repeats 1)")
        if self.stream_ids is not None and len(self.stream_ids) != len(self.prompts):
            raise ValueError("stream_ids needs one id per prompt")
        if self.capture is not None and (self.draft or self.sweep is not None or self.stream_to):
            raise ValueError("capture is a mode of its own (no draft, sweep or stream_to)")
        if self.capture is not None:
            bad = [i for c in self.capture.chunks for i in c.prompts if i >= len(self.prompts)]
            if bad:
                raise ValueError(f"capture chunks name prompts {bad[:5]} past the {len(self.prompts)} given")
        return self

    def speculative_config(self) -> dict | None:
        """vLLM's ``speculative_config`` for the draft (None without one)."""
        if not self.draft:
            return None
        spec = {
            **draft_speculative_fields(self.draft),
            "model": self.draft,
            "num_speculative_tokens": self.num_speculative_tokens,
        }
        if self.method:
            spec["method"] = self.method
        if self.num_speculative_tokens_per_batch_size:
            spec["num_speculative_tokens_per_batch_size"] = self.num_speculative_tokens_per_batch_size
        return spec


def draft_speculative_fields(draft_dir: str | Path) -> dict:
    """The ``speculative_config`` entries a draft checkpoint needs besides its path and k: its vLLM
    method and the layout's options (P-EAGLE: ``parallel_drafting``), from its config.json and the
    draft registry (``{"method": "eagle3"}`` when the file names no registered layout)."""
    from draft_models.registry import layout_for_config

    try:
        config = json.loads((Path(draft_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {"method": "eagle3"}
    layout = layout_for_config(config)
    if layout is None:
        return {"method": "eagle3"}
    return {"method": layout.method, **layout.speculative_options}


def parse_request(raw: dict | str) -> VllmRequest:
    """The validated request (``raw``: a dict or its JSON); ``ValueError`` naming every bad key."""
    try:
        if isinstance(raw, str):
            return VllmRequest.model_validate_json(raw)
        return VllmRequest.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(request)'}: {err['msg']}" for err in e.errors()
        )
        raise ValueError(f"invalid vLLM harness request: {problems}") from None
