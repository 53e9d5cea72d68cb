"""LoRA: low-rank adapters on the linear layers of `GPT`, trained while the base weights stay frozen.

A `LoRALinear` keeps the plain linear's `weight` and `bias` as its own parameters, so a base checkpoint loads into
a LoRA model with unchanged keys; the adapter adds `lora_A*` / `lora_B*` parameters next to them:

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T          A: (r, in_features), B: (out_features, r)

The fused attention projection `attn.qkv` (rows [all query heads | key heads | value heads]) gets one adapter per
enabled part: `lora_A_query`/`lora_B_query`, `lora_A_key`/`lora_B_key`, `lora_A_value`/`lora_B_value`, with
B covering only that part's rows. They are exactly Hugging Face PEFT's `q_proj`/`k_proj`/`v_proj`
`lora_A.weight`/`lora_B.weight` (same shapes, same math). Every other adapted linear (`attn.proj`, the MLP linears,
`lm_head`) has a single `lora_A`/`lora_B`. The base weight may be a bitsandbytes 4-bit or 8-bit weight
(see lit_gpt/quantize.py): the forward pass then runs the quantized matmul, and merging re-quantizes.
"""

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_gpt.moe import Experts, MoE
from lit_gpt.quantize import (
    Linear,
    dequantize_weight,
    linear,
    quantize_mode,
    quantize_weight,
    weight_dtype,
    weight_shape,
)
from lit_gpt.utils import fail


