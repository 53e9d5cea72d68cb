"""RoPE: the frequencies, plain or rescaled as the long-context variants do (`Config.rope_scaling`), their cos / sin
tables and the rotation."""

import math
from typing import Optional, Tuple

import torch


def rope_frequencies(n_elem: int, base: float, scaling: Optional[dict] = None, device: Optional[torch.device] = None,
                     long: bool = False) -> Tuple[torch.Tensor, float]:
    """(the n_elem / 2 inverse frequencies of RoPE over n_elem features, the factor of cos and sin).

    `scaling` (`Config.rope_scaling`) rescales the frequencies: "linear" divides them all by `factor`; "llama3"
    divides the low ones (wavelengths past original / low_freq_factor) by `factor`, keeps the high ones (shorter than
    original / high_freq_factor) and blends in between; "longrope" divides each by its own short (or, `long`, long)
    factor and multiplies cos and sin by `attention_factor`; "yarn" keeps the fast frequencies, divides the slow ones
    by `factor`, ramps in between, and multiplies cos and sin by `attention_factor`; "proportional" (Gemma 4) keeps
    the fastest `partial_rotary_factor` of the frequencies of the whole head, divided by `factor`, the others 0.
    """
    exponents = torch.arange(0, n_elem, 2, device=device, dtype=torch.int64).float() / n_elem
    inv_freq = 1.0 / (base ** exponents)  # (n_elem / 2,)
    kind, scale = (scaling or {}).get("type"), 1.0
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        original = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= original / high) & (wavelen <= original / low)
        inv_freq = torch.where(medium, blended, scaled)
    elif kind == "longrope":
        factors = torch.tensor(scaling["long_factor" if long else "short_factor"], dtype=torch.float32, device=device)
        inv_freq = 1.0 / (factors * base ** exponents)
        scale = scaling["attention_factor"]
    elif kind == "yarn":
        # the frequencies that turn fewer than beta_slow times over the original context are divided by `factor`, those
        # that turn more than beta_fast times are kept, a linear ramp over the dimensions blends the ones in between
        def dimension(turns: float) -> float:  # the (fractional) dimension whose frequency turns `turns` times
            return n_elem * math.log(scaling["original_max_position_embeddings"] / (turns * 2 * math.pi)) / (
                2 * math.log(base))

        low, high = dimension(scaling["beta_fast"]), dimension(scaling["beta_slow"])
        if scaling.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, n_elem - 1)
        ramp = ((torch.arange(n_elem // 2, device=device, dtype=torch.float32) - low)
                / (high - low if high != low else 0.001)).clamp(0, 1)  # 0: kept, 1: divided by factor
        inv_freq = 1.0 / (scaling["factor"] * base ** exponents) * ramp + inv_freq * (1 - ramp)
        scale = scaling["attention_factor"]
    elif kind == "proportional":  # the first partial_rotary_factor of the frequencies turn, the others are 0
        turning = int(scaling["partial_rotary_factor"] * n_elem // 2)
        inv_freq = torch.cat([inv_freq[:turning], torch.zeros_like(inv_freq[turning:])]) / scaling.get("factor", 1.0)
    elif kind is not None:
        raise ValueError(f"Unknown rope_scaling type {kind!r}: known are linear, llama3, longrope, yarn, proportional")
    return inv_freq, scale


def build_rope_cache(seq_len: int, n_elem: int, base: float, scaling: Optional[dict] = None,
                     device: Optional[torch.device] = None, long: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (seq_len, n_elem), in float32, in the rotate-half layout of Hugging Face models; the
    frequencies (and their scaling, `Config.rope_scaling`) from `rope_frequencies`."""
    inv_freq, scale = rope_frequencies(n_elem, base, scaling, device, long)
    t = torch.arange(seq_len, device=device, dtype=torch.int64).float()
    freqs = torch.outer(t, inv_freq)  # (seq_len, n_elem / 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scale, emb.sin() * scale


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
