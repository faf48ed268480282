"""The shape of a speculation step, shared by the engine and the adaptive policy.

``TreeShape`` instances are ordered by how much speculation they are: draft tokens, then depth,
then top-k. ``num_draft_tokens == 0`` means no speculation; a chain is ``top_k == 1``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class TreeShape:
    num_draft_tokens: int  # tokens verified per step besides the root; 0 = no speculation
    depth: int
    top_k: int

    @classmethod
    def chain(cls, k: int) -> TreeShape:
        """A chain of ``k`` drafts; ``chain(0)`` is :data:`NO_SPECULATION`."""
        return cls(num_draft_tokens=k, depth=max(1, k), top_k=1)

    @classmethod
    def tree(cls, depth: int, top_k: int, num_draft_tokens: int) -> TreeShape:
        return cls(num_draft_tokens=num_draft_tokens, depth=depth, top_k=top_k)

    @property
    def is_none(self) -> bool:
        return self.num_draft_tokens == 0


NO_SPECULATION = TreeShape(num_draft_tokens=0, depth=1, top_k=1)
