"""Model hyperparameters: one `Config` dataclass and named presets that mirror Hugging Face repos."""

import difflib
import json
import math
from copy import deepcopy
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Optional, Union


@dataclass
class Config:
    name: str = ""
    hf_config: dict = field(default_factory=dict)  # {"org": ..., "name": ...} of the mirrored HF repo
    block_size: int = 4096
    vocab_size: int = 50254
    padding_multiple: int = 512
    padded_vocab_size: Optional[int] = None
    n_layer: int = 16
    n_head: int = 32
    n_embd: int = 4096
    head_size: Optional[int] = None
    n_query_groups: Optional[int] = None  # == n_head: MHA, 1: MQA, in between: GQA
    rotary_percentage: float = 0.25
    rope_base: float = 10000
    # RoPE frequency scaling of the global (non-sliding) layers, None or one of
    #   {"type": "linear", "factor": f}
    #   {"type": "llama3", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    #   {"type": "longrope", "short_factor": [...], "long_factor": [...], "original_max_position_embeddings",
    #    "attention_factor"}: Phi-3's LongRoPE, long factors when a position >= original_max_position_embeddings
    rope_scaling: Optional[dict] = None
    #   {"type": "yarn", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "truncate",
    #    "attention_factor"}: YaRN
    #   {"type": "proportional", "partial_rotary_factor", "factor"}: Gemma 4's, RoPE over the whole head whose slowest
    #    1 - partial_rotary_factor of the frequencies are 0
    rope_local_base: Optional[float] = None  # unscaled RoPE base of the sliding-window layers (None: as global)
    nope_layer_every: int = 0  # every N-th layer has no RoPE at all (SmolLM3: 4); 0: every layer has RoPE
    # queries scaled by 1 + query_scale_beta * log(1 + floor(pos / original)), original being rope_scaling's
    # original_max_position_embeddings (Ministral 3); 0: none
    query_scale_beta: float = 0.0
    sliding_window: Optional[int] = None  # a token attends to itself and the sliding_window - 1 tokens before it
    global_layer_every: int = 0  # with a window: every N-th layer attends globally (Gemma 3: 6); 0: none does
    parallel_residual: bool = True
    shared_attention_norm: bool = False  # parallel residual with one norm feeding attention and MLP (Falcon)
    bias: bool = True
    qkv_bias: Optional[bool] = None  # bias on the fused q/k/v projection (None: as `bias`; Qwen2.5: True alone)
    lm_head_bias: bool = False
    tie_embeddings: bool = False
    scale_embeddings: bool = False  # embeddings multiplied by sqrt(n_embd) (Gemma)
    norm_class_name: Literal["LayerNorm", "RMSNorm"] = "LayerNorm"
    norm_eps: float = 1e-5
    norm_unit_offset: bool = False  # RMSNorm scales by (1 + weight) (Gemma)
    norm_qk: bool = False  # per-head RMSNorm of queries and keys before RoPE (Qwen3, Gemma 3)
    norm_qk_all_heads: bool = False  # with norm_qk: one norm over all the heads' queries (and one over keys) (OLMo 2)
    norm_upcast: bool = False  # RMSNorm multiplies by its weight in float32, then casts (OLMo 2/3, gpt-oss)
    pre_norms: bool = True  # norms before the attention and the MLP; False: after them only (OLMo 2/3)
    post_norms: bool = False  # norms after the attention and MLP outputs too, four per block (Gemma 3)
    attention_scalar: Optional[float] = None  # scores scaled by attention_scalar ** -0.5 (default: head_size)
    attention_sinks: bool = False  # a learned logit per head joins each query's softmax as one more column (gpt-oss)
    # Gated DeltaNet linear attention (lit_gpt/deltanet.py) in every layer but each global_layer_every-th (Qwen3.5)
    linear_attention: bool = False
    linear_n_key_heads: int = 0
    linear_n_value_heads: int = 0  # a multiple of linear_n_key_heads: the key heads are shared like GQA's
    linear_key_head_size: int = 128
    linear_value_head_size: int = 128
    linear_conv_kernel: int = 4  # the causal depthwise convolution over q|k|v
    attention_output_gate: bool = False  # the query projection also yields a per-head sigmoid gate of the output
    # Gemma 4: the global (non-sliding) layers' own head size and key/value heads (None: as the others'), and values
    # taken from the keys' projection (no value projection; the keys then get their norm and RoPE, the values not)
    global_head_size: Optional[int] = None
    global_n_query_groups: Optional[int] = None
    attention_k_eq_v: bool = False
    norm_v: bool = False  # values RMS-normalized per head, without a weight (Gemma 4)
    # the last kv_shared_layers layers compute no keys and values: each attends over those of the last earlier layer
    # of its kind (sliding or global), with an MLP twice intermediate_size wide when double_wide_mlp (Gemma 4)
    kv_shared_layers: int = 0
    double_wide_mlp: bool = False
    # per-layer embeddings (Gemma 4 E2B/E4B): a second table of per_layer_embd features per layer and token (and a
    # projection of the embeddings) gives each layer an input, gated by and added to its output; 0: none
    per_layer_embd: int = 0
    per_layer_vocab_size: Optional[int] = None  # that table's rows (None: padded_vocab_size)
    layer_scalar: bool = False  # each block's output multiplied by a stored scalar of its own (Gemma 4)
    final_logit_softcapping: Optional[float] = None  # logits = cap * tanh(logits / cap)
    # mixture of experts (lit_gpt/moe.py) in place of the MLP of the sparse layers: every moe_sparse_step-th layer but
    # moe_dense_layers; a router picks n_expert_per_token of n_expert experts of moe_intermediate_size per token
    n_expert: int = 0
    n_expert_per_token: int = 0
    moe_intermediate_size: int = 0
    moe_sparse_step: int = 1
    moe_dense_layers: list = field(default_factory=list)
    router_bias: bool = False
    # "softmax_topk": softmax over all experts, the top k (renormalised with norm_topk_prob); "topk_softmax": the top k
    # logits, a softmax over them (gpt-oss)
    router_scoring: Literal["softmax_topk", "topk_softmax"] = "softmax_topk"
    norm_topk_prob: bool = True
    router_norm: bool = False  # Gemma 4's router: a normalised, scaled input and per-expert scales
    moe_activation: Literal["silu", "gelu", "clamped_swiglu"] = "silu"  # clamped_swiglu: gpt-oss's
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    moe_transposed: bool = False  # gpt-oss's expert layout: (E, in, out) tensors, gate/up interleaved, biases
    moe_interleaved: bool = False
    moe_bias: bool = False
    moe_shared_intermediate_size: int = 0  # a gated shared expert every token goes through (Qwen3.5-MoE); 0: none
    # the sparse layers keep their dense MLP, the experts beside it: both branches normed after, the experts' input by a
    # norm of its own, the router reading the residual stream (Gemma 4 26B-A4B)
    moe_with_mlp: bool = False
    router_aux_loss_coef: float = 0.0  # config.json's weight of the load-balancing loss: finetuning's default
    mlp_class_name: Literal["GptNeoxMLP", "LLaMAMLP", "GemmaMLP"] = "GptNeoxMLP"  # GemmaMLP: LLaMAMLP with GELU
    gelu_approximate: str = "none"
    intermediate_size: Optional[int] = None
    hf_model_type: str = ""  # the transformers `model_type` the converters write (default: from the layout)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.hf_config.get("name", self.name)
        if self.head_size is None:
            assert self.n_embd % self.n_head == 0, f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}"
            self.head_size = self.n_embd // self.n_head
        if self.padded_vocab_size is None:
            m = self.padding_multiple
            self.padded_vocab_size = (self.vocab_size + m - 1) // m * m
        if self.n_query_groups is None:
            self.n_query_groups = self.n_head
        assert self.n_head % self.n_query_groups == 0, "n_head must be a multiple of n_query_groups"
        if self.qkv_bias is None:
            self.qkv_bias = self.bias
        if self.intermediate_size is None:
            if self.mlp_class_name != "GptNeoxMLP":
                raise ValueError(f"{self.name!r}: the LLaMAMLP needs `intermediate_size`")
            self.intermediate_size = 4 * self.n_embd
        if self.moe_with_mlp and (self.parallel_residual or not self.post_norms):
            raise ValueError(f"{self.name!r}: moe_with_mlp needs a sequential block with post_norms (Gemma 4's)")
        self.rope_n_elem = int(self.rotary_percentage * self.head_size)
        if self.per_layer_embd and self.per_layer_vocab_size is None:
            self.per_layer_vocab_size = self.padded_vocab_size
        if not self.hf_model_type:
            self.hf_model_type = ("llama" if self.mlp_class_name == "LLaMAMLP" else "gemma3_text"
                                  if self.mlp_class_name == "GemmaMLP" else "falcon" if self.shared_attention_norm
                                  else "gpt_neox")

    def is_linear(self, layer: int) -> bool:
        """Whether block `layer` is a Gated DeltaNet (linear attention) layer."""
        every = self.global_layer_every
        return self.linear_attention and not (every and (layer + 1) % every == 0)

    def qkv_sizes(self, kv: bool = True) -> tuple:
        """The rows of an attention layer's fused qkv (of a `layer` view's for per-layer shapes): queries (with an
        output gate: each head's query and gate), keys, values (0 with `attention_k_eq_v`); `kv` False: queries only
        (a layer reusing an earlier one's keys and values)."""
        q = self.n_head * self.head_size * (2 if self.attention_output_gate else 1)
        k = self.n_query_groups * self.head_size if kv else 0
        return q, k, 0 if self.attention_k_eq_v else k

    def layer(self, index: int) -> "Config":
        """The config as attention layer `index` sees it: a global layer's own head size and key/value heads, and
        `attention_k_eq_v` in the global layers only (Gemma 4). Itself for models without these."""
        if self.is_sliding(index):
            return replace(self, attention_k_eq_v=False) if self.attention_k_eq_v else self
        if self.global_head_size is None and self.global_n_query_groups is None:
            return self
        return replace(self, head_size=self.global_head_size or self.head_size,
                       n_query_groups=self.global_n_query_groups or self.n_query_groups)

    def kv_source(self, index: int) -> Optional[int]:
        """The earlier layer whose keys and values layer `index` attends over (`kv_shared_layers`); None: its own."""
        first = self.n_layer - self.kv_shared_layers
        if not self.kv_shared_layers or index < first:
            return None
        same = [i for i in range(first) if self.is_sliding(i) == self.is_sliding(index)]
        if not same:
            raise ValueError(f"{self.name!r}: layer {index} reuses keys and values, but no earlier one is of its kind")
        return same[-1]

    def is_sparse(self, layer: int) -> bool:
        """Whether block `layer`'s MLP is a mixture of experts."""
        return bool(self.n_expert) and layer not in self.moe_dense_layers and (layer + 1) % self.moe_sparse_step == 0

    def has_rope(self, layer: int) -> bool:
        every = self.nope_layer_every
        return not (every and (layer + 1) % every == 0)

    def is_sliding(self, layer: int) -> bool:
        """Whether block `layer` attends within the sliding window."""
        every = self.global_layer_every
        return self.sliding_window is not None and not (every and (layer + 1) % every == 0)

    @classmethod
    def from_name(cls, name: str, **kwargs: Any) -> "Config":
        if name not in name_to_config:
            close = difflib.get_close_matches(name, list(name_to_config), n=5, cutoff=0.4)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ValueError(f"No preset named {name!r}.{hint} `python scripts/download.py --repo_id list` lists all.")
        return cls(**{**deepcopy(name_to_config[name]), **kwargs})

    @classmethod
    def from_json(cls, path: Union[str, Path], **kwargs: Any) -> "Config":
        """A config from a `lit_config.json`; a malformed one is a one-line `UserError` naming the file."""
        from lit_gpt.utils import dataclass_from_json, read_json

        fix = "fix it, or convert the checkpoint again (scripts/convert_hf_checkpoint.py)"
        data = read_json(path, fix)
        data.pop("rope_n_elem", None)
        return dataclass_from_json(cls, data, path, fix, **kwargs)

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Union[str, Path], **kwargs: Any) -> "Config":
        checkpoint_dir = Path(checkpoint_dir)
        if (checkpoint_dir / "lit_config.json").is_file():
            return cls.from_json(checkpoint_dir / "lit_config.json", **kwargs)
        if checkpoint_dir.name in name_to_config:
            return cls.from_name(checkpoint_dir.name, **kwargs)
        path = checkpoint_dir / "config.json"
        if path.is_file():
            from lit_gpt.utils import read_json

            hf = read_json(path, "download it again (scripts/download.py --force)")
            try:
                return cls.from_hf_config(hf, **kwargs)
            except (KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{str(path)!r} is not a transformers config.json ({type(e).__name__}: {e})")
        raise FileNotFoundError(f"No 'lit_config.json' or 'config.json' in {str(checkpoint_dir)!r}")

    @classmethod
    def from_hf_config(cls, hf: dict, **kwargs: Any) -> "Config":
        """A config from a transformers `config.json` (transformers 4 or 5 style) of a supported family: llama,
        mistral, qwen2, qwen3, gemma3_text (and gemma3's text model), phi3, gpt_neox, falcon.

        Raises ValueError naming the key for anything the model would not reproduce exactly.
        """
        if hf.get("model_type") in _TEXT_MODELS and isinstance(hf.get("text_config"), dict):  # multimodal: its text
            outer = {k: hf[k] for k in ("_name_or_path", "tie_word_embeddings") if k in hf}
            hf = {**outer, **hf["text_config"], "model_type": _TEXT_MODELS[hf["model_type"]]}
        model_type = hf.get("model_type")
        name = hf.get("_name_or_path", "").rstrip("/").split("/")[-1] or model_type

        def refuse(key: str, why: str = "which is not supported") -> None:
            raise ValueError(f"{name!r}: config.json has {key}={hf.get(key)!r}, {why}")

        for key in ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size"):
            if hf.get(key) and model_type not in _MOE:
                refuse(key, "a mixture of experts, which is not supported")
        if hf.get("attn_logit_softcapping"):
            refuse("attn_logit_softcapping")
        if hf.get("final_logit_softcapping") and model_type != "gemma4_text":  # Gemma 4's is ours, Gemma 2's not
            refuse("final_logit_softcapping")
        # Gemma 4's "vision": image tokens attend both ways, text (all the text decoder sees here) causally
        if hf.get("use_bidirectional_attention") and (model_type, hf["use_bidirectional_attention"]) != (
                "gemma4_text", "vision"):
            refuse("use_bidirectional_attention")
        common = dict(name=name, block_size=hf.get("max_position_embeddings", 2048), vocab_size=hf["vocab_size"],
                      padding_multiple=1, n_layer=hf["num_hidden_layers"], n_embd=hf["hidden_size"],
                      n_head=hf["num_attention_heads"], hf_model_type=model_type,
                      final_logit_softcapping=hf.get("final_logit_softcapping") if model_type == "gemma4_text"
                      else None)
        rope_base, rope_scaling = _hf_rope(hf, name, "full_attention")
        if model_type in _LLAMA_LIKE:
            rotary = hf.get("partial_rotary_factor", (hf.get("rope_parameters") or {}).get("partial_rotary_factor", 1))
            cfg = dict(common, head_size=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
                       n_query_groups=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                       rotary_percentage=rotary, rope_base=rope_base, rope_scaling=rope_scaling,
                       parallel_residual=False, bias=False,
                       tie_embeddings=hf.get("tie_word_embeddings", model_type == "smollm3"),
                       norm_class_name="RMSNorm", norm_eps=hf["rms_norm_eps"], mlp_class_name="LLaMAMLP",
                       # Qwen3.5-MoE has no dense MLP: the experts' size stands in for the unused dense one
                       intermediate_size=hf["moe_intermediate_size" if model_type == "qwen3_5_moe_text"
                                            else "intermediate_size"])
            act = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
            if model_type in ("gemma3_text", "gemma4_text"):
                if act not in ("gelu_pytorch_tanh", "gelu"):
                    refuse("hidden_activation")
                cfg.update(mlp_class_name="GemmaMLP", gelu_approximate=_gelu(act), norm_unit_offset=True,
                           norm_qk=True, post_norms=True, scale_embeddings=True,
                           tie_embeddings=hf.get("tie_word_embeddings", True),
                           attention_scalar=hf.get("query_pre_attn_scalar"))
                local_base, local_scaling = _hf_rope(hf, name, "sliding_attention")
                if local_scaling is not None:
                    raise ValueError(f"{name!r}: RoPE scaling on the sliding-window layers is not supported")
                cfg.update(rope_local_base=local_base if local_base != rope_base or rope_scaling else None)
                if model_type == "gemma4_text":
                    cfg.update(_gemma4(hf, name))
            elif act != "silu":
                refuse("hidden_act")
            if model_type in ("llama", "qwen3", "smollm3", "olmo2", "olmo3", "qwen3_moe"):
                if model_type in ("llama", "smollm3") and bool(hf.get("mlp_bias")) != bool(hf.get("attention_bias")):
                    raise ValueError(f"{name!r}: attention_bias and mlp_bias differ, which is not supported")
                cfg.update(bias=bool(hf.get("attention_bias")), qkv_bias=bool(hf.get("attention_bias")))
                if model_type in ("qwen3", "olmo2", "olmo3", "qwen3_moe") and hf.get("attention_bias"):
                    refuse("attention_bias", "biases with q/k norms, which is not supported")
            if model_type == "smollm3":
                if hf.get("use_sliding_window"):
                    refuse("use_sliding_window")
                cfg.update(nope_layer_every=_nope_layer_every(hf, name))
            if model_type == "ministral3":
                beta = (hf.get("rope_parameters") or {}).get("llama_4_scaling_beta") or 0.0
                if beta and not (rope_scaling or {}).get("original_max_position_embeddings"):
                    refuse("rope_parameters", "llama_4_scaling_beta without original_max_position_embeddings")
                if hf.get("sliding_window"):
                    refuse("sliding_window")
                cfg.update(query_scale_beta=beta)
            if model_type in ("qwen3_5_text", "qwen3_5_moe_text"):
                if hf.get("attention_bias"):
                    refuse("attention_bias")
                every = _global_layer_every(hf, name, default=4, other="linear_attention")
                cfg.update(norm_unit_offset=True, norm_qk=True, attention_output_gate=True, linear_attention=every != 1,
                           global_layer_every=every, linear_n_key_heads=hf["linear_num_key_heads"],
                           linear_n_value_heads=hf["linear_num_value_heads"],
                           linear_key_head_size=hf["linear_key_head_dim"],
                           linear_value_head_size=hf["linear_value_head_dim"],
                           linear_conv_kernel=hf["linear_conv_kernel_dim"])
            if model_type == "qwen3_5_moe_text":  # every layer's MLP experts with a gated shared expert
                if not hf.get("shared_expert_intermediate_size"):
                    refuse("shared_expert_intermediate_size")
                cfg.update(n_expert=hf["num_experts"], n_expert_per_token=hf["num_experts_per_tok"],
                           moe_intermediate_size=hf["moe_intermediate_size"],
                           moe_shared_intermediate_size=hf["shared_expert_intermediate_size"], norm_topk_prob=True,
                           router_aux_loss_coef=hf.get("router_aux_loss_coef", 0.001))  # transformers' default
            if model_type in ("olmo2", "olmo3"):
                if hf.get("clip_qkv"):
                    refuse("clip_qkv")
                cfg.update(norm_qk=True, norm_qk_all_heads=True, norm_upcast=True, pre_norms=False, post_norms=True)
            if model_type == "olmo3" and hf.get("sliding_window"):
                every = _global_layer_every(hf, name, default=4)
                flat = hf.get("rope_parameters") or {}
                if "full_attention" not in flat and flat.get("rope_type", "default") != "default":
                    refuse("rope_parameters", "one RoPE for all layer types, which transformers' Olmo3 reads as no "
                           "scaling at all: give it full_attention and sliding_attention entries")
                if every != 1:
                    local_base, local_scaling = _hf_rope(hf, name, "sliding_attention")
                    if local_scaling is not None:
                        raise ValueError(f"{name!r}: RoPE scaling on the sliding-window layers is not supported")
                    cfg.update(sliding_window=hf["sliding_window"], global_layer_every=every,
                               rope_local_base=local_base if local_base != rope_base or rope_scaling else None)
            if model_type == "qwen2":
                cfg.update(qkv_bias=True)  # Qwen2's q/k/v projections always have a bias, o_proj none
            if model_type in ("qwen3", "qwen3_moe"):
                cfg.update(norm_qk=True)
            if model_type == "qwen3_moe":  # softmax over the experts, the top k, renormalised only with norm_topk_prob
                # config.json files say num_experts, transformers 5 saves num_local_experts
                cfg.update(n_expert=hf.get("num_experts") or hf["num_local_experts"],
                           n_expert_per_token=hf["num_experts_per_tok"],
                           moe_intermediate_size=hf["moe_intermediate_size"],
                           moe_sparse_step=hf.get("decoder_sparse_step") or 1,
                           moe_dense_layers=sorted(hf.get("mlp_only_layers") or []),
                           norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
                           router_aux_loss_coef=hf.get("router_aux_loss_coef", 0.001))  # transformers' default
            if model_type == "gpt_oss":
                cfg.update(_gpt_oss(hf, name))
            if model_type in ("qwen2", "qwen3", "qwen3_moe") and hf.get("use_sliding_window"):
                refuse("use_sliding_window")
            if model_type in ("mistral", "phi3", "gemma3_text", "gemma4_text") and hf.get("sliding_window"):
                window, every = hf["sliding_window"], 0
                if model_type in ("gemma3_text", "gemma4_text"):
                    every = _global_layer_every(hf, name)
                if every != 1:
                    cfg.update(sliding_window=window, global_layer_every=every)
        elif model_type == "gpt_neox":
            rope_base = hf.get("rotary_emb_base", rope_base)
            rotary_pct = hf.get("rotary_pct", (hf.get("rope_parameters") or {}).get("partial_rotary_factor", 0.25))
            cfg = dict(common, rotary_percentage=rotary_pct, rope_base=rope_base, rope_scaling=rope_scaling,
                       parallel_residual=hf.get("use_parallel_residual", True), bias=hf.get("attention_bias", True),
                       tie_embeddings=hf.get("tie_word_embeddings", False), norm_class_name="LayerNorm",
                       norm_eps=hf["layer_norm_eps"], mlp_class_name="GptNeoxMLP",
                       intermediate_size=hf["intermediate_size"], gelu_approximate=_gelu(hf["hidden_act"]))
        elif model_type == "falcon":
            if hf.get("new_decoder_architecture") or hf.get("alibi") or not hf.get("parallel_attn", True):
                raise ValueError(f"{name!r}: only the falcon-7b layout (multi-query, parallel attention) is supported")
            cfg = dict(common, n_query_groups=1 if hf.get("multi_query", True) else hf["num_attention_heads"],
                       rotary_percentage=1.0, rope_base=rope_base, rope_scaling=rope_scaling, parallel_residual=True,
                       shared_attention_norm=True, bias=hf.get("bias", False),
                       tie_embeddings=hf.get("tie_word_embeddings", True), norm_class_name="LayerNorm",
                       norm_eps=hf["layer_norm_epsilon"], mlp_class_name="GptNeoxMLP",
                       intermediate_size=hf.get("ffn_hidden_size") or 4 * hf["hidden_size"])
        else:
            raise ValueError(f"Unsupported model_type {model_type!r}: supported are {', '.join(_LLAMA_LIKE)}, "
                             f"{', '.join(_TEXT_MODELS)}, gpt_neox, falcon")
        return cls(**{**cfg, **kwargs})

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Union[str, Path]) -> None:
        """Write `lit_config.json` (atomically)."""
        from lit_gpt.utils import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


