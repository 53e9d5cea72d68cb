"""Writes a checkpoint dir as a llama.cpp GGUF file, and a LoRA adapter as a llama.cpp LoRA GGUF.

The inverse of lit_gpt/gguf.py (the importer), with its tensor names: the file is laid out as llama.cpp's own
converter (convert_hf_to_gguf.py) lays out the same model, so llama.cpp, Ollama and LM Studio run it:
- llama (Llama 2/3, Mistral, SmolLM2, TinyLlama ...): q/k rows of each head interleaved for llama.cpp's RoPE kernel;
  Llama 3's RoPE scaling as the `rope_freqs` tensor of per-frequency divisors.
- smollm3, mistral3: q/k rows interleaved as llama's; SmolLM3's NoPE layers must be every 4th (llama.cpp hardcodes it),
  Ministral 3's YaRN and query scaling become `rope.scaling.*` and `attention.temperature_*` keys.
- olmo2 (OLMo 2 and 3): output norms only, q/k norms over all heads, always an `output.weight`; OLMo 3's window and
  layer pattern as keys (llama.cpp's window layers: RoPE unscaled, the global base; its YaRN betas: 32 and 1).
- qwen35 (Qwen3.5): the Gated DeltaNet layers as `ssm_*`, `attn_qkv`, `attn_gate` with the value heads tiled, the
  gated attention layers' q rows with their gates as ours; norms as 1 + weight (not the DeltaNet's gated norm).
- gemma4 (Gemma 4's text decoder): norms as ours (plain x * w); the layer pattern as one flag per layer, the global
  layers' head size (`key_length`) and kv heads beside the window layers' (`key_length_swa`), double-wide MLPs as
  widths per layer; the global layers' proportional RoPE as a `rope_freqs` tensor (1 for the frequencies that turn,
  1e30 for the others: they stand still); no `attn_v` where the values are the keys' projection, no keys and values in
  the layers that reuse them; the per-layer inputs, the layer scalars, the final logit softcapping (0 for none: without
  the key llama.cpp caps at 30). llama.cpp hardcodes the attention scale 1, the value norm and the layers reused.
- qwen3moe (Qwen3-MoE): Qwen3's attention; the router `ffn_gate_inp` (F32, as llama.cpp's converter keeps it), the
  experts 3-D `ffn_gate_exps` / `ffn_up_exps` (our gate_up_proj's halves) and `ffn_down_exps`. Every layer must be
  sparse and the top k renormalised (norm_topk_prob): llama.cpp's qwen3moe has no dense layers and hardcodes that.
- qwen35moe (Qwen3.5-MoE): qwen35's layers with qwen3moe's experts (the DeltaNet layers' too) and the shared expert
  `ffn_gate_shexp` / `ffn_up_shexp` / `ffn_down_shexp` behind its gate `ffn_gate_inp_shexp` (one row, F32 as the
  router), `expert_shared_feed_forward_length`; llama.cpp requires the shared expert in every layer.
- gemma4 with experts beside its MLP (26B-A4B, `moe_with_mlp`): the router `ffn_gate_inp`, its input's scale
  `ffn_gate_inp.scale`, the per-expert scales `ffn_down_exps.scale`, gate_up_proj as one `ffn_gate_up_exps`,
  `ffn_down_exps`, the norms `pre_ffw_norm_2` (the experts' input), `post_ffw_norm_1` / `_2` (the MLP's and the
  experts' outputs); llama.cpp hardcodes the normalised softmax router and the GeGLU experts.
- gpt-oss: `attn_sinks`, q/k/v/o biases, the norm before the experts as `post_attention_norm`, the router with its
  bias, the experts from our (E, in, out) tensors with gate and up columns interleaved to ffn_gate_exps / ffn_up_exps
  (E, I, D) and ffn_down_exps (E, D, I), their biases (in F32, as every bias); `attention.sliding_window`, and
  `sliding_window_pattern` (the period of the global layers) only when it is not llama.cpp's default 2. llama.cpp
  hardcodes the router (its top k logits softmaxed), the clamped SwiGLU (alpha 1.702, limit 7) and YaRN's betas (32,
  1), and needs a window layer and `output.weight`. It rounds YaRN's ramp bounds, which gpt-oss's own do not
  (truncate: false): written with a note, as llama.cpp's converter writes every gpt-oss.
- qwen2, qwen3, gemma3, phi3: q/k rows as ours. Gemma's norms stored as 1 + weight; Phi-3's q/k/v and gate/up fused;
  its LongRoPE factors as `rope_factors_long/short` tensors (llama.cpp picks one set per context size, not per
  position as we do: the long factors when the context exceeds the original one).
- tied embeddings: no `output.weight` (llama.cpp uses the embedding).
- the tokenizer from the dir's tokenizer.json: byte-level BPE as llama.cpp's `gpt2` model (tokens, merges, token
  types, the pre-tokenizer recognised by how it splits a probe text), sentencepiece-like BPE as its `llama` model
  (tokens, scores, types); BOS/EOS/UNK/pad ids, add_bos, the chat template when the model has one.

A LoRA GGUF (`general.type = adapter`) holds `<tensor>.lora_a` (r, in) and `.lora_b` (out, r) for each adapted
tensor of the base GGUF, scaled by llama.cpp with `adapter.lora.alpha` / r: our fused q/k/v adapter becomes one pair
per attn_q/attn_k/attn_v (lora_b rows interleaved like the base's for llama, smollm3, mistral3). Phi-3's fused attn_qkv
and ffn_up take one pair of rank k * r (A stacked, B block-diagonal and multiplied by k, as llama.cpp divides by the
rank it sees). Qwen3.5's DeltaNet adapters keep their pairs, the value heads of B's rows (ssm_out: A's columns) tiled.
Expert adapters (PEFT's target_parameters layout, A (E r, in), B (out, r E)) become 3-D pairs, which llama.cpp applies
per expert with the experts' own matmul: lora_a (E, r, in), lora_b (E, out, r); gate_up's pair is one for
ffn_gate_exps and one for ffn_up_exps, the same A with B's gate rows and B's up rows (gpt-oss's interleaved ones);
Gemma 4's one pair for ffn_gate_up_exps, its down pair's B times the per-expert scales (read from the base
checkpoint: llama.cpp scales the experts' product alone). Qwen3.5-MoE's shared expert adapters are ffn_*_shexp pairs.
"""

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from lit_gpt.config import Config
from lit_gpt.convert import qkv_parts
from lit_gpt.gguf import (
    ARCHITECTURES,
    BYTE,
    CONTROL,
    GPT_OSS_SWIGLU,
    INTERLEAVED,
    LINEAR_NAMES,
    NO_CLEAN_SPACES,
    PRE_TOKENIZERS,
    QKV_NAMES,
    QWEN35,
    SMOLLM3_NOPE_EVERY,
    UNKNOWN,
    USER_DEFINED,
    YARN_BETAS,
    deltanet_to_gguf,
    experts_to_gguf,
    interleave_heads,
    llama3_divisors,
    tensor_names,
    yarn_magnitude,
)
from lit_gpt.utils import atomic_path, fail, lazy_load, read_json

