"""Gated DeltaNet, the linear attention of Qwen3.5's hybrid layers: a causal depthwise convolution over q|k|v, then the
gated delta rule, a (dk, dv) state per value head that decays by exp(g) and is corrected towards each token's value:

    S_t = (I - beta_t k_t k_t^T) exp(g_t) S_{t-1} + beta_t k_t v_t^T,    o_t = S_t^T q_t

computed over chunks of `CHUNK` tokens in training and prefill, token by token in decoding."""

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_gpt.config import Config

CHUNK = 64


class GatedDeltaNet(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        c = config
        Hk, Hv, dk, dv = c.linear_n_key_heads, c.linear_n_value_heads, c.linear_key_head_size, c.linear_value_head_size
        self.conv_dim = 2 * Hk * dk + Hv * dv
        self.qkv = nn.Linear(c.n_embd, self.conv_dim, bias=False)  # rows [q | k | v]
        self.gate = nn.Linear(c.n_embd, Hv * dv, bias=False)  # z of the gated norm
        self.beta = nn.Linear(c.n_embd, Hv, bias=False)
        self.decay = nn.Linear(c.n_embd, Hv, bias=False)
        self.conv = nn.Conv1d(self.conv_dim, self.conv_dim, c.linear_conv_kernel, groups=self.conv_dim, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(Hv))
        self.A_log = nn.Parameter(torch.empty(Hv).uniform_(0.01, 16).log())  # the decay rates' logs, as HF inits them
        self.norm = GatedRMSNorm(dv, config.norm_eps)
        self.proj = nn.Linear(Hv * dv, c.n_embd, bias=False)
        self.kv_cache: Optional[DeltaNetState] = None
        self.config = config

    def forward(self, x: torch.Tensor, cos: Optional[torch.Tensor] = None, sin: Optional[torch.Tensor] = None,
                lengths: Optional[list] = None, cache: Optional[tuple] = None) -> torch.Tensor:
        """x (B, T, n_embd); cos, sin unused (the block's attention signature). Every row from a zero state, or with
        `lengths`, x (1, T) holds examples laid end to end: an int n is an example of n tokens, a tuple (p, a1, a2, ...)
        a prompt of p tokens then answers that each continue from the prompt's state. With `cache` (input_pos (T,) or
        (B, T), length) from `GPT.forward`, rows continue their state in `self.kv_cache`, rows at position 0 restart."""
        B, T, _ = x.shape
        c = self.config
        Hv, dv = c.linear_n_value_heads, c.linear_value_head_size
        qkv = self.qkv(x)  # (B, T, conv_dim)
        beta = self.beta(x).sigmoid()  # (B, T, Hv)
        wide = torch.promote_types(x.dtype, torch.float32)  # the rule's dtype: float32 (float64 for float64 models)
        g = -self.A_log.to(wide).exp() * F.softplus(self.decay(x).to(wide) + self.dt_bias.to(wide))  # (B, T, Hv) < 0
        zero = x.new_zeros(B, self.conv_dim, c.linear_conv_kernel - 1)  # the conv history before a sequence
        if lengths is not None:
            sizes = [n for e in lengths for n in ((e,) if isinstance(e, int) else e)]
            parts = iter(zip(qkv.split(sizes, 1), g.split(sizes, 1), beta.split(sizes, 1)))
            o = []
            for e in lengths:
                o_p, hist, S = self.mix(*next(parts), zero, None)
                o.append(o_p)
                for _ in () if isinstance(e, int) else e[1:]:  # the answers, each after the prompt alone
                    o.append(self.mix(*next(parts), hist, S)[0])
            o = torch.cat(o, 1)
        elif cache is None:
            o = self.mix(qkv, g, beta, zero, None)[0]
        else:
            state, rows = self.kv_cache, slice(self.kv_cache.first_row, self.kv_cache.first_row + B)
            start = (cache[0][..., 0] == 0).view(-1, 1, 1)  # (B or 1, 1, 1): rows that begin here restart at zero
            hist = torch.where(start, 0, state.conv[rows])
            S = torch.where(start[..., None], 0, state.recurrent[rows])
            o, hist, S = self.mix(qkv, g, beta, hist, S)
            state.conv[rows] = hist
            state.recurrent[rows] = S
        y = self.norm(o, self.gate(x).view(B, T, Hv, dv))  # (B, T, Hv, dv)
        return self.proj(y.reshape(B, T, Hv * dv))

    def mix(self, qkv: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, hist: torch.Tensor,
            S: Optional[torch.Tensor]) -> tuple:
        """One run of tokens after conv history `hist` (B, conv_dim, kernel - 1) and state S (B, Hv, dk, dv) or None
        (zeros): returns o (B, T, Hv, dv) in qkv's dtype, the new history and the final state (float32)."""
        B, T, _ = qkv.shape
        c = self.config
        Hk, Hv, dk, dv = c.linear_n_key_heads, c.linear_n_value_heads, c.linear_key_head_size, c.linear_value_head_size
        full = torch.cat([hist, qkv.transpose(1, 2)], -1)  # (B, conv_dim, kernel - 1 + T)
        hist = full[..., full.size(-1) - hist.size(-1):]
        qkv = F.silu(self.conv(full)).transpose(1, 2).contiguous()  # (B, T, conv_dim); contiguous: sums as HF's
        q, k, v = qkv.to(g.dtype).split([Hk * dk, Hk * dk, Hv * dv], -1)
        # each key head serves Hv / Hk consecutive value heads
        q = l2norm(q.view(B, T, Hk, dk)).repeat_interleave(Hv // Hk, 2) * dk ** -0.5  # (B, T, Hv, dk)
        k = l2norm(k.view(B, T, Hk, dk)).repeat_interleave(Hv // Hk, 2)
        rule = recurrent_delta_rule if T == 1 and S is not None else chunked_delta_rule
        o, S = rule(q, k, v.view(B, T, Hv, dv), g, beta.to(g.dtype), S)
        return o.to(qkv.dtype), hist, S


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def chunked_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                       S: Optional[torch.Tensor] = None) -> tuple:
    """The gated delta rule over chunks of `CHUNK` tokens, the same math as `recurrent_delta_rule`: the writes of a
    chunk's tokens solve one triangular system, and only the state passes from chunk to chunk. q, k (B, T, H, dk),
    v (B, T, H, dv), g (log decay) and beta (B, T, H), S (B, H, dk, dv) or None (zeros). Returns o (B, T, H, dv), S."""
    B, T, H, dk = k.shape
    dv, pad = v.size(-1), -T % CHUNK
    # (B, H, N, C, d) for N chunks of C tokens; the padding neither decays nor writes the state
    q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)).transpose(1, 2).reshape(B, H, -1, CHUNK, t.size(-1)) for t in (q, k, v))
    g, beta = (F.pad(t, (0, 0, 0, pad)).transpose(1, 2).reshape(B, H, -1, CHUNK) for t in (g, beta))
    g = g.cumsum(-1)  # (B, H, N, C) log decay from the chunk's start through each token
    causal = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=q.device).tril()
    decay = (g[..., :, None] - g[..., None, :]).masked_fill(~causal, float("-inf")).exp()  # (B, H, N, C, C): j -> i
    # a token's write d_i = beta_i (v_i - k_i^T S_{i-1} decayed): with the earlier writes of its chunk unrolled,
    # (I + A) d = beta v - beta exp(g) k S_0, A the strictly lower beta_i decay_ij k_i.k_j (the diagonal is unused)
    kb = k * beta[..., None]
    A = (kb @ k.transpose(-1, -2)) * decay  # (B, H, N, C, C)
    u = torch.linalg.solve_triangular(A, v * beta[..., None], upper=False, unitriangular=True)  # (B, H, N, C, dv)
    w = torch.linalg.solve_triangular(A, kb * g.exp()[..., None], upper=False, unitriangular=True)  # (B, H, N, C, dk)
    attn = (q @ k.transpose(-1, -2)) * decay  # (B, H, N, C, C): the chunk's own writes read by its queries
    q_S = q * g.exp()[..., None]  # the queries reading the chunk's initial state
    k_S = k * (g[..., -1:] - g).exp()[..., None]  # the keys decayed to the chunk's end
    end = g[..., -1, None, None].exp()  # (B, H, N, 1, 1)
    S = q.new_zeros(B, H, dk, dv) if S is None else S.to(q.dtype)
    o = []
    for n in range(g.size(2)):
        d = u[:, :, n] - w[:, :, n] @ S  # (B, H, C, dv)
        o.append(q_S[:, :, n] @ S + attn[:, :, n] @ d)
        S = S * end[:, :, n] + k_S[:, :, n].transpose(-1, -2) @ d
    o = torch.stack(o, 2).view(B, H, -1, dv)[:, :, :T]  # (B, H, T, dv)
    return o.transpose(1, 2), S


