"""A compact GPT: GPT-NeoX (Pythia, StableLM), Llama (Llama 2/3, TinyLlama, Mistral, SmolLM2, SmolLM3, Ministral 3),
Qwen2.5, Qwen3, Qwen3.5 (with lit_gpt/deltanet.py), Gemma 3 and 4, Phi-3, OLMo 2/3 and Falcon, and the mixtures of
experts Qwen3-MoE, Qwen3.5-MoE, gpt-oss and Gemma 4 26B-A4B (with lit_gpt/moe.py), one code path driven by `Config`
fields."""

from dataclasses import replace
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from lit_gpt.config import Config
from lit_gpt.deltanet import DeltaNetState, GatedDeltaNet
from lit_gpt.folded import FOLDED_ATTENTION_MAX_SCORES, FOLDED_SINK_ATTENTION_MAX_SCORES, folded_attention
from lit_gpt.moe import MoE, sequence_counts
from lit_gpt.norms import build_norm, rms_norm
from lit_gpt.rope import apply_rope, build_rope_cache
from lit_gpt.sinks import sink_attention


class GPT(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=config.lm_head_bias)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
                ln_f=build_norm(config),
            )
        )
        if config.per_layer_embd:  # Gemma 4: a table of each layer's input per token, and a projection of the embedding
            n = config.n_layer * config.per_layer_embd
            self.transformer.update(dict(wte_per_layer=nn.Embedding(config.per_layer_vocab_size, n),
                                         per_layer_proj=nn.Linear(config.n_embd, n, bias=False),
                                         per_layer_norm=build_norm(config, config.per_layer_embd)))
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.max_seq_length = config.block_size
        self.activation_checkpointing = False  # recompute each block in backward: less memory, ~30% more compute
        self.router_weights: Optional[torch.Tensor] = None  # MoE: each token's weight in the router statistics

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
        c = self.config
        n_elem = int(c.rotary_percentage * (c.global_head_size or c.head_size))  # the global layers' RoPE features
        tables = {"": build_rope_cache(value, n_elem, c.rope_base, c.rope_scaling, device)}
        if c.rope_local_base is not None:  # sliding-window layers: their own base, unscaled
            tables["_local"] = build_rope_cache(value, c.rope_n_elem, c.rope_local_base, None, device)
        if (c.rope_scaling or {}).get("type") == "longrope":
            tables["_long"] = build_rope_cache(value, n_elem, c.rope_base, c.rope_scaling, device, long=True)
        for suffix, (cos, sin) in tables.items():
            self.register_buffer("cos" + suffix, cos, persistent=False)
            self.register_buffer("sin" + suffix, sin, persistent=False)

    def set_kv_cache(self, batch_size: int, max_seq_length: Optional[int] = None,
                     device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        """Allocate a KV cache of `max_seq_length` positions (default: the model's) for generation."""
        max_seq_length = max_seq_length or self.max_seq_length
        if max_seq_length > self.max_seq_length:
            raise ValueError(f"KV cache of {max_seq_length} is longer than max_seq_length={self.max_seq_length}")
        device = device or self.lm_head.weight.device
        dtype = dtype or self.transformer.wte.weight.dtype
        for block in self.transformer.h:
            block.attn.kv_cache = block.build_cache(batch_size, max_seq_length, device, dtype)

    def clear_kv_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def forward(self, idx: torch.Tensor, input_pos: Optional[torch.Tensor] = None,
                logits_at: Optional[torch.Tensor] = None, lengths: Optional[list[int]] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """idx: (B, T) token ids at positions `input_pos`, (T,) for every row or (B, T) per row (default 0..T-1).
        With a KV cache (`set_kv_cache`) each row's tokens are written to the cache slots of their positions, then
        attend to the row's slots up to their own position; without one they attend to each other causally. `mask`
        (B, T, L), for per-row positions: which of the L keys (cache slots, or the T tokens) each query sees instead
        (a token trie). With `lengths`, idx (1, T) holds examples of these lengths laid end to end (padding-free
        training): each one's positions start at 0 and its tokens attend only to its own earlier tokens. An entry
        (p, a_1, a_2, ...) is a prompt of p tokens followed by answers that share it (see `packed_inputs`).

        Returns (B, T, padded_vocab_size) logits, or with `logits_at`, a (B, T) bool mask, (N, padded_vocab_size) for
        its N true positions in row-major order: training computes the head only where there are targets.
        """
        T = idx.size(1)
        cache = None
        if lengths is not None:
            sizes = [n if isinstance(n, int) else sum(n) for n in lengths]
            longest = max(n if isinstance(n, int) else n[0] + max(n[1:]) for n in lengths)
            if longest > self.max_seq_length or sum(sizes) != T or idx.size(0) != 1:
                raise ValueError(f"lengths {lengths} must sum to the {T} tokens of one row, each sequence at most "
                                 f"max_seq_length={self.max_seq_length}")
            inputs = self.packed_inputs(lengths, idx.device)
        else:
            if input_pos is None:
                if T > self.max_seq_length:
                    raise ValueError(f"Sequence of {T} tokens is longer than max_seq_length={self.max_seq_length}")
                input_pos = torch.arange(T, device=idx.device)
            if mask is not None and self.config.linear_attention:
                raise ValueError("A mask (a token trie) cannot reach linear-attention layers: run each sequence alone")
            per_row = input_pos.dim() == 2
            pos = input_pos[:, None] if per_row else input_pos  # (B, 1, T): broadcasts over the heads
            if mask is not None:
                mask = mask[:, None]  # (B, 1, T, L)
            key_pos = pos
            if self.transformer.h[0].attn.kv_cache is not None:
                length = int(input_pos.max()) + 1  # attention reads the filled part of the cache only
                torch._check(length >= 1)  # compiled (capture_scalar_outputs): the data-dependent length is a size
                key_pos = torch.arange(length, device=idx.device)
                if mask is None and (per_row or 1 < T < length):  # not plain causal: a mask (..., T, length)
                    mask = key_pos <= pos[..., None]
                cache = (input_pos, length)
            inputs = self.layer_inputs(pos, key_pos, mask)
        inputs["linear"] = (None, None, lengths, None)  # linear attention: the packed examples' lengths, if any
        if self.config.n_expert and torch.is_grad_enabled():  # a shared prompt counts once per answer, as in rows
            self.router_weights = None if lengths is None else sequence_counts(lengths, idx.device)
        x = self.embed(idx)  # (B, T, n_embd)
        per_layer = self.per_layer_inputs(idx, x) if self.config.per_layer_embd else None
        shared = {} if self.config.kv_shared_layers else None  # layer index -> the keys and values others reuse
        for i, block in enumerate(self.transformer.h):
            extra = (None if per_layer is None else per_layer[:, :, i], shared)
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, *inputs[block.kind], cache, *extra, use_reentrant=False)
            else:
                x = block(x, *inputs[block.kind], cache, *extra)
        if logits_at is not None:
            x = x[logits_at]  # (N, n_embd)
        x = self.lm_head(self.transformer.ln_f(x))
        cap = self.config.final_logit_softcapping
        return x if cap is None else torch.tanh(x / cap) * cap

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.transformer.wte(idx)  # (B, T, n_embd)
        if self.config.scale_embeddings:
            x = x * torch.tensor(self.config.n_embd ** 0.5, dtype=x.dtype)
        return x

    def per_layer_inputs(self, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, T, n_layer, per_layer_embd): each layer's input for each token (Gemma 4), the mean of its row of the
        per-layer table (scaled by sqrt(per_layer_embd)) and the normalized projection of the token's embedding x."""
        c, t = self.config, self.transformer
        shape = (*idx.shape, c.n_layer, c.per_layer_embd)
        table = t.wte_per_layer(idx) * torch.tensor(c.per_layer_embd ** 0.5, dtype=x.dtype)
        projected = t.per_layer_norm((t.per_layer_proj(x) * c.n_embd ** -0.5).view(shape))
        return (projected + table.view(shape)) * 2 ** -0.5

    def layer_inputs(self, pos: torch.Tensor, key_pos: torch.Tensor, mask: Optional[torch.Tensor]) -> dict:
        """{kind: (cos, sin, mask, query scale)} for the "global" and "sliding" (window) attention layers.

        pos: (..., T) positions of the queries, key_pos: (..., L) of the keys they may attend to, `mask` (..., T, L)
        which keys each query sees (None: causal, query i sees keys 0..i). A sliding layer sees, of those, only the
        keys less than `sliding_window` positions back; its mask is None when no key is that far.
        """
        tables = self.rope(pos, pos.amax(-1, keepdim=True).unsqueeze(-1))  # LongRoPE: each row's last position
        scale = self.query_scale(pos)
        inputs = {"global": (*tables["global"], mask, scale)}
        if "sliding" in tables:
            inputs["sliding"] = (*tables["sliding"], self.window(pos, key_pos, mask), scale)
        return inputs

    def query_scale(self, pos: torch.Tensor) -> Optional[torch.Tensor]:
        """(..., T, 1) factors of the queries at positions `pos` (Ministral 3), None when the model has none."""
        c = self.config
        if not c.query_scale_beta:
            return None
        original = c.rope_scaling["original_max_position_embeddings"]
        return (1 + c.query_scale_beta * torch.log1p(torch.floor(pos / original)))[..., None]

    def window(self, pos: torch.Tensor, key_pos: torch.Tensor, mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The mask of a sliding-window layer: of the keys `mask` allows, those less than `sliding_window` positions
        back; None (causal) when no key is that far."""
        w = self.config.sliding_window
        if not torch.compiler.is_compiling() and key_pos.size(-1) <= w:
            return mask
        local = key_pos[..., None, :] > pos[..., :, None] - w
        return local & (key_pos[..., None, :] <= pos[..., :, None] if mask is None else mask)

    def packed_inputs(self, lengths: list, device: torch.device) -> dict:
        """`layer_inputs` for examples of `lengths` laid end to end: RoPE positions restart at 0 for each, and the mask
        is a list of (start, end, mask) spans, one attention per example (`mask` None: causal; or a sliding layer's
        window in an example longer than it). Attention costs the sum of the examples' squared lengths, not the
        square of their total as one block-diagonal mask would.

        An entry (p, a_1, a_2, ...) is a prompt of p tokens and answers that share it, laid out prompt, a_1, a_2, ...:
        each answer's positions continue the prompt's and it sees the prompt and its own earlier tokens only, so each
        answer is computed as if it followed the prompt alone while the prompt runs once (preference pairs, groups of
        samples of one prompt)."""
        pos, last, spans, start = [], [], [], 0
        for entry in lengths:
            if isinstance(entry, int):
                p, seg, ends = torch.arange(entry, device=device), None, [entry]
            else:
                prompt, answers = entry[0], entry[1:]
                p = torch.cat([torch.arange(prompt, device=device)]
                              + [torch.arange(prompt, prompt + a, device=device) for a in answers])
                seg = torch.repeat_interleave(torch.arange(len(entry), device=device),
                                              torch.tensor(entry, device=device))
                ends = [prompt + a for a in answers]
            if (self.config.rope_scaling or {}).get("type") == "longrope":
                original = self.config.rope_scaling["original_max_position_embeddings"]
                if len({n > original for n in ends}) > 1:  # the shared prompt would need both RoPE tables
                    raise ValueError(f"LongRoPE: the answers of {entry} end on both sides of the original context "
                                     f"{original}: run them as separate examples")
            pos.append(p)
            last.append(torch.full((len(p), 1), max(ends) - 1, device=device))
            # a key is visible when it is not later than the query and in the prompt or the query's own answer
            tree = None
            if seg is not None:
                tree = (p[None, :] <= p[:, None]) & ((seg[None, :] == 0) | (seg[None, :] == seg[:, None]))  # (n, n)
            spans.append((start, start + len(p), p, tree))
            start += len(p)
        inputs, scale = {}, self.query_scale(torch.cat(pos))
        for kind, (cos, sin) in self.rope(torch.cat(pos), torch.cat(last)).items():
            inputs[kind] = (cos, sin, [(a, b, self.window(p, p, tree) if kind == "sliding" else tree)
                                       for a, b, p, tree in spans], scale)
        return inputs

    def rope(self, pos: torch.Tensor, last: torch.Tensor) -> dict:
        """{kind: (cos, sin)}, each (..., T, rope_n_elem), at positions `pos`, of the "global" and "sliding" layers.
        `last`: the last position of the sequence (or, broadcast with `pos`, of each token's own sequence): LongRoPE,
        as transformers, uses its long factors for all positions of a sequence once one is past the original context."""
        c = self.config
        cos, sin = self.cos[pos], self.sin[pos]
        if (c.rope_scaling or {}).get("type") == "longrope":
            long = last >= c.rope_scaling["original_max_position_embeddings"]
            cos, sin = torch.where(long, self.cos_long[pos], cos), torch.where(long, self.sin_long[pos], sin)
        tables = {"global": (cos, sin)}
        if c.sliding_window is not None:
            local = c.rope_local_base is not None
            tables["sliding"] = (self.cos_local[pos], self.sin_local[pos]) if local else (cos, sin)
        return tables


class Block(nn.Module):
    def __init__(self, config: Config, index: int = 0) -> None:
        super().__init__()
        self.norm_1 = build_norm(config) if config.pre_norms else nn.Identity()
        self.kind = "linear" if config.is_linear(index) else "sliding" if config.is_sliding(index) else "global"
        kv_source = config.kv_source(index)
        self.attn = (GatedDeltaNet(config) if self.kind == "linear"
                     else CausalSelfAttention(config.layer(index), index, kv_source))
        self.norm_2 = build_norm(config) if config.pre_norms else nn.Identity()
        if config.shared_attention_norm:  # Falcon: norm_1 feeds the MLP too
            self.norm_2 = None
        if config.double_wide_mlp and kv_source is not None:
            config = replace(config, intermediate_size=2 * config.intermediate_size)
        sparse = config.is_sparse(index)
        self.mlp = (MoE(config) if sparse and not config.moe_with_mlp else GptNeoxMLP(config)
                    if config.mlp_class_name == "GptNeoxMLP" else LLaMAMLP(config))
        # Gemma 4 26B-A4B: experts beside the MLP, routed by the residual stream, fed by a norm of their own
        self.moe = MoE(config) if sparse and config.moe_with_mlp else None
        if self.moe is not None:
            self.norm_moe, self.post_dense_norm, self.post_moe_norm = (build_norm(config) for _ in range(3))
        # Gemma 3 normalizes the attention and MLP outputs too, before adding them to the residual stream
        self.post_attention_norm = build_norm(config) if config.post_norms else nn.Identity()
        self.post_mlp_norm = build_norm(config) if config.post_norms else nn.Identity()
        self.parallel_residual = config.parallel_residual
        if config.per_layer_embd:  # Gemma 4: the layer's own input, gated by its output, added to it
            self.per_layer_gate = nn.Linear(config.n_embd, config.per_layer_embd, bias=False)
            self.per_layer_proj = nn.Linear(config.per_layer_embd, config.n_embd, bias=False)
            self.per_layer_norm = build_norm(config)
            self.gelu = config.gelu_approximate
        # a parameter (transformers: a buffer) so that it loads, casts and shards as the weights do
        self.layer_scalar = nn.Parameter(torch.ones(1)) if config.layer_scalar else None

    def build_cache(self, rows: int, slots: int, device: torch.device, dtype: torch.dtype) -> Optional[nn.Module]:
        """What this layer keeps while decoding: keys and values of `slots` positions, or a linear layer's state;
        None for a layer that reuses an earlier one's keys and values."""
        if self.kind == "linear":
            return DeltaNetState(rows, self.attn.config, device, dtype)
        return None if self.attn.kv_source is not None else KVCache(rows, slots, self.attn.config, device, dtype)

    def forward(self, x: torch.Tensor, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor], mask: Any = None,
                q_scale: Optional[torch.Tensor] = None, cache: Optional[tuple] = None,
                per_layer: Optional[torch.Tensor] = None, shared: Optional[dict] = None) -> torch.Tensor:
        """cos, sin, mask, q_scale: this layer kind's from `GPT.layer_inputs` (a linear-attention layer gets the
        packed lengths as `mask`); cache: from `GPT.forward`; per_layer: (B, T, per_layer_embd) this layer's input;
        shared: the keys and values of the layers others reuse."""
        n_1 = self.norm_1(x)
        if self.kind == "linear":
            h = self.post_attention_norm(self.attn(n_1, cos, sin, mask, cache))
        else:
            h = self.post_attention_norm(self.attn(n_1, cos, sin, mask, cache, q_scale, shared))
        if self.parallel_residual:
            n_2 = n_1 if self.norm_2 is None else self.norm_2(x)
            x = x + h + self.post_mlp_norm(self.mlp(n_2))
        else:
            x = x + h
            y = self.mlp(self.norm_2(x))
            if self.moe is not None:  # Gemma 4 26B-A4B: the experts' output beside the MLP's, each normed
                y = self.post_dense_norm(y) + self.post_moe_norm(self.moe(self.norm_moe(x), router_x=x))
            x = x + self.post_mlp_norm(y)
        if per_layer is not None:
            gated = F.gelu(self.per_layer_gate(x), approximate=self.gelu) * per_layer
            x = x + self.per_layer_norm(self.per_layer_proj(gated))
        return x if self.layer_scalar is None else x * self.layer_scalar


class CausalSelfAttention(nn.Module):
    def __init__(self, config: Config, index: int = 0, kv_source: Optional[int] = None) -> None:
        """config: the layer's view (`Config.layer`); kv_source: the earlier layer whose keys and values it reuses."""
        super().__init__()
        # one fused projection, rows laid out as [all queries | all keys | all values]; with an output gate each head's
        # query rows are followed by its gate's
        self.qkv = nn.Linear(config.n_embd, sum(config.qkv_sizes(kv_source is None)), bias=config.qkv_bias)
        self.proj = nn.Linear(config.n_head * config.head_size, config.n_embd, bias=config.bias)
        if config.norm_qk:  # one RMSNorm over each head's features, shared by the heads (or over all heads' features)
            heads = (config.n_head, config.n_query_groups) if config.norm_qk_all_heads else (1, 1)
            self.norm_q = build_norm(config, heads[0] * config.head_size)
            if kv_source is None:
                self.norm_k = build_norm(config, heads[1] * config.head_size)
        # gpt-oss: per head a learned logit that joins each query's softmax (lit_gpt/sinks.py)
        self.sinks = nn.Parameter(torch.zeros(config.n_head)) if config.attention_sinks else None
        self.kv_cache: Optional[KVCache] = None
        self.rope = config.has_rope(index)
        self.index, self.kv_source = index, kv_source
        self.is_kv_source = index in {config.kv_source(i) for i in range(config.n_layer)}
        self.config = config

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Optional[torch.Tensor] = None,
                cache: Optional[tuple] = None, q_scale: Optional[torch.Tensor] = None,
                shared: Optional[dict] = None) -> torch.Tensor:
        """mask: which keys each query sees, (T, L) or (B, 1, T, L), None: causal. cache: (positions (T,) to write,
        cache length to attend over), from `GPT.forward`. q_scale: (..., T, 1) factors of the queries after RoPE.
        shared: layer index -> keys and values, read by a layer with a `kv_source`, written by such a source."""
        B, T, _ = x.shape
        c = self.config
        q, k, v = self.qkv(x).split(c.qkv_sizes(self.kv_source is None), dim=-1)
        if c.attention_k_eq_v:
            v = k  # the keys' projection, before their norm and RoPE
        gate = None
        if c.attention_output_gate:
            q, gate = q.view(B, T, c.n_head, 2 * c.head_size).chunk(2, dim=-1)  # each (B, T, n_head, hs)
        if c.norm_qk and c.norm_qk_all_heads:
            q, k = self.norm_q(q.reshape(B, T, -1)), self.norm_k(k)
        q = q.reshape(B, T, c.n_head, c.head_size).transpose(1, 2)  # (B, n_head, T, hs)
        if c.norm_qk and not c.norm_qk_all_heads:
            q = self.norm_q(q)
        if self.rope:
            q = apply_rope(q, cos, sin)
        if q_scale is not None:
            q = q * q_scale.to(q.dtype)
        if self.kv_source is not None:
            k, v = shared[self.kv_source]  # (B, n_query_groups, L, hs): those the source layer attended over
            return self.output(q, k, v, mask, gate)
        k = k.view(B, T, c.n_query_groups, c.head_size).transpose(1, 2)  # (B, n_query_groups, T, hs)
        v = v.view(B, T, c.n_query_groups, c.head_size).transpose(1, 2)
        if c.norm_qk and not c.norm_qk_all_heads:
            k = self.norm_k(k)
        if c.norm_v:
            v = rms_norm(v, c.norm_eps)
        if self.rope:
            k = apply_rope(k, cos, sin)
        if cache is not None:
            input_pos, length = cache
            size = self.kv_cache.k.size(2)  # checked on the int `length`: no tensor sync, no graph break in compile
            if not torch.compiler.is_compiling() and length > size:
                raise ValueError(f"Position {length - 1} is past the KV cache's {size} positions")
            torch._check(length <= size)  # compiled: a runtime assert that also bounds the data-dependent length
            k, v = self.kv_cache(input_pos, k, v)
            k, v = k[:, :, :length], v[:, :, :length]  # (B, n_query_groups, length, hs)
        if self.is_kv_source:
            shared[self.index] = (k, v)
        return self.output(q, k, v, mask, gate)

    def output(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any,
               gate: Optional[torch.Tensor]) -> torch.Tensor:
        """Attention of q (B, n_head, T, hs) over k, v, through the output gate and projection: (B, T, n_embd)."""
        B, _, T, _ = q.shape
        c = self.config
        scale = None if c.attention_scalar is None else c.attention_scalar ** -0.5
        if isinstance(mask, list):  # packed examples (`GPT.packed_inputs`): each attends to itself only
            # split, not sliced: backward concatenates the examples' gradients in one pass, where each slice's
            # backward would write a zero tensor of the whole row
            sizes = [e - s for s, e, _ in mask]
            parts = zip(q.split(sizes, 2), k.split(sizes, 2), v.split(sizes, 2), mask)
            y = torch.cat([self.attend(q_i, k_i, v_i, m, scale) for q_i, k_i, v_i, (_, _, m) in parts], 2)
        else:
            y = self.attend(q, k, v, mask, scale)
        y = y.transpose(1, 2).reshape(B, T, c.n_head * c.head_size)
        if gate is not None:
            y = y * torch.sigmoid(gate.reshape(B, T, -1))
        return self.proj(y)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
               scale: Optional[float]) -> torch.Tensor:
        T = q.size(2)
        limit = FOLDED_ATTENTION_MAX_SCORES if self.sinks is None else FOLDED_SINK_ATTENTION_MAX_SCORES
        if (mask is None and 1 < T == k.size(2) and q.device.type == "cpu" and torch.is_grad_enabled()
                and q.numel() // q.size(3) * T <= limit):
            return folded_attention(q, k, v, scale, self.sinks)
        if self.sinks is not None:
            return sink_attention(q, k, v, self.sinks, mask, scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                              scale=scale, enable_gqa=self.config.n_query_groups != self.config.n_head)


class GptNeoxMLP(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)
        self.approximate = config.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))


