"""One registry of draft-head types, keyed by name.

Contract: each head module registers ``(config class, model class)`` under its name at import;
trainer, exporter and serving look heads up with :func:`get_draft_type` and never branch on names.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class DraftType:
    name: str
    config_cls: type
    model_cls: type[nn.Module]


_REGISTRY: dict[str, DraftType] = {}


def register_draft_type(name: str, config_cls: type, model_cls: type[nn.Module]) -> None:
    existing = _REGISTRY.get(name)
    if existing is not None and existing.model_cls is not model_cls:
        raise ValueError(f"draft type {name!r} is already registered to {existing.model_cls.__name__}")
    _REGISTRY[name] = DraftType(name, config_cls, model_cls)


def get_draft_type(name: str) -> DraftType:
    if name not in _REGISTRY:
        raise KeyError(f"unknown draft type {name!r}; known: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[name]


def draft_type_names() -> list[str]:
    return sorted(_REGISTRY)
