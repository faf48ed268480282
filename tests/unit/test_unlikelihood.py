"""Sequence-level unlikelihood: which tokens it flags, and that a step lowers their probability."""

from __future__ import annotations

import torch

from specforge.targets.unlikelihood import repeated_ngram_mask, unlikelihood_loss


def test_repeated_ngram_mask_flags_every_token_of_a_repeat():
    #        0  1  2  3  4  5  6  7  8
    tokens = [5, 6, 7, 8, 9, 5, 6, 7, 8]
    assert repeated_ngram_mask(tokens, 4) == [False] * 5 + [True] * 4
    assert repeated_ngram_mask([1, 2, 3, 4, 5, 6], 4) == [False] * 6
    # A one-token loop: from the second full 4-gram on, the gram and its tokens are repeats.
    assert repeated_ngram_mask([3] * 6, 4) == [False, True, True, True, True, True]
    assert repeated_ngram_mask([1, 2], 4) == [False, False]


def test_unlikelihood_step_lowers_the_probability_of_repeated_tokens():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(cfg)
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    conts = torch.tensor([[7, 8, 9, 10, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18]])
    flags = torch.tensor([repeated_ngram_mask(r, 4) for r in conts.tolist()])

    def chosen_prob() -> torch.Tensor:  # [batch, new_tokens]
        with torch.no_grad():
            logits = model(input_ids=torch.cat([prompts, conts], 1)[:, :-1]).logits[:, 2:]
            return torch.softmax(logits, -1).gather(-1, conts[..., None])[..., 0]

    before = chosen_prob()
    loss, frac = unlikelihood_loss(model, prompts, conts)
    assert frac == flags.float().mean().item() == 4 / 16
    expected = -(torch.log1p(-before) * flags).sum() / conts.numel()
    assert torch.allclose(loss.detach(), expected, atol=1e-6)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loss.backward()
    opt.step()
    after = chosen_prob()
    assert (after[flags] < before[flags]).all()