# the causal-LM families read by `Config.from_hf_config`; vision-language model_type -> that of its text model
_LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "smollm3", "ministral3", "olmo2", "olmo3",
               "qwen3_5_text", "gemma4_text", "qwen3_moe", "gpt_oss", "qwen3_5_moe_text")
_MOE = ("qwen3_moe", "gpt_oss", "qwen3_5_moe_text", "gemma4_text")  # the mixture-of-experts families
_TEXT_MODELS = {"gemma3": "gemma3_text", "mistral3": "ministral3", "qwen3_5": "qwen3_5_text", "gemma4": "gemma4_text",
                "qwen3_5_moe": "qwen3_5_moe_text"}


def _hf_rope(hf: dict, name: str, layer_type: str) -> tuple:
    """(base, `Config.rope_scaling`) from transformers 5's `rope_parameters` (per layer type for Gemma 3) or 4's
    `rope_theta` + `rope_scaling` (Gemma 3: `rope_local_base_freq`, unscaled, for the sliding layers)."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    elif not params:
        params = dict(hf.get("rope_scaling") or {})
        if layer_type == "sliding_attention":  # unscaled; Gemma 3 (transformers 4): its local base, 10,000 by default
            default = 10000 if hf.get("model_type") == "gemma3_text" else hf.get("rope_theta", 10000)
            params = {"rope_theta": hf.get("rope_local_base_freq", default)}
    if not isinstance(params, dict):
        raise ValueError(f"{name!r}: config.json has rope_parameters={params!r}, which is not a dict")
    base = params.get("rope_theta", hf.get("rope_theta", 10000))
    base = int(base) if float(base).is_integer() else base
    kind = params.get("rope_type", params.get("type", "default"))
    key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    try:
        if kind == "default":
            return base, None
        if kind == "linear":
            return base, dict(type="linear", factor=params["factor"])
        if kind == "llama3":
            return base, dict(type="llama3", factor=params["factor"], low_freq_factor=params["low_freq_factor"],
                              high_freq_factor=params["high_freq_factor"],
                              original_max_position_embeddings=params["original_max_position_embeddings"])
        if kind == "yarn":
            original = params["original_max_position_embeddings"]
            factor = params.get("factor") or hf["max_position_embeddings"] / original
            attention = params.get("attention_factor")
            if attention is None:  # transformers' default, from the factor (and mscale / mscale_all_dim)
                def mscale(m: float) -> float:
                    return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

                m, m_all = params.get("mscale"), params.get("mscale_all_dim")
                attention = mscale(m) / mscale(m_all) if m and m_all else mscale(1)
            # transformers reads `truncate` from the top of rope_parameters, also when it holds one dict per layer type
            truncate = (hf.get("rope_parameters") or hf.get("rope_scaling") or {}).get("truncate", True)
            return base, dict(type="yarn", factor=factor, original_max_position_embeddings=original,
                              beta_fast=params.get("beta_fast") or 32, beta_slow=params.get("beta_slow") or 1,
                              truncate=bool(truncate), attention_factor=float(attention))
        if kind == "proportional":
            return base, dict(type="proportional", partial_rotary_factor=params.get("partial_rotary_factor", 1.0),
                              factor=params.get("factor", 1.0))
        if kind == "longrope":
            original = params.get("original_max_position_embeddings", hf.get("original_max_position_embeddings"))
            factor = params.get("factor") or hf["max_position_embeddings"] / original
            attention = params.get("attention_factor")
            if attention is None:  # transformers' default, from the length ratio
                attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
            if params.get("short_mscale") or params.get("long_mscale"):
                raise ValueError(f"{name!r}: {key} has short_mscale/long_mscale, which is not supported")
            return base, dict(type="longrope", short_factor=list(params["short_factor"]),
                              long_factor=list(params["long_factor"]), original_max_position_embeddings=original,
                              attention_factor=attention)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{name!r}: config.json's {key} of type {kind!r} lacks {e}")
    raise ValueError(f"{name!r}: config.json's {key} has RoPE type {kind!r}, which is not supported "
                     "(supported: default, linear, llama3, longrope, yarn, proportional)")


def _gemma4(hf: dict, name: str) -> dict:
    """The `Config` fields of Gemma 4 beyond Gemma 3's: plain (x * w) norms in float32, a value norm, attention
    scale 1, the global layers' head size and key/value heads (`per_layer_config`, as transformers saves them, or the
    published `global_head_dim` / `num_global_key_value_heads`), k = v, shared keys and values, per-layer inputs."""
    n_layer, k_eq_v = hf["num_hidden_layers"], bool(hf.get("attention_k_eq_v"))
    if hf.get("attention_bias"):
        raise ValueError(f"{name!r}: config.json has attention_bias={hf['attention_bias']!r}, which is not supported")
    shared = hf.get("num_kv_shared_layers") or 0
    if shared >= n_layer:
        raise ValueError(f"{name!r}: config.json has num_kv_shared_layers={shared} of {n_layer} layers: some layer "
                         "must compute keys and values")
    every = _global_layer_every(hf, name) if hf.get("sliding_window") else 1
    full = [i for i in range(n_layer) if every and (i + 1) % every == 0]
    overrides = hf.get("per_layer_config")
    if overrides is None:  # transformers' defaults: head 512; the kv heads set only with k = v
        overrides = {i: {"head_dim": hf.get("global_head_dim", 512)} for i in full}
        if k_eq_v and hf.get("num_global_key_value_heads") is not None:
            heads = hf["num_global_key_value_heads"]
            overrides = {i: {**o, "num_key_value_heads": heads} for i, o in overrides.items()}
    values = {json.dumps(o, sort_keys=True) for o in overrides.values()}  # none: the global layers are as the others
    if overrides and {int(i) for i in overrides} != set(full) or len(values) > 1 or any(
            set(o) - {"head_dim", "num_key_value_heads"} for o in overrides.values()):
        raise ValueError(f"{name!r}: config.json's per-layer overrides {overrides} are not one head_dim (and "
                         "num_key_value_heads) for exactly the full-attention layers, which is not supported")
    one = json.loads(values.pop()) if values else {}
    per_layer = hf.get("hidden_size_per_layer_input") or 0
    moe = {}
    if hf.get("enable_moe_block"):  # every layer: experts beside the dense MLP, a normalised router, GeGLU experts
        moe = dict(n_expert=hf["num_experts"], n_expert_per_token=hf["top_k_experts"],
                   moe_intermediate_size=hf["moe_intermediate_size"], router_norm=True, norm_topk_prob=True,
                   moe_activation="gelu", moe_with_mlp=True)
    return dict(moe, norm_unit_offset=False, norm_upcast=True, norm_v=True, attention_scalar=1.0,
                global_head_size=one.get("head_dim"), global_n_query_groups=one.get("num_key_value_heads"),
                attention_k_eq_v=k_eq_v, kv_shared_layers=shared, double_wide_mlp=bool(hf.get("use_double_wide_mlp")),
                per_layer_embd=per_layer, layer_scalar=True,
                per_layer_vocab_size=hf.get("vocab_size_per_layer_input", hf["vocab_size"]) if per_layer else None)


def _gpt_oss(hf: dict, name: str) -> dict:
    """The `Config` fields of gpt-oss beyond the Llama layout: attention sinks, biases on q/k/v and o
    (`attention_bias`), norms multiplying by their weight in float32, sliding-window layers alternating with full ones
    (`layer_types`), and in every layer experts of `intermediate_size`: a biased router softmaxing its top k logits,
    the clamped SwiGLU, transformers' transposed, interleaved, biased layout. The published MXFP4 checkpoints
    (`quantization_config`) are dequantized while converting; other quantizations are refused."""
    quant = hf.get("quantization_config")
    if quant and (not isinstance(quant, dict) or quant.get("quant_method") != "mxfp4"):
        raise ValueError(f"{name!r}: config.json has quantization_config={quant!r}: gpt-oss converts from its "
                         "published MXFP4 weights or from unquantized ones only")
    k, k_old = hf.get("num_experts_per_tok"), hf.get("experts_per_token")  # the published config.json says both
    if k and k_old and k != k_old:
        raise ValueError(f"{name!r}: config.json has num_experts_per_tok={k} but experts_per_token={k_old}")
    bias = bool(hf.get("attention_bias", True))
    fields = dict(attention_sinks=True, bias=bias, qkv_bias=bias, norm_upcast=True,
                  n_expert=hf.get("num_local_experts") or hf["num_experts"], n_expert_per_token=k or k_old,
                  moe_intermediate_size=hf["intermediate_size"], router_bias=True, router_scoring="topk_softmax",
                  moe_activation="clamped_swiglu", swiglu_limit=float(hf.get("swiglu_limit", 7.0)),
                  swiglu_alpha=float(hf.get("swiglu_alpha", 1.702)), moe_transposed=True, moe_interleaved=True,
                  moe_bias=True, router_aux_loss_coef=hf.get("router_aux_loss_coef", 0.001))  # transformers' default
    every = _global_layer_every(hf, name, default=2)  # transformers' default: layer 0 sliding, 1 full, ...
    if every != 1:
        if not hf.get("sliding_window"):
            raise ValueError(f"{name!r}: config.json has sliding-attention layers but sliding_window="
                             f"{hf.get('sliding_window')!r}")
        fields.update(sliding_window=hf["sliding_window"], global_layer_every=every)
    return fields


def _global_layer_every(hf: dict, name: str, default: int = 6, other: str = "sliding_attention") -> int:
    """The layer pattern as `Config.global_layer_every`: from `layer_types` (transformers 5) or Gemma 3's
    `sliding_window_pattern` (4); 1 means every layer is a full-attention one. `other`: the other layers' type."""
    types = hf.get("layer_types")
    if not types:
        return int(hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or default)
    if set(types) - {"full_attention", other}:
        raise ValueError(f"{name!r}: config.json's layer_types has {sorted(set(types))}, which is not supported")
    return _every([t == "full_attention" for t in types], f"{name!r}: config.json's layer_types puts full attention")


