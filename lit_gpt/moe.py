"""Mixture of experts: a router picks `n_expert_per_token` of `n_expert` gated MLPs for each token, and the token's
output is their outputs weighted by the router's scores. The experts are stored fused as 3-D tensors in transformers
5's layouts, so that a checkpoint converts by renaming and PEFT's `target_parameters` adapters map one to one:

    gate_up_proj (E, 2 I, D), down_proj (E, D, I)      rows [gate | up]    (Qwen3-MoE, Qwen3.5-MoE, Gemma 4)
    gate_up_proj (E, D, 2 I), down_proj (E, I, D)      columns gate, up, gate, up, ... and biases (E, 2 I), (E, D)
                                                       (gpt-oss: `moe_transposed`, `moe_interleaved`, `moe_bias`)

A block's MLP is this module in its sparse layers, or, with `moe_with_mlp` (Gemma 4 26B-A4B), the dense MLP stays and
this module runs beside it (`Block.moe`). Routing sorts the (token, slot) pairs by expert and runs one matmul per
expert over its tokens. The router's logits of the last forward stay in `MoE.router_logits` for the load-balancing
loss (`load_balancing_loss`).

The fields read from the config (proposed `Config` fields):
    n_embd, n_expert, n_expert_per_token, moe_intermediate_size
    router_bias: the router linear has a bias (gpt-oss)
    router_scoring: "softmax_topk" (softmax over all experts, then the top k) or "topk_softmax" (the top k logits, then
        a softmax over them: gpt-oss)
    norm_topk_prob: with softmax_topk, the k probabilities renormalised to sum to 1 (Qwen3-MoE's flag; True for
        Qwen3.5-MoE and Gemma 4, which always do)
    router_norm: Gemma 4's router: its input RMS-normalised without a weight (eps norm_eps), times a learned
        `router_scale` and n_embd ** -0.5; the k weights then times a learned `per_expert_scale`
    moe_activation: "silu" (SwiGLU), "gelu" (GeGLU, gelu_approximate), "clamped_swiglu" (gpt-oss:
        (clamp(up, -limit, limit) + 1) * g * sigmoid(swiglu_alpha * g), g = clamp(gate, max=limit),
        limit = swiglu_limit)
    moe_transposed, moe_interleaved, moe_bias: the gpt-oss layout above (transformers' is_transposed, not
        is_concatenated, has_bias)
    moe_shared_intermediate_size: a shared expert of this size that every token goes through, scaled by a sigmoid
        gate of the token (Qwen3.5-MoE); 0: none

LoRA on the experts (`Experts.add_lora`) is PEFT's `target_parameters` LoRA: per expert tensor one A of (E r, in)
and one B of (out, r E), expert e's update being scaling * B[:, e::E] @ A[e r:(e + 1) r] (B's columns rank-major).
"""

import math
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_gpt.quantize import dequantize_experts, linear, quantize_experts, quantize_mode, weight_dtype


