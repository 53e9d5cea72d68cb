"""LoRA: no-op at init, per-kind placement, gradients, merging, PEFT as the oracle, strict loading errors."""

import contextlib
import io

import pytest
import torch
import torch.nn.functional as F

from lit_gpt.config import Config
from lit_gpt.lora import (
    LoRAConfig,
    LoRALinear,
    add_lora,
    check_base_state_dict,
    load_lora_state_dict,
    lora_dropout,
    lora_filter,
    lora_state_dict,
    mark_only_lora_as_trainable,
    merge_lora_weights,
    trainable_report,
)
from lit_gpt.model import GPT
from lit_gpt.utils import UserError, atomic_save, lazy_load

LLAMA = dict(rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm",
             mlp_class_name="LLaMAMLP", intermediate_size=88)
CONFIGS = {
    "llama-gqa": dict(LLAMA, n_head=4, n_query_groups=2),
    "llama-tied": dict(LLAMA, n_head=4, n_query_groups=4, tie_embeddings=True),
    "falcon-mqa": dict(n_head=4, n_query_groups=1, rotary_percentage=1.0, parallel_residual=True,
                       shared_attention_norm=True, bias=False),
    "neox-mha": dict(n_head=4, rotary_percentage=0.25, parallel_residual=True, bias=True),
}


def tiny_config(kind: str, **kwargs) -> Config:
    return Config(**{**dict(name=kind, n_layer=2, n_embd=32, vocab_size=100, padding_multiple=64, block_size=32),
                     **CONFIGS[kind], **kwargs})


def lora_model(kind: str, dtype: torch.dtype = torch.float32, seed: int = 0, **lora_kwargs) -> tuple:
    """(base GPT, LoRA GPT holding the same base weights) in eval mode."""
    torch.manual_seed(seed)
    config = tiny_config(kind)
    base = GPT(config).to(dtype).eval()
    model = add_lora(GPT(config), LoRAConfig(**lora_kwargs)).to(dtype).eval()
    model.load_state_dict(base.state_dict(), strict=False)
    return base, model


