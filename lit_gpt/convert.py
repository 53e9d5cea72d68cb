"""Hugging Face transformers checkpoints <-> ours: parameter names, fused qkv layouts, config.json, whole dirs.

Families (`Config.hf_model_type`): llama, mistral, qwen2, qwen3 and gemma3_text have separate q/k/v projections,
concatenated into our qkv (Qwen3 and Gemma 3 add q/k norms, Gemma 3 names its four norms its own way); phi3 fuses
them as `qkv_proj` in our layout and gate/up as `gate_up_proj` (split into our fc_1 and fc_2); GPT-NeoX (Pythia,
StableLM: HF's fused qkv interleaves [q, k, v] per head, ours is [all q | all k | all v]) and Falcon-7b (multi-query:
HF's fused [q heads, k, v] is our layout already; one norm shared by attention and MLP).
Conversions stream: one tensor (one layer's q/k/v for Llama) is transformed at a time.
"""

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch

from lit_gpt.config import Config, name_to_config
from lit_gpt.utils import atomic_dir, atomic_path, fail, first_line, lazy_load

# HF name -> our name; "{}" is the layer index. Llama's q/k/v and the fused qkv are handled apart.
_NAMES = {
    "llama": {
        "model.embed_tokens.weight": "transformer.wte.weight",
        "model.layers.{}.input_layernorm.weight": "transformer.h.{}.norm_1.weight",
        "model.layers.{}.self_attn.o_proj.weight": "transformer.h.{}.attn.proj.weight",
        "model.layers.{}.self_attn.o_proj.bias": "transformer.h.{}.attn.proj.bias",
        "model.layers.{}.post_attention_layernorm.weight": "transformer.h.{}.norm_2.weight",
        "model.layers.{}.mlp.gate_proj.weight": "transformer.h.{}.mlp.fc_1.weight",
        "model.layers.{}.mlp.gate_proj.bias": "transformer.h.{}.mlp.fc_1.bias",
        "model.layers.{}.mlp.up_proj.weight": "transformer.h.{}.mlp.fc_2.weight",
        "model.layers.{}.mlp.up_proj.bias": "transformer.h.{}.mlp.fc_2.bias",
        "model.layers.{}.mlp.down_proj.weight": "transformer.h.{}.mlp.proj.weight",
        "model.layers.{}.mlp.down_proj.bias": "transformer.h.{}.mlp.proj.bias",
        "model.norm.weight": "transformer.ln_f.weight",
        "lm_head.weight": "lm_head.weight",
    },
    "gpt_neox": {
        "lm_head.weight": "lm_head.weight",  # transformers >= 5 names it so; hub checkpoints say embed_out
        "gpt_neox.embed_in.weight": "transformer.wte.weight",
        "gpt_neox.layers.{}.input_layernorm.{p}": "transformer.h.{}.norm_1.{p}",
        "gpt_neox.layers.{}.post_attention_layernorm.{p}": "transformer.h.{}.norm_2.{p}",
        "gpt_neox.layers.{}.attention.query_key_value.{p}": "transformer.h.{}.attn.qkv.{p}",
        "gpt_neox.layers.{}.attention.dense.{p}": "transformer.h.{}.attn.proj.{p}",
        "gpt_neox.layers.{}.mlp.dense_h_to_4h.{p}": "transformer.h.{}.mlp.fc.{p}",
        "gpt_neox.layers.{}.mlp.dense_4h_to_h.{p}": "transformer.h.{}.mlp.proj.{p}",
        "gpt_neox.final_layer_norm.{p}": "transformer.ln_f.{p}",
        "embed_out.weight": "lm_head.weight",
    },
    "falcon": {
        "transformer.word_embeddings.weight": "transformer.wte.weight",
        "transformer.h.{}.input_layernorm.{p}": "transformer.h.{}.norm_1.{p}",
        "transformer.h.{}.self_attention.query_key_value.{p}": "transformer.h.{}.attn.qkv.{p}",
        "transformer.h.{}.self_attention.dense.{p}": "transformer.h.{}.attn.proj.{p}",
        "transformer.h.{}.mlp.dense_h_to_4h.{p}": "transformer.h.{}.mlp.fc.{p}",
        "transformer.h.{}.mlp.dense_4h_to_h.{p}": "transformer.h.{}.mlp.proj.{p}",
        "transformer.ln_f.{p}": "transformer.ln_f.{p}",
        "lm_head.weight": "lm_head.weight",
    },
}
_QK_NORMS = {"model.layers.{}.self_attn.q_norm.weight": "transformer.h.{}.attn.norm_q.weight",
             "model.layers.{}.self_attn.k_norm.weight": "transformer.h.{}.attn.norm_k.weight"}
_NAMES["mistral"] = _NAMES["qwen2"] = _NAMES["llama"]
_NAMES["qwen3"] = {**_NAMES["llama"], **_QK_NORMS}
# Qwen3-MoE: a router and the experts fused as 3-D tensors (transformers 5's layout; the Hub's per-expert
# `experts.{e}.gate_proj/up_proj/down_proj` are stacked while converting, see `_EXPERT`); dense layers as Qwen3's
_NAMES["qwen3_moe"] = {**_NAMES["qwen3"], "model.layers.{}.mlp.gate.weight": "transformer.h.{}.mlp.router.weight",
                       "model.layers.{}.mlp.experts.gate_up_proj": "transformer.h.{}.mlp.experts.gate_up_proj",
                       "model.layers.{}.mlp.experts.down_proj": "transformer.h.{}.mlp.experts.down_proj"}
_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")
# gpt-oss: biases on q/k/v and o, a sink per head, a biased router, the experts as transformers' (E, in, out) tensors
# with biases; its published checkpoints store the two expert tensors as MXFP4 blocks and scales (`dequantize_mxfp4`)
_NAMES["gpt_oss"] = {**{k: v for k, v in _NAMES["llama"].items() if ".mlp." not in k},
                     "model.layers.{}.self_attn.sinks": "transformer.h.{}.attn.sinks",
                     "model.layers.{}.mlp.router.weight": "transformer.h.{}.mlp.router.weight",
                     "model.layers.{}.mlp.router.bias": "transformer.h.{}.mlp.router.bias",
                     **{f"model.layers.{{}}.mlp.experts.{t}": f"transformer.h.{{}}.mlp.experts.{t}" for t in (
                         "gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias")}}
_MXFP4 = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)_(blocks|scales)")
# Gemma's post_attention_layernorm is a norm after the attention, before the residual add
_NAMES["gemma3_text"] = {**_NAMES["llama"], **_QK_NORMS,
                         "model.layers.{}.post_attention_layernorm.weight":
                             "transformer.h.{}.post_attention_norm.weight",
                         "model.layers.{}.pre_feedforward_layernorm.weight": "transformer.h.{}.norm_2.weight",
                         "model.layers.{}.post_feedforward_layernorm.weight": "transformer.h.{}.post_mlp_norm.weight"}