class MoE(nn.Module):
    """The sparse feed-forward of a block: router, experts and the optional shared expert."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        c = config
        self.router = nn.Linear(c.n_embd, c.n_expert, bias=c.router_bias)
        if c.router_norm:  # Gemma 4
            self.router_scale = nn.Parameter(torch.ones(c.n_embd))
            self.per_expert_scale = nn.Parameter(torch.ones(c.n_expert))
        self.experts = Experts(config)
        self.shared_expert = SharedExpert(c.n_embd, c.moe_shared_intermediate_size) \
            if c.moe_shared_intermediate_size else None
        self.config = config
        self.router_logits: Optional[torch.Tensor] = None  # (B T, n_expert) of the last forward with gradients

    def forward(self, x: torch.Tensor, router_x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, T, n_embd) the experts' input; router_x (B, T, n_embd) the router's if it differs (Gemma 4 routes the
        residual stream and feeds the experts its normalised copy)."""
        B, T, D = x.shape
        x = x.reshape(B * T, D)
        logits, weights, chosen = self.route(x if router_x is None else router_x.reshape(B * T, D))
        if torch.is_grad_enabled():  # for the load-balancing loss: kept past a reference model's forward in no_grad
            self.router_logits = logits
        k = chosen.size(1)
        flat = chosen.flatten()  # (B T k,): the expert of each (token, slot)
        order = flat.argsort(stable=True)
        token = order // k  # the token of each pair, pairs sorted by expert
        counts = torch.bincount(flat, minlength=self.config.n_expert)  # (n_expert,)
        h = self.experts(x[token], counts)  # (B T k, n_embd)
        h = h * weights.flatten()[order, None]
        y = torch.zeros_like(x).index_add_(0, token, h.to(x.dtype))
        if self.shared_expert is not None:
            y = y + self.shared_expert(x)
        return y.view(B, T, D)

    def route(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, n_embd) -> the logits (N, n_expert), the chosen experts' weights and indices (N, k)."""
        c = self.config
        if c.router_norm:
            x32 = x.float()
            normed = (x32 * torch.pow(x32.pow(2).mean(-1, keepdim=True) + c.norm_eps, -0.5)).to(x.dtype)
            x = normed * self.router_scale * c.n_embd ** -0.5
        logits = self.router(x)
        if c.router_scoring == "topk_softmax":
            top, chosen = logits.topk(c.n_expert_per_token, dim=-1)
            weights = top.softmax(dim=-1)
        else:
            weights, chosen = logits.softmax(dim=-1, dtype=torch.float32).topk(c.n_expert_per_token, dim=-1)
            if c.norm_topk_prob:
                weights = weights / weights.sum(dim=-1, keepdim=True)
        if c.router_norm:
            weights = weights * self.per_expert_scale[chosen]
        return logits, weights, chosen


