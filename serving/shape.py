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

    @classmethod
    def parse(cls, text: str) -> TreeShape:
        """``chain:K`` or ``tree:DEPTH:TOPK:TOKENS``; raises ``ValueError`` naming the text otherwise."""
        parts = text.strip().split(":")
        try:
            numbers = [int(x) for x in parts[1:]]
        except ValueError:
            numbers = []
        if parts[0] == "chain" and len(numbers) == 1 and numbers[0] >= 0:
            return cls.chain(numbers[0])
        if parts[0] == "tree" and len(numbers) == 3 and min(numbers) >= 1:
            return cls.tree(*numbers)
        raise ValueError(
            f"shape {text!r} is not chain:K or tree:DEPTH:TOPK:TOKENS (e.g. chain:4, tree:5:4:16)"
        )

    @property
    def name(self) -> str:
        """The text :meth:`parse` reads back (``plain`` for no speculation)."""
        if self.is_none:
            return "plain"
        if self.top_k == 1:
            return f"chain:{self.num_draft_tokens}"
        return f"tree:{self.depth}:{self.top_k}:{self.num_draft_tokens}"

    @property
    def is_none(self) -> bool:
        return self.num_draft_tokens == 0


NO_SPECULATION = TreeShape(num_draft_tokens=0, depth=1, top_k=1)