def _every(flags: list, what: str) -> int:
    """N where exactly every N-th of the layers' `flags` is true (0: none is)."""
    marked = [i for i, f in enumerate(flags) if f]
    if not marked:
        return 0
    every = marked[0] + 1
    if marked != [i for i in range(len(flags)) if (i + 1) % every == 0]:
        raise ValueError(f"{what} at layers {marked}, not every {every}-th layer, which is not supported")
    return every


def _nope_layer_every(hf: dict, name: str) -> int:
    """SmolLM3's `no_rope_layers` (1: the layer has RoPE) as `Config.nope_layer_every`."""
    flags = hf.get("no_rope_layers")
    if flags is None:
        every = hf.get("no_rope_layer_interval", 4)
        flags = [int((i + 1) % every != 0) for i in range(hf["num_hidden_layers"])]
    return _every([not f for f in flags], f"{name!r}: config.json's no_rope_layers leaves RoPE out")


def _gelu(hidden_act: str) -> str:
    if hidden_act in ("gelu", "gelu_python"):
        return "none"
    if hidden_act in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        return "tanh"
    raise ValueError(f"Unsupported hidden_act {hidden_act!r}")


configs: list = []

############
# Pythia (GPT-NeoX): parallel residual, 25% rotary, LayerNorm, GELU MLP, biases
############
for _name, _n_layer, _n_embd, _n_head, _multiple in [
    ("pythia-14m", 6, 128, 4, 128),
    ("pythia-31m", 6, 256, 8, 128),
    ("pythia-70m", 6, 512, 8, 128),
    ("pythia-160m", 12, 768, 12, 128),
    ("pythia-410m", 24, 1024, 16, 128),
    ("pythia-1b", 16, 2048, 8, 128),
    ("pythia-1.4b", 24, 2048, 16, 128),
    ("pythia-2.8b", 32, 2560, 32, 128),
    ("pythia-6.9b", 32, 4096, 32, 256),
    ("pythia-12b", 36, 5120, 40, 512),
]:
    configs.append(dict(name=_name, hf_config=dict(org="EleutherAI", name=_name), block_size=2048, vocab_size=50254,
                        padding_multiple=_multiple, n_layer=_n_layer, n_embd=_n_embd, n_head=_n_head,
                        rotary_percentage=0.25, parallel_residual=True, bias=True))

