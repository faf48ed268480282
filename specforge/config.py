"""One typed schema for training recipes (YAML) and ``key=value`` command-line overrides.

Contract: :func:`load_train_config` reads a YAML recipe, applies dotted overrides
(``optim.lr=3e-4``, values parsed as YAML scalars), and validates the result against
:class:`TrainConfig`. Unknown keys, wrong types and malformed YAML raise :class:`SpecforgeError`
naming the key (and the file). :meth:`TrainConfig.save` writes the resolved config beside
checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from draft_models.registry import draft_type_names
from specforge.errors import SpecforgeError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    train: str  # dataset file (JSONL/.txt)
    eval: str | None = None
    max_length: int = Field(1024, gt=8)
    skip_bad_rows: bool = False
    eval_limit: int | None = 200
    group_by_length: bool = True  # batch rows of similar length (less padding); False: plain shuffle
    # Pack whole rows end to end into rows of at most this many tokens (none attends to another;
    # positions restart): optim.batch_size then counts packed rows. None: one row per sequence.
    pack_length: int | None = Field(None, gt=8)


class DraftConfig(_Strict):
    type: str = "eagle3"  # a name in the draft registry (draft_models.registry)
    draft_vocab_size: int = Field(1024, gt=0)  # heads over the whole target vocabulary ignore it
    # target layers whose hidden states feed the head; None: the head's default (EAGLE-3: 2, L//2,
    # L-3; EAGLE-1: -1, the last hidden state)
    aux_layers: list[int] | None = None
    # keyword arguments of the head type's config (MTP: {"num_modules": D})
    options: dict[str, Any] = Field(default_factory=dict)
    # How the head starts. "random": as EAGLE does. "target_head": lm_head rows and final norm
    # from the target. "target_head_layer": also the decoder layer from the target's last layer.
    # On SmolLM2 (120 steps) neither beat random: benchmarks/init-pilot-smollm2.json.
    # "target_mtp" (MTP heads, the FastMTP recipe): module 0 from the MTP layer the target ships
    # (a MiMo-layout checkpoint: model.mtp_layers.0.*), fine-tuned as one recursive module.
    init: Literal["random", "target_head", "target_head_layer", "target_mtp"] = "random"

    @field_validator("type")
    @classmethod
    def _registered(cls, v: str) -> str:
        known = draft_type_names()
        if v not in known:
            raise ValueError(f"unknown draft type {v!r}; known: {', '.join(known)}")
        return v


class TTTConfig(_Strict):
    steps: int = Field(7, ge=1, le=16)
    decay: float = Field(0.8, gt=0, le=1)


class OptimConfig(_Strict):
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = 0.0
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1)  # per process
    grad_accum: int = Field(1, ge=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; overrides epochs


class ServedEvalConfig(_Strict):
    """The served estimate: the head drafting in the reference engine, closed loop, on the held-out
    prompts, as the user will serve it (k drafts in a chain, these temperatures)."""

    k: int = Field(4, ge=1, le=16)  # drafts per step; also the k of the teacher-forced walk (eval/walk_*)
    temperatures: list[float] = [0.0, 1.0]
    prompts: int = Field(16, ge=0)  # held-out prompts served (0: no served estimate)
    max_new_tokens: int = Field(96, ge=1)
    every: int = Field(0, ge=0)  # also every N optimizer steps (0: at the end of training only)
    seed: int = 0

    @field_validator("temperatures")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(t < 0 for t in v):
            raise ValueError("temperatures must be >= 0")
        return v


class TrainConfig(_Strict):
    target: str | None = None  # HF model directory; None: the embedded tiny target
    output_dir: str = "runs/draft"
    hidden_states: Literal["online", "offline"] = "online"
    capture_dir: str | None = None  # offline: shards of data.train (written if missing)
    # offline: what writes missing shards: "hf" (forward hooks, this process) or "vllm" (the real
    # vLLM's extract_hidden_states, specforge.capture_vllm); the shards are the same
    capture_engine: Literal["hf", "vllm"] = "hf"
    data: DataConfig
    draft: DraftConfig = DraftConfig()
    ttt: TTTConfig = TTTConfig()
    optim: OptimConfig = OptimConfig()
    # The draft's precision (accelerate's autocast). "auto": bf16 where the hardware computes it
    # natively (AMX, CUDA), "no" elsewhere; on AMX it trained 1.4x faster and took ~1 GB more
    # (docs/trainer-speed.md).
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"
    # The dtype the frozen target runs in (online hidden states and captures). "checkpoint": the
    # dtype its config names; "auto": bfloat16 where the hardware computes it natively (AMX, CUDA),
    # float32 elsewhere (specforge.targets.dtype); or a dtype by name.
    target_dtype: Literal["checkpoint", "auto", "float32", "bfloat16", "float16"] = "checkpoint"
    eval_every: int = Field(100, ge=1)
    served_eval: ServedEvalConfig = ServedEvalConfig()
    save_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_with: list[Literal["tensorboard", "wandb"]] = ["tensorboard"]
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    seed: int = 0
    progress: bool = True

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        return "no" if v is False else v  # YAML 1.1 reads a bare `no` as false

    @model_validator(mode="after")
    def _engine_needs_offline(self) -> TrainConfig:
        if self.capture_engine != "hf" and self.hidden_states != "offline":
            raise ValueError(
                f"capture_engine {self.capture_engine} writes shards: set hidden_states: offline"
            )
        return self

    def save(self, path: Path) -> None:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
        tmp.replace(path)


def _set_dotted(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k, {}), dict):
            raise SpecforgeError(f"override {dotted!r}: {k!r} is not a section")
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def _format_error(e: ValidationError, where: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key {loc!r}; check the spelling against specforge.config.TrainConfig"
    if err["type"] == "missing":
        return f"{where}: required key {loc!r} is missing"
    return f"{where}: {loc}: {err['msg']} (got {err.get('input')!r})"


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    raw: dict = {}
    where = "config"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise SpecforgeError(f"recipe {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise SpecforgeError(f"{p} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise SpecforgeError(f"{p}: the recipe must be a mapping of keys to values")
    for item in overrides or []:
        if "=" not in item:
            raise SpecforgeError(f"override {item!r} is not key=value (e.g. optim.lr=3e-4)")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, bool) and value.lower() not in ("true", "false"):
            parsed = value  # yes/no/on/off stay strings; only true/false are booleans
        _set_dotted(raw, key, parsed)
        where = f"{where} (with overrides)" if "overrides" not in where else where
    try:
        return TrainConfig(**raw)
    except ValidationError as e:
        raise SpecforgeError(_format_error(e, where)) from None