if TYPE_CHECKING:
    from lit_gpt.load import LoRARun

NORMAL, UNUSED = 1, 5  # llama.cpp token types besides the importer's
EXPERT_TENSORS = ("gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias")
# our hf_model_type -> llama.cpp architecture (GPT-NeoX and Falcon have none we export)
GGUF_ARCHITECTURES = {**{hf: arch for arch, hf in ARCHITECTURES.items()}, "mistral": "llama", "olmo3": "olmo2"}
# outtype -> (tensor type of the 2-D weights, general.file_type), for the types the gguf package can write
OUTTYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
            "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q4_0": ("Q4_0", "MOSTLY_Q4_0"), "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
            "q5_0": ("Q5_0", "MOSTLY_Q5_0"), "q5_1": ("Q5_1", "MOSTLY_Q5_1")}
# what the pre-tokenizers split a text into tells them apart (llama.cpp's converter hashes the tokens of a probe text)
PROBE = ("Hello World! I'm sure they'll say it's DON'T fine, 2024 and 1,000,000 or 3.14159 x² ½\n\n\t tabs   spaces "
         "parseHTTPResponse McDonald's Café 日本語 ١٢٣ 😀 a\r\nb $3.99 <|im_start|>")
# the names llama.cpp's converter writes, first among those that pre-tokenize alike
CANONICAL = ("gpt-2", "smollm", "starcoder", "llama-bpe", "qwen2", "gpt-4o", "default", "falcon")
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def gguf_architecture(config: Config, what: str) -> str:
    """llama.cpp's architecture for `config`, after checking llama.cpp computes what our model computes; else fails
    naming what it cannot."""
    arch = GGUF_ARCHITECTURES.get(config.hf_model_type)
    if arch is None:
        fail(f"{what} is a {config.hf_model_type} model, which has no llama.cpp architecture we export. Exported: "
             "llama, qwen2, qwen3, gemma3, phi3, smollm3, mistral3, olmo2 (OLMo 2/3), qwen35, gemma4, qwen3moe, "
             "gpt-oss, qwen35moe")
    c, scaling = config, config.rope_scaling or {}
    kind, every = scaling.get("type"), c.nope_layer_every
    rope_kinds = {"llama": ("linear", "llama3"), "qwen2": ("linear",), "qwen3": ("linear",), "qwen3moe": ("linear",),
                  "gemma3": ("linear",),
                  "phi3": ("linear", "longrope"), "olmo2": ("yarn",), "mistral3": ("yarn",),
                  "gemma4": ("proportional",), "gpt-oss": ("yarn",)}
    problems = {
        "parallel residual blocks": c.parallel_residual, "LayerNorm": c.norm_class_name != "RMSNorm",
        "biases other than Qwen2's q/k/v and gpt-oss's q/k/v/o": c.lm_head_bias or (
            (c.bias or c.qkv_bias) and arch != "gpt-oss" and (c.bias or arch != "qwen2")),
        f"RoPE scaling {kind!r}": kind not in (None, *rope_kinds.get(arch, ())),
        "RoPE on part of each head": c.rope_n_elem != c.head_size and arch not in ("phi3", *QWEN35),
        # what only some architectures have, and those require (Gemma's (1 + w) norms are stored as 1 + w: any can)
        "q/k norms" if c.norm_qk else "no q/k norms":
            c.norm_qk != (arch in ("qwen3", "gemma3", "olmo2", "gemma4", "qwen3moe", *QWEN35)),
        "q/k norms over all heads" if c.norm_qk_all_heads else "q/k norms per head":
            c.norm_qk and c.norm_qk_all_heads != (arch == "olmo2"),
        "norms after the attention and MLP" if c.post_norms else "no norms after the attention and MLP":
            c.post_norms != (arch in ("gemma3", "olmo2", "gemma4")),
        "no norms before the attention and MLP" if not c.pre_norms else "norms before the attention and MLP":
            c.pre_norms == (arch == "olmo2"),
        "Gemma's MLP and embeddings":
            (c.mlp_class_name == "GemmaMLP" or c.scale_embeddings) != (arch in ("gemma3", "gemma4")),
        "Gated DeltaNet layers" if c.linear_attention else "no Gated DeltaNet layers":
            c.linear_attention != (arch in QWEN35),
        "an output gate" if c.attention_output_gate else "no output gate":
            c.attention_output_gate != (arch in QWEN35),
        f"no RoPE in every {every}-th layer" if every else "RoPE in every layer":  # smollm3: none in every 4th
            every != (SMOLLM3_NOPE_EVERY if arch == "smollm3" else 0),
        "query scaling": c.query_scale_beta and arch != "mistral3",
        "an attention scalar": c.attention_scalar not in (None, c.head_size) and arch not in ("gemma3", "gemma4"),
        "experts" if c.n_expert else "no experts":  # gemma4's are optional, beside its MLP
            bool(c.n_expert) != (arch in ("qwen3moe", "gpt-oss", "qwen35moe")) and arch != "gemma4",
        "experts beside the MLP" if c.moe_with_mlp else "experts in place of the MLP":
            bool(c.n_expert) and c.moe_with_mlp != (arch == "gemma4"),
        "a shared expert" if c.moe_shared_intermediate_size else "no shared expert":
            bool(c.moe_shared_intermediate_size) != (arch == "qwen35moe"),
        "attention sinks" if c.attention_sinks else "no attention sinks": c.attention_sinks != (arch == "gpt-oss"),
    }
    if arch != "gemma4":  # what Gemma 4 alone has
        problems.update({
            "a value norm": c.norm_v, "values from the keys' projection": c.attention_k_eq_v,
            "global layers of their own head size or kv heads": c.global_head_size not in (None, c.head_size)
            or c.global_n_query_groups not in (None, c.n_query_groups),
            "layers reusing keys and values": c.kv_shared_layers, "per-layer inputs": c.per_layer_embd,
            "layer scalars": c.layer_scalar, "final logit softcapping": c.final_logit_softcapping is not None})
    if kind == "yarn":  # ggml's YaRN rounds the bounds of its ramp outwards (gpt-oss's own do not: a note on export)
        problems.update({"YaRN without truncated ramp bounds": not scaling.get("truncate", True) and arch != "gpt-oss",
                         f"YaRN betas {scaling['beta_fast']} and {scaling['beta_slow']} (llama.cpp: 32 and 1)":
                             arch not in YARN_BETAS and (scaling["beta_fast"], scaling["beta_slow"]) != (32, 1)})
    if arch == "gemma3":  # llama.cpp hardcodes these
        scalar = c.n_embd // c.n_head if c.n_layer == 62 else c.head_size
        problems.update({"a layer pattern other than every 6th layer global": c.global_layer_every != 6,
                         f"an attention scalar other than {scalar}": (c.attention_scalar or c.head_size) != scalar,
                         "no sliding window": c.sliding_window is None})
    if arch == "gemma4":  # llama.cpp hardcodes the attention scale, the value norm and which layers are reused
        first = c.n_layer - c.kv_shared_layers  # llama.cpp: the shared window layers reuse layer first - 2, the
        reused = [c.kv_source(i) for i in range(first, c.n_layer)]  # global ones layer first - 1
        expected = [first - (2 if c.is_sliding(i) else 1) for i in range(first, c.n_layer)]
        problems.update({
            "an attention scalar other than 1": c.attention_scalar != 1.0, "no value norm": not c.norm_v,
            "no window layers": not any(c.is_sliding(i) for i in range(c.n_layer)),
            "a per-layer table of other than one row per token":
                c.per_layer_embd and c.per_layer_vocab_size != c.padded_vocab_size,
            f"proportional RoPE of factor {scaling.get('factor')}": kind == "proportional" and scaling["factor"] != 1,
            "RoPE scaling in the window layers": c.rope_local_base is None and kind is not None,
            "another router or expert layout than Gemma 4's": c.n_expert and (
                not c.router_norm or c.router_bias or c.router_scoring != "softmax_topk" or not c.norm_topk_prob
                or c.moe_activation != "gelu" or c.moe_transposed or c.moe_interleaved or c.moe_bias),
            f"layers {first}+ reusing the keys and values of layers {reused} (llama.cpp: {expected}, the window and "
            "global layers right before them)": reused != expected})
    if arch == "olmo2":  # its window layers: RoPE unscaled, with the global base
        local = c.rope_local_base if scaling or c.rope_local_base is not None else c.rope_base
        problems.update({"a head size other than n_embd / n_head": c.head_size * c.n_head != c.n_embd,
                         "a sliding window in every layer": c.sliding_window and c.global_layer_every < 2,
                         "another RoPE in the window layers than the global one unscaled":
                             c.sliding_window and local != c.rope_base})
    if arch in QWEN35:
        problems.update({"linear-attention key and value heads of different sizes":
                             c.linear_key_head_size != c.linear_value_head_size,
                         "only linear-attention layers": c.global_layer_every == 0})
    if arch in ("qwen3moe", "qwen35moe") and c.n_expert:  # llama.cpp: experts in every layer, the top k of a softmax
        # renormalised
        problems.update({
            f"dense layers {[i for i in range(c.n_layer) if not c.is_sparse(i)]} (decoder_sparse_step, "
            "mlp_only_layers)": not all(c.is_sparse(i) for i in range(c.n_layer)),
            "the top k expert weights not renormalised (norm_topk_prob false)": not c.norm_topk_prob,
            "another router or expert layout than Qwen3-MoE's": c.router_bias or c.router_norm
            or c.router_scoring != "softmax_topk" or c.moe_activation != "silu" or c.moe_transposed
            or c.moe_interleaved or c.moe_bias})
    if arch == "gpt-oss":  # llama.cpp: q/k/v/o biases, experts in every layer, its router, SwiGLU and window pattern
        problems.update({
            "no biases on q/k/v and o": not (c.bias and c.qkv_bias),
            f"dense layers {[i for i in range(c.n_layer) if not c.is_sparse(i)]}":
                not all(c.is_sparse(i) for i in range(c.n_layer)),
            "another router or expert layout than gpt-oss's": not c.router_bias or c.router_norm
            or c.router_scoring != "topk_softmax" or c.moe_activation != "clamped_swiglu" or not c.moe_transposed
            or not c.moe_interleaved or not c.moe_bias,
            f"a clamped SwiGLU of alpha {c.swiglu_alpha} and limit {c.swiglu_limit} (llama.cpp: "
            f"{GPT_OSS_SWIGLU[0]} and {GPT_OSS_SWIGLU[1]})": (c.swiglu_alpha, c.swiglu_limit) != GPT_OSS_SWIGLU,
            "no window layers": not any(c.is_sliding(i) for i in range(c.n_layer))})  # llama.cpp aborts then
    if arch in ("smollm3", "mistral3", "qwen3", "qwen2", "qwen3moe", *QWEN35) and c.sliding_window is not None:
        problems["a sliding window"] = True
    if c.query_scale_beta and arch == "mistral3" and not scaling.get("original_max_position_embeddings"):
        problems["query scaling without YaRN's original context"] = True
    bad = [name for name, found in problems.items() if found]
    if bad:
        fail(f"{what} ({config.name}) has {', '.join(bad)}, which llama.cpp's {arch} architecture does not compute")
    return arch