############
# StableLM base alpha (GPT-NeoX)
############
for _name, _n_embd, _n_head in [("stablelm-base-alpha-3b", 4096, 32), ("stablelm-base-alpha-7b", 6144, 48)]:
    configs.append(dict(name=_name, hf_config=dict(org="stabilityai", name=_name), block_size=4096, vocab_size=50254,
                        padded_vocab_size=50688, n_layer=16, n_embd=_n_embd, n_head=_n_head, rotary_percentage=0.25,
                        parallel_residual=True, bias=True))

############
# Llama family: RMSNorm, SwiGLU, full rotary, GQA, optional tied embeddings
############
_llama = dict(rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm",
              mlp_class_name="LLaMAMLP", padding_multiple=64)
for _kind in ("", "-chat"):
    for _size, _n_layer, _n_embd, _n_head, _groups, _inter in [
        ("7b", 32, 4096, 32, 32, 11008),
        ("13b", 40, 5120, 40, 40, 13824),
        ("70b", 80, 8192, 64, 8, 28672),
    ]:
        _name = f"Llama-2-{_size}{_kind}-hf"
        configs.append(dict(_llama, name=_name, hf_config=dict(org="meta-llama", name=_name), block_size=4096,
                            vocab_size=32000, n_layer=_n_layer, n_embd=_n_embd, n_head=_n_head,
                            n_query_groups=_groups, intermediate_size=_inter))