@dataclass
class LoRAConfig:
    """LoRA hyperparameters; saved next to the adapter (`lora_config.json`) so later scripts read them back."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    query: bool = True  # the query rows of attn.qkv
    key: bool = True  # the key rows of attn.qkv
    value: bool = True  # the value rows of attn.qkv (any of the 3: a linear-attention layer's qkv, gate, beta, decay)
    projection: bool = True  # attn.proj
    mlp: bool = True  # GptNeoxMLP fc, proj / LLaMAMLP fc_1, fc_2, proj
    head: bool = True  # lm_head
    experts: bool = True  # the expert tensors of mixture-of-experts layers (PEFT's target_parameters; no dropout)

    def __post_init__(self) -> None:
        if self.r < 1:
            fail(f"LoRA rank r={self.r} must be at least 1")
        if not 0 <= self.dropout < 1:
            fail(f"LoRA dropout={self.dropout} must be in [0, 1)")
        if not any((self.query, self.key, self.value, self.projection, self.mlp, self.head, self.experts)):
            fail("LoRA is disabled everywhere: enable at least one of query, key, value, projection, mlp, head, "
                 "experts")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return asdict(self)


class LoRALinear(Linear):
    """A frozen linear layer plus low-rank adapters on some or all of its output rows.

    `parts` splits the output rows, in order, into named parts (name -> number of rows); `adapted` names the parts
    that get an adapter. The default is one unnamed part covering all rows, adapted by `lora_A`/`lora_B`; part
    "query" is adapted by `lora_A_query`/`lora_B_query`, and so on. Rows of parts without an adapter pass through.
    """

    def __init__(self, weight: nn.Parameter, bias: Optional[nn.Parameter], r: int, alpha: int, dropout: float,
                 parts: Optional[Dict[str, int]] = None, adapted: Optional[Sequence[str]] = None) -> None:
        super().__init__(weight, bias)  # the base layer's own Parameters: ties (lm_head = wte) and devices are kept
        self.parts = dict(parts) if parts is not None else {"": self.out_features}
        self.adapted = tuple(adapted) if adapted is not None else tuple(self.parts)
        if sum(self.parts.values()) != self.out_features or not set(self.adapted) <= set(self.parts):
            raise ValueError(f"parts {self.parts} / adapted {self.adapted} do not fit {self.out_features} rows")
        self.r, self.alpha, self.scaling, self.dropout = r, alpha, alpha / r, dropout
        dtype = weight_dtype(weight)
        for part in self.adapted:
            self.register_parameter(f"lora_A{suffix(part)}", nn.Parameter(
                torch.empty(r, self.in_features, device=weight.device, dtype=dtype)))
            self.register_parameter(f"lora_B{suffix(part)}", nn.Parameter(
                torch.empty(self.parts[part], r, device=weight.device, dtype=dtype)))
        self.reset_lora_parameters()
        self.merged = False
        # the reference model of preference and reward training (`reference_model`): the adapter off, or a frozen
        # copy of the adapter it started from (`keep_reference`: plain tensors, in no state dict)
        self.as_reference = False
        self.reference: Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = None

    @classmethod
    def from_linear(cls, module: nn.Module, config: LoRAConfig, parts: Optional[Dict[str, int]] = None,
                    adapted: Optional[Sequence[str]] = None) -> "LoRALinear":
        return cls(module.weight, module.bias, config.r, config.alpha, config.dropout, parts, adapted)

    def lora_pairs(self) -> Dict[str, Tuple[nn.Parameter, nn.Parameter]]:
        """part name -> (A, B) of every adapted part."""
        return {part: (getattr(self, f"lora_A{suffix(part)}"), getattr(self, f"lora_B{suffix(part)}"))
                for part in self.adapted}

    def reset_lora_parameters(self) -> None:
        """A like an `nn.Linear` weight (Kaiming-uniform, a=sqrt(5), as in the LoRA reference), B zero: no change."""
        for A, B in self.lora_pairs().values():
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            nn.init.zeros_(B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = linear(x, self.weight, self.bias)  # (..., out_features)
        if self.merged or not self.adapted or (self.as_reference and self.reference is None):
            return out
        # (k r, in_features), (out_features, k r) for k adapted parts
        A, B = self.stacked_lora(self.reference if self.as_reference else None)
        h, rescale = lora_dropout(x, self.dropout, self.training and not self.as_reference)
        t = F.linear(h.to(A.dtype), A) * (self.scaling * rescale)  # (..., k r): scaled here, where it is small
        # out + t B^T in one matmul that accumulates into `out` (no separate scale and add passes over the output)
        out_2d = out.reshape(-1, out.size(-1))
        return torch.addmm(out_2d, t.reshape(-1, t.size(-1)).to(out.dtype), B.t().to(out.dtype)).view(out.shape)

    def stacked_lora(self, pairs: Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The adapters (`pairs`, default: the trained ones) as one pair: A stacks the adapted parts' A (one matmul
        with the input for all parts), B is block-diagonal, the rows of each part holding its own B next to zeros (and
        all zeros for parts without an adapter), so that `x A^T B^T` is every part's update at its rows."""
        pairs = pairs or self.lora_pairs()
        if len(self.parts) == 1:
            return next(iter(pairs.values()))
        A = torch.cat([a for a, _ in pairs.values()])
        rows, col = [], 0
        for part, size in self.parts.items():
            if part in pairs:
                B = pairs[part][1]
                rows.append(F.pad(B, (col, A.size(0) - col - B.size(1))))
                col += B.size(1)
            else:
                rows.append(A.new_zeros(size, A.size(0)))
        return A, torch.cat(rows)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """The update the adapters add to the weight: (out_features, in_features), in float32."""
        pairs = self.lora_pairs()
        rows = []
        for part, size in self.parts.items():
            if part in pairs:
                A, B = pairs[part]
                rows.append(B.float() @ A.float() * self.scaling)
            else:
                rows.append(torch.zeros(size, self.in_features, device=self.weight.device))
        return torch.cat(rows)

    @torch.no_grad()
    def merge(self) -> None:
        """Adds the adapters into the base weight, once; afterwards `forward` is the plain (possibly quantized) linear.

        The merged weight is a new Parameter: a weight tied to the embedding (lm_head = wte) is untied, so the
        embedding keeps the base values. A quantized weight is dequantized, updated and re-quantized the same way.
        """
        if self.merged:
            return
        if self.adapted:
            mode = quantize_mode(self.weight)
            merged = dequantize_weight(self.weight).float() + self.delta_weight()
            if mode is None:
                self.weight = nn.Parameter(merged.to(self.weight.dtype), requires_grad=self.weight.requires_grad)
            else:
                self.weight = quantize_weight(merged.to(weight_dtype(self.weight)), mode)
        self.merged = True

    def extra_repr(self) -> str:
        parts = "" if self.parts == {"": self.out_features} else f", adapted={list(self.adapted)} of {self.parts}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, alpha={self.alpha}"
                f"{parts}, dropout={self.dropout}, quantized={quantize_mode(self.weight)}, merged={self.merged}")


def suffix(part: str) -> str:
    return f"_{part}" if part else ""


DROPOUT_BITS = 15  # CPU dropout masks: 15 random bits per entry, two entries per 32-bit draw of the generator