_NAMES["smollm3"] = _NAMES["ministral3"] = _NAMES["llama"]
# OLMo 2/3 norm the attention and MLP outputs only (no input norms), q and k over all heads
_NAMES["olmo2"] = _NAMES["olmo3"] = {**{k: v for k, v in _NAMES["llama"].items() if "layernorm" not in k}, **_QK_NORMS,
                                     "model.layers.{}.post_attention_layernorm.weight":
                                         "transformer.h.{}.post_attention_norm.weight",
                                     "model.layers.{}.post_feedforward_layernorm.weight":
                                         "transformer.h.{}.post_mlp_norm.weight"}
# Qwen3.5: (1 + weight) norms as Gemma's; its Gated DeltaNet layers (lit_gpt/deltanet.py) have their own names
_NAMES["qwen3_5_text"] = {**_NAMES["llama"], **_QK_NORMS, **{
    f"model.layers.{{}}.linear_attn.{hf}": f"transformer.h.{{}}.attn.{lit}" for hf, lit in (
        ("in_proj_qkv.weight", "qkv.weight"), ("in_proj_z.weight", "gate.weight"), ("in_proj_b.weight", "beta.weight"),
        ("in_proj_a.weight", "decay.weight"), ("conv1d.weight", "conv.weight"), ("dt_bias", "dt_bias"),
        ("A_log", "A_log"), ("norm.weight", "norm.weight"), ("out_proj.weight", "proj.weight"))}}
# Qwen3.5-MoE: Qwen3.5's attention and Gated DeltaNet layers, in every layer Qwen3-MoE's router and experts (the Hub's
# checkpoints store them per expert) and a shared expert with its sigmoid gate
_NAMES["qwen3_5_moe_text"] = {**{k: v for k, v in _NAMES["qwen3_5_text"].items() if ".mlp." not in k},
                              **{k: v for k, v in _NAMES["qwen3_moe"].items() if ".mlp." in k},
                              **{f"model.layers.{{}}.mlp.shared_expert.{hf}.weight":
                                 f"transformer.h.{{}}.mlp.shared_expert.{lit}.weight"
                                 for hf, lit in (("gate_proj", "fc_1"), ("up_proj", "fc_2"), ("down_proj", "proj"))},
                              "model.layers.{}.mlp.shared_expert_gate.weight":
                                  "transformer.h.{}.mlp.shared_expert.gate.weight"}
# Gemma 4: Gemma 3's names, plain norms, a stored scalar per layer and the per-layer inputs (E2B / E4B)
_NAMES["gemma4_text"] = {**_NAMES["gemma3_text"], "model.layers.{}.layer_scalar": "transformer.h.{}.layer_scalar",
                         "model.layers.{}.per_layer_input_gate.weight": "transformer.h.{}.per_layer_gate.weight",
                         "model.layers.{}.per_layer_projection.weight": "transformer.h.{}.per_layer_proj.weight",
                         "model.layers.{}.post_per_layer_input_norm.weight": "transformer.h.{}.per_layer_norm.weight",
                         "model.embed_tokens_per_layer.weight": "transformer.wte_per_layer.weight",
                         "model.per_layer_model_projection.weight": "transformer.per_layer_proj.weight",
                         "model.per_layer_projection_norm.weight": "transformer.per_layer_norm.weight",
                         # 26B-A4B: the router and experts beside the MLP, with three more norms
                         "model.layers.{}.router.proj.weight": "transformer.h.{}.moe.router.weight",
                         "model.layers.{}.router.scale": "transformer.h.{}.moe.router_scale",
                         "model.layers.{}.router.per_expert_scale": "transformer.h.{}.moe.per_expert_scale",
                         "model.layers.{}.experts.gate_up_proj": "transformer.h.{}.moe.experts.gate_up_proj",
                         "model.layers.{}.experts.down_proj": "transformer.h.{}.moe.experts.down_proj",
                         "model.layers.{}.pre_feedforward_layernorm_2.weight": "transformer.h.{}.norm_moe.weight",
                         "model.layers.{}.post_feedforward_layernorm_1.weight":
                             "transformer.h.{}.post_dense_norm.weight",
                         "model.layers.{}.post_feedforward_layernorm_2.weight": "transformer.h.{}.post_moe_norm.weight"}
_NAMES["phi3"] = {**{k: v for k, v in _NAMES["llama"].items() if ".mlp.gate_proj" not in k and ".mlp.up_proj" not in k},
                  "model.layers.{}.self_attn.qkv_proj.weight": "transformer.h.{}.attn.qkv.weight"}
_SEPARATE_QKV = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "smollm3", "ministral3", "olmo2", "olmo3",
                 "qwen3_5_text", "gemma4_text", "qwen3_moe", "gpt_oss", "qwen3_5_moe_text")
_LLAMA_QKV = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}
_PHI3_GATE_UP = "model.layers.{}.mlp.gate_up_proj.weight"  # rows [gate | up] = our fc_1, fc_2
# a vision-language checkpoint (Gemma 3, Mistral 3): its text model's weights under a prefix (transformers 4 / 5); the
# rest is skipped
_TEXT_MODEL = re.compile(r"^(?:language_model\.|model\.language_(?=model\.))")  # -> "" / "model."
_NOT_TEXT = re.compile(r"^(?:model\.)?(?:vision_tower|multi_modal_projector|visual|audio_tower|embed_vision|"
                       r"embed_audio)\.|^mtp\.")  # mtp: Qwen3.5's multi-token prediction layer (transformers skips it)
# the keys and values (and their norms) Gemma 4 checkpoints keep in the layers that reuse an earlier layer's, unused
_UNUSED_KV = re.compile(r"model\.layers\.\{\}\.self_attn\.(?:[kv]_proj|[kv]_norm)\.weight")
# buffers some old checkpoints saved with the weights
_IGNORED = re.compile(r".*(rotary_emb\.inv_freq|attention\.bias|attention\.masked_bias)$")


def _expand(table: Dict[str, str]) -> Dict[str, str]:
    return {hf.replace("{p}", p): lit.replace("{p}", p) for hf, lit in table.items() for p in ("weight", "bias")}


_HF_TO_LIT = {family: _expand(table) for family, table in _NAMES.items()}
_LIT_TO_HF = {family: {lit: hf for hf, lit in table.items() if ".linear_attn." not in hf}  # last wins
              for family, table in _HF_TO_LIT.items()}
_LINEAR_LIT_TO_HF = {lit: hf for hf, lit in _HF_TO_LIT["qwen3_5_text"].items() if ".linear_attn." in hf}


def family(config: Config) -> str:
    """The transformers `model_type` our config corresponds to ("llama", "qwen3", "gpt_neox" ...)."""
    if config.hf_model_type not in _NAMES:
        raise ValueError(f"{config.name!r} has hf_model_type={config.hf_model_type!r}; known are {', '.join(_NAMES)}")
    return config.hf_model_type


def separate_qkv(config: Config) -> bool:
    """Whether HF has separate q_proj, k_proj, v_proj for our fused qkv."""
    return family(config) in _SEPARATE_QKV


