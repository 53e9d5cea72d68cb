"""A compact GPT covering GPT-NeoX (Pythia, StableLM), Llama (Llama 2, TinyLlama, Mistral, SmolLM2) and Falcon."""

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from lit_gpt.config import Config


class GPT(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=config.lm_head_bias)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=build_norm(config),
            )
        )
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.max_seq_length = config.block_size
        self.activation_checkpointing = False  # recompute each block in backward: less memory, ~30% more compute

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        """Shorter than `block_size` saves the memory of the RoPE cache and of the KV cache."""
        if value > self.config.block_size:
            raise ValueError(f"max_seq_length={value} is longer than the model's block_size={self.config.block_size}")
        self._max_seq_length = value
        device = self.transformer.wte.weight.device
        device = torch.device("cpu") if device.type == "meta" else device
        cos, sin = build_rope_cache(value, self.config.rope_n_elem, self.config.rope_base, device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def set_kv_cache(self, batch_size: int, max_seq_length: Optional[int] = None,
                     device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        """Allocate a KV cache of `max_seq_length` positions (default: the model's) for generation."""
        max_seq_length = max_seq_length or self.max_seq_length
        if max_seq_length > self.max_seq_length:
            raise ValueError(f"KV cache of {max_seq_length} is longer than max_seq_length={self.max_seq_length}")
        device = device or self.lm_head.weight.device
        dtype = dtype or self.transformer.wte.weight.dtype
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(batch_size, max_seq_length, self.config, device, dtype)

    def clear_kv_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def forward(self, idx: torch.Tensor, input_pos: Optional[torch.Tensor] = None,
                logits_at: Optional[torch.Tensor] = None) -> torch.Tensor:
        """idx: (B, T) token ids. With `input_pos` (T,) the KV cache is used: positions are written, then read.

        Returns (B, T, padded_vocab_size) logits, or with `logits_at`, a (B, T) bool mask, (N, padded_vocab_size) for
        its N true positions in row-major order: training computes the head only where there are targets.
        """
        T = idx.size(1)
        if input_pos is None:
            if T > self.max_seq_length:
                raise ValueError(f"Sequence of {T} tokens is longer than max_seq_length={self.max_seq_length}")
            cos, sin = self.cos[:T], self.sin[:T]
        else:
            cos, sin = self.cos.index_select(0, input_pos), self.sin.index_select(0, input_pos)
        mask = None
        if input_pos is not None:
            length = int(input_pos[-1]) + 1  # attention reads the filled part of the cache only
            torch._check(length >= 1)  # compiled (capture_scalar_outputs): the data-dependent length is a size
            if 1 < T < length:  # a chunk after a prefix: explicit causal mask (T, length)
                mask = torch.arange(length, device=idx.device) <= input_pos[:, None]
            input_pos = (input_pos, length, mask)
        x = self.transformer.wte(idx)  # (B, T, n_embd)
        for block in self.transformer.h:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, input_pos, use_reentrant=False)
            else:
                x = block(x, cos, sin, input_pos)
        if logits_at is not None:
            x = x[logits_at]  # (N, n_embd)
        x = self.transformer.ln_f(x)
        return self.lm_head(x)


class Block(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.norm_1 = build_norm(config)
        self.attn = CausalSelfAttention(config)
        self.norm_2 = None if config.shared_attention_norm else build_norm(config)
        self.mlp = LLaMAMLP(config) if config.mlp_class_name == "LLaMAMLP" else GptNeoxMLP(config)
        self.parallel_residual = config.parallel_residual

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, input_pos: Optional[tuple] = None
                ) -> torch.Tensor:
        n_1 = self.norm_1(x)
        h = self.attn(n_1, cos, sin, input_pos)
        if self.parallel_residual:
            n_2 = n_1 if self.norm_2 is None else self.norm_2(x)
            return x + h + self.mlp(n_2)
        x = x + h
        return x + self.mlp(self.norm_2(x))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        # one fused projection, rows laid out as [all queries | all keys | all values]
        qkv_size = (config.n_head + 2 * config.n_query_groups) * config.head_size
        self.qkv = nn.Linear(config.n_embd, qkv_size, bias=config.bias)
        self.proj = nn.Linear(config.n_head * config.head_size, config.n_embd, bias=config.bias)
        self.kv_cache: Optional[KVCache] = None
        self.config = config

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, input_pos: Optional[tuple] = None
                ) -> torch.Tensor:
        """input_pos: (positions (T,), cache length to attend over, mask or None), from `GPT.forward`."""
        B, T, _ = x.shape
        c = self.config
        q, k, v = self.qkv(x).split([c.n_head * c.head_size, c.n_query_groups * c.head_size,
                                     c.n_query_groups * c.head_size], dim=-1)
        q = q.view(B, T, c.n_head, c.head_size).transpose(1, 2)  # (B, n_head, T, hs)
        k = k.view(B, T, c.n_query_groups, c.head_size).transpose(1, 2)  # (B, n_query_groups, T, hs)
        v = v.view(B, T, c.n_query_groups, c.head_size).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        mask, is_causal = None, T > 1
        if input_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("`input_pos` needs a KV cache: call `model.set_kv_cache(batch_size)` first")
            input_pos, length, mask = input_pos
            size = self.kv_cache.k.size(2)  # checked on the int `length`: no tensor sync, no graph break in compile
            if not torch.compiler.is_compiling() and length > size:
                raise ValueError(f"Position {length - 1} is past the KV cache's {size} positions")
            torch._check(length <= size)  # compiled: a runtime assert that also bounds the data-dependent length
            k, v = self.kv_cache(input_pos, k, v)
            k, v = k[:, :, :length], v[:, :, :length]  # (B, n_query_groups, length, hs)
            is_causal = is_causal and mask is None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           enable_gqa=c.n_query_groups != c.n_head)
        y = y.transpose(1, 2).reshape(B, T, c.n_head * c.head_size)
        return self.proj(y)