class Experts(nn.Module):
    """The experts' fused weights; `forward` runs each expert over its consecutive rows of the input."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        c = config
        E, D, H = c.n_expert, c.n_embd, c.moe_intermediate_size
        self.transposed, self.interleaved = c.moe_transposed, c.moe_interleaved
        self.gate_up_proj = nn.Parameter(torch.empty((E, D, 2 * H) if self.transposed else (E, 2 * H, D)))
        self.down_proj = nn.Parameter(torch.empty((E, H, D) if self.transposed else (E, D, H)))
        for w, fan_in in ((self.gate_up_proj, D), (self.down_proj, H)):  # as an nn.Linear per expert
            nn.init.uniform_(w, -fan_in ** -0.5, fan_in ** -0.5)
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(E, 2 * H)) if c.moe_bias else None
        self.down_proj_bias = nn.Parameter(torch.zeros(E, D)) if c.moe_bias else None
        self.activation, self.gelu_approximate = c.moe_activation, c.gelu_approximate
        self.swiglu_limit, self.swiglu_alpha = c.swiglu_limit, c.swiglu_alpha
        self.r, self.alpha, self.scaling, self.merged = 0, 0, 0.0, False
        # `lit_gpt.lora.reference_model`: the adapters off, or this frozen copy of them ({name: (A, B)})
        self.as_reference, self.reference = False, None

    @torch.compiler.disable  # the per-expert row counts are data: torch.compile runs the model around this eagerly
    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x (M, n_embd) rows sorted by expert, counts (n_expert,) the rows of each -> (M, n_embd)."""
        gate_up, down = self.per_expert("gate_up"), self.per_expert("down")
        out = []
        for e, h in enumerate(x.split(counts.tolist())):
            if len(h):
                out.append(self.project(self.act(self.project(h, *gate_up[e])), *down[e]))
        return torch.cat(out) if out else x.new_zeros(0, x.size(1))

    def act(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.interleaved:
            gate, up = gate_up[..., ::2], gate_up[..., 1::2]
        else:
            gate, up = gate_up.chunk(2, dim=-1)
        if self.activation == "clamped_swiglu":
            gate = gate.clamp(max=self.swiglu_limit)
            up = up.clamp(-self.swiglu_limit, self.swiglu_limit)
            return (up + 1) * (gate * torch.sigmoid(gate * self.swiglu_alpha))
        if self.activation == "gelu":
            return F.gelu(gate, approximate=self.gelu_approximate) * up
        return F.silu(gate) * up

    def per_expert(self, name: str) -> List[tuple]:
        """Expert by expert (weight, bias, A, B) of `name` ("gate_up" or "down"), A and B None without an adapter.
        `unbind` once: indexing the parameters per expert would make autograd add a full-size gradient per expert."""
        E = self.gate_up_proj.size(0)
        weight = getattr(self, f"{name}_proj")
        weights = weight.experts if hasattr(weight, "experts") else weight.unbind(0)  # quantized: (out, in) each
        bias = getattr(self, f"{name}_proj_bias")
        biases = [None] * E if bias is None else bias.unbind(0)
        A, B = getattr(self, f"lora_A_{name}", None), getattr(self, f"lora_B_{name}", None)
        if self.as_reference:
            A, B = (self.reference or {}).get(name, (None, None))
        if A is None or self.merged:
            return [(w, b, None, None) for w, b in zip(weights, biases)]
        A = A.view(E, self.r, A.size(1)).unbind(0)  # (r, in) each
        B = B.view(B.size(0), self.r, E).permute(2, 0, 1).unbind(0)  # (out, r) each
        return list(zip(weights, biases, A, B))

    def project(self, h: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], A: Optional[torch.Tensor],
                B: Optional[torch.Tensor]) -> torch.Tensor:
        """One expert's linear map of h (n, in) -> (n, out): weight w, bias b, adapter A (r, in), B (out, r)."""
        if not w.is_floating_point():  # one expert of `quantize_experts`: dequantized for this matmul
            y = linear(h, w, None)
        else:
            y = h @ w if self.transposed else F.linear(h, w)
        if b is not None:
            y = y + b
        if A is not None:
            y = y + (F.linear(F.linear(h, A), B) * self.scaling).to(y.dtype)
        return y

    def add_lora(self, r: int, alpha: float, gate_up: bool = True, down: bool = True) -> None:
        """Adds PEFT's target_parameters adapters to the expert tensors: A like an nn.Linear weight of (E r, in), B
        zero (out, r E); no dropout (PEFT refuses dropout on parameters). The base tensors are left as they are."""
        if self.r:
            raise ValueError("add_lora was already applied to these experts")
        E = self.gate_up_proj.size(0)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        for name, on in (("gate_up", gate_up), ("down", down)):
            if not on:
                continue
            w = getattr(self, f"{name}_proj")
            shape, dtype = getattr(w, "expert_shape", w.shape), weight_dtype(w)
            n_in, n_out = (shape[1], shape[2]) if self.transposed else (shape[2], shape[1])
            self.register_parameter(f"lora_A_{name}", nn.Parameter(torch.empty(E * r, n_in, device=w.device,
                                                                               dtype=dtype)))
            self.register_parameter(f"lora_B_{name}", nn.Parameter(torch.empty(n_out, r * E, device=w.device,
                                                                               dtype=dtype)))
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A like an nn.Linear weight (Kaiming-uniform, a=sqrt(5)), B zero: no change."""
        for name in ("gate_up", "down"):
            if hasattr(self, f"lora_A_{name}") and not getattr(self, f"lora_A_{name}").is_meta:
                nn.init.kaiming_uniform_(getattr(self, f"lora_A_{name}"), a=math.sqrt(5))
                nn.init.zeros_(getattr(self, f"lora_B_{name}"))

    @torch.no_grad()
    def delta_weight(self, name: str) -> Optional[torch.Tensor]:
        """The update the adapter adds to `{name}_proj`, in its layout, in float32 (float64 for float64 weights); None
        without an adapter."""
        A, B = getattr(self, f"lora_A_{name}", None), getattr(self, f"lora_B_{name}", None)
        if A is None:
            return None
        return expert_delta(A, B, self.gate_up_proj.size(0), self.scaling, self.transposed)

    @torch.no_grad()
    def merge(self) -> None:
        """Adds the adapters into the expert tensors, once; afterwards `forward` ignores them. Quantized experts are
        dequantized, updated and quantized again the same way."""
        if self.merged:
            return
        for name in ("gate_up", "down"):
            delta = self.delta_weight(name)
            if delta is None:
                continue
            w = getattr(self, f"{name}_proj")
            mode = quantize_mode(w)
            if mode is None:
                w.copy_((w.to(delta.dtype) + delta).to(w.dtype))
            else:
                merged = (dequantize_experts(w).to(delta.dtype) + delta).to(weight_dtype(w))
                setattr(self, f"{name}_proj", quantize_experts(merged, mode, self.transposed))
        self.merged = True


def expert_delta(A: torch.Tensor, B: torch.Tensor, n_expert: int, scaling: float, transposed: bool) -> torch.Tensor:
    """The update an adapter (A (E r, in), B (out, r E)) adds to an expert tensor, in its layout ((E, out, in), or
    (E, in, out) when `transposed`), in float32 (float64 for float64 adapters)."""
    wide = torch.promote_types(A.dtype, torch.float32)
    r = A.size(0) // n_expert
    A = A.to(wide).view(n_expert, r, -1)  # (E, r, in)
    B = B.to(wide).view(B.size(0), r, n_expert).permute(2, 0, 1)  # (E, out, r)
    delta = torch.bmm(B, A) * scaling  # (E, out, in)
    return delta.transpose(1, 2) if transposed else delta


class SharedExpert(nn.Module):
    """An expert every token goes through (Qwen3.5-MoE): a SwiGLU MLP scaled by a sigmoid gate of the token."""

    def __init__(self, n_embd: int, intermediate_size: int) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(n_embd, intermediate_size, bias=False)  # gate_proj
        self.fc_2 = nn.Linear(n_embd, intermediate_size, bias=False)  # up_proj
        self.proj = nn.Linear(intermediate_size, n_embd, bias=False)  # down_proj
        self.gate = nn.Linear(n_embd, 1, bias=False)  # shared_expert_gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(x)) * self.proj(F.silu(self.fc_1(x)) * self.fc_2(x))


def router_logits(model: nn.Module) -> List[torch.Tensor]:
    """The router logits of every MoE layer of `model`'s last forward with gradients enabled, in layer order."""
    return [m.router_logits for m in model.modules() if isinstance(m, MoE) and m.router_logits is not None]