def _split_layer(name: str) -> Tuple[str, Optional[str]]:
    """"a.12.b" -> ("a.{}.b", "12")."""
    match = re.match(r"^(.*?\.)(\d+)(\..*)$", name)
    return (match.group(1) + "{}" + match.group(3), match.group(2)) if match else (name, None)


def _interleaved_qkv(config: Config) -> bool:
    """Whether HF stores the fused qkv per head as [q, k, v] (GPT-NeoX, multi-head Falcon)."""
    return family(config) == "gpt_neox" or (family(config) == "falcon" and config.n_query_groups != 1)


def qkv_from_interleaved(t: torch.Tensor, config: Config) -> torch.Tensor:
    """HF's per-head [q, k, v] rows (weight or bias) -> our [all q | all k | all v]."""
    per_head = t.reshape(config.n_head, 3, config.head_size, *t.shape[1:])
    return per_head.transpose(0, 1).reshape(t.shape)


def qkv_to_interleaved(t: torch.Tensor, config: Config) -> torch.Tensor:
    """Our [all q | all k | all v] rows -> HF's per-head [q, k, v]."""
    parts = t.reshape(3, config.n_head, config.head_size, *t.shape[1:])
    return parts.transpose(0, 1).reshape(t.shape)


def qkv_parts(config: Config, layer: int) -> Dict[str, int]:
    """The rows of layer `layer`'s fused qkv by part ("query", "key", "value"), the parts it has (Gemma 4: no value
    with k = v, queries alone in a layer reusing an earlier one's keys and values)."""
    sizes = config.layer(layer).qkv_sizes(config.kv_source(layer) is None)
    return {part: n for part, n in zip(("query", "key", "value"), sizes) if n}


def qkv_split(t: torch.Tensor, config: Config, layer: int = 0) -> Dict[str, torch.Tensor]:
    """Our fused qkv rows of layer `layer` -> {part: rows} (see `qkv_parts`)."""
    parts = qkv_parts(config, layer)
    return dict(zip(parts, t.split(list(parts.values()))))


def hf_to_lit_name(name: str, config: Config) -> Tuple[Optional[str], Optional[str]]:
    """(our name, part) of an HF parameter name; the part is "query"/"key"/"value" for separate q/k/v projections
    (of our qkv), "gate_up" for Phi-3's fused gate/up (our mlp.fc_1 and fc_2: the name returned is fc_1's), else
    None. (None, None) for names we do not know."""
    pattern, layer = _split_layer(name)
    if separate_qkv(config):
        match = re.fullmatch(r"model\.layers\.\{\}\.self_attn\.([qkv]_proj)\.(weight|bias)", pattern)
        if match:
            return f"transformer.h.{layer}.attn.qkv.{match.group(2)}", _LLAMA_QKV[match.group(1)]
    if family(config) == "phi3" and pattern == _PHI3_GATE_UP:
        return f"transformer.h.{layer}.mlp.fc_1.weight", "gate_up"
    lit = _HF_TO_LIT[family(config)].get(pattern)
    return (lit.replace("{}", layer) if layer is not None else lit) if lit else None, None


def lit_to_hf_name(name: str, config: Config, part: Optional[str] = None) -> str:
    """HF name of one of our parameter names (or of the module owning a LoRA parameter, e.g. `...attn.proj`).

    A fused qkv split into q/k/v projections has three HF counterparts: pass `part` ("query", "key" or "value") to
    pick one. Phi-3's mlp.fc_1 and fc_2 are both (halves of) `gate_up_proj`. Raises ValueError for names without an
    HF counterpart.
    """
    pattern, layer = _split_layer(name)
    suffix = ""
    if not pattern.endswith((".weight", ".bias")) and pattern not in _LINEAR_LIT_TO_HF and pattern not in _LIT_TO_HF[
            family(config)]:  # a module name
        pattern, suffix = pattern + ".weight", ".weight"
    linear = pattern.startswith("transformer.h.{}.attn.") and config.is_linear(int(layer))
    if linear:
        hf = _LINEAR_LIT_TO_HF.get(pattern)
        if hf is None:
            raise ValueError(f"{name!r} has no Hugging Face counterpart in a {family(config)} linear-attention layer")
    elif separate_qkv(config) and pattern.startswith("transformer.h.{}.attn.qkv."):
        if part not in ("query", "key", "value"):
            raise ValueError(f"{name!r} is q_proj, k_proj and v_proj in {family(config)}: pass part='query', 'key' or "
                             "'value'")
        proj = {v: k for k, v in _LLAMA_QKV.items()}[part]
        hf = f"model.layers.{{}}.self_attn.{proj}.{pattern.rsplit('.', 1)[1]}"
    elif family(config) == "phi3" and pattern in ("transformer.h.{}.mlp.fc_1.weight",
                                                  "transformer.h.{}.mlp.fc_2.weight"):
        hf = _PHI3_GATE_UP
    else:
        hf = _LIT_TO_HF[family(config)].get(pattern)
        if hf is None:
            raise ValueError(f"{name!r} has no Hugging Face counterpart in a {family(config)} model")
    hf = hf.replace("{}", layer) if layer is not None else hf
    return hf[: -len(suffix)] if suffix else hf


_shapes: Dict[str, Dict[str, torch.Size]] = {}


def expected_shapes(config: Config) -> Dict[str, torch.Size]:
    """Our state dict's names and shapes, computed on the meta device."""
    from lit_gpt.model import GPT

    key = json.dumps(config.to_dict(), sort_keys=True)
    if key not in _shapes:
        with torch.device("meta"):
            model = GPT(config)
        _shapes[key] = {name: t.shape for name, t in model.state_dict().items()}
    return _shapes[key]


