"""bitsandbytes quantization of the frozen linear weights (QLoRA). `lit_gpt.load.load_model` quantizes a checkpoint
tensor by tensor while loading it, so that a quantized model never exists in full precision.

What is quantized: the weight of every linear layer (attention qkv and proj, the MLP linears, and `lm_head` unless
it is tied to the embedding, which has to stay a float matrix), and the 3-D expert tensors of mixture-of-experts
layers expert by expert (`quantize_experts`: each expert's matrix as a linear weight, dequantized per matmul).
Embeddings, norms, biases, routers and the LoRA adapters stay in the precision's dtype. Quantizing `lm_head` too (as
lit-gpt does; QLoRA/PEFT keep it in 16 bits) saves vocab_size x n_embd x 1.5 bytes, the largest single matrix of small
models.

Modes: "bnb.nf4" / "bnb.fp4" (4-bit, blocks of 64, `-dq`: double quantization of the block scales) and "bnb.int8"
(LLM.int8 row-wise; on CPU bitsandbytes dequantizes and runs a float matmul). They run on CPU and CUDA.
"""

import copy
import logging
import math
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_gpt.utils import fail

QUANTIZE_MODES = ("bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8")
PRECISIONS = ("bf16-true", "bf16-mixed", "16-true", "16-mixed", "32-true")
BLOCKSIZE = 64  # 4-bit: one absmax scale per 64 weights, as in QLoRA
CHUNK_VALUES = 2**20  # weights are quantized this many values at a time