def randomize_lora(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if lora_filter(name):
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def tokens(batch: int = 2, length: int = 12, vocab_size: int = 96) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_output_equals_base_at_init(kind, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(kind)
    base = GPT(config)
    atomic_save(base.state_dict(), tmp_path / "lit_model.pth")
    model = add_lora(GPT(config), LoRAConfig())
    state = lazy_load(tmp_path / "lit_model.pth")
    check_base_state_dict(model, state)  # only LoRA keys missing: accepted
    model.load_state_dict(state, strict=False)
    x = tokens()
    expected = base.eval()(x)
    assert torch.equal(model.eval()(x), expected)
    assert torch.equal(model.train()(x), expected)  # dropout only touches the (zero) LoRA path
    lora_names = [n for n, _ in model.named_parameters() if lora_filter(n)]
    assert any(n.startswith("lm_head.") for n in lora_names) and any("mlp" in n for n in lora_names)
    if config.tie_embeddings:
        assert model.lm_head.weight is model.transformer.wte.weight  # LoRA on lm_head keeps the tie of the base
    for name, param in model.named_parameters():
        if name.endswith("lora_A"):
            bound = 1 / param.size(1) ** 0.5  # kaiming_uniform(a=sqrt(5)) on (r, in): U(-1/sqrt(in), 1/sqrt(in))
            assert param.abs().max() <= bound and param.abs().max() > bound / 2 and param.std() > 0


@pytest.mark.parametrize("kind", ["llama-gqa", "falcon-mqa", "neox-mha"])
@pytest.mark.parametrize("enabled", ["query", "key", "value", "projection", "mlp", "head"])
def test_each_switch_puts_lora_only_there(kind, enabled):
    switches = dict(query=False, key=False, value=False, projection=False, mlp=False, head=False)
    base, model = lora_model(kind, **{**switches, enabled: True})
    c = model.config
    names = {n for n, _ in model.named_parameters() if lora_filter(n)}
    layer = {"query": ["attn.qkv.lora_A_query", "attn.qkv.lora_B_query"],
             "key": ["attn.qkv.lora_A_key", "attn.qkv.lora_B_key"],
             "value": ["attn.qkv.lora_A_value", "attn.qkv.lora_B_value"],
             "projection": ["attn.proj.lora_A", "attn.proj.lora_B"],
             "mlp": [f"mlp.{m}.lora_{ab}" for m in (("fc_1", "fc_2", "proj") if c.mlp_class_name == "LLaMAMLP"
                                                    else ("fc", "proj")) for ab in "AB"]}
    expected = ({"lm_head.lora_A", "lm_head.lora_B"} if enabled == "head"
                else {f"transformer.h.{i}.{n}" for i in range(c.n_layer) for n in layer[enabled]})
    assert names == expected
    randomize_lora(model)

    q_rows, kv_rows = c.n_head * c.head_size, c.n_query_groups * c.head_size
    qkv = model.transformer.h[0].attn.qkv
    x = torch.randn(3, 5, c.n_embd)
    delta = (qkv(x) - F.linear(x, qkv.weight, qkv.bias)).abs().amax(dim=(0, 1))  # per output row
    rows = {"query": (0, q_rows), "key": (q_rows, q_rows + kv_rows), "value": (q_rows + kv_rows, q_rows + 2 * kv_rows)}
    for part, (start, end) in rows.items():
        changed = delta[start:end] > 0
        assert changed.all() if part == enabled else not changed.any(), part
    if enabled in rows:
        A, B = qkv.lora_pairs()[enabled]
        assert A.shape == (8, c.n_embd) and B.shape == (rows[enabled][1] - rows[enabled][0], 8)
    assert not torch.equal(model(tokens()), base(tokens()))


@pytest.mark.parametrize("kind", ["llama-gqa", "llama-tied", "falcon-mqa"])
def test_gradients_reach_only_lora(kind):
    _, model = lora_model(kind)
    randomize_lora(model)  # with B = 0 the gradient of A would be zero too
    mark_only_lora_as_trainable(model)
    model.train()
    logits = model(tokens())
    F.cross_entropy(logits.flatten(0, 1), tokens().flatten()).backward()
    for name, param in model.named_parameters():
        if lora_filter(name):
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name


def test_dropout_drops_p_and_keeps_the_expectation():
    x = torch.ones(400, 501)
    h, rescale = lora_dropout(x, 0.05, training=True)
    dropped = (h == 0).float()
    assert abs(dropped.mean().item() - 0.05) < 0.003  # 200,400 entries: the standard deviation is 0.0005
    assert abs(dropped[:, ::2].mean().item() - dropped[:, 1::2].mean().item()) < 0.005  # both halves of a draw
    assert abs((h * rescale).mean().item() - 1) < 0.005 and abs(rescale - 1 / 0.95) < 1e-4
    assert not torch.equal(lora_dropout(x, 0.05, True)[0], h)  # a new mask each call
    assert lora_dropout(x, 0.05, training=False) == (x, 1.0) and lora_dropout(x, 0.0, True) == (x, 1.0)


def test_train_mode_output_is_dropout_then_adapters():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(12, 10), requires_grad=False)
    layer = LoRALinear(weight, None, r=2, alpha=4, dropout=0.3, parts={"q": 6, "k": 3, "v": 3}, adapted=["q", "v"])
    randomize_lora(layer)
    x = torch.randn(2, 5, 10)
    torch.manual_seed(1)
    h, rescale = lora_dropout(x, 0.3, training=True)
    torch.manual_seed(1)
    out = layer.train()(x)  # the same draws
    pairs = layer.lora_pairs()
    update = lambda part: (h * rescale) @ pairs[part][0].T @ pairs[part][1].T * 2  # noqa: E731
    expected = x @ weight.T + torch.cat([update("q"), torch.zeros(2, 5, 3), update("v")], dim=-1)
    torch.testing.assert_close(out, expected)
    assert (h == 0).any() and not torch.equal(layer.eval()(x), out)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_merged_equals_unmerged(kind):
    base, model = lora_model(kind)
    randomize_lora(model)
    x = tokens()
    unmerged = model(x)
    merge_lora_weights(model)
    merged = model(x)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert (merged - base(x)).abs().max() > 1e-2  # the adapters were not zero
    weights = {n: p.clone() for n, p in model.named_parameters()}
    merge_lora_weights(model)  # a no-op the second time
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert torch.equal(model(x), merged)
    assert all(m.merged for m in model.modules() if isinstance(m, LoRALinear))


def test_merged_bf16_within_rounding():
    _, model32 = lora_model("llama-gqa")
    randomize_lora(model32)
    x = tokens()
    reference = model32(x)
    model = model32.to(torch.bfloat16)
    unmerged = model(x).float()
    merge_lora_weights(model)
    merged = model(x).float()
    error_unmerged = (unmerged - reference).abs().max()
    error_merged = (merged - reference).abs().max()
    # merging adds one bf16 rounding of W + dW: the error stays of the order of bf16 compute's own error
    assert error_merged < 3 * error_unmerged + 1e-2, (error_merged, error_unmerged)
    torch.testing.assert_close(merged, unmerged, rtol=0.05, atol=0.05)


def test_merge_of_tied_head_unties_and_saves(tmp_path):
    base, model = lora_model("llama-tied")
    randomize_lora(model)
    x = tokens()
    unmerged = model(x)
    wte = model.transformer.wte.weight.clone()
    merge_lora_weights(model)
    assert torch.equal(model.transformer.wte.weight, wte)  # the embedding keeps the base values
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert model.config.tie_embeddings is False and base.config.tie_embeddings is True  # a copy, not the caller's
    # a merged checkpoint (base keys only) rebuilds the merged model from its config
    merged_state = {k: v for k, v in model.state_dict().items() if not lora_filter(k)}
    atomic_save(merged_state, tmp_path / "lit_model.pth")
    rebuilt = GPT(model.config).eval()
    rebuilt.load_state_dict(lazy_load(tmp_path / "lit_model.pth"))
    torch.testing.assert_close(rebuilt(x), unmerged, rtol=1e-5, atol=1e-5)


def hf_llama(tie: bool):
    """A tiny transformers Llama and the GPT with the same weights and LoRA layout."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = tiny_config("llama-tied" if tie else "llama-gqa", padding_multiple=1, vocab_size=96)
    hf_config = LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=88,
                            num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
                            num_key_value_heads=config.n_query_groups, max_position_embeddings=config.block_size,
                            rms_norm_eps=config.norm_eps, tie_word_embeddings=tie, attention_bias=False)
    torch.manual_seed(0)
    return config, LlamaForCausalLM(hf_config).eval()


def run_peft(hf_model, target_modules: list) -> tuple:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(hf_model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                     target_modules=target_modules))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        peft_model.print_trainable_parameters()
    return peft_model, out.getvalue().strip()


ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


@pytest.mark.parametrize("tie", [False, True])
def test_trainable_report_matches_peft(tie):
    config, hf_model = hf_llama(tie)
    _, peft_report = run_peft(hf_model, ALL_LINEARS)
    model = add_lora(GPT(config), LoRAConfig())
    mark_only_lora_as_trainable(model)
    assert trainable_report(model) == peft_report
    assert peft_report.startswith("trainable params: ")  # the oracle printed what we compare against

    config, hf_model = hf_llama(tie)  # attention only: the per-kind switches map to PEFT target modules too
    _, peft_report = run_peft(hf_model, ["q_proj", "v_proj"])
    model = add_lora(GPT(config), LoRAConfig(key=False, projection=False, mlp=False, head=False))
    mark_only_lora_as_trainable(model)
    assert trainable_report(model) == peft_report


def test_adapter_maps_onto_peft_q_k_v():
    """Our qkv adapters are PEFT's q_proj/k_proj/v_proj adapters: same tensors, same logits."""
    config, hf_model = hf_llama(tie=False)
    hf_state = {k: v.clone() for k, v in hf_model.state_dict().items()}
    peft_model, _ = run_peft(hf_model, ALL_LINEARS)
    peft_model.eval()
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_" in name:
                param.normal_(std=0.1)

    model = add_lora(GPT(config), LoRAConfig()).eval()
    ours = {"transformer.wte.weight": hf_state["model.embed_tokens.weight"],
            "transformer.ln_f.weight": hf_state["model.norm.weight"], "lm_head.weight": hf_state["lm_head.weight"]}
    hf_names = {"attn.proj": "self_attn.o_proj", "mlp.fc_1": "mlp.gate_proj", "mlp.fc_2": "mlp.up_proj",
                "mlp.proj": "mlp.down_proj"}
    peft_state = peft_model.state_dict()
    for i in range(config.n_layer):
        hf, lit = f"model.layers.{i}", f"transformer.h.{i}"
        ours[f"{lit}.norm_1.weight"] = hf_state[f"{hf}.input_layernorm.weight"]
        ours[f"{lit}.norm_2.weight"] = hf_state[f"{hf}.post_attention_layernorm.weight"]
        ours[f"{lit}.attn.qkv.weight"] = torch.cat([hf_state[f"{hf}.self_attn.{p}_proj.weight"] for p in "qkv"])
        for part, p in (("query", "q"), ("key", "k"), ("value", "v")):
            for ab in "AB":
                ours[f"{lit}.attn.qkv.lora_{ab}_{part}"] = peft_state[
                    f"base_model.model.{hf}.self_attn.{p}_proj.lora_{ab}.default.weight"]
        for ln, hn in hf_names.items():
            ours[f"{lit}.{ln}.weight"] = hf_state[f"{hf}.{hn}.weight"]
            for ab in "AB":
                ours[f"{lit}.{ln}.lora_{ab}"] = peft_state[f"base_model.model.{hf}.{hn}.lora_{ab}.default.weight"]
    for ab in "AB":
        ours[f"lm_head.lora_{ab}"] = peft_state[f"base_model.model.lm_head.lora_{ab}.default.weight"]
    model.load_state_dict(ours, strict=True)

    x = tokens(length=16)
    with torch.no_grad():
        expected = peft_model(input_ids=x).logits
    actual = model(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    with peft_model.disable_adapter(), torch.no_grad():
        base = peft_model(input_ids=x).logits
    assert (expected - base).abs().max() > 1e-2  # the adapters do change the output


def test_lora_config_round_trip_and_validation():
    config = LoRAConfig(r=4, alpha=8, dropout=0.0, key=False, head=False)
    assert LoRAConfig(**config.to_dict()) == config and config.scaling == 2.0
    with pytest.raises(UserError, match="r=0"):
        LoRAConfig(r=0)
    with pytest.raises(UserError, match="at least one"):
        LoRAConfig(query=False, key=False, value=False, projection=False, mlp=False, head=False, experts=False)
    with pytest.raises(UserError, match="adapts nothing"):  # experts alone, in a model without experts
        add_lora(GPT(tiny_config("llama-gqa")), LoRAConfig(query=False, key=False, value=False, projection=False,
                                                           mlp=False, head=False))


def test_add_lora_on_meta_device():
    with torch.device("meta"):
        model = add_lora(GPT(tiny_config("llama-tied")), LoRAConfig())
    assert all(p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.h[1].attn.qkv.lora_B_key.shape == (model.config.n_query_groups * 8, 8)


def test_base_checkpoint_errors_name_the_keys():
    base, model = lora_model("llama-gqa")
    state = base.state_dict()
    check_base_state_dict(model, state)  # the base checkpoint fits the LoRA model

    missing = {k: v for k, v in state.items() if k != "transformer.h.1.attn.proj.weight"}
    with pytest.raises(UserError, match=r"missing from it: transformer\.h\.1\.attn\.proj\.weight"):
        check_base_state_dict(model, missing)
    with pytest.raises(UserError, match=r"unexpected in it: transformer\.h\.0\.attn\.rotary\.inv_freq"):
        check_base_state_dict(model, {**state, "transformer.h.0.attn.rotary.inv_freq": torch.zeros(4)})
    wrong = {**state, "transformer.h.0.mlp.fc_1.weight": torch.zeros(64, 32)}
    with pytest.raises(UserError, match=r"'transformer\.h\.0\.mlp\.fc_1\.weight' has shape \(64, 32\) in the "
                                        r"checkpoint but \(88, 32\) in the model"):
        check_base_state_dict(model, wrong)
    with pytest.raises(UserError, match=r"adapter\.pth.*missing from it: lm_head\.weight, transformer\.h\.0\."):
        check_base_state_dict(model, lora_state_dict(model), source="'adapter.pth'")  # an adapter passed as a base


def test_adapter_errors_name_keys_and_shapes():
    _, model = lora_model("llama-gqa")
    randomize_lora(model)
    adapter = lora_state_dict(model)
    _, other = lora_model("llama-gqa")  # same base weights, other LoRA values
    randomize_lora(other, seed=1)
    assert not torch.equal(other(tokens()), model(tokens()))
    load_lora_state_dict(other, adapter)
    assert torch.equal(other(tokens()), model(tokens()))

    no_key = {k: v for k, v in adapter.items() if k != "transformer.h.1.attn.qkv.lora_B_value"}
    with pytest.raises(UserError, match=r"missing from it: transformer\.h\.1\.attn\.qkv\.lora_B_value"):
        load_lora_state_dict(other, no_key)
    _, no_value = lora_model("llama-gqa", value=False)
    with pytest.raises(UserError, match=r"not in the model: transformer\.h\.0\.attn\.qkv\.lora_A_value, "):
        load_lora_state_dict(no_value, adapter)
    _, rank16 = lora_model("llama-gqa", r=16)
    with pytest.raises(UserError, match=r"'lm_head\.lora_A' has shape \(8, 32\) in the adapter but \(16, 32\) in "
                                        r"the model"):
        load_lora_state_dict(rank16, adapter)
    with pytest.raises(UserError, match="no LoRA layers"):
        load_lora_state_dict(GPT(tiny_config("llama-gqa")), adapter)