def hf_to_lit(hf_items: Iterable[Tuple[str, torch.Tensor]], config: Config,
              dtype: Optional[torch.dtype] = None, out: Optional[Dict[str, torch.Tensor]] = None
              ) -> Dict[str, torch.Tensor]:
    """Our state dict from (HF name, tensor) pairs, consumed one at a time (a generator keeps memory flat), into
    `out` (default: a new dict; `convert_hf_checkpoint` passes a `SpilledDict`, which keeps each tensor on disk).

    Tied embeddings: a missing `lm_head.weight` is the embedding. Raises ValueError naming unknown, missing or
    misshapen weights.
    """
    fam, out = family(config), {} if out is None else out
    pending: Dict[str, Dict[str, torch.Tensor]] = {}  # q/k/v waiting for their siblings
    experts: Dict[str, Dict[tuple, torch.Tensor]] = {}  # a layer's per-expert weights waiting for the others
    packed: Dict[tuple, Dict[str, torch.Tensor]] = {}  # MXFP4 blocks waiting for their scales, or the other way
    for hf_name, tensor in hf_items:
        if _IGNORED.match(hf_name) or _NOT_TEXT.match(hf_name):
            continue
        hf_name = _TEXT_MODEL.sub("", hf_name)
        expert = _EXPERT.fullmatch(hf_name) if config.n_expert else None
        if expert:  # stacked into the layer's fused tensors once all its experts are there
            layer, e, proj = expert.groups()
            if dtype is not None:
                tensor = tensor.to(dtype)
            parts = experts.setdefault(layer, {})
            parts[int(e), proj] = tensor
            if len(parts) == 3 * config.n_expert:
                E = range(config.n_expert)
                out[f"transformer.h.{layer}.mlp.experts.gate_up_proj"] = torch.stack(
                    [torch.cat([parts[e, "gate_proj"], parts[e, "up_proj"]]) for e in E])
                out[f"transformer.h.{layer}.mlp.experts.down_proj"] = torch.stack([parts[e, "down_proj"] for e in E])
                del experts[layer]
            continue
        mxfp4 = _MXFP4.fullmatch(hf_name) if fam == "gpt_oss" else None
        if mxfp4:  # dequantized once both its blocks and its scales are there
            layer, proj, kind = mxfp4.groups()
            pair = packed.setdefault((layer, proj), {})
            pair[kind] = tensor
            if len(pair) == 2:
                name = f"transformer.h.{layer}.mlp.experts.{proj}"
                out[name] = dequantize_mxfp4(pair["blocks"], pair["scales"], dtype or torch.bfloat16, hf_name)
                del packed[layer, proj]
            continue
        pattern, layer = _split_layer(hf_name)
        if layer is not None and _UNUSED_KV.fullmatch(pattern) and config.kv_source(int(layer)) is not None:
            continue
        name, part = hf_to_lit_name(hf_name, config)
        if name is None:
            raise ValueError(f"Unexpected weight {hf_name!r} for a {fam} model: is this the right config?")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if part == "gate_up":
            _check_shape(hf_name, tensor, torch.Size([2 * config.intermediate_size, config.n_embd]))
            out[name], out[name.replace(".fc_1.", ".fc_2.")] = tensor.chunk(2)
        elif part is not None:
            parts = pending.setdefault(name, {})
            parts[part] = tensor
            needed = qkv_parts(config, int(_split_layer(name)[1]))
            if set(parts) - set(needed):
                raise ValueError(f"Unexpected weight {hf_name!r}: its layer has only {list(needed)}")
            if len(parts) == len(needed):
                out[name] = torch.cat([parts[p] for p in needed])
                del pending[name]
        elif name.startswith("transformer.h.") and ".attn.qkv." in name and _interleaved_qkv(config):
            _check_shape(hf_name, tensor, expected_shapes(config)[name])
            out[name] = qkv_from_interleaved(tensor, config)
        else:
            out[name] = tensor
    if pending:
        raise ValueError(f"Incomplete q/k/v projections for {sorted(pending)}")
    if experts:
        raise ValueError(f"Incomplete experts in layers {sorted(experts, key=int)}: each needs gate_proj, up_proj "
                         f"and down_proj of all {config.n_expert} experts")
    if packed:
        raise ValueError(f"MXFP4 expert tensors without their blocks or scales: "
                         f"{_few([f'model.layers.{layer}.mlp.experts.{proj}' for layer, proj in sorted(packed)])}")
    shapes = expected_shapes(config)
    for name in ("transformer.wte.weight", "lm_head.weight"):  # vocabulary rows padded up to padded_vocab_size
        if name in out and out[name].shape[0] < shapes[name][0] and out[name].shape[1:] == shapes[name][1:]:
            t = out[name]
            out[name] = torch.cat([t, t.new_zeros(shapes[name][0] - t.shape[0], *t.shape[1:])])
    if config.tie_embeddings and "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]  # transformers ignores a saved lm_head when tied
    missing, unexpected = sorted(set(shapes) - set(out)), sorted(set(out) - set(shapes))
    if missing or unexpected:
        raise ValueError(f"The checkpoint does not fit the config: missing {_few(missing)}, unexpected "
                         f"{_few(unexpected)}")
    for name, t in out.items():
        _check_shape(name, t, shapes[name])
    return out