def sequence_counts(lengths: list, device: torch.device) -> torch.Tensor:
    """(T,): how many sequences each token of a packed row (`GPT.forward` lengths) is in: 1, and for a prompt that
    answers share (p, a_1, ..., a_n), n. As weights of `load_balancing_loss`, the statistics of the rows that repeat
    the prompt for each answer (transformers' and TRL's padded batches)."""
    counts = [[1] * n if isinstance(n, int) else [len(n) - 1] * n[0] + [1] * sum(n[1:]) for n in lengths]
    return torch.tensor([c for row in counts for c in row], dtype=torch.float32, device=device)


def load_balancing_loss(logits: Sequence[torch.Tensor], top_k: int, mask: Optional[torch.Tensor] = None
                        ) -> torch.Tensor:
    """The Switch Transformer's auxiliary loss as transformers computes it over all layers together:

        n_expert * sum_e f_e P_e,   f_e = the fraction of tokens that chose expert e among their top k (summing to k),
                                    P_e = the mean softmax probability of expert e

    both averaged over every layer's tokens (`logits`: (N, n_expert) per layer); mask (N,) or (B, T): 1 for the tokens
    to count (padding 0), or each token's weight (`sequence_counts`). A training loop adds
    `router_aux_loss_coef * load_balancing_loss(router_logits(model), k, model.router_weights)`.
    """
    n_expert = logits[0].size(-1)
    chosen_sum = prob_sum = rows = 0
    for layer in logits:
        probs = layer.float().softmax(dim=-1)  # (N, n_expert)
        chosen = F.one_hot(probs.topk(top_k, dim=-1).indices, n_expert).sum(1).float()  # (N, n_expert): 0 or 1
        w = probs.new_ones(probs.size(0), 1) if mask is None else mask.reshape(-1, 1).to(probs)
        chosen_sum = chosen_sum + (chosen * w).sum(0)
        prob_sum = prob_sum + (probs * w).sum(0)
        rows = rows + w.sum()
    return n_expert * torch.sum(chosen_sum / rows * (prob_sum / rows))