for _name in ("TinyLlama-1.1B-intermediate-step-1431k-3T", "TinyLlama-1.1B-Chat-v1.0"):
    configs.append(dict(_llama, name=_name, hf_config=dict(org="TinyLlama", name=_name), block_size=2048,
                        vocab_size=32000, n_layer=22, n_embd=2048, n_head=32, n_query_groups=4,
                        intermediate_size=5632))
configs.append(dict(_llama, name="Mistral-7B-v0.1", hf_config=dict(org="mistralai", name="Mistral-7B-v0.1"),
                    block_size=4096, vocab_size=32000, n_layer=32, n_embd=4096, n_head=32, n_query_groups=8,
                    intermediate_size=14336))
for _size, _n_layer, _n_embd, _n_head, _groups, _inter, _rope in [
    ("135M", 30, 576, 9, 3, 1536, 100000),
    ("360M", 32, 960, 15, 5, 2560, 100000),
    ("1.7B", 24, 2048, 32, 32, 8192, 130000),
]:
    for _kind in ("", "-Instruct"):
        _name = f"SmolLM2-{_size}{_kind}"
        configs.append(dict(_llama, name=_name, hf_config=dict(org="HuggingFaceTB", name=_name), block_size=8192,
                            vocab_size=49152, padding_multiple=1, n_layer=_n_layer, n_embd=_n_embd, n_head=_n_head,
                            n_query_groups=_groups, intermediate_size=_inter, rope_base=_rope, tie_embeddings=True))

############
# Falcon: parallel attention + MLP with one shared norm, multi-query attention
############
for _name in ("falcon-7b", "falcon-7b-instruct"):
    configs.append(dict(name=_name, hf_config=dict(org="tiiuae", name=_name), block_size=2048, vocab_size=65024,
                        padded_vocab_size=65024, n_layer=32, n_embd=4544, n_head=71, n_query_groups=1,
                        rotary_percentage=1.0, parallel_residual=True, shared_attention_norm=True, bias=False))

############
# Llama 3.1 / 3.2 / 3.3: 128K vocabulary, 8 kv heads, Llama 3 RoPE scaling (3.2: tied embeddings)
############
for _size, _kinds, _n_layer, _n_embd, _n_head, _inter, _factor in [
    ("3.2-1B", ("", "-Instruct"), 16, 2048, 32, 8192, 32.0),
    ("3.2-3B", ("", "-Instruct"), 28, 3072, 24, 8192, 32.0),
    ("3.1-8B", ("", "-Instruct"), 32, 4096, 32, 14336, 8.0),
    ("3.3-70B", ("-Instruct",), 80, 8192, 64, 28672, 8.0),
]:
    for _kind in _kinds:
        _name = f"Llama-{_size}{_kind}"
        configs.append(dict(_llama, name=_name, hf_config=dict(org="meta-llama", name=_name), block_size=131072,
                            vocab_size=128256, padding_multiple=1, n_layer=_n_layer, n_embd=_n_embd, n_head=_n_head,
                            n_query_groups=8, intermediate_size=_inter, rope_base=500000,
                            rope_scaling=dict(type="llama3", factor=_factor, low_freq_factor=1.0, high_freq_factor=4.0,
                                              original_max_position_embeddings=8192),
                            tie_embeddings=_size.startswith("3.2"), hf_model_type="llama"))