class GptNeoxMLP(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)
        self.approximate = config.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))


class LLaMAMLP(nn.Module):
    """SwiGLU: proj(silu(fc_1(x)) * fc_2(x)), fc_1 being the gate and fc_2 the up projection."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.fc_2 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.silu(self.fc_1(x)) * self.fc_2(x))


class RMSNorm(nn.Module):
    """Normalizes in float32, like the reference Llama implementation, then scales in the input dtype."""

    def __init__(self, size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def build_norm(config: Config) -> nn.Module:
    if config.norm_class_name == "RMSNorm":
        return RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps)


class KVCache(nn.Module):
    def __init__(self, batch_size: int, max_seq_length: int, config: Config, device: torch.device,
                 dtype: torch.dtype) -> None:
        super().__init__()
        shape = (batch_size, config.n_query_groups, max_seq_length, config.head_size)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def forward(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        n = k.size(0)  # a batch smaller than the cache's uses its first rows
        self.k[:n].index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v[:n].index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k[:n], self.v[:n]


def build_rope_cache(seq_len: int, n_elem: int, base: int, device: Optional[torch.device] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (seq_len, n_elem), in float32, in the rotate-half layout of Hugging Face models."""
    inv_freq = 1.0 / (base ** (torch.arange(0, n_elem, 2, device=device, dtype=torch.int64).float() / n_elem))
    t = torch.arange(seq_len, device=device, dtype=torch.int64).float()
    freqs = torch.outer(t, inv_freq)  # (seq_len, n_elem / 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates the first `cos.size(-1)` features of x (B, nh, T, hs); the rest pass through (partial rotary)."""
    n_elem = cos.size(-1)
    if n_elem == 0:
        return x
    rot, rest = x[..., :n_elem], x[..., n_elem:]
    x1, x2 = rot.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    roped = rot * cos.to(x.dtype) + rotated * sin.to(x.dtype)
    return torch.cat((roped, rest), dim=-1) if rest.size(-1) else roped

