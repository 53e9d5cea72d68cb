"""Causal self-attention on CPU in training: the query heads that share a key/value head folded into one matmul."""

from typing import Optional

import torch

# Training on CPU, causal attention whose (B, n_head, T, T) scores have at most this many entries runs as
# `folded_attention`, longer as SDPA (its flash kernel there). Measured forward + backward on a 2-core AMX Xeon, 9 query
# heads on 3 key/value heads of 64: bf16 at 256 / 384 / 512 tokens folded 1.9 / 3.3 / 8.6 ms, SDPA math 3.5 / 6.8 /
# 13.9, flash 2.8 / 4.8 / 7.6 (at 64-128 tokens folded and math alike, flash 2x slower); float32 folded as fast as
# flash up to 256 tokens, within 10% of it up to 512. With 9 heads the limit is 482 tokens an example.
FOLDED_ATTENTION_MAX_SCORES = 1 << 21
# With attention sinks (gpt-oss) the folded scores take one more column, the CPU flash kernel a rescaling of its output
# (lit_gpt/sinks.py): 9 heads on 3, batch 2, forward + backward, float32 folded 2.5 / 6.2 / 10.5 ms at 128 / 192 / 256
# tokens, flash 2.7 / 4.8 / 8.1; bfloat16 folded 2.1 / 3.9 / 6.7 / 15.1 (at 320), flash 5.8 / 5.7 / 8.2 / 11.4.
FOLDED_SINK_ATTENTION_MAX_SCORES = 1 << 19


def folded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float],
                     sinks: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Causal self-attention of q (B, n_head, T, hs) over k, v (B, n_query_groups, T, hs) as two batched matmuls,
    the r = n_head / n_query_groups query heads that share a key/value head stacked along the sequence: one (r T, T)
    score matrix per group, no copy of k and v per query head (SDPA's math kernel makes them). Softmax in float32
    (float64 for float64 inputs).
    `sinks` (n_head,): each head's logit joins its rows' softmax as one more column, dropped after it (gpt-oss)."""
    B, H, T, hs = q.shape
    G = k.size(1)
    r = H // G
    future = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)  # added to the scores
    scores = torch.baddbmm(future.repeat(r, 1), q.reshape(B * G, r * T, hs), k.reshape(B * G, T, hs).transpose(1, 2),
                           alpha=hs ** -0.5 if scale is None else scale)  # (B G, r T, T)
    if sinks is not None:
        column = sinks.to(scores.dtype).view(1, G, r, 1).expand(B, G, r, T).reshape(B * G, r * T, 1)
        scores = torch.cat([scores, column], dim=-1)
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(q.dtype)
    if sinks is not None:
        probs = probs[..., :-1]
    return torch.bmm(probs, v.reshape(B * G, T, hs)).view(B, H, T, hs)
