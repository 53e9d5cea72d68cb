"""Attention with sinks (gpt-oss, lit_gpt/sinks.py and folded_attention's sink column) against transformers' eager
gpt-oss attention: causal, sliding windows, a chunk and one query against a longer cache, a packed example's 2-D
mask, grouped-query heads; outputs and the gradients of q, k, v and the sinks."""

from types import SimpleNamespace

import pytest
import torch

from lit_gpt.folded import folded_attention
from lit_gpt.sinks import sink_attention, sink_attention_math

transformers = pytest.importorskip("transformers")

B, H, G, HS = 2, 4, 2, 8  # batch, query heads, key/value heads, head size


def transformers_attention(q, k, v, sinks, mask, scale):
    """transformers' eager gpt-oss attention; mask (..., T, L) bool."""
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    module = SimpleNamespace(num_key_value_groups=q.size(1) // k.size(1), sinks=sinks, training=False)
    bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))
    out, _ = eager_attention_forward(module, q, k, v, bias, scaling=scale)
    return out.transpose(1, 2)  # (B, H, T, hs)


def causal(T: int, L: int, window: int = 0) -> torch.Tensor:
    """(T, L) which keys the last T of L positions see: the earlier ones, within `window` (0: all)."""
    q_pos, k_pos = torch.arange(L - T, L)[:, None], torch.arange(L)[None]
    return (k_pos <= q_pos) & ((k_pos > q_pos - window) if window else True)


ROWS = (torch.rand(B, 1, 5, 5, generator=torch.Generator().manual_seed(0)) > 0.4) | torch.eye(5, dtype=torch.bool)
CASES = {  # name: (T, L, mask given to ours (None: causal), the mask transformers gets)
    "causal": (11, 11, None, causal(11, 11)),
    "window": (11, 11, causal(11, 11, window=4), causal(11, 11, window=4)),
    "chunk against a cache": (4, 10, causal(4, 10), causal(4, 10)),
    "one query": (1, 9, None, causal(1, 9)),
    "one query, window": (1, 9, causal(1, 9, window=4), causal(1, 9, window=4)),
    "per-row masks": (5, 5, ROWS, ROWS),
}


def tensors(T: int, L: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, HS, generator=gen, dtype=dtype).transpose(1, 2)  # strided, as the model's
    k, v = (torch.randn(B, G, L, HS, generator=gen, dtype=dtype) for _ in range(2))
    sinks = torch.randn(H, generator=gen, dtype=dtype) * 2
    return [t.requires_grad_() for t in (q, k, v, sinks)]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("path", ["cpu flash", "math"])
def test_sink_attention_matches_transformers_eager(case: str, path: str) -> None:
    T, L, mask, theirs = CASES[case]
    scale = 0.3
    for dtype in (torch.float32, torch.float64):
        q, k, v, sinks = tensors(T, L, dtype)
        if path == "math":
            out = sink_attention_math(q, k, v, sinks, mask, mask is None and T > 1, scale)
        else:
            out = sink_attention(q, k, v, sinks, mask, scale)
        expected = transformers_attention(q, k, v, sinks, theirs, scale)
        torch.testing.assert_close(out, expected)
        if dtype == torch.float64:  # the gradients of every input, the sinks' too
            grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(3))
            ours = torch.autograd.grad(out, (q, k, v, sinks), grad)
            reference = torch.autograd.grad(expected, (q, k, v, sinks), grad)
            for name, a, b in zip("q k v sinks".split(), ours, reference):
                torch.testing.assert_close(a, b, msg=f"{case}, {path}: the gradient of {name}")
            assert ours[3].abs().min() > 1e-3  # every sink gets a gradient


def test_folded_attention_with_sinks_matches_transformers_eager() -> None:
    for dtype in (torch.float32, torch.float64):
        q, k, v, sinks = tensors(13, 13, dtype, seed=1)
        out = folded_attention(q, k, v, None, sinks)
        expected = transformers_attention(q, k, v, sinks, causal(13, 13), HS ** -0.5)
        torch.testing.assert_close(out, expected)
        if dtype == torch.float64:
            grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(3))
            for a, b in zip(torch.autograd.grad(out, (q, k, v, sinks), grad),
                            torch.autograd.grad(expected, (q, k, v, sinks), grad)):
                torch.testing.assert_close(a, b)


def test_sink_attention_in_bfloat16_is_near_float32() -> None:
    q, k, v, sinks = tensors(11, 11, torch.float32, seed=2)
    mask = causal(11, 11, window=4)
    expected = transformers_attention(q, k, v, sinks, mask, HS ** -0.5)
    out = sink_attention(*(t.bfloat16() for t in (q, k, v, sinks)), mask, None)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.02, atol=0.02)


def test_gpt_oss_training_gradients_match_transformers() -> None:
    """The tiny gpt-oss of test_model in training (the folded sink attention in its full layer, the CPU flash one in
    its window layers), float64: the loss and the gradient of every weight, the sinks' included, are transformers'
    (to 1e-6: both round the norms to float32, the weight multiply theirs in float64, ours in float32; max 1.8e-7)."""
    from test_model import SIZES, lit_model_from_hf, tiny_hf_model

    from lit_gpt.convert import lit_to_hf

    hf_model = tiny_hf_model("gpt_oss").double()
    hf_model.set_experts_implementation("eager")  # its default, torch._grouped_mm, takes no float64
    model = lit_model_from_hf(hf_model).double()
    idx = torch.randint(0, SIZES["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, SIZES["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(2))
    loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    expected = torch.nn.functional.cross_entropy(hf_model(idx).logits.flatten(0, 1), targets.flatten())
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    ours = lit_to_hf({name: p.grad for name, p in model.named_parameters()}, model.config)
    theirs = {name: p.grad for name, p in hf_model.named_parameters()}
    assert ours.keys() == theirs.keys()
    for name, grad in theirs.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-6, atol=1e-6, msg=name)
    assert all(theirs[f"model.layers.{i}.self_attn.sinks"].abs().min() > 0 for i in range(3))
