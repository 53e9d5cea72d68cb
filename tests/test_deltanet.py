"""Gated DeltaNet against transformers' Qwen3_5GatedDeltaNet; the chunked rule against a token-by-token loop (values
and gradients); prefill and decoding with the state == the full forward; packed examples == each alone; copy_rows."""

import pytest
import torch

from lit_gpt.config import Config
from lit_gpt.deltanet import CHUNK, DeltaNetState, GatedDeltaNet, chunked_delta_rule, recurrent_delta_rule

CONFIG = Config(n_embd=64, n_head=4, linear_attention=True, linear_n_key_heads=2, linear_n_value_heads=4,
                linear_key_head_size=16, linear_value_head_size=24, linear_conv_kernel=4, norm_eps=1e-6)
# our parameter <- transformers' (the converter's mapping)
NAMES = dict(qkv="in_proj_qkv", gate="in_proj_z", beta="in_proj_b", decay="in_proj_a", conv="conv1d", proj="out_proj")


def hf_layer(seed: int = 0) -> torch.nn.Module:
    """transformers' layer of CONFIG's sizes, every weight moved off its init: the decays range from slow (a state
    that outlives several chunks) to fast."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

    c = CONFIG
    hf_config = transformers.Qwen3_5TextConfig(
        hidden_size=c.n_embd, linear_num_key_heads=c.linear_n_key_heads, linear_num_value_heads=c.linear_n_value_heads,
        linear_key_head_dim=c.linear_key_head_size, linear_value_head_dim=c.linear_value_head_size,
        linear_conv_kernel_dim=c.linear_conv_kernel, rms_norm_eps=c.norm_eps, num_hidden_layers=1,
        layer_types=["linear_attention"])
    torch.manual_seed(seed)
    hf = Qwen3_5GatedDeltaNet(hf_config, 0)
    Hv = c.linear_n_value_heads
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        hf.A_log.copy_(torch.linspace(-4, 0.5, Hv))
        hf.dt_bias.copy_(torch.randn(Hv) * 0.5 - 2)
        hf.norm.weight.copy_(torch.randn(c.linear_value_head_size))
    return hf


def ours_from(hf: torch.nn.Module) -> GatedDeltaNet:
    hf_state = hf.state_dict()
    state = {k: hf_state[k] for k in ("dt_bias", "A_log", "norm.weight")}
    state.update({f"{ours}.weight": hf_state[f"{theirs}.weight"] for ours, theirs in NAMES.items()})
    model = GatedDeltaNet(CONFIG)
    model.load_state_dict(state, strict=True)
    return model


def full(model: GatedDeltaNet, x: torch.Tensor) -> torch.Tensor:
    return model(x, None, None, None, None)


def step(model: GatedDeltaNet, x: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    return model(x, None, None, None, (input_pos, int(input_pos.max()) + 1))


@pytest.mark.parametrize("T", [150, 5])
def test_matches_transformers(T):
    hf = hf_layer()
    model = ours_from(hf)
    x = torch.randn(2, T, CONFIG.n_embd)
    with torch.no_grad():
        expected = hf(x)
        torch.testing.assert_close(full(model, x), expected)
    assert expected.abs().mean() > 0.05  # a test that can fail: the layer's output is not ~0


@torch.no_grad()
def test_bfloat16_casts_as_transformers():
    """In bfloat16 the same casts (float32 rule and norm, the norm's scale in bfloat16) give the same bits on CPU; a
    cast elsewhere changes about half of them."""
    hf = hf_layer().bfloat16()
    model = ours_from(hf).bfloat16()
    x = torch.randn(2, 150, CONFIG.n_embd, dtype=torch.bfloat16)
    torch.testing.assert_close(full(model, x), hf(x), rtol=0, atol=0)


@torch.no_grad()
def test_prefill_and_decoding_equal_full_forward():
    """Token by token from position 0, and chunks with a state (70, 40 tokens) then single tokens across the
    64/128 boundaries then a chunk again."""
    model = ours_from(hf_layer())
    x = torch.randn(2, 136, CONFIG.n_embd)
    expected = full(model, x)

    model.kv_cache = DeltaNetState(2, CONFIG, torch.device("cpu"), torch.float32)
    y = torch.cat([step(model, x[:, t:t + 1], torch.tensor([t])) for t in range(70)], 1)
    torch.testing.assert_close(y, expected[:, :70])

    model.kv_cache.recurrent.fill_(7.0)  # rows at position 0 restart: the stale state is not read
    model.kv_cache.conv.fill_(7.0)
    pieces, out, t = [70, 40] + [1] * 20 + [6], [], 0
    for n in pieces:
        out.append(step(model, x[:, t:t + n], torch.arange(t, t + n)))
        t += n
    torch.testing.assert_close(torch.cat(out, 1), expected)


@torch.no_grad()
def test_rows_restart_or_continue():
    """Per-row positions (B, T): row 0 continues its sequence, row 1 starts a new one, in chunks and in decoding."""
    model = ours_from(hf_layer())
    a, b = torch.randn(2, 20, CONFIG.n_embd), torch.randn(2, 8, CONFIG.n_embd)
    model.kv_cache = DeltaNetState(2, CONFIG, torch.device("cpu"), torch.float32)
    step(model, a[:, :12], torch.arange(12))
    pos = torch.stack([torch.arange(12, 17), torch.arange(5)])  # (B, T)
    y = step(model, torch.stack([a[0, 12:17], b[1, :5]]), pos)
    y_1 = step(model, torch.stack([a[0, 17:18], b[1, 5:6]]), pos[:, -1:] + 1)
    y_2 = step(model, torch.stack([a[0, 18:19], b[0, 0:1]]), torch.tensor([[18], [0]]))
    torch.testing.assert_close(y[0], full(model, a[:1, :17])[0, 12:])
    torch.testing.assert_close(y[1], full(model, b[1:, :5])[0])
    torch.testing.assert_close(y_1[:, 0], torch.stack([full(model, a[:1, :18])[0, 17], full(model, b[1:, :6])[0, 5]]))
    torch.testing.assert_close(y_2[:, 0], torch.stack([full(model, a[:1, :19])[0, 18], full(model, b[:1, :1])[0, 0]]))


@torch.no_grad()
def test_packed_examples_equal_each_alone():
    """lengths: examples restart from zero; each answer of (p, a1, a2) continues the prompt alone (its recurrent
    state and conv history), incl. examples longer than a chunk and shorter than the conv kernel."""
    model = ours_from(hf_layer())
    lengths = [5, (70, 30, 2), 80, (2, 3, 1), 3]
    sizes = [n if isinstance(n, int) else sum(n) for n in lengths]
    x = torch.randn(1, sum(sizes), CONFIG.n_embd)
    y = model(x, None, None, lengths, None)
    for e, x_e, y_e in zip(lengths, x.split(sizes, 1), y.split(sizes, 1)):
        if isinstance(e, int):
            torch.testing.assert_close(y_e, full(model, x_e))
            continue
        p, answers = e[0], e[1:]
        start = p
        for n in answers:
            alone = full(model, torch.cat([x_e[:, :p], x_e[:, start:start + n]], 1))
            torch.testing.assert_close(y_e[:, :p], alone[:, :p])
            torch.testing.assert_close(y_e[:, start:start + n], alone[:, p:])
            start += n


def reference_loop(q, k, v, g, beta, S):
    """The gated delta rule as written: decay, read k's value, write beta * the error, read q's value."""
    o = []
    for t in range(q.size(1)):
        S = S * g[:, t, :, None, None].exp()
        error = v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], S)
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], beta[:, t, :, None] * error)
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(o, 1), S


@pytest.mark.parametrize("rule", [chunked_delta_rule, recurrent_delta_rule])
def test_rule_and_gradients_equal_reference_loop(rule):
    torch.manual_seed(0)
    B, T, H, dk, dv = 2, 2 * CHUNK + 22, 3, 8, 5
    k = torch.nn.functional.normalize(torch.randn(B, T, H, dk), dim=-1)
    inputs = dict(q=torch.randn(B, T, H, dk) * dk ** -0.5, k=k, v=torch.randn(B, T, H, dv),
                  g=-torch.rand(B, T, H) * torch.tensor([0.01, 0.1, 1.0]), beta=torch.rand(B, T, H),
                  S=torch.randn(B, H, dk, dv))
    w_o, w_S = torch.randn(B, T, H, dv), torch.randn(B, H, dk, dv)
    results = []
    for f in (rule, reference_loop):
        leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
        o, S = f(**leaves)
        ((o * w_o).sum() + (S * w_S).sum()).backward()
        results.append((o, S, {name: t.grad for name, t in leaves.items()}))
    (o, S, grads), (o_ref, S_ref, grads_ref) = results
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(S, S_ref)
    torch.testing.assert_close(grads, grads_ref)
    assert all(grads_ref[name].abs().max() > 1e-3 for name in inputs)


@torch.no_grad()
def test_copy_rows():
    """A prompt's state copied to other rows: each decodes its own next token as if after the prompt; first_row."""
    model = ours_from(hf_layer())
    x = torch.randn(1, 9, CONFIG.n_embd)
    nxt = torch.randn(2, 1, CONFIG.n_embd)
    model.kv_cache = state = DeltaNetState(4, CONFIG, torch.device("cpu"), torch.float32)
    step(model, x, torch.arange(9))  # row 0
    state.copy_rows(torch.tensor([0]), torch.tensor([2, 3]))
    torch.testing.assert_close(state.recurrent[2:], state.recurrent[:1].expand(2, -1, -1, -1))
    state.first_row = 2
    y = step(model, nxt, torch.tensor([9]))
    for i in range(2):
        torch.testing.assert_close(y[i], full(model, torch.cat([x, nxt[i:i + 1]], 1))[0, 9:])
    assert state.recurrent[1].abs().max() == 0  # rows outside the batch untouched
    before = state.conv.clone(), state.recurrent.clone()
    state.copy_rows(torch.tensor([2, 3]), torch.tensor([3, 2]))  # a swap: the sources are read before the writes
    torch.testing.assert_close(state.conv[2:], before[0][[3, 2]])
    torch.testing.assert_close(state.recurrent[2:], before[1][[3, 2]])
