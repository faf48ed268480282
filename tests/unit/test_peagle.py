"""The P-EAGLE parallel-drafting head: the training-time test teaches exactly what serving runs,
the reference engine serves it losslessly, and its vLLM export carries every key vLLM loads."""

from __future__ import annotations

import json

import pytest
import torch

from draft_models.peagle import ParallelEagle3Config, ParallelEagle3Draft
from draft_models.registry import get_draft_type, layout_for_config
from serving.drafters.parallel import ParallelDrafter
from specforge.capture import CapturedBatch
from specforge.train.ttt import ttt_forward
from specforge.vocab import build_draft_vocab
from tests.helpers import small_eagle3_config

H, V = 16, 40


def _config(**kw) -> ParallelEagle3Config:
    return ParallelEagle3Config(**small_eagle3_config(H, V, V, head_dim=8).to_dict(), **kw)


def _draft(seed: int = 0, **kw) -> ParallelEagle3Draft:
    torch.manual_seed(seed)
    draft = ParallelEagle3Draft(_config(**kw)).double()
    vocab = build_draft_vocab([(list(range(V)), [1] * V)], V, V)
    draft.set_vocab(vocab.d2t, vocab.t2d)
    return draft


def _batch(s: int = 14, seed: int = 1) -> CapturedBatch:
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(1, s, dtype=torch.long)
    return CapturedBatch(
        input_ids=torch.randint(0, V, (1, s), generator=g),
        attention_mask=ones,
        loss_mask=ones.clone(),
        aux_hidden_states=torch.randn(1, s, 3 * H, generator=g, dtype=torch.float64),
        last_hidden_state=torch.randn(1, s, H, generator=g, dtype=torch.float64),
        logits=torch.randn(1, s, V, generator=g, dtype=torch.float64),
    )


def test_training_mask_equals_serving_mask():
    """Every depth's draft token at every anchor, from the training-time test (fused attention,
    all anchors at once), equals the token the serving drafter proposes at that anchor (its own
    cache and an explicit mask, the layout vLLM's parallel drafter builds)."""
    k = 4
    draft, batch = _draft(), _batch()
    out = ttt_forward(draft, batch, steps=k)
    drafter = ParallelDrafter(draft, max_depth=k)
    s, compared = batch.input_ids.shape[1], 0
    for t in range(s - 2):
        drafter.reset(1)
        # verified pairs up to anchor t: features 0..t with tokens 1..t+1
        drafter.extend(0, batch.aux_hidden_states[0, : t + 1], batch.input_ids[0, 1 : t + 2], 0)
        chain = drafter.propose(0, t + 1, k, 1, k)
        for j in range(k):
            want = int(out.draft_tokens[j, 0, t])
            if want >= 0:
                assert int(chain.tokens[j]) == want, (t, j)
                compared += 1
    assert compared >= 30


def test_mask_slots_see_the_prefix_and_earlier_mask_slots_only():
    """Depth j at anchor t depends on tokens <= t+1 and features <= t, not on later ones; and the
    mask slots' output changes with the learned mask feature (they read it)."""
    draft, batch = _draft(), _batch()
    a = ttt_forward(draft, batch, steps=4).draft_tokens
    late = _batch(seed=1)
    late.input_ids[:, 9:] = 0
    late.aux_hidden_states[:, 8:] = 0
    b = ttt_forward(draft, late, steps=4).draft_tokens
    assert torch.equal(a[:, :, :8], b[:, :, :8])
    with torch.no_grad():
        draft.mask_hidden.mul_(-3.0)
    c = ttt_forward(draft, batch, steps=4).draft_tokens
    assert torch.equal(a[0], c[0]) and not torch.equal(a[1:], c[1:])


def test_each_depth_learns_its_own_offset():
    """A few hundred steps on one sequence teach every depth its token (the mask slots predict
    t + 2 + j from the prefix alone)."""
    torch.manual_seed(0)
    draft = _draft().float()
    batch = _batch()
    batch = CapturedBatch(
        **{k: (v.float() if v is not None and v.is_floating_point() else v) for k, v in vars(batch).items()}
    )
    batch.logits = torch.nn.functional.one_hot(batch.input_ids, V).float() * 20  # target predicts the data
    batch.logits = torch.roll(batch.logits, -1, dims=1)
    opt = torch.optim.Adam([p for p in draft.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(300):
        out = ttt_forward(draft, batch, steps=3)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    acc = [float(out.correct[j][out.in_vocab[j]].float().mean()) for j in range(3)]
    assert min(acc) > 0.9, acc
    assert draft.mask_hidden.grad is not None and draft.mask_hidden.grad.abs().sum() > 0


def test_vllm_export_keys_and_config(tmp_path):
    from specforge.export import check_vllm, export_vllm
    from tests.helpers import write_draft_run

    draft = _draft(mask_token_id=7).float()
    run = write_draft_run(tmp_path / "run", draft)
    out = export_vllm(run, tmp_path / "vllm")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["ptd_token_id"] == 7
    layout = layout_for_config(cfg)
    assert layout is get_draft_type("peagle").vllm and layout.speculative_options == {
        "parallel_drafting": True
    }
    plain_cfg = {k: v for k, v in cfg.items() if k != "ptd_token_id"}
    assert layout_for_config(plain_cfg) is get_draft_type("eagle3").vllm
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))
    assert tensors["mask_hidden"].shape == (1, 3 * H)
    assert torch.equal(tensors["mask_hidden"][0], draft.mask_hidden.detach())
    bad = dict(tensors)
    del bad["mask_hidden"]
    with pytest.raises(Exception, match="mask_hidden"):
        check_vllm(bad, "peagle", draft.config)


def test_speculative_config_of_an_export_asks_for_parallel_drafting(tmp_path):
    from serving.vllm_plugin.harness.request import draft_speculative_fields
    from specforge.export import export_vllm
    from tests.helpers import write_draft_run

    out = export_vllm(write_draft_run(tmp_path / "run", _draft().float()), tmp_path / "vllm")
    assert draft_speculative_fields(out) == {"method": "eagle3", "parallel_drafting": True}


def test_mask_token_outside_the_vocabulary_is_refused():
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
    )
    with pytest.raises(ValueError, match="mask_token_id"):
        ParallelEagle3Config.from_target(cfg, V, [1, 2, 3], mask_token_id=V)