def lora_dropout(x: torch.Tensor, p: float, training: bool) -> Tuple[torch.Tensor, float]:
    """(x with a random fraction p of its entries zeroed, the factor 1 / (1 - p) the caller scales the result by).

    Returning the factor lets the caller apply it to the rank-r product instead of x. On CPU, where `bernoulli_`
    draws one number per entry from a sequential generator (the cost of dropout there), the mask compares 15-bit
    fields of 32-bit draws, two entries per draw: 2-7x faster, with p rounded to a multiple of 2^-15.
    """
    if not training or p == 0:
        return x, 1.0
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True), 1.0
    levels = 1 << DROPOUT_BITS
    threshold = min(levels - 1, max(1, round((1 - p) * levels)))  # keep an entry when its field is below this
    n = x.numel()
    fields = torch.empty((n + 1) // 2, dtype=torch.int32).random_().view(torch.int16)[:n]  # 31 random bits a draw
    keep = fields.bitwise_and_(levels - 1) < threshold
    keep = keep.view(torch.uint8).to(x.dtype)  # 1 or 0 (via uint8: a bool -> bfloat16 cast is 6x slower on CPU)
    return x * keep.view(x.shape), levels / threshold  # a multiplication: backward multiplies by the mask too


def add_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Replaces the linear layers `config` selects in a `GPT` by `LoRALinear`s, in place (also on the meta device).

    The base weights are kept as they are (same Parameter objects), so loading and weight tying are unaffected.
    """
    if any(isinstance(m, LoRALinear) or isinstance(m, Experts) and m.r for m in model.modules()):
        raise ValueError("add_lora was already applied to this model")
    for block in model.transformer.h:
        attn = block.attn
        adapted = [part for part in ("query", "key", "value") if getattr(config, part)]
        if block.kind == "linear" and adapted:  # Gated DeltaNet: one pair on all of q|k|v, as PEFT's in_proj_qkv
            for name in ("qkv", "gate", "beta", "decay"):
                setattr(attn, name, LoRALinear.from_linear(getattr(attn, name), config))
        elif adapted:  # the parts the layer has (Gemma 4: no value projection with k = v, no k/v when reused)
            parts = dict(zip(("query", "key", "value"), attn.config.qkv_sizes(attn.kv_source is None)))
            adapted = [part for part in adapted if parts[part]]
            if adapted:
                attn.qkv = LoRALinear.from_linear(attn.qkv, config, {p: n for p, n in parts.items() if n}, adapted)
        if config.projection:
            attn.proj = LoRALinear.from_linear(attn.proj, config)
        for moe in (m for m in (block.mlp, block.moe) if isinstance(m, MoE)):  # Gemma 4: experts beside the MLP
            if config.experts:  # the router stays frozen; a shared expert's linears are MLP linears
                moe.experts.add_lora(config.r, config.alpha)
            shared = moe.shared_expert
            if config.mlp and shared is not None:
                for name in ("fc_1", "fc_2", "proj"):
                    setattr(shared, name, LoRALinear.from_linear(getattr(shared, name), config))
        if config.mlp and not isinstance(block.mlp, MoE):
            for name, child in list(block.mlp.named_children()):
                if hasattr(child, "weight"):
                    setattr(block.mlp, name, LoRALinear.from_linear(child, config))
    if config.head:
        model.lm_head = LoRALinear.from_linear(model.lm_head, config)
    if not any(lora_filter(name) for name, _ in model.named_parameters()):
        fail(f"LoRA adapts nothing in {model.config.name!r} (experts only, and it has no experts): enable query, "
             "key, value, projection, mlp or head")
    return model


@torch.no_grad()
def keep_reference(model: nn.Module) -> None:
    """Keeps a frozen copy of every adapter's current weights (kilobytes to megabytes; whole tensors also under FSDP:
    every rank must call this) as the reference `reference_model` switches to."""
    def frozen(w: torch.Tensor) -> torch.Tensor:
        return (w.full_tensor() if hasattr(w, "full_tensor") else w).detach().clone()

    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.reference = {part: tuple(frozen(w) for w in pair) for part, pair in module.lora_pairs().items()}
        elif isinstance(module, Experts) and module.r:
            module.reference = {name: (frozen(getattr(module, f"lora_A_{name}")),
                                       frozen(getattr(module, f"lora_B_{name}")))
                                for name in ("gate_up", "down") if hasattr(module, f"lora_A_{name}")}


@contextmanager
def reference_model(model: nn.Module) -> Iterator[nn.Module]:
    """The model as the reference of preference (DPO) and reward (GRPO) training, which is the model training
    started from: the base with every adapter off, or, after `keep_reference`, with the frozen copy of the adapter it
    started from. No second copy of the base weights; no LoRA dropout."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear) or isinstance(m, Experts) and m.r]
    for layer in layers:
        layer.as_reference = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.as_reference = False