############
# Qwen2.5: Llama layout with a bias on q/k/v alone; 0.5B-3B tie embeddings. The base repos' config.json give
# max_position_embeddings and rms_norm_eps per size, every -Instruct one 32768 and 1e-6.
############
for _size, _n_layer, _n_embd, _n_head, _groups, _inter, _vocab, _base_block, _base_eps in [
    ("0.5B", 24, 896, 14, 2, 4864, 151936, 32768, 1e-6),
    ("1.5B", 28, 1536, 12, 2, 8960, 151936, 131072, 1e-6),
    ("3B", 36, 2048, 16, 2, 11008, 151936, 32768, 1e-6),
    ("7B", 28, 3584, 28, 4, 18944, 152064, 131072, 1e-6),
    ("14B", 48, 5120, 40, 8, 13824, 152064, 131072, 1e-5),
    ("32B", 64, 5120, 40, 8, 27648, 152064, 131072, 1e-5),
    ("72B", 80, 8192, 64, 8, 29568, 152064, 131072, 1e-5),
]:
    for _kind in ("", "-Instruct"):
        _name = f"Qwen2.5-{_size}{_kind}"
        configs.append(dict(_llama, name=_name, hf_config=dict(org="Qwen", name=_name),
                            block_size=32768 if _kind else _base_block, vocab_size=_vocab, padding_multiple=1,
                            n_layer=_n_layer, n_embd=_n_embd, n_head=_n_head, n_query_groups=_groups,
                            intermediate_size=_inter, rope_base=1000000, norm_eps=1e-6 if _kind else _base_eps,
                            qkv_bias=True, tie_embeddings=_vocab == 151936, hf_model_type="qwen2"))

############
# Qwen3: q/k RMSNorm, head_size 128 whatever n_embd, 8 kv heads, no biases; 0.6B-4B tie embeddings
############
for _size, _n_layer, _n_embd, _n_head, _inter in [
    ("0.6B", 28, 1024, 16, 3072),
    ("1.7B", 28, 2048, 16, 6144),
    ("4B", 36, 2560, 32, 9728),
    ("8B", 36, 4096, 32, 12288),
    ("14B", 40, 5120, 40, 17408),
    ("32B", 64, 5120, 64, 25600),
]:
    _name = f"Qwen3-{_size}"
    configs.append(dict(_llama, name=_name, hf_config=dict(org="Qwen", name=_name), block_size=40960,
                        vocab_size=151936, padding_multiple=1, n_layer=_n_layer, n_embd=_n_embd, n_head=_n_head,
                        n_query_groups=8, head_size=128, intermediate_size=_inter, rope_base=1000000, norm_eps=1e-6,
                        norm_qk=True, tie_embeddings=_n_embd <= 2560, hf_model_type="qwen3"))

############
# Gemma 3: GELU-gated MLP, four (1 + weight) RMSNorms per block, q/k norms, embeddings scaled by sqrt(n_embd),
# five sliding-window layers (RoPE base 10000) to one global layer (RoPE base 1M). 4b/12b/27b are the text
# models of vision-language repos: 262208 embedding rows, 128K context, linear RoPE scaling of the global layers.
############
_gemma3 = dict(rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm", norm_eps=1e-6,
               norm_unit_offset=True, norm_qk=True, post_norms=True, scale_embeddings=True, tie_embeddings=True,
               mlp_class_name="GemmaMLP", gelu_approximate="tanh", padding_multiple=1, global_layer_every=6,
               rope_base=1000000, rope_local_base=10000, hf_model_type="gemma3_text")
for _size, _kinds, _n_layer, _n_embd, _n_head, _groups, _head, _inter, _scalar in [
    ("270m", ("", "-it"), 18, 640, 4, 1, 256, 2048, 256),
    ("1b", ("-pt", "-it"), 26, 1152, 4, 1, 256, 6912, 256),
    ("4b", ("-pt", "-it"), 34, 2560, 8, 4, 256, 10240, 256),
    ("12b", ("-pt", "-it"), 48, 3840, 16, 8, 256, 15360, 256),
    ("27b", ("-pt", "-it"), 62, 5376, 32, 16, 128, 21504, 168),
]:
    _vision = _size in ("4b", "12b", "27b")
    for _kind in _kinds:
        _name = f"gemma-3-{_size}{_kind}"
        configs.append(dict(_gemma3, name=_name, hf_config=dict(org="google", name=_name),
                            block_size=131072 if _vision else 32768, vocab_size=262208 if _vision else 262144,
                            n_layer=_n_layer, n_embd=_n_embd, n_head=_n_head, n_query_groups=_groups,
                            head_size=_head, intermediate_size=_inter, attention_scalar=_scalar,
                            sliding_window=1024 if _vision else 512,
                            rope_scaling=dict(type="linear", factor=8.0) if _vision else None))

############
# Phi-3 / Phi-4 mini (phi3): Llama layout with fused q/k/v and gate/up weights. Phi-3-mini-4k: every layer
# attends within 2047 tokens. Phi-4-mini: RoPE on 75% of each head with LongRoPE, tied embeddings, and a
# window (262144) longer than its context.
############
configs.append(dict(_llama, name="Phi-3-mini-4k-instruct",
                    hf_config=dict(org="microsoft", name="Phi-3-mini-4k-instruct"), block_size=4096, vocab_size=32064,
                    padding_multiple=1, n_layer=32, n_embd=3072, n_head=32, n_query_groups=32, intermediate_size=8192,
                    sliding_window=2047, global_layer_every=0, hf_model_type="phi3"))
_phi4_long_factor = [
    1.0, 1.118320672, 1.250641126, 1.398617824, 1.564103225, 1.74916897, 1.956131817, 2.187582649, 2.446418898,
    2.735880826, 3.059592084, 3.421605075, 3.826451687, 4.279200023, 4.785517845, 5.351743533, 5.984965424,
    6.693110555, 7.485043894, 8.370679318, 9.36110372, 10.4687158, 11.70738129, 13.09260651, 14.64173252,
    16.37415215, 18.31155283, 20.47818807, 22.90118105, 25.61086418, 28.64115884, 32.03, 32.1, 32.13, 32.23, 32.6,
    32.61, 32.64, 32.66, 32.7, 32.71, 32.93, 32.97, 33.28, 33.49, 33.5, 44.16, 47.77,
]
configs.append(dict(_llama, name="Phi-4-mini-instruct", hf_config=dict(org="microsoft", name="Phi-4-mini-instruct"),
                    block_size=131072, vocab_size=200064, padding_multiple=1, n_layer=32, n_embd=3072, n_head=24,
                    n_query_groups=8, intermediate_size=8192, rotary_percentage=0.75, tie_embeddings=True,
                    sliding_window=262144, global_layer_every=0, hf_model_type="phi3",
                    # attention_factor as transformers computes it when config.json gives none:
                    # sqrt(1 + ln(131072 / 4096) / ln(4096)) = sqrt(1 + 5 / 12)
                    rope_scaling=dict(type="longrope", short_factor=[1.0] * 48, long_factor=_phi4_long_factor,
                                      original_max_position_embeddings=4096, attention_factor=(1 + 5 / 12) ** 0.5)))

############
# Mistral NeMo 12B: head_size 128 though n_embd / n_head = 160, 8 kv heads, 128K vocabulary.
# config.json says max_position_embeddings=1024000; the model is trained and documented for 128K.
############
for _name in ("Mistral-Nemo-Base-2407", "Mistral-Nemo-Instruct-2407"):
    configs.append(dict(_llama, name=_name, hf_config=dict(org="mistralai", name=_name), block_size=131072,
                        vocab_size=131072, padding_multiple=1, n_layer=40, n_embd=5120, n_head=32, n_query_groups=8,
                        head_size=128, intermediate_size=14336, rope_base=1000000, hf_model_type="mistral"))