# the 16 values of an FP4 (e2m1) code: sign bit, two exponent bits, one mantissa bit
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                     name: str = "experts") -> torch.Tensor:
    """An expert tensor of a gpt-oss checkpoint from its MXFP4 `*_blocks` and `*_scales`, in transformers' layout
    (E, in, out): blocks (E, out, in / 32, 16) uint8 hold two FP4 codes a byte (the low nibble first) of 32 values
    along `in` per block, scales (E, out, in / 32) uint8 one exponent per block: value = FP4_VALUES[code] *
    2 ** (scale - 127), exact in bfloat16 (two significant bits). Expert by expert: the temporaries are one expert's."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8 or blocks.dim() != 4 or \
            blocks.shape[:-1] != scales.shape:
        raise ValueError(f"{name!r}: MXFP4 blocks {blocks.dtype} {tuple(blocks.shape)} and scales {scales.dtype} "
                         f"{tuple(scales.shape)} are not uint8 (E, out, in / 32, 16) and (E, out, in / 32)")
    E, rows, groups, width = blocks.shape
    table = torch.tensor(FP4_VALUES, dtype=dtype)
    out = torch.empty(E, groups * width * 2, rows, dtype=dtype)
    for e in range(E):
        codes = torch.stack([blocks[e] & 0x0F, blocks[e] >> 4], dim=-1).view(rows, groups, 2 * width)
        values = torch.ldexp(table[codes.int()], scales[e, ..., None].int() - 127)  # (out, in / 32, 32)
        out[e] = values.view(rows, -1).t()
    return out


def lit_to_hf(lit_state_dict: Dict[str, torch.Tensor], config: Config) -> Dict[str, torch.Tensor]:
    """A transformers state dict from ours. Tied embeddings: no `lm_head.weight`, as transformers saves them."""
    out = {}
    for name, tensor in lit_state_dict.items():
        if name == "lm_head.weight" and config.tie_embeddings:
            continue
        if ".attn.qkv." in name and separate_qkv(config) and not config.is_linear(int(_split_layer(name)[1])):
            for part, t in qkv_split(tensor, config, int(_split_layer(name)[1])).items():
                out[lit_to_hf_name(name, config, part)] = t
        elif family(config) == "phi3" and name.endswith(".mlp.fc_1.weight"):
            out[lit_to_hf_name(name, config)] = torch.cat([tensor, lit_state_dict[name.replace(".fc_1.", ".fc_2.")]])
        elif family(config) == "phi3" and name.endswith(".mlp.fc_2.weight"):
            continue
        elif ".attn.qkv." in name and _interleaved_qkv(config):
            out[lit_to_hf_name(name, config)] = qkv_to_interleaved(tensor, config)
        else:
            out[lit_to_hf_name(name, config)] = tensor
    return out


_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "gemma3_text": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM",
                  "smollm3": "SmolLM3ForCausalLM", "ministral3": "Ministral3ForCausalLM",
                  "olmo2": "Olmo2ForCausalLM", "olmo3": "Olmo3ForCausalLM", "qwen3_5_text": "Qwen3_5ForCausalLM",
                  "gemma4_text": "Gemma4ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
                  "gpt_oss": "GptOssForCausalLM", "qwen3_5_moe_text": "Qwen3_5MoeForCausalLM"}
# the layout each decoder family has in transformers (fields not listed are free: sizes, RoPE, tied embeddings)
_LAYOUTS = {
    "llama": dict(norm_qk=False, post_norms=False, norm_unit_offset=False, scale_embeddings=False,
                  mlp_class_name="LLaMAMLP", sliding_window=None, rope_local_base=None, attention_scalar=None,
                  rotary_percentage=1.0, nope_layer_every=0, query_scale_beta=0.0, norm_qk_all_heads=False,
                  norm_upcast=False, pre_norms=True, linear_attention=False, attention_output_gate=False,
                  global_head_size=None, global_n_query_groups=None, attention_k_eq_v=False, norm_v=False,
                  kv_shared_layers=0, double_wide_mlp=False, per_layer_embd=0, layer_scalar=False, n_expert=0,
                  router_bias=False, router_scoring="softmax_topk", router_norm=False, moe_activation="silu",
                  moe_transposed=False, moe_interleaved=False, moe_bias=False, moe_shared_intermediate_size=0,
                  moe_with_mlp=False, attention_sinks=False),
    "qwen2": dict(bias=False, qkv_bias=True),
    "qwen3": dict(bias=False, qkv_bias=False, norm_qk=True),
    "qwen3_moe": dict(bias=False, qkv_bias=False, norm_qk=True),  # the expert counts and sizes free
    "gpt_oss": dict(norm_upcast=True, attention_sinks=True, router_bias=True, router_scoring="topk_softmax",
                    moe_activation="clamped_swiglu", moe_transposed=True, moe_interleaved=True, moe_bias=True,
                    moe_sparse_step=1, moe_dense_layers=[]),  # attention_bias (bias = qkv_bias) free
    "mistral": dict(bias=False, qkv_bias=False, global_layer_every=0),
    "phi3": dict(bias=False, qkv_bias=False, global_layer_every=0),
    "gemma3_text": dict(bias=False, qkv_bias=False, norm_qk=True, post_norms=True, norm_unit_offset=True,
                        scale_embeddings=True, mlp_class_name="GemmaMLP"),
    "smollm3": dict(),  # bias and nope_layer_every free
    "ministral3": dict(bias=False, qkv_bias=False),  # query_scale_beta free
    "olmo2": dict(bias=False, qkv_bias=False, norm_qk=True, norm_qk_all_heads=True, norm_upcast=True,
                  pre_norms=False, post_norms=True),
    "olmo3": dict(bias=False, qkv_bias=False, norm_qk=True, norm_qk_all_heads=True, norm_upcast=True,
                  pre_norms=False, post_norms=True),
    "qwen3_5_text": dict(bias=False, qkv_bias=False, norm_qk=True, norm_unit_offset=True, attention_output_gate=True),
    # the expert counts and sizes free; the shared expert's size free but not 0
    "qwen3_5_moe_text": dict(bias=False, qkv_bias=False, norm_qk=True, norm_unit_offset=True,
                             attention_output_gate=True, norm_topk_prob=True, moe_sparse_step=1, moe_dense_layers=[]),
    "gemma4_text": dict(bias=False, qkv_bias=False, norm_qk=True, post_norms=True, scale_embeddings=True,
                        mlp_class_name="GemmaMLP", norm_upcast=True, norm_v=True, layer_scalar=True,
                        attention_scalar=1.0),
}


def _rope_parameters(base: float, scaling: Optional[dict]) -> dict:
    """transformers' `rope_parameters` for a base and our `rope_scaling`."""
    if scaling is None:
        return dict(rope_type="default", rope_theta=base)
    return dict({k: v for k, v in scaling.items() if k != "type"}, rope_type=scaling["type"], rope_theta=base)


