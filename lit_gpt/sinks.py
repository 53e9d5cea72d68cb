"""Attention with sinks (gpt-oss): each head's learned logit joins every query's softmax as one more column, whose
value is zero, so a query may give part of its attention to nothing.

With Z the sum of exp(scores) over the keys a query sees and s its head's sink, the probabilities are exp(score) /
(Z + exp(s)): those of plain attention times Z / (Z + exp(s)) = exp(lse - logaddexp(lse, s)), lse = log Z. So the
output is plain attention's rescaled per query, and on CPU it is PyTorch's flash kernel, which also returns lse. Its
backward, given the rescaled output and logaddexp(lse, s) in place of lse, is the backward of the attention with the
sink column (the column's value is zero: it adds nothing to dO . V), and the sink's own gradient is
-sum over queries of p_sink * (dO . O). Elsewhere (CUDA), `sink_attention_math` computes the scores.
"""

from typing import Optional

import torch


def sink_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor,
                   mask: Optional[torch.Tensor], scale: Optional[float]) -> torch.Tensor:
    """Attention of q (B, n_head, T, hs) over k, v (B, n_query_groups, L, hs) with `sinks` (n_head,); mask
    (..., T, L) bool, which keys each query sees (None: causal when T > 1, all L keys for one query)."""
    causal = mask is None and q.size(2) > 1
    if q.device.type != "cpu":
        return sink_attention_math(q, k, v, sinks, mask, causal, scale)
    bias = None
    if mask is not None:  # the CPU kernel takes an additive mask of the query's dtype, (B or 1, 1 or heads, T, L)
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        bias = bias.view((1,) * (4 - bias.dim()) + tuple(bias.shape))
    return _FlashWithSinks.apply(q, k, v, sinks, bias, causal, scale)


class _FlashWithSinks(torch.autograd.Function):
    """PyTorch's CPU flash attention (grouped-query heads as they are) rescaled per query for the sinks."""

    @staticmethod
    def forward(ctx, q, k, v, sinks, bias, causal, scale):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, attn_mask=bias,
                                                                              scale=scale)  # lse (B, n_head, T)
        lse_all = torch.logaddexp(lse, sinks.view(-1, 1).to(lse.dtype))  # with the sink column
        y = out * torch.exp(lse - lse_all).unsqueeze(-1).to(out.dtype)
        ctx.save_for_backward(q, k, v, sinks, bias, y, lse_all)
        ctx.causal, ctx.scale = causal, scale
        return y

    @staticmethod
    def backward(ctx, grad):
        q, k, v, sinks, bias, y, lse_all = ctx.saved_tensors
        grad = grad.contiguous()
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad, q, k, v, y, lse_all, 0.0, ctx.causal, attn_mask=bias, scale=ctx.scale)
        wide = torch.promote_types(y.dtype, torch.float32)
        p_sink = torch.exp(sinks.view(-1, 1).to(lse_all.dtype) - lse_all)  # (B, n_head, T)
        d_sinks = -(p_sink.to(wide) * (grad.to(wide) * y.to(wide)).sum(-1)).sum((0, 2))
        return dq, dk, dv, d_sinks.to(sinks.dtype), None, None, None


def sink_attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor,
                        mask: Optional[torch.Tensor], causal: bool, scale: Optional[float]) -> torch.Tensor:
    """`sink_attention` from the (B, n_head, T, L) scores, the softmax in float32 (or float64)."""
    T, L = q.size(2), k.size(2)
    r = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)
    wide = torch.promote_types(q.dtype, torch.float32)
    scores = (q @ k.transpose(-1, -2)).to(wide) * (q.size(-1) ** -0.5 if scale is None else scale)
    if causal:
        mask = torch.ones(T, L, dtype=torch.bool, device=q.device).tril_()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    column = sinks.to(wide).view(-1, 1, 1).expand(*scores.shape[:-1], 1)
    probs = torch.cat([scores, column], dim=-1).softmax(dim=-1)[..., :-1]
    return probs.to(v.dtype) @ v