############
# Qwen3.5 dense (the text decoder of `qwen3_5`'s vision-language checkpoints, without its multi-token-prediction
# layer): three Gated DeltaNet layers (16 key heads, 128-wide keys and values, a width-4 convolution) to one
# full-attention layer whose query projection also yields a sigmoid output gate, (1 + w) norms, q/k norms, RoPE on a
# quarter of each 256-wide head, 248320-token vocabulary, 262144 context. The model cards' layouts and config.json
# (0.8B: tests/data/hf_configs); 0.8B-4B tie embeddings. -Base: the pretrained checkpoints, published for 0.8B-9B only.
############
_qwen35 = dict(_llama, block_size=262144, vocab_size=248320, padding_multiple=1, head_size=256, rotary_percentage=0.25,
               rope_base=10000000, norm_eps=1e-6, norm_unit_offset=True, norm_qk=True, attention_output_gate=True,
               linear_attention=True, global_layer_every=4, linear_n_key_heads=16, linear_key_head_size=128,
               linear_value_head_size=128, linear_conv_kernel=4, hf_model_type="qwen3_5_text")
for _size, _kinds, _n_layer, _n_embd, _n_head, _groups, _value_heads, _inter in [
    ("0.8B", ("", "-Base"), 24, 1024, 8, 2, 16, 3584),
    ("2B", ("", "-Base"), 24, 2048, 8, 2, 16, 6144),
    ("4B", ("", "-Base"), 32, 2560, 16, 4, 32, 9216),
    ("9B", ("", "-Base"), 32, 4096, 16, 4, 32, 12288),
    ("27B", ("",), 64, 5120, 24, 4, 48, 17408),
]:
    for _kind in _kinds:
        _name = f"Qwen3.5-{_size}{_kind}"
        configs.append(dict(_qwen35, name=_name, hf_config=dict(org="Qwen", name=_name), n_layer=_n_layer,
                            n_embd=_n_embd, n_head=_n_head, n_query_groups=_groups, linear_n_value_heads=_value_heads,
                            intermediate_size=_inter, tie_embeddings=_n_embd <= 2560))

############
# SmolLM3 (config.json of HuggingFaceTB/SmolLM3-3B and -Base): Llama layout without RoPE in every 4th layer, 4 kv heads,
# RoPE base 5M, 64K context, tied embeddings
############
for _name in ("SmolLM3-3B-Base", "SmolLM3-3B"):
    configs.append(dict(_llama, name=_name, hf_config=dict(org="HuggingFaceTB", name=_name), block_size=65536,
                        vocab_size=128256, padding_multiple=1, n_layer=36, n_embd=2048, n_head=16, n_query_groups=4,
                        intermediate_size=11008, rope_base=5000000, norm_eps=1e-6, nope_layer_every=4,
                        tie_embeddings=True, hf_model_type="smollm3"))

############
# Ministral 3 (`mistral3`'s text model; config.json, transformers' Ministral3Config defaults = the 8B, NVIDIA
# Megatron-Bridge's Ministral 3 providers): 32 heads of 128, 8 kv heads, YaRN x16 of a 16384 context (mscale 1 over
# mscale_all_dim 1: no attention factor), queries scaled by llama_4_scaling_beta 0.1 past each 16384 positions, 256K
# context; the 3B ties embeddings, the 14B has RoPE base 1e9. Base models only: the Instruct and Reasoning ones'
# chat template is not a prompt style yet.
############
for _size, _n_layer, _n_embd, _inter, _rope in [
    ("3B", 26, 3072, 9216, 1000000),
    ("8B", 34, 4096, 14336, 1000000),
    ("14B", 40, 5120, 16384, 1000000000),
]:
    _name = f"Ministral-3-{_size}-Base-2512"
    configs.append(dict(_llama, name=_name, hf_config=dict(org="mistralai", name=_name), block_size=262144,
                        vocab_size=131072, padding_multiple=1, n_layer=_n_layer, n_embd=_n_embd, n_head=32,
                        n_query_groups=8, head_size=128, intermediate_size=_inter, rope_base=_rope,
                        rope_scaling=dict(type="yarn", factor=16.0, original_max_position_embeddings=16384,
                                          beta_fast=32.0, beta_slow=1.0, truncate=True, attention_factor=1.0),
                        query_scale_beta=0.1, tie_embeddings=_size == "3B", hf_model_type="ministral3"))

############
# OLMo 2 / OLMo 3: norms after the attention and the MLP only, q/k RMSNorm over all heads, RoPE base 500000, untied.
# OLMo 2 (config.json; 7B-Instruct's in tests/data/hf_configs): 4K context, 100352 embedding rows, 32B with 8 kv
# heads. OLMo 3 (config.json; the same sizes, 100278 rows): three layers of four attend within 4096 tokens, YaRN x8
# of an 8192 context on the full-attention layers only, 64K context. The post-trained 7B Instruct and Think, 32B Think
# and 3.1 32B Instruct are their base's architecture (post-trained from it, their cards say; no config.json of theirs
# was read; served with the same 65,536 context). The 3.1 32B Think is left out: its chat template was not found.
############
_olmo = dict(_llama, padding_multiple=1, rope_base=500000, norm_eps=1e-6, norm_qk=True, norm_qk_all_heads=True,
             norm_upcast=True, pre_norms=False, post_norms=True)
for _size, _n_layer, _n_embd, _n_head, _groups, _inter in [
    ("1124-7B", 32, 4096, 32, 32, 11008),
    ("1124-13B", 40, 5120, 40, 40, 13824),
    ("0325-32B", 64, 5120, 40, 8, 27648),
]:
    for _kind in ("", "-Instruct"):
        _name = f"OLMo-2-{_size}{_kind}"
        configs.append(dict(_olmo, name=_name, hf_config=dict(org="allenai", name=_name), block_size=4096,
                            vocab_size=100352, n_layer=_n_layer, n_embd=_n_embd, n_head=_n_head, n_query_groups=_groups,
                            intermediate_size=_inter, hf_model_type="olmo2"))
for _names, _n_layer, _n_embd, _n_head, _groups, _inter in [
    (("Olmo-3-1025-7B", "Olmo-3-7B-Instruct", "Olmo-3-7B-Think"), 32, 4096, 32, 32, 11008),
    (("Olmo-3-1125-32B", "Olmo-3.1-32B-Instruct", "Olmo-3-32B-Think"), 64, 5120, 40, 8, 27648),
]:
    for _name in _names:
        configs.append(dict(_olmo, name=_name, hf_config=dict(org="allenai", name=_name), block_size=65536,
                            vocab_size=100278, n_layer=_n_layer, n_embd=_n_embd, n_head=_n_head, n_query_groups=_groups,
                            intermediate_size=_inter, sliding_window=4096, global_layer_every=4, rope_local_base=500000,
                            rope_scaling=dict(type="yarn", factor=8.0, original_max_position_embeddings=8192,
                                              beta_fast=32, beta_slow=1, truncate=True,
                                              attention_factor=1.2079441541679836),
                            hf_model_type="olmo3"))

############
# Gemma 4 (the text decoder of `gemma4`'s vision-language checkpoints; text_config as copies of the releases'
# config.json give it, which with the encoders and the unused keys and values the checkpoints keep add up to the
# safetensors' exact parameter counts): Gemma 3's four norms per block, but plain (x * w) norms in float32, a value norm
# and attention scale 1; sliding-window layers of 256-wide heads (RoPE base 10000) with every 5th (E2B) or 6th layer
# global: 512-wide heads, proportional RoPE (a quarter of the frequencies, base 1M); a stored scalar per layer, final
# logits capped at 30, 262144 vocabulary, tied embeddings. E2B / E4B: per-layer embeddings (256 features per layer),
# the last 20 / 18 layers reusing keys and values (E2B: with MLPs twice as wide), 128K context. 31B: 16 kv heads in
# the window layers, 4 in the global ones whose values are their keys, 256K context.
############
_gemma4_text = dict(rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm",
                    norm_eps=1e-6, norm_upcast=True, norm_qk=True, norm_v=True, post_norms=True, scale_embeddings=True,
                    tie_embeddings=True, mlp_class_name="GemmaMLP", gelu_approximate="tanh", padding_multiple=1,
                    vocab_size=262144, head_size=256, global_head_size=512, attention_scalar=1.0, rope_base=1000000,
                    rope_scaling=dict(type="proportional", partial_rotary_factor=0.25, factor=1.0),
                    rope_local_base=10000, layer_scalar=True, final_logit_softcapping=30.0, hf_model_type="gemma4_text")