# ---------------------------------------------------------------------------------------------------------------------
# the model


def export_gguf(checkpoint_dir: Union[str, Path], out: Union[str, Path], outtype: str = "f16") -> Path:
    """Writes the checkpoint dir (base or merged) as one GGUF file `out` (written next to it, renamed at the end)."""
    checkpoint_dir, out = Path(checkpoint_dir), Path(out)
    config = Config.from_checkpoint(checkpoint_dir)
    arch = gguf_architecture(config, repr(str(checkpoint_dir / "lit_config.json")))
    qtype, file_type = check_outtype(outtype)
    tokenizer = tokenizer_metadata(checkpoint_dir, config)
    if config.sliding_window and arch == "llama":
        print(f"note: llama.cpp's llama architecture has no sliding window: past {config.sliding_window} tokens it "
              f"attends further back than {config.name} does")
    scaling = config.rope_scaling or {}
    if scaling.get("type") == "yarn" and not scaling.get("truncate", True):  # gpt-oss (else refused)
        low, high = yarn_bounds(config)
        print(f"note: llama.cpp rounds the bounds of YaRN's ramp outwards ({low:.2f} and {high:.2f} to "
              f"{max(math.floor(low), 0)} and {min(math.ceil(high), config.rope_n_elem - 1)}), {config.name} does not "
              "(truncate: false): the RoPE frequencies between them differ a little, as in every gpt-oss GGUF")
    state = lazy_load(checkpoint_dir / "lit_model.pth")
    tensors = model_tensors(state.get("model", state), config, arch)
    metadata = {**model_metadata(config, arch), **tokenizer}
    write_gguf(out, arch, metadata, tensors, qtype, file_type)
    return out