def lora_filter(name: str, tensor: Optional[torch.Tensor] = None) -> bool:
    """True for the parameter names of LoRA adapters (`...lora_A`, `...lora_B_query`, ...)."""
    return name.rsplit(".", 1)[-1].startswith(("lora_A", "lora_B"))


def mark_only_lora_as_trainable(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        param.requires_grad = lora_filter(name, param)


def lora_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The adapter alone: the LoRA parameters by their names in the model (what finetuning saves)."""
    return {name: param.detach() for name, param in model.named_parameters() if lora_filter(name, param)}


def merge_lora_weights(model: nn.Module) -> nn.Module:
    """Merges every adapter into its base weight (safe to call twice).

    When `lm_head` had an adapter on a weight tied to the embedding, the merged head is its own weight and
    `model.config` is replaced by a copy with `tie_embeddings=False`, so a saved merged model keeps both matrices.
    """
    for module in model.modules():
        if isinstance(module, (LoRALinear, Experts)):
            module.merge()
    config = getattr(model, "config", None)
    if config is not None and config.tie_embeddings and model.lm_head.weight is not model.transformer.wte.weight:
        model.config = replace(config, tie_embeddings=False)
    return model


def trainable_report(model: nn.Module) -> str:
    """`trainable params: N || all params: M || trainable%: P`, formatted like PEFT's `print_trainable_parameters`.

    Shared parameters count once; a bitsandbytes 4-bit weight counts as its unpacked size (as PEFT does).
    """
    from lit_gpt.utils import num_parameters

    trainable, total = num_parameters(model, requires_grad=True), num_parameters(model)
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def _names(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _key_problems(missing: Sequence[str], unexpected: Sequence[str], unexpected_means: str) -> str:
    problems = [f"missing from it: {_names(missing)}"] if missing else []
    return "; ".join(problems + ([f"{unexpected_means}: {_names(unexpected)}"] if unexpected else []))


def check_lora_state_dict(model: nn.Module, adapter: Dict[str, torch.Tensor], source: str = "the adapter") -> None:
    """Fails with the names of missing/unexpected keys, or both shapes, if `adapter` does not fit the LoRA layers."""
    expected = dict(lora_state_dict(model))
    if not expected:
        fail(f"The model has no LoRA layers to load {source} into: build it with a LoRAConfig (add_lora)")
    missing, unexpected = set(expected) - set(adapter), set(adapter) - set(expected)
    if missing or unexpected:
        problems = _key_problems(missing, unexpected, "not in the model")
        fail(f"{source} does not fit the model's LoRA layers ({problems}). Were the LoRA settings "
             "(query/key/value/projection/mlp/head) the same as in the lora_config.json next to the adapter?")
    for name, value in adapter.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            fail(f"{source}: {name!r} has shape {tuple(value.shape)} in the adapter but {tuple(expected[name].shape)} "
                 "in the model (different LoRA r or base model? use the lora_config.json saved with the adapter)")


def load_lora_state_dict(model: nn.Module, adapter: Dict[str, torch.Tensor], source: str = "the adapter") -> None:
    """Copies an adapter (from `lora_state_dict`) into the LoRA parameters of `model`, checking names and shapes."""
    check_lora_state_dict(model, adapter, source)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in adapter.items():
            params[name].copy_(value)


def check_base_state_dict(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "the checkpoint"
                          ) -> None:
    """A base checkpoint fits a (LoRA) model if only LoRA keys are missing, none is unexpected and shapes agree.

    A key of a tied parameter (lm_head.weight = transformer.wte.weight) may be missing when its twin is present.
    """
    expected = model.state_dict(keep_vars=True)
    present = {id(expected[k]) for k in state_dict if k in expected}
    missing = [k for k, t in expected.items() if k not in state_dict and not lora_filter(k) and id(t) not in present]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        problems = _key_problems(missing, unexpected, "unexpected in it")
        fail(f"{source} does not fit the model ({problems}). Is it a lit_model.pth of the model in "
             "lit_config.json? (an adapter is not a base checkpoint: pass it as the LoRA path)")
    for name, tensor in state_dict.items():
        shape = weight_shape(expected[name])  # a quantized weight: its unpacked shape
        if tuple(tensor.shape) != shape:
            fail(f"{source}: {name!r} has shape {tuple(tensor.shape)} in the checkpoint but {shape} in the model"
                 " (does lit_config.json belong to this lit_model.pth?)")