def hf_config_from_lit(config: Config, dtype: torch.dtype = torch.float32, **token_ids: Optional[int]) -> dict:
    """A transformers `config.json` dict that `AutoModelForCausalLM.from_pretrained` builds our model's twin from,
    with both transformers 5's `rope_parameters` and 4's `rope_theta` / `rope_scaling`.

    `token_ids`: bos_token_id, eos_token_id, pad_token_id to record. Raises ValueError for configs that
    transformers' model of `config.hf_model_type` cannot express.
    """
    fam, c = family(config), config
    problems = []
    common = dict(vocab_size=c.padded_vocab_size, hidden_size=c.n_embd, num_hidden_layers=c.n_layer,
                  num_attention_heads=c.n_head, max_position_embeddings=c.block_size,
                  tie_word_embeddings=c.tie_embeddings, dtype=_DTYPE_NAMES.get(dtype, "float32"),
                  torch_dtype=_DTYPE_NAMES.get(dtype, "float32"), use_cache=True, initializer_range=0.02)
    rope = _rope_parameters(c.rope_base, c.rope_scaling)
    rope_scaling = None if c.rope_scaling is None else {k: v for k, v in rope.items() if k != "rope_theta"}
    if c.lm_head_bias:
        problems.append("lm_head_bias=True")
    if fam in _ARCHITECTURES:
        layout = {**_LAYOUTS["llama"], **(_LAYOUTS[fam] if fam not in ("llama", "smollm3") else dict(qkv_bias=c.bias))}
        for key, families in (("sliding_window", ("mistral", "phi3", "gemma3_text", "olmo3", "gemma4_text",
                                                  "gpt_oss")),
                              ("linear_attention", ("qwen3_5_text", "qwen3_5_moe_text")),
                              ("rotary_percentage", ("qwen3_5_text", "qwen3_5_moe_text")),
                              ("rope_local_base", ("gemma3_text", "olmo3", "gemma4_text")),
                              ("nope_layer_every", ("smollm3",)), ("query_scale_beta", ("ministral3",))):
            if fam in families:
                layout.pop(key)
        if fam in ("qwen3_moe", "gpt_oss", "qwen3_5_moe_text"):
            layout.pop("n_expert")
        if fam == "qwen3_5_moe_text":
            layout.pop("moe_shared_intermediate_size")
        if fam == "gemma4_text":
            for key in ("global_head_size", "global_n_query_groups", "attention_k_eq_v", "kv_shared_layers",
                        "double_wide_mlp", "per_layer_embd", "n_expert"):
                layout.pop(key)
            if c.n_expert:  # enable_moe_block: in every layer, experts beside the MLP
                layout.update(router_norm=True, norm_topk_prob=True, moe_activation="gelu", moe_with_mlp=True,
                              moe_sparse_step=1, moe_dense_layers=[])
        elif c.final_logit_softcapping is not None:
            problems.append(f"final_logit_softcapping in a {fam} model")
        if fam in ("phi3", "gemma3_text"):
            layout.pop("rotary_percentage")
        if fam == "gemma3_text":
            layout.pop("attention_scalar")
        problems += [f"{k}={getattr(c, k)!r} (a {fam} model has {v!r})" for k, v in layout.items()
                     if getattr(c, k) != v]
        if c.parallel_residual or c.norm_class_name != "RMSNorm":
            problems.append("parallel residual or LayerNorm")
        hf = dict(architectures=[_ARCHITECTURES[fam]], model_type=fam, **common,
                  intermediate_size=c.intermediate_size, num_key_value_heads=c.n_query_groups, head_dim=c.head_size,
                  hidden_act="silu", rms_norm_eps=c.norm_eps, rope_theta=c.rope_base, rope_parameters=rope,
                  rope_scaling=rope_scaling, attention_dropout=0.0)
        if fam in ("llama", "smollm3"):
            hf.update(attention_bias=c.bias, mlp_bias=c.bias)
        if fam == "llama":
            hf.update(pretraining_tp=1)
        if fam == "smollm3":
            hf.update(no_rope_layers=[int(c.has_rope(i)) for i in range(c.n_layer)], use_sliding_window=False,
                      sliding_window=None, layer_types=["full_attention"] * c.n_layer)
        if fam == "ministral3":
            if c.query_scale_beta and not (c.rope_scaling or {}).get("original_max_position_embeddings"):
                problems.append("query_scale_beta without rope_scaling's original_max_position_embeddings")
            hf.update(sliding_window=None, rope_parameters=dict(rope, llama_4_scaling_beta=c.query_scale_beta))
        if fam in ("olmo2", "olmo3"):
            hf.update(attention_bias=False)
        if fam in ("qwen3_5_text", "qwen3_5_moe_text"):
            if c.global_layer_every and not c.linear_attention:
                problems.append("global_layer_every without linear attention in a Qwen3.5 model")
            hf.update(attention_bias=False, rope_parameters=dict(rope, partial_rotary_factor=c.rotary_percentage),
                      layer_types=[("linear" if c.is_linear(i) else "full") + "_attention" for i in range(c.n_layer)],
                      linear_num_key_heads=c.linear_n_key_heads, linear_num_value_heads=c.linear_n_value_heads,
                      linear_key_head_dim=c.linear_key_head_size, linear_value_head_dim=c.linear_value_head_size,
                      linear_conv_kernel_dim=c.linear_conv_kernel)
        if fam == "olmo3":
            layer_types = ["sliding_attention" if c.is_sliding(i) else "full_attention" for i in range(c.n_layer)]
            local = _rope_parameters(c.rope_base if c.rope_local_base is None else c.rope_local_base, None)
            if c.rope_local_base is None and c.rope_scaling is not None and c.sliding_window is not None:
                problems.append("RoPE scaling without a local RoPE base in an OLMo 3 model")
            hf.update(sliding_window=c.sliding_window or c.block_size, layer_types=layer_types,
                      rope_parameters=dict(full_attention=rope, sliding_attention=local))
        elif fam in ("qwen2", "qwen3", "qwen3_moe"):
            hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.n_layer,
                      attention_bias=False, layer_types=["full_attention"] * c.n_layer)
        if fam == "qwen3_moe":
            hf.update(num_experts=c.n_expert, num_experts_per_tok=c.n_expert_per_token,
                      moe_intermediate_size=c.moe_intermediate_size, decoder_sparse_step=c.moe_sparse_step,
                      mlp_only_layers=list(c.moe_dense_layers), norm_topk_prob=c.norm_topk_prob,
                      output_router_logits=False, router_aux_loss_coef=c.router_aux_loss_coef)
        elif fam in ("mistral", "phi3"):
            hf.update(sliding_window=c.sliding_window)
        if fam == "qwen3_5_moe_text":
            if not c.n_expert or not c.moe_shared_intermediate_size:
                problems.append("no experts or no shared expert in a Qwen3.5-MoE model")
            hf.update(num_experts=c.n_expert, num_experts_per_tok=c.n_expert_per_token,
                      moe_intermediate_size=c.moe_intermediate_size,
                      shared_expert_intermediate_size=c.moe_shared_intermediate_size, output_router_logits=False,
                      router_aux_loss_coef=c.router_aux_loss_coef)
            del hf["intermediate_size"]  # no dense MLP
        if fam == "gpt_oss":
            if c.bias != c.qkv_bias or not c.n_expert:
                problems.append("biases on q/k/v but not o (or the other way) or no experts in a gpt-oss model")
            hf.update(intermediate_size=c.moe_intermediate_size, num_local_experts=c.n_expert,
                      num_experts_per_tok=c.n_expert_per_token, swiglu_limit=c.swiglu_limit,
                      swiglu_alpha=c.swiglu_alpha, attention_bias=c.bias, sliding_window=c.sliding_window,
                      layer_types=["sliding_attention" if c.is_sliding(i) else "full_attention"
                                   for i in range(c.n_layer)], output_router_logits=False,
                      router_aux_loss_coef=c.router_aux_loss_coef)
        if fam == "phi3":
            del hf["head_dim"]  # transformers' Phi-3 derives it
            if c.head_size * c.n_head != c.n_embd:
                problems.append("head_size * n_head != n_embd in a Phi-3 model")
            hf.update(partial_rotary_factor=c.rotary_percentage, resid_pdrop=0.0, embd_pdrop=0.0,
                      rope_parameters=dict(rope, partial_rotary_factor=c.rotary_percentage))
            if c.rope_scaling and c.rope_scaling["type"] == "longrope":
                hf.update(original_max_position_embeddings=c.rope_scaling["original_max_position_embeddings"])
        if fam == "gemma3_text":
            layer_types = ["sliding_attention" if c.is_sliding(i) else "full_attention" for i in range(c.n_layer)]
            local = _rope_parameters(c.rope_base if c.rope_local_base is None else c.rope_local_base, None)
            if c.rope_local_base is None and c.rope_scaling is not None:
                problems.append("RoPE scaling without a local RoPE base in a Gemma 3 model")
            hf.update(hidden_activation="gelu_pytorch_tanh" if c.gelu_approximate == "tanh" else "gelu",
                      query_pre_attn_scalar=c.attention_scalar or c.head_size, sliding_window=c.sliding_window or
                      c.block_size, layer_types=layer_types, sliding_window_pattern=c.global_layer_every or c.n_layer,
                      rope_local_base_freq=local["rope_theta"], final_logit_softcapping=None,
                      attn_logit_softcapping=None, attention_bias=False,
                      rope_parameters=dict(full_attention=rope, sliding_attention=local))
            del hf["hidden_act"]
        if fam == "gemma4_text":
            types = ["sliding_attention" if c.is_sliding(i) else "full_attention" for i in range(c.n_layer)]
            if types[-1] != "full_attention":
                problems.append("a last layer that is not a global one in a Gemma 4 model")
            local = _rope_parameters(c.rope_base if c.rope_local_base is None else c.rope_local_base, None)
            shapes = {str(i): dict(head_dim=c.layer(i).head_size, num_key_value_heads=c.layer(i).n_query_groups)
                      for i, t in enumerate(types) if t == "full_attention"}
            hf.update(hidden_activation="gelu_pytorch_tanh" if c.gelu_approximate == "tanh" else "gelu",
                      sliding_window=c.sliding_window or c.block_size, layer_types=types, per_layer_config=shapes,
                      rope_parameters=dict(full_attention=rope, sliding_attention=local),
                      final_logit_softcapping=c.final_logit_softcapping, attention_bias=False,
                      attention_k_eq_v=c.attention_k_eq_v, num_kv_shared_layers=c.kv_shared_layers,
                      use_double_wide_mlp=c.double_wide_mlp, hidden_size_per_layer_input=c.per_layer_embd,
                      vocab_size_per_layer_input=c.per_layer_vocab_size or c.padded_vocab_size,
                      enable_moe_block=bool(c.n_expert), num_experts=c.n_expert or None,
                      top_k_experts=c.n_expert_per_token or None, moe_intermediate_size=c.moe_intermediate_size or None,
                      use_bidirectional_attention=None)
            del hf["hidden_act"], hf["rope_theta"], hf["rope_scaling"]
    elif fam == "gpt_neox":
        if c.norm_class_name != "LayerNorm" or c.head_size * c.n_head != c.n_embd:
            problems.append("RMSNorm or head_size * n_head != n_embd in a GPT-NeoX model")
        if c.n_query_groups != c.n_head or not c.bias or not c.qkv_bias:
            problems.append("grouped-query attention or bias=False in a GPT-NeoX model")
        hf = dict(architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox", **common,
                  intermediate_size=c.intermediate_size,
                  hidden_act="gelu" if c.gelu_approximate == "none" else "gelu_new",
                  rotary_pct=c.rotary_percentage, rotary_emb_base=c.rope_base, rope_scaling=rope_scaling,
                  rope_parameters=dict(rope, partial_rotary_factor=c.rotary_percentage),
                  layer_norm_eps=c.norm_eps, use_parallel_residual=c.parallel_residual, attention_bias=c.bias,
                  attention_dropout=0.0, hidden_dropout=0.0)
    else:
        if c.norm_class_name != "LayerNorm" or c.head_size * c.n_head != c.n_embd:
            problems.append("RMSNorm or head_size * n_head != n_embd in a Falcon model")
        if c.n_query_groups not in (1, c.n_head) or c.rotary_percentage != 1.0 or not c.parallel_residual \
                or c.gelu_approximate != "none" or c.qkv_bias != c.bias:
            problems.append("a Falcon model other than the falcon-7b layout")
        hf = dict(architectures=["FalconForCausalLM"], model_type="falcon", **common,
                  multi_query=c.n_query_groups == 1, num_kv_heads=c.n_query_groups, new_decoder_architecture=False,
                  parallel_attn=True, alibi=False, bias=c.bias, layer_norm_epsilon=c.norm_eps,
                  rope_theta=c.rope_base, rope_parameters=rope, rope_scaling=rope_scaling,
                  ffn_hidden_size=c.intermediate_size, activation="gelu", attention_dropout=0.0, hidden_dropout=0.0)
    if fam in ("gpt_neox", "falcon") and (c.norm_qk or c.post_norms or c.norm_unit_offset or c.scale_embeddings or
                                          c.sliding_window is not None or c.attention_scalar is not None or
                                          c.attention_sinks):
        problems.append(f"q/k norms, post norms, Gemma norms or embeddings, a sliding window, an attention "
                        f"scalar or sinks in a {fam} model")
    if problems:
        raise ValueError(f"transformers has no model for {c.name!r}: {'; '.join(problems)}")
    hf.update({k: v for k, v in token_ids.items() if v is not None})
    return hf


