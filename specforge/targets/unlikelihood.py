"""Sequence-level unlikelihood training against greedy repetition (Welleck et al., 2019, §5.2).

Contract: :func:`repeated_ngram_mask` flags the tokens of a continuation that belong to an n-gram
already seen earlier in that continuation; :func:`unlikelihood_loss` is
``-sum log(1 - p(x_t | x_<t))`` over the flagged tokens of the model's *own* greedy continuations,
divided by the number of continuation tokens. Mixed with the ordinary next-token loss it teaches a
small causal LM to stop falling into loops under greedy decoding while keeping its likelihood on
real text. The tiny target's builder uses it as a short final phase.
"""

from __future__ import annotations

import torch


def repeated_ngram_mask(tokens: list[int], n: int = 4) -> list[bool]:
    """``mask[i]`` is True when token ``i`` is part of an n-gram that already ended earlier."""
    mask = [False] * len(tokens)
    seen: set[tuple[int, ...]] = set()
    for end in range(n - 1, len(tokens)):
        gram = tuple(tokens[end - n + 1 : end + 1])
        if gram in seen:
            for i in range(end - n + 1, end + 1):
                mask[i] = True
        seen.add(gram)
    return mask


def unlikelihood_loss(
    model: torch.nn.Module, prompts: torch.Tensor, continuations: torch.Tensor, n: int = 4
) -> tuple[torch.Tensor, float]:
    """Unlikelihood of the repeated n-grams in ``continuations``; also returns the flagged fraction.

    prompts:       [batch, prompt_len]  token ids the continuations were generated from
    continuations: [batch, new_tokens]  the model's greedy tokens after each prompt
    """
    seq = torch.cat([prompts, continuations], dim=1)  # [batch, prompt_len + new_tokens]
    flags = torch.tensor([repeated_ngram_mask(row, n) for row in continuations.tolist()])
    logits = model(input_ids=seq[:, :-1]).logits[:, prompts.shape[1] - 1 :]  # [batch, new_tokens, vocab]
    # p: the model's probability of the token it chose greedily; push it down where it repeats.
    p = torch.softmax(logits.float(), dim=-1).gather(-1, continuations[..., None])[..., 0]
    per_token = -torch.log(torch.clamp(1.0 - p, min=1e-5)) * flags
    return per_token.sum() / continuations.numel(), flags.float().mean().item()