def _bnb():
    """bitsandbytes, imported on first use (quietly: its CPU backend warns about an optional kernel we do not use)."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import bitsandbytes

    return bitsandbytes


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of the (unquantized) weights: "*-true" -> that dtype, "*-mixed" -> float32 (the caller autocasts)."""
    if precision not in PRECISIONS:
        fail(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision.endswith("-mixed") or precision == "32-true":
        return torch.float32
    return torch.bfloat16 if precision.startswith("bf16") else torch.float16


def check_quantize(quantize: Optional[str], precision: str, device: Union[str, torch.device]) -> None:
    """Fails, before anything is loaded, if `quantize` with `precision` cannot run on `device`.

    Every mode works with every precision on CPU and CUDA: "-true" computes the quantized matmuls in that dtype,
    "-mixed" (float32 weights, the caller autocasts) dequantizes into the autocast dtype. Not accepted: an unknown
    mode or precision, "16-mixed" on CPU (no float16 autocast with a grad scaler there: Fabric would silently switch
    to bf16-mixed), a device type bitsandbytes does not support, and a mode whose kernels fail on this device
    (checked by running a tiny quantized forward and backward pass on it, e.g. int8 on a pre-Turing GPU).
    """
    precision_dtype(precision)
    device = torch.device(device)
    if precision == "16-mixed" and device.type == "cpu":
        fail("precision 16-mixed (float16 autocast) does not run on CPU: use --precision bf16-mixed or bf16-true")
    if quantize is None:
        return
    if quantize not in QUANTIZE_MODES:
        fail(f"Unknown quantize mode {quantize!r}; choose one of {', '.join(QUANTIZE_MODES)} (or none)")
    try:
        bnb = _bnb()
    except Exception as e:
        fail(f"--quantize {quantize} needs bitsandbytes, which cannot be imported ({type(e).__name__}: {e}); "
             "`pip install bitsandbytes` or train without --quantize")
    if device.type not in bnb.supported_torch_devices:
        fail(f"bitsandbytes does not run on {device.type!r} (it supports {sorted(bnb.supported_torch_devices)}); "
             "drop --quantize or use a CPU or CUDA device")
    dtype = torch.float32 if precision == "32-true" else torch.bfloat16 if "bf16" in precision else torch.float16
    try:
        weight = quantize_weight(torch.randn(64, 64, device=device, dtype=dtype), quantize)
        x = torch.randn(2, 64, device=device, dtype=dtype, requires_grad=True)
        linear(x, weight, None).sum().backward()
    except Exception as e:
        other = "bnb.nf4" if quantize == "bnb.int8" else "no --quantize"
        reason = (str(e).splitlines() or [""])[0][:200]
        fail(f"--quantize {quantize} with precision {precision} does not run on {device} "
             f"({type(e).__name__}: {reason}); try {other}")


def quantize_weight(weight: torch.Tensor, mode: str, device: Optional[torch.device] = None,
                    dtype: Optional[torch.dtype] = None) -> nn.Parameter:
    """A frozen bitsandbytes Parameter of the weight (out_features, in_features) on `device` (default: its own).

    `dtype` (default: the weight's) is the compute dtype: 4-bit weights dequantize to it. int8 keeps row-wise absmax
    scales (`SCB`). Rows are moved, cast and quantized ~1M values at a time, so the only full-size tensor is the
    quantized result (bitsandbytes' CPU quantizer needs ~14 bytes per value of temporaries); the result is exactly
    what quantizing the whole matrix at once gives (4-bit blocks of 64 never straddle two chunks).
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"Unknown quantize mode {mode!r}")
    bnb = _bnb()
    device, dtype = device or weight.device, dtype or weight.dtype
    rows, cols = weight.shape
    step = BLOCKSIZE // math.gcd(cols, BLOCKSIZE)  # chunks of a multiple of `step` rows hold whole 4-bit blocks
    chunk_rows = max(step, CHUNK_VALUES // cols // step * step)
    chunks = (weight[i:i + chunk_rows].detach().to(device=device, dtype=dtype).contiguous()
              for i in range(0, rows, chunk_rows))  # made one at a time, while quantizing
    if mode == "bnb.int8":
        quantized = [bnb.functional.int8_vectorwise_quant(chunk.to(torch.float16))[:2] for chunk in chunks]
        CB, SCB = torch.cat([q[0] for q in quantized]), torch.cat([q[1] for q in quantized])
        return bnb.nn.Int8Params(CB, requires_grad=False, has_fp16_weights=False, CB=CB, SCB=SCB)
    quant_type, double = mode[len("bnb."):len("bnb.") + 3], mode.endswith("-dq")
    packed, absmax = [], []
    for chunk in chunks:
        data, state = bnb.functional.quantize_4bit(chunk, blocksize=BLOCKSIZE, compress_statistics=False,
                                                   quant_type=quant_type, quant_storage=torch.uint8)
        packed.append(data)
        absmax.append(state.absmax)
    absmax, offset, state2 = torch.cat(absmax), None, None
    if double:  # the block scales quantized to 8 bits, in blocks of 256, as bitsandbytes' compress_statistics does
        offset = absmax.mean()
        absmax, state2 = bnb.functional.quantize_blockwise(absmax - offset, blocksize=256)
    quant_state = bnb.functional.QuantState(absmax=absmax, shape=weight.shape, code=state.code, blocksize=BLOCKSIZE,
                                            quant_type=quant_type, dtype=dtype, offset=offset, state2=state2)
    return bnb.nn.Params4bit(torch.cat(packed), requires_grad=False, quant_state=quant_state, blocksize=BLOCKSIZE,
                             compress_statistics=double, quant_type=quant_type, bnb_quantized=True)


def quantize_experts(weight: torch.Tensor, mode: str, transposed: bool, device: Optional[torch.device] = None,
                     dtype: Optional[torch.dtype] = None) -> nn.Parameter:
    """A frozen 3-D expert tensor (E, out, in), or (E, in, out) when `transposed`, quantized expert by expert: each
    expert's (out, in) matrix as `quantize_weight` quantizes a linear weight (its own block scales, and with "-dq"
    its own double quantization), so `linear` runs one expert at a time on it.

    The Parameter holds the experts' packed bytes (E, ...), filled one expert at a time (peak: the result and one
    expert's temporaries); `.experts` are the E quantized weights, views of it, and `.expert_shape` the float shape.
    """
    E, parts, packed = weight.size(0), [], None
    for e in range(E):
        part = quantize_weight(weight[e].T if transposed else weight[e], mode, device=device, dtype=dtype)
        if packed is None:
            packed = torch.empty((E, *part.data.shape), dtype=part.dtype, device=part.device)
        packed[e].copy_(part.data)
        _view(part, packed[e])
        parts.append(part)
    return QuantizedExperts(packed, parts, tuple(weight.shape), transposed)


def _view(weight: torch.Tensor, row: torch.Tensor) -> None:
    """Makes a quantized weight's data `row`, a row of the packed bytes (int8's matrix, kept twice, too)."""
    weight.data = row
    if getattr(weight, "CB", None) is not None:
        weight.CB = weight.data


class QuantizedExperts(nn.Parameter):
    """`quantize_experts`' Parameter: the packed bytes (E, ...), the E quantized weights viewing them (`experts`), the
    float shape and layout. A Parameter subclass so that `copy.deepcopy` keeps them (a Parameter's drops attributes)."""

    def __new__(cls, packed: torch.Tensor, experts: list, expert_shape: tuple, transposed: bool):
        param = super().__new__(cls, packed, requires_grad=False)
        param.experts, param.expert_shape, param.expert_transposed = experts, expert_shape, transposed
        return param

    def __deepcopy__(self, memo: dict) -> "QuantizedExperts":
        if id(self) not in memo:
            packed, experts = self.data.clone(), [copy.deepcopy(w, memo) for w in self.experts]
            for e, w in enumerate(experts):
                _view(w, packed[e])
            memo[id(self)] = QuantizedExperts(packed, experts, self.expert_shape, self.expert_transposed)
        return memo[id(self)]


def dequantize_experts(weight: torch.Tensor) -> torch.Tensor:
    """The float 3-D tensor of `quantize_experts`' result, in its layout (a float tensor as it is)."""
    experts = getattr(weight, "experts", None)
    if experts is None:
        return weight.detach()
    return torch.stack([dequantize_weight(w).T if weight.expert_transposed else dequantize_weight(w)
                        for w in experts])


def quantize_mode(weight: torch.Tensor) -> Optional[str]:
    """The mode a weight was quantized with ("bnb.nf4-dq", ...), None for a float weight."""
    experts = getattr(weight, "experts", None)
    if experts is not None:
        return quantize_mode(experts[0])
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None:
        return f"bnb.{quant_state.quant_type}{'-dq' if quant_state.nested else ''}"
    if weight.dtype == torch.int8 and getattr(weight, "SCB", None) is not None:
        return "bnb.int8"
    return None


def stored_bytes(weight: torch.Tensor) -> int:
    """The bytes a weight takes in memory: its data (4-bit weights packed) and the block scales of a 4-bit weight (of
    each expert of `quantize_experts`)."""
    total = weight.numel() * weight.element_size()
    for w in getattr(weight, "experts", [weight]):
        state = getattr(w, "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            if state.state2 is not None:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return total


def weight_dtype(weight: torch.Tensor) -> torch.dtype:
    """The float dtype a weight computes in: its own, or for a quantized weight the dtype it dequantizes to."""
    if weight.is_floating_point():
        return weight.dtype
    experts = getattr(weight, "experts", None)
    if experts is not None:
        return weight_dtype(experts[0])
    quant_state = getattr(weight, "quant_state", None)
    return quant_state.dtype if quant_state is not None else torch.get_default_dtype()


def dequantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """The float (out_features, in_features) matrix of a weight, quantized or not."""
    mode = quantize_mode(weight)
    if mode is None:
        return weight.detach()
    bnb = _bnb()
    if mode == "bnb.int8":
        return weight.data.float() * (weight.SCB.to(weight.device).float() / 127).unsqueeze(1)
    return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """`F.linear` that also takes bitsandbytes 4-bit and int8 weights (frozen: gradients flow to `x` only)."""
    mode = quantize_mode(weight)
    if mode is None:
        return F.linear(x, weight, bias)
    bnb = _bnb()
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):  # autocast skips custom autograd functions: cast as it would
        x = x.to(torch.get_autocast_dtype(device_type))
    if mode == "bnb.int8":
        if weight.SCB.device != weight.device:  # Module.to() moves the data but not the scales
            weight.SCB = weight.SCB.to(weight.device)
        state = bnb.MatmulLtState()
        state.CB, state.SCB, state.has_fp16_weights = weight.data, weight.SCB, False
        state.is_training = device_type == "cpu"  # on CPU this selects the dequantize + float matmul kernel
        out = bnb.matmul(x, weight.data, state=state)
    else:
        out = bnb.matmul_4bit(x, weight.data, quant_state=weight.quant_state)
    return out if bias is None else out + bias.to(out.dtype)


class Linear(nn.Module):
    """Like `nn.Linear` (same `weight`/`bias` state-dict keys), but the weight may also be a bitsandbytes weight."""

    def __init__(self, weight: nn.Parameter, bias: Optional[nn.Parameter]) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias

    @property
    def in_features(self) -> int:
        return weight_shape(self.weight)[1]

    @property
    def out_features(self) -> int:
        return weight_shape(self.weight)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"quantized={quantize_mode(self.weight)}")


def weight_shape(weight: torch.Tensor) -> tuple:
    """(out_features, in_features) of a linear weight, also for a packed bitsandbytes 4-bit weight."""
    quant_state = getattr(weight, "quant_state", None)
    return tuple(quant_state.shape) if quant_state is not None else tuple(weight.shape)


def quantizable_weights(model: nn.Module) -> dict:
    """Turns `nn.Linear`s into `Linear`s and returns {id(weight): weight} of those whose weight is not shared with
    an embedding (a tied lm_head)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Linear(child.weight, child.bias))
    embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {id(m.weight): m.weight for m in model.modules() if isinstance(m, Linear) and id(m.weight) not in embedding}


def replace_parameters(model: nn.Module, new: dict) -> None:
    """Puts new[id(old)] in every slot that holds `old`: shared parameters stay shared."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and id(param) in new:
                module._parameters[name] = new[id(param)]