class LLaMAMLP(nn.Module):
    """Gated: proj(act(fc_1(x)) * fc_2(x)), fc_1 being the gate and fc_2 the up projection; act is SiLU (SwiGLU) or,
    for the GemmaMLP, GELU (GeGLU)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.fc_2 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)
        self.gelu = config.gelu_approximate if config.mlp_class_name == "GemmaMLP" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc_1(x)
        gate = F.silu(gate) if self.gelu is None else F.gelu(gate, approximate=self.gelu)
        return self.proj(gate * self.fc_2(x))


class KVCache(nn.Module):
    """Keys and values of `rows` sequences, `slots` positions each. A batch of B rows uses cache rows
    first_row .. first_row + B - 1 (`first_row` is set by whoever fills rows independently, e.g. the engine)."""

    def __init__(self, batch_size: int, max_seq_length: int, config: Config, device: torch.device,
                 dtype: torch.dtype) -> None:
        super().__init__()
        shape = (batch_size, config.n_query_groups, max_seq_length, config.head_size)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.first_row = 0

    def copy_rows(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        self.k[dst], self.v[dst] = self.k[src], self.v[src]

    def forward(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Writes k, v (B, n_query_groups, T, hs) at positions `input_pos`, (T,) or per row (B, T); returns the
        batch's rows of the cache."""
        rows = slice(self.first_row, self.first_row + k.size(0))
        cache_k, cache_v = self.k[rows], self.v[rows]
        if input_pos.dim() == 1:
            cache_k.index_copy_(2, input_pos, k.to(cache_k.dtype))
            cache_v.index_copy_(2, input_pos, v.to(cache_v.dtype))
        else:
            b = torch.arange(k.size(0), device=k.device)[:, None]  # (B, 1) with input_pos (B, T)
            cache_k[b, :, input_pos] = k.transpose(1, 2).to(cache_k.dtype)  # indexes (B, T, n_query_groups, hs)
            cache_v[b, :, input_pos] = v.transpose(1, 2).to(cache_v.dtype)
        return cache_k, cache_v
