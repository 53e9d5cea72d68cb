"""The model's norms: RMSNorm (the Llama, Gemma and OLMo variants) and LayerNorm, chosen by `Config`."""

from typing import Optional

import torch
import torch.nn as nn

from lit_gpt.config import Config


class RMSNorm(nn.Module):
    """Normalizes in float32, like the reference Llama implementation, then scales in the input dtype. Gemma's
    variant (`unit_offset`) scales by (1 + weight) in float32, then casts, as its reference does; `upcast` (OLMo,
    gpt-oss) scales by the weight in float32, then casts."""

    def __init__(self, size: int, eps: float = 1e-5, unit_offset: bool = False, upcast: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size) if unit_offset else torch.ones(size))
        self.eps = eps
        self.unit_offset = unit_offset
        self.upcast = upcast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = rms_norm(x.float(), self.eps)
        if self.unit_offset:
            return (x32 * (1.0 + self.weight.float())).to(x.dtype)
        if self.upcast:
            return (x32 * self.weight.float()).to(x.dtype)
        return self.weight * x32.to(x.dtype)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x divided by the root mean square of its last dimension, computed in float32, in x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def build_norm(config: Config, size: Optional[int] = None) -> nn.Module:
    size = size or config.n_embd
    if config.norm_class_name == "RMSNorm":
        return RMSNorm(size, eps=config.norm_eps, unit_offset=config.norm_unit_offset, upcast=config.norm_upcast)
    return nn.LayerNorm(size, eps=config.norm_eps)