for (_size, _n_layer, _n_embd, _n_head, _groups, _global_groups, _inter, _window, _global_every, _per_layer, _shared,
     _block) in [
    ("E2B", 35, 1536, 8, 1, None, 6144, 512, 5, 256, 20, 131072),
    ("E4B", 42, 2560, 8, 2, None, 10240, 512, 6, 256, 18, 131072),
    ("31B", 60, 5376, 32, 16, 4, 21504, 1024, 6, 0, 0, 262144),
]:
    for _kind in ("", "-it"):
        _name = f"gemma-4-{_size}{_kind}"
        configs.append(dict(_gemma4_text, name=_name, hf_config=dict(org="google", name=_name), block_size=_block,
                            n_layer=_n_layer, n_embd=_n_embd, n_head=_n_head, n_query_groups=_groups,
                            global_n_query_groups=_global_groups, attention_k_eq_v=_global_groups is not None,
                            intermediate_size=_inter, sliding_window=_window, global_layer_every=_global_every,
                            per_layer_embd=_per_layer, kv_shared_layers=_shared, double_wide_mlp=_size == "E2B"))

############
# Qwen3-MoE (lit_gpt/moe.py): Qwen3's attention (q/k norms, head_size 128, 4 kv heads), every layer's MLP 128 experts
# of which 8 per token (the top 8 of a softmax, renormalised), untied; no dense layers, so intermediate_size is unused.
# config.json of Qwen/Qwen3-30B-A3B and -235B-A22B: 40K context, RoPE base 1M. The 2507 updates (Instruct: no
# thinking; Thinking: always) are their base's architecture with a 256K context and RoPE base 10M (30B-A3B, read
# from Thinking-2507's config.json) or 5M (235B-A22B, from a copy of a 2507 config.json)
############
for _size, _n_layer, _n_embd, _n_head, _inter, _moe_inter, _rope_2507 in [
    ("30B-A3B", 48, 2048, 32, 6144, 768, 10000000),
    ("235B-A22B", 94, 4096, 64, 12288, 1536, 5000000),
]:
    for _kind in ("", "-Instruct-2507", "-Thinking-2507"):
        _name = f"Qwen3-{_size}{_kind}"
        configs.append(dict(_llama, name=_name, hf_config=dict(org="Qwen", name=_name),
                            block_size=262144 if _kind else 40960, vocab_size=151936, padding_multiple=1,
                            n_layer=_n_layer, n_embd=_n_embd, n_head=_n_head, n_query_groups=4, head_size=128,
                            intermediate_size=_inter, rope_base=_rope_2507 if _kind else 1000000, norm_eps=1e-6,
                            norm_qk=True, n_expert=128, n_expert_per_token=8, moe_intermediate_size=_moe_inter,
                            router_aux_loss_coef=0.001, hf_model_type="qwen3_moe"))

############
# Qwen3.5-MoE (the text decoder of `qwen3_5_moe`'s vision-language checkpoints, without its multi-token-prediction
# layer; lit_gpt/moe.py): Qwen3.5's layers (three Gated DeltaNet to one gated full-attention layer, 2 kv heads of 256,
# RoPE on a quarter of each head, base 10M, 262144 context, untied) with, in every layer, experts of which the top k of
# a softmax (renormalised) and a shared expert behind a sigmoid gate. Layouts from copies of the config.json files
# found by the library search (35B-A3B: also transformers' Qwen3_5MoeTextConfig defaults, "Qwen3.5-35B-A3B style";
# the 122B-A10B's 32 query heads are inferred from its parameter count); -Base: the pretrained 35B-A3B
############
for _names, _n_layer, _n_embd, _n_head, _value_heads, _n_expert, _k, _moe_inter in [
    (("35B-A3B", "35B-A3B-Base"), 40, 2048, 16, 32, 256, 8, 512),
    (("122B-A10B",), 48, 3072, 32, 64, 256, 8, 1024),
    (("397B-A17B",), 60, 4096, 32, 64, 512, 10, 1024),
]:
    for _size in _names:
        _name = f"Qwen3.5-{_size}"
        configs.append(dict(_qwen35, name=_name, hf_config=dict(org="Qwen", name=_name), n_layer=_n_layer,
                            n_embd=_n_embd, n_head=_n_head, n_query_groups=2, linear_n_value_heads=_value_heads,
                            intermediate_size=_moe_inter, n_expert=_n_expert, n_expert_per_token=_k,
                            moe_intermediate_size=_moe_inter, moe_shared_intermediate_size=_moe_inter,
                            router_aux_loss_coef=0.001, hf_model_type="qwen3_5_moe_text"))

############
# Gemma 4 26B-A4B (copies of its config.json's text_config found by the library search): the 31B's layout (k = v in
# the global layers, 2 kv heads there, 8 in the window layers of 1024, 256K context) at 30 layers of 2816 with 16
# heads, and in every layer 128 experts of 704 (the top 8 of a normalised router) beside a dense MLP of 2112
############
for _kind in ("", "-it"):
    _name = f"gemma-4-26B-A4B{_kind}"
    configs.append(dict(_gemma4_text, name=_name, hf_config=dict(org="google", name=_name), block_size=262144,
                        n_layer=30, n_embd=2816, n_head=16, n_query_groups=8, global_n_query_groups=2,
                        attention_k_eq_v=True, intermediate_size=2112, sliding_window=1024, global_layer_every=6,
                        n_expert=128, n_expert_per_token=8, moe_intermediate_size=704, router_norm=True,
                        moe_activation="gelu", moe_with_mlp=True))

############
# gpt-oss (lit_gpt/moe.py, lit_gpt/sinks.py): openai/gpt-oss-20b's config.json (tests/data/hf_configs) and -120b's
# (transformers' GptOssConfig defaults, "similar to GPT-OSS-120B": 36 layers of 128 experts, the rest as the 20b's).
# Attention sinks, biased q/k/v/o, 64 heads of 64 over 8 kv heads, 128-token windows alternating with full layers,
# YaRN x32 of a 4096 context (attention factor 0.1 ln 32 + 1, as transformers computes it), every layer's MLP the top
# 4 experts (a biased router's logits, softmaxed) with the clamped SwiGLU; untied, 201088 embedding rows
############
for _size, _n_layer, _n_expert in [("20b", 24, 32), ("120b", 36, 128)]:
    _name = f"gpt-oss-{_size}"
    configs.append(dict(_llama, name=_name, hf_config=dict(org="openai", name=_name), block_size=131072,
                        vocab_size=201088, padding_multiple=1, n_layer=_n_layer, n_embd=2880, n_head=64,
                        n_query_groups=8, head_size=64, intermediate_size=2880, rope_base=150000,
                        rope_scaling=dict(type="yarn", factor=32.0, original_max_position_embeddings=4096,
                                          beta_fast=32.0, beta_slow=1.0, truncate=False,
                                          attention_factor=0.1 * math.log(32.0) + 1.0),
                        sliding_window=128, global_layer_every=2, bias=True, norm_upcast=True,
                        attention_sinks=True, n_expert=_n_expert, n_expert_per_token=4, moe_intermediate_size=2880,
                        router_bias=True, router_scoring="topk_softmax", moe_activation="clamped_swiglu",
                        moe_transposed=True, moe_interleaved=True, moe_bias=True, router_aux_loss_coef=0.9,
                        hf_model_type="gpt_oss"))

name_to_config = {c["name"]: c for c in configs}
