"""The training-time test's attention, fused: causal (or block-diagonal causal) keys plus diagonal keys.

Contract: :func:`ttt_attention` computes, for query ``q`` at position ``t``,

    softmax([q . k0[u] for u <= t visible] ++ [q . k_j[t] for each extra step j]) @ [v0[u]; v_j[t]]

exactly as one softmax over both key sets (scaled by ``1/sqrt(d)``). The first key set is the
target-feature step's keys under a causal mask (or a causal mask restricted further, e.g. block-diagonal
for packed rows); each extra key set is a later draft step's keys, seen only on the diagonal.

How: the first key set goes through torch's fused CPU/GPU flash-attention kernel, which returns
its output ``o_c`` and log-sum-exp ``L_c`` and never writes the ``[seq, seq]`` score matrix; the
diagonal scores ``d_j`` are merged in closed form::

    L = logaddexp(L_c, logsumexp_j d_j),   o = o_c * exp(L_c - L) + sum_j exp(d_j - L) * v_j

The backward re-enters the same kernel's backward with the *merged* ``o`` and ``L``: it then
yields the exact gradients of the first key set under the merged softmax (its probabilities
``exp(s - L)`` and its ``rowsum(dO * o)`` term are the merged ones), and the diagonal terms add
``dd_j = p_j * (dO . v_j - rowsum(dO * o))``. Memory and time follow ``seq`` linearly for the
diagonal part, and the kernel's blocked loop for the rest.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _flash_ops():
    """The fused kernel's forward/backward pair for the device (CPU: the *_for_cpu ops)."""
    return (
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward,
    )


class _TTTAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k0, v0, mask, *extra):
        """q, k0, v0 [b, h, s, d] (heads expanded); mask None (causal) or a causal bool [b|1, 1, s, s];
        extra: k_1, v_1, k_2, v_2, ... each [b, kv_heads, s, d] (grouped: broadcast, not copied)."""
        fwd, _ = _flash_ops()
        scale = 1.0 / math.sqrt(q.shape[-1])
        # is_causal lets the kernel skip the blocks above the diagonal; a mask (packed rows) then
        # only removes more keys from what is left
        bias = None if mask is None else _additive(mask, q.dtype)
        out_c, lse_c = fwd(q, k0, v0, 0.0, True, attn_mask=bias, scale=scale)  # [b,h,s,d], [b,h,s]
        ks, vs = extra[0::2], extra[1::2]
        if ks:
            b, h, s, d = q.shape
            qg = q.float().view(b, ks[0].shape[1], -1, s, d)  # [b, kv_heads, rep, s, d]
            diag = torch.stack([(qg * k.float()[:, :, None]).sum(-1) * scale for k in ks], -1)
            diag = diag.view(b, h, s, len(ks))  # [b, h, s, n] scores of the diagonal keys
            lse = torch.logaddexp(lse_c, torch.logsumexp(diag, -1))  # [b, h, s]
            p = (diag - lse[..., None]).exp()  # [b, h, s, n] their probabilities
            out = (out_c.float() * (lse_c - lse).exp()[..., None]).view(qg.shape)
            pg = p.view(*qg.shape[:-1], len(ks))
            for j, v in enumerate(vs):
                out = out + pg[..., j, None] * v.float()[:, :, None]
            out = out.view(b, h, s, d).to(q.dtype)
        else:
            lse, p, out = lse_c, None, out_c
        ctx.save_for_backward(q, k0, v0, bias, out, lse, p, *extra)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k0, v0, bias, out, lse, p, *extra = ctx.saved_tensors
        _, bwd = _flash_ops()
        g = grad_out.contiguous()
        dq, dk0, dv0 = bwd(g, q, k0, v0, out, lse, 0.0, True, attn_mask=bias, scale=ctx.scale)
        grads: list[torch.Tensor] = []
        if extra:
            b, h, s, d = q.shape
            kvh = extra[0].shape[1]
            gg = g.float().view(b, kvh, -1, s, d)  # [b, kv_heads, rep, s, d]
            qg = q.float().view(gg.shape)
            rowsum = (gg * out.float().view(gg.shape)).sum(-1)  # [b, kv_heads, rep, s]
            pg = p.view(*gg.shape[:-1], -1)  # [b, kv_heads, rep, s, n]
            dq = dq.float().view(gg.shape)
            for j, (k, v) in enumerate(zip(extra[0::2], extra[1::2])):
                pj = pg[..., j]
                kf, vf = k.float()[:, :, None], v.float()[:, :, None]  # [b, kv_heads, 1, s, d]
                dd = pj * ((gg * vf).sum(-1) - rowsum) * ctx.scale  # d loss / d score_j
                dq = dq + dd[..., None] * kf
                grads += [(dd[..., None] * qg).sum(2).to(k.dtype), (pj[..., None] * gg).sum(2).to(v.dtype)]
            dq = dq.view(b, h, s, d).to(q.dtype)
        return (dq, dk0, dv0, None, *grads)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool mask (True = may attend) -> additive float mask the fused kernel takes."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def _expand_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], dim=1)


def ttt_attention(
    q: torch.Tensor,
    k0: torch.Tensor,
    v0: torch.Tensor,
    extra: list[tuple[torch.Tensor, torch.Tensor]],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [b, heads, s, d]; k0/v0 [b, kv_heads, s, d] seen through ``mask`` (None: causal; else a bool
    [b|1, 1, s, s] that allows no key after the query, e.g. block-diagonal causal, True = may
    attend, every row with at least one True); each extra (k, v)
    [b, kv_heads, s, d] seen only on the diagonal. Returns [b, heads, s, d]."""
    h = q.shape[1]
    if q.device.type != "cpu":  # the merged-softmax trick needs the kernel's log-sum-exp: CPU op only
        return _reference(q, k0, v0, extra, mask)
    flat = [t.contiguous() for kv in extra for t in kv]
    return _TTTAttention.apply(
        q.contiguous(), _expand_heads(k0, h).contiguous(), _expand_heads(v0, h).contiguous(), mask, *flat
    )


def _reference(q, k0, v0, extra, mask):
    """The same attention spelled out with a materialised score matrix (any device)."""
    h, s = q.shape[1], q.shape[2]
    k0, v0 = _expand_heads(k0, h), _expand_heads(v0, h)
    if mask is None:
        mask = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
    if not extra:
        return F.scaled_dot_product_attention(q, k0, v0, attn_mask=mask)
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = ((q @ k0.transpose(-1, -2)) * scale).masked_fill(~mask, float("-inf"))  # [b, h, s, s]
    diag = torch.stack([(q * _expand_heads(k, h)).sum(-1) * scale for k, _ in extra], -1)  # [b, h, s, n]
    probs = torch.cat([scores, diag], dim=-1).float().softmax(-1).to(q.dtype)
    out = probs[..., :s] @ v0
    for j, (_, v) in enumerate(extra):
        out = out + probs[..., s + j, None] * _expand_heads(v, h)
    return out
