"""Starting a draft from its target: the LM head and final norm, the last decoder layer, or the
target's own MTP layers (``draft.init`` in a recipe)."""

from __future__ import annotations

from torch import nn

from specforge.errors import SpecforgeError
from specforge.targets.loader import Target


def init_from_target(draft: nn.Module, target: Target, how: str) -> None:
    """Load into ``draft`` what ``how`` names of ``target`` (``random`` loads nothing)."""
    if how == "random":
        return
    if not hasattr(draft, "load_target_head"):
        raise SpecforgeError(
            f"draft.init={how!r} is not supported by draft type {type(draft).__name__}; use random"
        )
    draft.load_target_head(target.tensor("lm_head.weight"), target.tensor("model.norm.weight"))
    if how == "target_head_layer":
        base = target.model.get_decoder() if hasattr(target.model, "get_decoder") else target.model.model
        draft.load_target_layer({k: v.detach().cpu() for k, v in base.layers[-1].state_dict().items()})
    if how == "target_mtp":
        from specforge.export import load_target_mtp

        state = load_target_mtp(target.path, draft)
        draft.load_state_dict(state, strict=False)