# ---------------------------------------------------------------------------------------------------------------------
# whole checkpoint dirs


def hf_weight_files(checkpoint_dir: Path) -> List[Path]:
    """The HF weight files of a dir: safetensors preferred over .bin, shards through their *.index.json."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = checkpoint_dir / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, AttributeError) as e:
                fail(f"{str(index)!r} is not a valid weight index ({type(e).__name__}: {e})")
            missing = [s for s in shards if not (checkpoint_dir / s).is_file()]
            if missing:
                fail(f"{str(index)!r} lists shards that are missing: {_few(missing)}. Download them again")
            return [checkpoint_dir / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (checkpoint_dir / name).is_file():
            return [checkpoint_dir / name]
    files = sorted(checkpoint_dir.glob("*.safetensors")) or sorted(
        p for p in checkpoint_dir.glob("*.bin") if p.name != "training_args.bin")
    if not files:
        fail(f"No Hugging Face weights (*.safetensors or *.bin) in {str(checkpoint_dir)!r}. Download them with: "
             f"python scripts/download.py --repo_id <org>/<name> --checkpoint_dir {checkpoint_dir}")
    return files


def _open_weight_file(path: Path) -> Tuple[List[str], object]:
    """(names, handle) of one weight file, checked to be readable before anything is converted."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            handle = safe_open(str(path), framework="pt", device="cpu")
            return list(handle.keys()), handle
        state_dict = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        state_dict = state_dict.get("state_dict", state_dict) if isinstance(state_dict, dict) else state_dict
        if not isinstance(state_dict, dict):
            raise ValueError("not a state dict")
        return list(state_dict), state_dict
    except Exception as e:
        fail(f"Could not read {str(path)!r} (corrupt or truncated? download it again): {first_line(e)}")
    raise AssertionError  # unreachable: fail raises


def iter_hf_weights(files: List[Path]) -> Iterator[Tuple[str, torch.Tensor]]:
    """(name, tensor) of every weight in `files`, loading one tensor at a time; all files are opened first."""
    opened = [(path, *_open_weight_file(path)) for path in files]
    for path, names, handle in opened:
        for name in names:
            try:
                tensor = handle.get_tensor(name) if hasattr(handle, "get_tensor") else handle.pop(name)
            except Exception as e:
                fail(f"Could not read {name!r} from {str(path)!r} (corrupt or truncated? download it again): "
                     f"{first_line(e)}")
            yield name, tensor