def recurrent_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                         S: Optional[torch.Tensor] = None) -> tuple:
    """The gated delta rule token by token (decoding), arguments and returns as `chunked_delta_rule`."""
    B, T, H, dk = k.shape
    S = q.new_zeros(B, H, dk, v.size(-1)) if S is None else S.to(q.dtype)
    o = []
    for t in range(T):
        S = S * g[:, t, :, None, None].exp()  # (B, H, dk, dv)
        k_t = k[:, t, :, :, None]  # (B, H, dk, 1)
        d = beta[:, t, :, None] * (v[:, t] - (S * k_t).sum(-2))  # (B, H, dv)
        S = S + k_t * d[:, :, None]
        o.append((S * q[:, t, :, :, None]).sum(-2))
    return torch.stack(o, 1), S  # (B, T, H, dv)


class GatedRMSNorm(nn.Module):
    """RMSNorm of each head's output in float32, scaled in the input dtype, then gated by silu(z) in float32 (as
    Qwen3.5's reference)."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x32.to(x.dtype) * F.silu(z.float())).to(x.dtype)


class DeltaNetState(nn.Module):
    """The conv history (rows, conv_dim, kernel - 1) in the model's dtype and the recurrent state (rows, Hv, dk, dv) in
    float32 of `rows` sequences. A batch of B rows uses rows first_row .. first_row + B - 1."""

    def __init__(self, rows: int, config: Config, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        c = config
        Hk, Hv, dk, dv = c.linear_n_key_heads, c.linear_n_value_heads, c.linear_key_head_size, c.linear_value_head_size
        conv = torch.zeros(rows, 2 * Hk * dk + Hv * dv, c.linear_conv_kernel - 1, device=device, dtype=dtype)
        self.register_buffer("conv", conv, persistent=False)
        self.register_buffer("recurrent", torch.zeros(rows, Hv, dk, dv, device=device,
                                                      dtype=torch.promote_types(dtype, torch.float32)),
                             persistent=False)
        self.first_row = 0

    def copy_rows(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Rows `dst` (N,) get the state of rows `src` (N,) or (1,)."""
        self.conv[dst] = self.conv[src]
        self.recurrent[dst] = self.recurrent[src]
