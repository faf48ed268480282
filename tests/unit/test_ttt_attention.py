"""The fused training-time-test attention equals the materialised one, forward and backward."""

from __future__ import annotations

import pytest
import torch

from specforge.packing import block_causal_mask, packed_positions
from specforge.train.attention import _reference, ttt_attention

B, HEADS, KV_HEADS, S, D = 2, 6, 2, 13, 8


def _packed_mask() -> torch.Tensor:
    """Row 0 packs sequences of 5, 6 and 2 tokens; row 1 holds one sequence of 10 and 3 of padding."""
    pos = torch.stack(
        [packed_positions([5, 6, 2]), torch.cat([torch.arange(10), torch.zeros(3, dtype=torch.long)])]
    )
    attn = torch.ones(B, S, dtype=torch.long)
    attn[1, 10:] = 0
    return block_causal_mask(pos, attn)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("n_extra", [0, 1, 3])
def test_fused_equals_reference(dtype, tol, packed, n_extra):
    torch.manual_seed(n_extra)
    mask = _packed_mask() if packed else None
    q = torch.randn(B, HEADS, S, D, dtype=dtype, requires_grad=True)
    kv = [
        tuple(torch.randn(B, KV_HEADS, S, D, dtype=dtype, requires_grad=True) for _ in range(2))
        for _ in range(n_extra + 1)
    ]
    leaves = [q, *[t for pair in kv for t in pair]]
    got = ttt_attention(q, kv[0][0], kv[0][1], kv[1:], mask)
    ref = _reference(q, kv[0][0], kv[0][1], kv[1:], mask)
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    grad_out = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, leaves, grad_out), torch.autograd.grad(ref, leaves, grad_out)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_diagonal_keys_are_one_softmax_with_the_causal_keys():
    """Step 1's attention is SDPA over [K0; K1] with a causal + diagonal mask."""
    torch.manual_seed(0)
    q, k0, v0, k1, v1 = (torch.randn(2, 2, 6, 4) for _ in range(5))
    mask = torch.cat([torch.ones(6, 6).tril(), torch.eye(6)], dim=1).bool()
    want = torch.nn.functional.scaled_dot_product_attention(
        q, torch.cat([k0, k1], 2), torch.cat([v0, v1], 2), attn_mask=mask
    )
    torch.testing.assert_close(ttt_attention(q, k0, v0, [(k1, v1)]), want)
