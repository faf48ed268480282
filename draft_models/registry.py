"""One registry of draft-head types, keyed by name.

Contract: each head module registers ``(config class, model class, vLLM layout)`` under its name at
import; trainer, exporter and serving look heads up with :func:`get_draft_type` and never branch on
names. A :class:`VllmLayout` says how vLLM serves the head: its speculative ``method``, the
``architectures`` entry of its ``config.json``, every tensor it loads (name -> shape, dtype), and
the renaming between the head's state dict and vLLM's names, and whether the head's tensors go into
a copy of the target's checkpoint (``in_target``, as vLLM loads MTP layers) or a draft checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

TensorSpec = dict[str, tuple[tuple[int, ...], torch.dtype | None]]  # name -> (shape, dtype; None: any float)


@dataclass(frozen=True)
class VllmLayout:
    method: str  # vLLM's speculative_config "method"
    architecture: str  # config.json "architectures"[0]
    spec: Callable[[object], TensorSpec]  # config -> every tensor vLLM loads
    to_vllm: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]  # state dict -> vLLM names
    from_vllm: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]  # vLLM names -> state dict
    config: Callable[
        [object, str], dict
    ]  # (config, dtype) -> config.json (in_target: the fields set on the target's)
    # True: vLLM loads the head's layers from the target's own checkpoint (MTP), so the export is a
    # copy of the target with the head's tensors added; False: a separate draft checkpoint
    in_target: bool = False
    # extra speculative_config entries the head needs (P-EAGLE: {"parallel_drafting": True})
    speculative_options: dict = field(default_factory=dict)
    # a config.json key that tells this layout from another with the same architecture (None: none)
    config_marker: str | None = None


@dataclass(frozen=True)
class DraftType:
    name: str
    config_cls: type
    model_cls: type[nn.Module]
    vllm: VllmLayout | None = None  # None: vLLM cannot serve this head


_REGISTRY: dict[str, DraftType] = {}


def register_draft_type(
    name: str, config_cls: type, model_cls: type[nn.Module], vllm: VllmLayout | None = None
) -> None:
    existing = _REGISTRY.get(name)
    if existing is not None and existing.model_cls is not model_cls:
        raise ValueError(f"draft type {name!r} is already registered to {existing.model_cls.__name__}")
    _REGISTRY[name] = DraftType(name, config_cls, model_cls, vllm)


def get_draft_type(name: str) -> DraftType:
    if name not in _REGISTRY:
        raise KeyError(f"unknown draft type {name!r}; known: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[name]


def draft_type_names() -> list[str]:
    return sorted(_REGISTRY)


def layout_for_config(config: dict) -> VllmLayout | None:
    """The registered vLLM layout a draft checkpoint's ``config.json`` describes: its architecture,
    and of the layouts sharing it the one whose ``config_marker`` the file carries (None: no match)."""
    arch = (config.get("architectures") or [""])[0]
    matches = [t.vllm for t in _REGISTRY.values() if t.vllm is not None and t.vllm.architecture == arch]
    marked = [m for m in matches if m.config_marker is not None and m.config_marker in config]
    plain = [m for m in matches if m.config_marker is None]
    return (marked or plain or [None])[0]