def config_for_hf_dir(checkpoint_dir: Path, model_name: Optional[str] = None) -> Config:
    """The preset named by `model_name` or by the dir's name (checked against config.json), else config.json."""
    hf_path = checkpoint_dir / "config.json"
    try:
        hf = json.loads(hf_path.read_text()) if hf_path.is_file() else None
    except ValueError as e:
        fail(f"{str(hf_path)!r} is not valid JSON: {e}")
    name = model_name or (checkpoint_dir.name if checkpoint_dir.name in name_to_config else None)
    if name is None:
        if hf is None:
            fail(f"{str(checkpoint_dir)!r} has no config.json and its name is no preset: pass --model_name "
                 "(python scripts/download.py --repo_id list shows the presets)")
        try:
            return Config.from_hf_config(hf, name=checkpoint_dir.name)
        except (ValueError, KeyError, TypeError) as e:
            fail(f"Cannot build a config from {str(hf_path)!r}: {type(e).__name__}: {e}")
    try:
        config = Config.from_name(name)
    except ValueError as e:
        fail(str(e))
    if hf is not None:
        try:
            from_hf = Config.from_hf_config(hf)
        except (ValueError, KeyError, TypeError) as e:
            fail(f"Cannot read {str(hf_path)!r} to check it against the preset {name!r}: {type(e).__name__}: {e}")
        fields = ("n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "intermediate_size", "rope_n_elem",
                  "parallel_residual", "shared_attention_norm", "bias", "norm_class_name", "mlp_class_name",
                  "tie_embeddings", "rope_base", "rope_scaling", "rope_local_base", "qkv_bias", "norm_qk",
                  "post_norms", "norm_unit_offset", "scale_embeddings", "attention_scalar", "global_layer_every")
        diff = [f"{f}: preset {getattr(config, f)} vs {getattr(from_hf, f)}" for f in fields
                if getattr(config, f) != getattr(from_hf, f)]
        windows = [w if w is not None and w < config.block_size else None  # a window past the context: none
                   for w in (config.sliding_window, from_hf.sliding_window)]
        if windows[0] != windows[1]:
            diff.append(f"sliding_window: preset {windows[0]} vs {windows[1]}")
        if from_hf.vocab_size > config.padded_vocab_size:
            diff.append(f"vocabulary: preset {config.padded_vocab_size} rows vs {from_hf.vocab_size}")
        if diff:
            fail(f"{str(hf_path)!r} does not match the preset {name!r} ({'; '.join(diff[:4])}). Rename the dir to "
                 "convert from config.json, or pass the right --model_name")
    return config


def convert_hf_checkpoint(checkpoint_dir: Union[str, Path], model_name: Optional[str] = None,
                          dtype: Optional[torch.dtype] = None) -> Config:
    """Writes `lit_model.pth` and `lit_config.json` next to the HF weights of `checkpoint_dir`, atomically."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        fail(f"Checkpoint dir {str(checkpoint_dir)!r} does not exist. Download one with: "
             f"python scripts/download.py --repo_id <org>/<name>")
    config = config_for_hf_dir(checkpoint_dir, model_name)
    files = hf_weight_files(checkpoint_dir)
    skipped: Dict[str, int] = {}  # a vision-language checkpoint's vision / audio towers: module -> weights

    def text_weights() -> Iterator[Tuple[str, torch.Tensor]]:
        for name, tensor in iter_hf_weights(files):
            if _NOT_TEXT.match(name):
                module = _NOT_TEXT.match(name).group(0).strip(".")
                skipped[module] = skipped.get(module, 0) + 1
                continue
            yield name, tensor

    with tempfile.TemporaryDirectory(prefix=".lit_model.", suffix=".spill", dir=checkpoint_dir) as spill:
        try:
            state_dict = hf_to_lit(text_weights(), config, dtype, out=SpilledDict(spill))
        except ValueError as e:
            fail(f"{str(checkpoint_dir)!r}: {e}")
        if skipped:
            print(f"Converted the text decoder only; skipped {sum(skipped.values())} weights of "
                  f"{', '.join(f'{m} ({n})' for m, n in sorted(skipped.items()))}")
        with atomic_path(checkpoint_dir / "lit_model.pth") as tmp:
            torch.save(dict(state_dict), tmp)  # a plain dict: weights_only loading refuses other classes
            config.save(checkpoint_dir / "lit_config.json")
        del state_dict  # its maps, before their files go
    return config


class SpilledDict(dict):
    """A state dict whose tensors of 1 MiB and more live in files of `spill_dir`, each mapped back into memory as
    soon as it is set: the converted model is never in memory at once (its pages are the page cache's, which the
    kernel drops when memory runs short), and `torch.save` reads the maps tensor by tensor. It costs the model's size
    again in disk space while converting. Setting a tensor already held (a tied head) keeps one copy."""

    def __init__(self, spill_dir: Path) -> None:
        super().__init__()
        self.spill_dir, self.held = Path(spill_dir), set()

    def __setitem__(self, name: str, tensor: torch.Tensor) -> None:
        if id(tensor) not in self.held and tensor.numel() * tensor.element_size() >= 2**20:
            flat = tensor.detach().contiguous().reshape(-1)
            path = self.spill_dir / f"{len(self.held)}.bin"
            with open(path, "wb") as f:
                f.write(memoryview(flat.view(torch.uint8).numpy()))
            tensor = torch.from_file(str(path), shared=False, size=flat.numel(), dtype=flat.dtype).view(tensor.shape)
            self.held.add(id(tensor))
        super().__setitem__(name, tensor)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "vocab.json", "merges.txt")


def export_hf_checkpoint(state_dict: Dict[str, torch.Tensor], config: Config, source_dir: Union[str, Path],
                         out_dir: Union[str, Path], max_shard_bytes: int = 2 << 30) -> Path:
    """Writes a transformers-loadable dir: model.safetensors (sharded past `max_shard_bytes`), config.json,
    generation_config.json and the tokenizer files of `source_dir`. Assembled in a temp dir, renamed at the end."""
    from safetensors.torch import save_file

    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        fail(f"{str(out_dir)!r} already exists and is not empty: remove it or choose another --out_dir")  # early
    shapes = expected_shapes(config)
    wrong = [n for n in shapes if n not in state_dict or state_dict[n].shape != shapes[n]]
    if wrong or set(state_dict) - set(shapes):
        fail(f"The weights do not fit {config.name!r}: missing or misshapen {_few(wrong)}, unexpected "
             f"{_few(sorted(set(state_dict) - set(shapes)))}. Merge LoRA weights before exporting")
    original = _read_json(source_dir / "config.json")
    generation = _read_json(source_dir / "generation_config.json")
    token_ids = {k: original.get(k, generation.get(k)) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    dtype = state_dict["transformer.wte.weight"].dtype
    try:
        hf_config = hf_config_from_lit(config, dtype, **token_ids)
    except ValueError as e:
        fail(str(e))
    hf_state_dict = lit_to_hf(state_dict, config)

    shards: List[Dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in hf_state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    with atomic_dir(out_dir) as tmp:
        weight_map = {}
        for i, shard in enumerate(shards):
            file = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({k: v.contiguous() for k, v in shard.items()}, str(tmp / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for t in hf_state_dict.values())
            _write_json(tmp / "model.safetensors.index.json", dict(metadata=dict(total_size=total),
                                                                     weight_map=weight_map))
        _write_json(tmp / "config.json", hf_config)
        generation = generation or {k: v for k, v in token_ids.items() if v is not None}
        _write_json(tmp / "generation_config.json", generation)
        for name in TOKENIZER_FILES:
            if (source_dir / name).is_file():
                shutil.copyfile(source_dir / name, tmp / name)
    return out_dir


def load_lit_state_dict(checkpoint_dir: Path) -> Dict[str, torch.Tensor]:
    state_dict = lazy_load(checkpoint_dir / "lit_model.pth")
    return state_dict.get("model", state_dict)


def _check_shape(name: str, tensor: torch.Tensor, shape: torch.Size) -> None:
    if tensor.shape != shape:
        raise ValueError(f"{name!r} has shape {tuple(tensor.shape)}, the config needs {tuple(shape)}")


def _few(names: List[str], limit: int = 6) -> str:
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