def check_outtype(outtype: str) -> Tuple[str, str]:
    """(tensor type, file type) of an outtype the gguf package can write; else fails listing those."""
    from importlib.metadata import version

    import gguf

    if outtype.lower() not in OUTTYPES:
        known = outtype.upper() in gguf.GGMLQuantizationType.__members__
        why = f"the gguf package ({version('gguf')}) cannot write it" if known else "unknown type"
        fail(f"--outtype {outtype!r}: {why}; it writes {', '.join(OUTTYPES)}. For K-quants, quantize an f16 GGUF with "
             "llama.cpp's llama-quantize")
    return OUTTYPES[outtype.lower()]


def model_metadata(config: Config, arch: str) -> dict:
    """The architecture keys llama.cpp's converter writes for this model ("{arch}." prefixed at writing)."""
    c = config
    meta = {"general.name": c.name, "general.type": "model", "context_length": c.block_size,
            "embedding_length": c.n_embd, "feed_forward_length": c.intermediate_size, "block_count": c.n_layer,
            "attention.head_count": c.n_head, "attention.head_count_kv": c.n_query_groups,
            "attention.layer_norm_rms_epsilon": float(c.norm_eps), "rope.freq_base": float(c.rope_base)}
    if c.hf_config.get("org"):
        meta["general.organization"] = c.hf_config["org"]
    if arch in (*INTERLEAVED, "phi3", *QWEN35):
        meta["rope.dimension_count"] = c.rope_n_elem
    if arch in INTERLEAVED:
        meta["vocab_size"] = c.padded_vocab_size
    if arch in ("qwen3", "gemma3", "qwen3moe", "gpt-oss", *QWEN35) or c.head_size != c.n_embd // c.n_head:
        meta.update({"attention.key_length": c.head_size, "attention.value_length": c.head_size})
    scaling = c.rope_scaling or {}
    if scaling.get("type") == "linear":
        meta.update({"rope.scaling.type": "linear", "rope.scaling.factor": float(scaling["factor"])})
    if scaling.get("type") == "yarn":
        meta.update({"rope.scaling.type": "yarn", "rope.scaling.factor": float(scaling["factor"]),
                     "rope.scaling.original_context_length": scaling["original_max_position_embeddings"],
                     "rope.scaling.yarn_beta_fast": float(scaling["beta_fast"]),
                     "rope.scaling.yarn_beta_slow": float(scaling["beta_slow"])})
        attention = scaling["attention_factor"] / yarn_magnitude(scaling["factor"])  # what ggml's does not give
        if arch in YARN_BETAS and not math.isclose(attention, 1.0, rel_tol=1e-6):  # as Ministral 3's converter:
            # HF's magnitude(1) / magnitude(mscale_all_dim), mscale_all_dim as yarn_log_multiplier
            meta["rope.scaling.yarn_log_multiplier"] = (1 / attention - 1) / (0.1 * math.log(scaling["factor"]))
        elif not math.isclose(attention, 1.0, rel_tol=1e-6):
            meta["rope.scaling.attn_factor"] = attention
    if c.query_scale_beta:  # Ministral 3: queries times 1 + beta log(1 + floor(pos / original))
        meta.update({"attention.temperature_scale": float(c.query_scale_beta),
                     "attention.temperature_length": scaling["original_max_position_embeddings"]})
    if arch == "olmo2" and c.sliding_window:
        meta.update({"attention.sliding_window": c.sliding_window, "attention.sliding_window_pattern":
                     c.global_layer_every, "rope.freq_base_swa": float(c.rope_base)})
    if arch in QWEN35:  # text positions are the same in every M-RoPE section: any split of the frequencies will do
        pairs = c.rope_n_elem // 2
        meta.update({"full_attention_interval": c.global_layer_every, "ssm.conv_kernel": c.linear_conv_kernel,
                     "ssm.state_size": c.linear_key_head_size, "ssm.group_count": c.linear_n_key_heads,
                     "ssm.time_step_rank": c.linear_n_value_heads,
                     "ssm.inner_size": c.linear_n_value_heads * c.linear_value_head_size,
                     "rope.dimension_sections": [-(-pairs // 3), -(-pairs // 3), pairs - 2 * -(-pairs // 3), 0]})
    if scaling.get("type") == "longrope":
        meta.update({"rope.scaling.original_context_length": scaling["original_max_position_embeddings"],
                     "rope.scaling.attn_factor": float(scaling["attention_factor"])})
    if arch == "gemma3":
        meta.update({"attention.sliding_window": c.sliding_window, "rope.freq_base_swa": float(
            c.rope_local_base if c.rope_local_base is not None else c.rope_base)})
    if arch == "gemma4":
        meta.update(gemma4_metadata(c))
    if arch in ("qwen3moe", "gpt-oss", "qwen35moe") or c.n_expert:
        meta.update({"expert_count": c.n_expert, "expert_used_count": c.n_expert_per_token,
                     "expert_feed_forward_length": c.moe_intermediate_size})
    if arch == "qwen35moe":
        meta["expert_shared_feed_forward_length"] = c.moe_shared_intermediate_size
    if arch == "gpt-oss":  # llama.cpp reads the pattern as its period (every N-th layer global; 2 without the key,
        # which its converter never writes; 0: none is)
        meta["attention.sliding_window"] = c.sliding_window
        if c.global_layer_every != 2:
            meta["attention.sliding_window_pattern"] = c.global_layer_every
    if arch == "phi3":
        meta["attention.sliding_window"] = c.sliding_window or 0
    return meta


def yarn_bounds(config: Config) -> Tuple[float, float]:
    """The dimensions where YaRN's ramp starts and ends, before ggml rounds them (as lit_gpt.rope computes them)."""
    s, n, base = config.rope_scaling, config.rope_n_elem, config.rope_base
    low, high = (n * math.log(s["original_max_position_embeddings"] / (turns * 2 * math.pi)) / (2 * math.log(base))
                 for turns in (s["beta_fast"], s["beta_slow"]))
    return low, high


def gemma4_metadata(config: Config) -> dict:
    """Gemma 4's keys: per layer kind its head size, kv heads and RoPE, the layer pattern, per-layer MLP widths."""
    c, n = config, range(config.n_layer)
    head = c.global_head_size or c.head_size  # the global layers'
    meta = {"attention.key_length": head, "attention.value_length": head, "attention.key_length_swa": c.head_size,
            "attention.value_length_swa": c.head_size, "rope.dimension_count": int(c.rotary_percentage * head),
            "rope.dimension_count_swa": c.rope_n_elem, "rope.freq_base_swa": float(
                c.rope_local_base if c.rope_local_base is not None else c.rope_base),
            "attention.sliding_window": c.sliding_window or c.block_size,
            "attention.sliding_window_pattern": [c.is_sliding(i) for i in n],
            "attention.shared_kv_layers": c.kv_shared_layers, "embedding_length_per_layer_input": c.per_layer_embd}
    if c.global_n_query_groups is not None:
        meta["attention.head_count_kv"] = [c.layer(i).n_query_groups for i in n]
    if c.double_wide_mlp:
        meta["feed_forward_length"] = [c.intermediate_size * (1 if c.kv_source(i) is None else 2) for i in n]
    # always: without the key llama.cpp caps the logits at 30; 0 is none
    meta["final_logit_softcapping"] = float(c.final_logit_softcapping or 0.0)
    return meta


def model_tensors(state: Dict[str, torch.Tensor], config: Config, arch: str
                  ) -> List[Tuple[str, Tuple[int, ...], Callable[[], torch.Tensor]]]:
    """(llama.cpp name, shape, a function giving the tensor) of every tensor of the file, in llama.cpp's layout."""
    c, out = config, []
    offset = 1.0 if c.norm_unit_offset else 0.0  # Gemma's (1 + weight) norms are stored as 1 + weight

    def add(name: str, make: Callable[[], torch.Tensor], shape: Tuple[int, ...]) -> None:
        out.append((name, tuple(shape), make))

    def rows(key: str, start: int, size: int, heads: int = 0) -> Callable[[], torch.Tensor]:
        def make() -> torch.Tensor:
            w = state[key][start:start + size].float()
            return interleave_heads(w, heads) if heads else w
        return make

    for ours, name in tensor_names(arch).items():
        for i in range(c.n_layer) if "{}" in ours else [None]:
            key, name_i = ours.format(i), name.format(i)
            if key not in state or (arch == "phi3" and ".fc_" in key) or (i is not None and c.is_linear(i) and
                                                                          ".attn." in key):
                continue  # not in this model, fused below, or a Gated DeltaNet layer's (below)
            if key == "lm_head.weight" and c.tie_embeddings and arch not in ("olmo2", "gpt-oss"):
                continue  # tied: llama.cpp uses the embedding (its olmo2 and gpt-oss need output.weight)
            shift = offset if name_i.endswith("norm.weight") else 0.0
            add(name_i, lambda key=key, shift=shift: state[key].float() + shift, state[key].shape)
    q, kv = c.n_head * c.head_size, c.n_query_groups * c.head_size
    for i in range(c.n_layer):  # the parts of our fused q/k/v, Phi-3's fused gate/up, Gated DeltaNet layers
        p, b = f"transformer.h.{i}.", f"blk.{i}."
        if c.is_sparse(i) and not c.moe_with_mlp:  # gate and up (E, I, D) each, down (E, D, I), their biases
            # (`experts_to_gguf`); Gemma 4's beside its MLP are one to one (GEMMA4_MOE_NAMES)
            E, m, e = c.n_expert, c.moe_intermediate_size, c.n_embd
            shapes = {"gate": (E, m, e), "up": (E, m, e), "down": (E, e, m), "gate_bias": (E, m), "up_bias": (E, m),
                      "down_bias": (E, e)}
            for part, shape in shapes.items():
                if part.endswith("bias") and not c.moe_bias:
                    continue
                name = f"{b}ffn_{part.split('_')[0]}_exps.{'bias' if part.endswith('bias') else 'weight'}"
                add(name, lambda p=p, part=part: experts_to_gguf(
                    {k: state[f"{p}mlp.experts.{k}"] for k in EXPERT_TENSORS if f"{p}mlp.experts.{k}" in state},
                    c)[part].float(), shape)
        if c.is_linear(i):
            for ours, name in LINEAR_NAMES.items():
                key = f"{p}attn.{ours}"
                shape = tuple(state[key].shape[:1]) + tuple(state[key].shape[2 if ours == "conv.weight" else 1:])
                add(b + name, lambda key=key, ours=ours: deltanet_to_gguf(ours, state[key].float(), c), shape)
            continue
        if arch == "phi3":
            add(b + "attn_qkv.weight", rows(p + "attn.qkv.weight", 0, q + 2 * kv), (q + 2 * kv, c.n_embd))
            add(b + "ffn_up.weight", lambda p=p: torch.cat([state[f"{p}mlp.fc_{j}.weight"].float() for j in (1, 2)]),
                (2 * c.intermediate_size, c.n_embd))
            continue
        start = 0  # the layer's parts (with an output gate, each head's query rows and then its gate's)
        for part, size in qkv_parts(c, i).items():
            heads = {"query": c.n_head, "key": c.n_query_groups}.get(part, 0) if arch in INTERLEAVED else 0
            add(f"{b}{QKV_NAMES[part]}.weight", rows(p + "attn.qkv.weight", start, size, heads), (size, c.n_embd))
            if c.qkv_bias:
                add(f"{b}{QKV_NAMES[part]}.bias", rows(p + "attn.qkv.bias", start, size), (size,))
            start += size
    kind = (c.rope_scaling or {}).get("type")
    n = c.rope_n_elem // 2
    if kind == "llama3":  # divisors of the unscaled frequencies (float32, as our RoPE computes them)
        freqs = 1.0 / (c.rope_base ** (torch.arange(0, c.rope_n_elem, 2).float() / c.rope_n_elem))
        add("rope_freqs.weight", lambda: llama3_divisors(freqs, c.rope_scaling), (n,))
    if arch == "gemma4" and any(not c.is_sliding(i) for i in range(c.n_layer)):  # the global layers' RoPE divisors
        n_elem = int(c.rotary_percentage * (c.global_head_size or c.head_size))  # as lit_gpt.rope counts them:
        turning = int(c.rope_scaling["partial_rotary_factor"] * n_elem // 2) if kind == "proportional" else n_elem // 2
        add("rope_freqs.weight", lambda: torch.tensor([1.0] * turning + [1e30] * (n_elem // 2 - turning)),
            (n_elem // 2,))
    if kind == "longrope":
        for which in ("long", "short"):
            add(f"rope_factors_{which}.weight",
                lambda which=which: torch.tensor(c.rope_scaling[f"{which}_factor"], dtype=torch.float32), (n,))
    return out


def write_gguf(out: Path, arch: str, metadata: dict, tensors: List[Tuple[str, Tuple[int, ...], Callable]],
               qtype: str, file_type: str) -> None:
    """Streams the tensors into `out` one at a time: 2-D and 3-D (experts) weights in `qtype` (F16 where a row does not
    fill whole quantization blocks, as llama.cpp's converter does), the rest (biases, norms) and the router in F32.
    Written to a temporary file next to `out`, renamed onto it at the end; nothing is left behind on an error."""
    import gguf
    from gguf.constants import GGML_QUANT_SIZES

    types = []
    for name, shape, _ in tensors:  # as llama.cpp's converter: biases (gpt-oss's experts' are 2-D) in F32
        weight = len(shape) in (2, 3) and name.endswith((".weight", ".lora_a", ".lora_b")) and not name.endswith(
            ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight"))
        kind = gguf.GGMLQuantizationType[qtype if weight else "F32"]
        if shape[-1] % GGML_QUANT_SIZES[kind][0]:
            kind = gguf.GGMLQuantizationType.F16
        types.append(kind)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        for key, value in metadata.items():
            add_value(writer, key if key.startswith(("general.", "tokenizer.", "adapter.")) else f"{arch}.{key}", value)
        writer.add_file_type(gguf.LlamaFileType[file_type])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for (name, shape, _), kind in zip(tensors, types):
            block, size = GGML_QUANT_SIZES[kind]
            writer.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) // block * size, kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for (name, shape, make), kind in zip(tensors, types):
            w = make().detach().float().contiguous().numpy()
            if tuple(w.shape) != shape:
                fail(f"tensor {name!r} has shape {tuple(w.shape)}, expected {shape}")
            writer.write_tensor_data(encode(w, kind))
        writer.close()


def encode(w: np.ndarray, kind) -> np.ndarray:
    import gguf

    if kind == gguf.GGMLQuantizationType.F32:
        return w
    if kind == gguf.GGMLQuantizationType.F16:
        return w.astype(np.float16)
    return gguf.quants.quantize(w, kind)


def add_value(writer, key: str, value) -> None:
    """One metadata key, typed as llama.cpp's converter types it: ints as uint32, floats as float32, lists as
    arrays of their items' type."""
    import gguf

    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif value and isinstance(value[0], bool):
        writer.add_array(key, list(value))
    elif value and isinstance(value[0], (int, float)):
        kind = gguf.GGUFValueType.FLOAT32 if isinstance(value[0], float) else gguf.GGUFValueType.INT32
        writer.add_key_value(key, list(value), gguf.GGUFValueType.ARRAY, sub_type=kind)
    else:
        writer.add_array(key, list(value))


# ---------------------------------------------------------------------------------------------------------------------
# the tokenizer


def tokenizer_metadata(checkpoint_dir: Path, config: Config) -> dict:
    """The `tokenizer.*` keys from the dir's tokenizer.json, tokenizer_config.json and generation_config.json."""
    from lit_gpt.tokenizer import Tokenizer

    path = checkpoint_dir / "tokenizer.json"
    if not path.is_file():
        fail(f"{str(checkpoint_dir)!r} has no tokenizer.json, which a GGUF needs (it holds the vocabulary): copy it "
             "from the model's Hugging Face repo, or download the model again (scripts/download.py)")
    data = read_json(path, "download the model again (scripts/download.py)")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        fail(f"{str(path)!r} holds a {model.get('type')!r} tokenizer; only BPE tokenizers (byte-level or "
             "sentencepiece-like) can be written to a GGUF")
    vocab = dict(model["vocab"])
    added = {t["content"]: t for t in data.get("added_tokens") or []}
    vocab.update({t["content"]: t["id"] for t in added.values()})
    size = max(vocab.values()) + 1
    if size > config.padded_vocab_size:
        fail(f"{str(path)!r} has {size} tokens, more than the model's {config.padded_vocab_size} embeddings")
    tokens = [f"[PAD{i}]" for i in range(config.padded_vocab_size)]  # as llama.cpp's converter pads
    types = [UNUSED] * config.padded_vocab_size
    for token, i in vocab.items():
        tokens[i], types[i] = token, NORMAL
    for token, t in added.items():
        types[t["id"]] = CONTROL if t.get("special") else USER_DEFINED
    tok = Tokenizer(checkpoint_dir)
    tokenizer_config = tok.tokenizer_config
    meta = {"tokenizer.ggml.tokens": tokens}
    merges = [tuple(m.split(" ", 1) if isinstance(m, str) else m) for m in model.get("merges") or []]
    if "ByteLevel" in json.dumps(data.get("pre_tokenizer")) + json.dumps(data.get("decoder")):
        clean = bool(tokenizer_config.get("clean_up_tokenization_spaces"))
        meta.update({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre_tokenizer(path, data, clean),
                     "tokenizer.ggml.add_space_prefix": False,
                     "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": [" ".join(m) for m in merges]})
    elif model.get("byte_fallback"):
        for i, token in enumerate(tokens):
            if types[i] == NORMAL and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                types[i] = BYTE
        if model.get("unk_token") in vocab and model["unk_token"] not in added:  # else a special token: control
            types[vocab[model["unk_token"]]] = UNKNOWN
        meta.update({"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
                     "tokenizer.ggml.scores": scores(checkpoint_dir, tokens, merges),
                     "tokenizer.ggml.token_type": types, "tokenizer.ggml.add_space_prefix":
                         '"Prepend"' in json.dumps(data.get("normalizer")) or '"Metaspace"' in json.dumps(data)})
    else:
        fail(f"{str(path)!r} is neither a byte-level BPE nor a byte-fallback (sentencepiece-like) BPE tokenizer, "
             "which is what llama.cpp reads")

    def token_id(key: str) -> Optional[int]:
        token = tokenizer_config.get(f"{key}_token")
        token = token.get("content") if isinstance(token, dict) else token
        return vocab.get(token) if isinstance(token, str) else None

    unknown = vocab.get(model.get("unk_token"))
    ids = {"bos": tok.bos_id, "eos": tok.eos_id, "unknown": token_id("unk") if unknown is None else unknown,
           "padding": token_id("pad")}
    meta.update({f"tokenizer.ggml.{k}_token_id": i for k, i in ids.items() if i is not None})
    meta.update({"tokenizer.ggml.add_bos_token": tok.add_bos,
                 "tokenizer.ggml.add_eos_token": bool(tokenizer_config.get("add_eos_token"))})
    template = chat_template(checkpoint_dir, tokenizer_config)
    if template:
        meta["tokenizer.chat_template"] = template
    return meta


def pre_tokenizer(path: Path, data: dict, clean_spaces: bool) -> str:
    """llama.cpp's name of the pre-tokenizer that splits PROBE as the tokenizer.json's does."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    ours = Tokenizer.from_str(json.dumps(data)).pre_tokenizer
    if ours is None:
        fail(f"{str(path)!r} has no pre-tokenizer, which a byte-level BPE needs")
    expected = [piece for piece, _ in ours.pre_tokenize_str(PROBE)]
    for name, regexes in PRE_TOKENIZERS.items():
        candidate = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
                                            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        if [piece for piece, _ in candidate.pre_tokenize_str(PROBE)] == expected:
            # names that split alike differ in cleaning spaces when decoding (smollm: no, starcoder: yes)
            alike = [n for n in (*CANONICAL, *PRE_TOKENIZERS) if PRE_TOKENIZERS.get(n) == regexes]
            return next((n for n in alike if (n in NO_CLEAN_SPACES) != clean_spaces), alike[0])
    fail(f"{str(path)!r}: its pre-tokenizer splits text like none of llama.cpp's we know ({', '.join(PRE_TOKENIZERS)})")


def scores(checkpoint_dir: Path, tokens: List[str], merges: List[Tuple[str, str]]) -> List[float]:
    """Sentencepiece scores: from tokenizer.model when the dir has one, else ranked by the merges (llama.cpp merges
    the pair whose joined token scores highest: the token made by the earliest merge scores highest)."""
    if (checkpoint_dir / "tokenizer.model").is_file():
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(checkpoint_dir / "tokenizer.model"))
        if sp.get_piece_size() <= len(tokens):
            return [sp.get_score(i) if i < sp.get_piece_size() else -1000.0 for i in range(len(tokens))]
    rank = {}
    for i, (a, b) in enumerate(merges):
        rank.setdefault(a + b, -float(i + 1))
    return [rank.get(t, -1e9 if t.startswith("[PAD") else 0.0) for t in tokens]


def chat_template(checkpoint_dir: Path, tokenizer_config: dict) -> Optional[str]:
    """tokenizer_config.json's chat template (its default one if named), else chat_template.jinja, else ChatML for a
    checkpoint whose prompt style is chatml."""
    from lit_gpt.prompts import resolve_prompt_style

    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if isinstance(template, str) and template:
        return template
    if (checkpoint_dir / "chat_template.jinja").is_file():
        return (checkpoint_dir / "chat_template.jinja").read_text(encoding="utf-8")
    try:
        style = resolve_prompt_style(None, checkpoint_dir).name
    except Exception:
        return None
    return CHATML if style == "chatml" else None


# ---------------------------------------------------------------------------------------------------------------------
# LoRA adapters


def export_lora_gguf(run: "LoRARun", out: Union[str, Path], outtype: str = "f32") -> Path:
    """Writes a finetune run's adapter (`lit_gpt.load.load_lora_run`) as a llama.cpp LoRA GGUF, to apply on the base
    model's GGUF."""
    config, where = run.config, repr(str(run.adapter_file))
    arch = gguf_architecture(config, f"The adapter's {str(run.run_file)!r}")
    if run.lora.head and config.tie_embeddings:
        fail(f"The adapter {where} adapts the LM head, which {config.name} ties to the embedding: llama.cpp cannot "
             "apply that (its GGUF has no output.weight). Export the merged model instead (scripts/merge_lora.py "
             "--gguf FILE) or finetune with --lora_head false")
    if outtype.lower() not in ("f32", "f16"):
        fail(f"--outtype {outtype!r} for an adapter: llama.cpp applies f32 or f16 LoRA tensors")
    qtype, file_type = OUTTYPES[outtype.lower()]
    scales = {}
    if config.moe_with_mlp and any(k.endswith(".experts.lora_A_down") for k in run.adapter):  # Gemma 4's
        base = run.checkpoint_dir / "lit_model.pth"
        if not base.is_file():
            fail(f"The adapter {where} adapts Gemma 4's experts, whose per-expert scales the LoRA GGUF needs from the "
                 f"base checkpoint {str(base)!r}, which is not there: put the base checkpoint back there")
        state = lazy_load(base)
        state = state.get("model", state)
        scales = {k: state[k].float() for k in state if k.endswith(".moe.per_expert_scale")}
    tensors = [(name, tuple(t.shape), lambda t=t: t) for name, t in lora_tensors(run.adapter, config, run.lora, arch,
                                                                                  scales)]
    metadata = {"general.name": f"{config.name} LoRA", "general.type": "adapter", "adapter.type": "lora",
                "adapter.lora.alpha": float(run.lora.alpha)}
    write_gguf(Path(out), arch, metadata, tensors, qtype, file_type)
    return Path(out)


def lora_tensors(adapter: Dict[str, torch.Tensor], config: Config, lora, arch: str,
                 scales: Optional[Dict[str, torch.Tensor]] = None) -> Iterator[Tuple[str, torch.Tensor]]:
    """(llama.cpp name, tensor) of every lora_a / lora_b, scaled by alpha / (the rank llama.cpp sees); `scales`:
    Gemma 4's per-expert scales by our name (`expert_lora_tensors`)."""
    from lit_gpt.peft import lora_layers

    c = config
    for module, layer in lora_layers(config, lora).items():
        pairs = {part: (adapter[f"{module}.lora_A{'_' + part if part else ''}"].float(),
                        adapter[f"{module}.lora_B{'_' + part if part else ''}"].float()) for part in layer.adapted}
        i = module.split(".")[2] if module.startswith("transformer.h.") else None
        if i is not None and c.is_linear(int(i)) and ".attn." in module:  # Gated DeltaNet: its value heads tiled
            part = module.split(".attn.")[1] + ".weight"
            A, B = pairs[""]
            A, B = (deltanet_to_gguf(part, A, c), B) if part == "proj.weight" else (A, deltanet_to_gguf(part, B, c))
            yield from lora_pair(f"blk.{i}.{LINEAR_NAMES[part]}", A, B)
        elif module.endswith("attn.qkv") and arch != "phi3":
            for part, (A, B) in pairs.items():
                heads = {"query": c.n_head, "key": c.n_query_groups}.get(part)
                if arch in INTERLEAVED and heads:
                    B = interleave_heads(B, heads)
                yield from lora_pair(f"blk.{i}.{QKV_NAMES[part]}.weight", A, B)
        elif module.endswith("attn.qkv"):  # Phi-3's fused attn_qkv: one pair over all rows
            yield from lora_pair(f"blk.{i}.attn_qkv.weight", *stacked([pairs.get(p) for p in layer.parts],
                                                                      list(layer.parts.values())))
        elif arch == "phi3" and module.endswith(("mlp.fc_1", "mlp.fc_2")):
            if module.endswith("fc_1"):  # [gate | up] in one ffn_up, when the MLP is adapted (both are)
                up = adapter_pair(adapter, module.replace("fc_1", "fc_2"))
                yield from lora_pair(f"blk.{i}.ffn_up.weight", *stacked([pairs[""], up], [layer.out_features] * 2))
        else:
            name = tensor_names(arch)[(module + ".weight").replace(f".{i}.", ".{}.") if i else module + ".weight"]
            yield from lora_pair(name.format(i), *pairs[""])
    yield from expert_lora_tensors(adapter, config, scales or {})


def expert_lora_tensors(adapter: Dict[str, torch.Tensor], config: Config, scales: Dict[str, torch.Tensor]
                        ) -> Iterator[Tuple[str, torch.Tensor]]:
    """The experts' adapters as 3-D pairs: lora_a (E, r, in), lora_b (E, out, r), scaled by llama.cpp with alpha / r
    as ours; gate_up's A shared by the ffn_gate_exps and ffn_up_exps pairs, B split in its gate and up rows (its
    halves, or gpt-oss's interleaved rows: PEFT's A and B are (in, out) whatever the tensor's layout); Gemma 4's one
    pair for its ffn_gate_up_exps. llama.cpp multiplies Gemma 4's down projection by the per-expert scale before it
    adds the adapter's product (its build_lora_mm_id), where ours scales both: down's B is multiplied here by the
    scales (`scales`: "transformer.h.{i}.moe.per_expert_scale" -> (E,)), expert by expert."""
    E, m = config.n_expert, config.moe_intermediate_size
    for module in dict.fromkeys(k.rsplit(".lora_A_", 1)[0] for k in adapter if ".experts.lora_A_" in k):
        i = module.split(".")[2]
        for tensor in ("gate_up", "down"):
            if f"{module}.lora_A_{tensor}" not in adapter:
                continue
            A, B = adapter[f"{module}.lora_A_{tensor}"].float(), adapter[f"{module}.lora_B_{tensor}"].float()
            r = A.size(0) // E
            A, B = A.view(E, r, A.size(1)), B.view(B.size(0), r, E).permute(2, 0, 1)  # B's columns rank-major
            if tensor == "down" and config.moe_with_mlp:
                B = B * scales[f"{module.rsplit('.', 1)[0]}.per_expert_scale"][:, None, None]
            if tensor == "down" or config.moe_with_mlp:  # Gemma 4's gate_up as one (its ffn_gate_up_exps)
                yield from lora_pair(f"blk.{i}.ffn_{tensor}_exps.weight", A, B)
            else:
                for j, part in enumerate(("gate", "up")):
                    rows = B[:, j::2] if config.moe_interleaved else B[:, j * m:(j + 1) * m]
                    yield from lora_pair(f"blk.{i}.ffn_{part}_exps.weight", A, rows)


def adapter_pair(adapter: Dict[str, torch.Tensor], module: str) -> Tuple[torch.Tensor, torch.Tensor]:
    return adapter[f"{module}.lora_A"].float(), adapter[f"{module}.lora_B"].float()


def stacked(pairs: list, rows: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """One adapter for rows split in parts (None: no adapter): A stacks the parts' A, B is block-diagonal. llama.cpp
    scales it by alpha / (k r) for k adapters: B is multiplied by k to keep alpha / r."""
    given = [p for p in pairs if p is not None]
    A = torch.cat([a for a, _ in given])
    B, col, start = torch.zeros(sum(rows), A.size(0)), 0, 0
    for pair, size in zip(pairs, rows):
        if pair is not None:
            B[start:start + size, col:col + pair[1].size(1)] = pair[1] * len(given)
            col += pair[1].size(1)
        start += size
    return A, B


def lora_pair(name: str, A: torch.Tensor, B: torch.Tensor) -> Iterator[Tuple[str, torch.Tensor]]:
    yield f"{name}.lora_a", A.contiguous()
    yield f"{name}.lora_b", B.contiguous()
