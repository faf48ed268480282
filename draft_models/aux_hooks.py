"""Record a Hugging Face decoder's intermediate hidden states with forward hooks.

Contract: :class:`AuxHiddenHooks` registers a forward pre-hook on each named decoder layer (the
state entering layer ``k`` = the stream after ``k`` layers = HF ``hidden_states[k]`` = vLLM's aux
layer id ``k``) and a forward hook on the final norm. After any forward of the model,
:meth:`aux` returns the recorded aux states concatenated in layer order
(``[..., len(layer_ids) * hidden]``) and :attr:`last` the final norm's output. Layer id
:data:`LAST_HIDDEN` (``-1``) names the final norm's output (EAGLE-1's feature). Training-time capture
(specforge) and the reference serving engine (serving) share it; neither copies model code.
"""

from __future__ import annotations

import torch
from torch import nn


def decoder_parts(model: nn.Module) -> tuple[nn.ModuleList, nn.Module]:
    """(decoder layers, final norm) of a Llama/Qwen/Mistral-style ``*ForCausalLM``."""
    base = model.model if hasattr(model, "model") else model
    return base.layers, base.norm


LAST_HIDDEN = -1


class AuxHiddenHooks:
    def __init__(self, model: nn.Module, layer_ids: list[int]):
        layers, norm = decoder_parts(model)
        self.num_layers = len(layers)
        self.layer_ids = list(layer_ids)
        self._seen: dict[int, torch.Tensor] = {}
        self.last: torch.Tensor | None = None
        self._handles = [
            layers[k].register_forward_pre_hook(self._pre(k), with_kwargs=True)
            for k in self.layer_ids
            if k not in (LAST_HIDDEN, self.num_layers)
        ]
        self._handles.append(norm.register_forward_hook(self._post))

    def _pre(self, k: int):
        def hook(module, args, kwargs):
            self._seen[k] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

        return hook

    def _post(self, module, args, output):
        self.last = output
        if self.num_layers in self.layer_ids:
            self._seen[self.num_layers] = args[0]

    def aux(self) -> torch.Tensor:
        """[..., len(layer_ids) * hidden] from the latest forward."""
        seen = {**self._seen, **({LAST_HIDDEN: self.last} if self.last is not None else {})}
        missing = [k for k in self.layer_ids if k not in seen]
        if missing:
            raise RuntimeError(f"no forward has passed layers {missing} since the hooks were set")
        return torch.cat([seen[k] for k in self.layer_ids], dim=-1)

    def clear(self) -> None:
        self._seen.clear()
        self.last = None

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()
