"""GPT against transformers on tiny random models of every family, KV-cache decoding, presets."""

from typing import Optional

import pytest
import torch

from lit_gpt.config import Config, name_to_config
from lit_gpt.convert import family, hf_config_from_lit, hf_to_lit
from lit_gpt.model import GPT
from lit_gpt.utils import chunked_cross_entropy, fastest_precision, num_parameters, response_loss

# (transformers config class name, kwargs) of tiny models covering each family's variants
TINY = {
    "llama-gqa": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                      rope_theta=10000.0)),
    "llama-tied": ("LlamaConfig", dict(num_attention_heads=6, num_key_value_heads=2, hidden_size=48,
                                       tie_word_embeddings=True, rope_theta=100000.0)),  # SmolLM2-like
    "llama-mha-head_dim": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4, head_dim=12,
                                               tie_word_embeddings=False)),
    "mistral": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=1, sliding_window=None,
                                      tie_word_embeddings=False)),
    "gpt_neox-parallel": ("GPTNeoXConfig", dict(num_attention_heads=4, rotary_pct=0.25, use_parallel_residual=True,
                                                hidden_act="gelu")),
    "gpt_neox-sequential": ("GPTNeoXConfig", dict(num_attention_heads=2, rotary_pct=0.5, use_parallel_residual=False,
                                                  hidden_act="gelu_new", tie_word_embeddings=False)),
    "falcon-7b-like": ("FalconConfig", dict(num_attention_heads=4, multi_query=True, new_decoder_architecture=False,
                                            parallel_attn=True, alibi=False, bias=False)),
    "falcon-mha": ("FalconConfig", dict(num_attention_heads=4, multi_query=False, new_decoder_architecture=False,
                                        parallel_attn=True, alibi=False, bias=True, tie_word_embeddings=False)),
    # the modern families: wavelengths both sides of Llama 3's bands, windows shorter than the test sequences
    "llama3-tied": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                                                             low_freq_factor=1.0, high_freq_factor=4.0,
                                                             original_max_position_embeddings=32))),
    "qwen2": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen3-head_dim": ("Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                                           tie_word_embeddings=True)),
    "gemma3": ("Gemma3TextConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=12, num_hidden_layers=3,
                                        sliding_window=5, layer_types=["sliding_attention", "full_attention",
                                                                       "sliding_attention"],
                                        query_pre_attn_scalar=10, rope_parameters=dict(
                                            full_attention=dict(rope_type="linear", factor=4.0, rope_theta=1e6),
                                            sliding_attention=dict(rope_type="default", rope_theta=10000.0)))),
    "phi3-partial-sliding": ("Phi3Config", dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=6,
                                                partial_rotary_factor=0.5, tie_word_embeddings=False,
                                                pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "phi3-longrope": ("Phi3Config", dict(num_attention_heads=4, num_key_value_heads=4, partial_rotary_factor=0.75,
                                         original_max_position_embeddings=12, tie_word_embeddings=True,
                                         pad_token_id=0, bos_token_id=1, eos_token_id=2, rope_parameters=dict(
                                             rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.75,
                                             original_max_position_embeddings=12, short_factor=[1.0, 1.5, 2.0],
                                             long_factor=[3.0, 5.0, 11.0]))),
    "mistral-head_dim-sliding": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                                                       sliding_window=5, tie_word_embeddings=False)),
    # the 2026 dense families: SmolLM3's NoPE layers, Ministral 3's YaRN + query scaling past its original context (8),
    # OLMo 2's output-only norms and whole-width q/k norms, OLMo 3's window with YaRN on its full layers only
    "smollm3-nope": ("SmolLM3Config", dict(num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
                                           no_rope_layer_interval=2, tie_word_embeddings=True, pad_token_id=0,
                                           bos_token_id=1, eos_token_id=2,
                                           rope_parameters=dict(rope_type="default", rope_theta=50000.0))),
    "ministral3-yarn": ("Ministral3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                                                 tie_word_embeddings=False, rope_parameters=dict(
                                                     rope_type="yarn", rope_theta=1e6, factor=4.0,
                                                     original_max_position_embeddings=8, beta_fast=32.0,
                                                     beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0,
                                                     llama_4_scaling_beta=0.1))),
    "olmo2": ("Olmo2Config", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "olmo3-yarn-sliding": ("Olmo3Config", dict(num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=4,
                                               sliding_window=5, tie_word_embeddings=False, rope_parameters=dict(
                                                   full_attention=dict(rope_type="yarn", rope_theta=5e5, factor=8.0,
                                                                       original_max_position_embeddings=8,
                                                                       beta_fast=32.0, beta_slow=1.0),
                                                   sliding_attention=dict(rope_type="default", rope_theta=5e5)))),
    # Qwen3.5: three Gated DeltaNet layers to one gated full-attention layer, partial RoPE; sequences past a chunk (64)
    "qwen3_5-hybrid": ("Qwen3_5TextConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                                 layer_types=["linear_attention", "full_attention"],
                                                 num_hidden_layers=2, linear_num_key_heads=2,
                                                 linear_num_value_heads=4, linear_key_head_dim=8,
                                                 linear_value_head_dim=12, max_position_embeddings=256,
                                                 tie_word_embeddings=False)),
    # Gemma 4: per-layer inputs, the last two layers reusing keys and values (double-wide MLPs), a global layer of
    # its own head size; k = v with fewer global kv heads, logit softcapping; proportional RoPE; windows of 5
    "gemma4-ple-shared-kv": ("Gemma4TextConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, global_head_dim=16, num_hidden_layers=6,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2, sliding_window=5,
        num_kv_shared_layers=2, use_double_wide_mlp=True, hidden_size_per_layer_input=8, vocab_size_per_layer_input=120,
        rope_parameters=dict(full_attention=dict(rope_type="proportional", partial_rotary_factor=0.25, rope_theta=1e6),
                             sliding_attention=dict(rope_type="default", rope_theta=10000.0)))),
    "gemma4-k_eq_v": ("Gemma4TextConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, global_head_dim=16, num_global_key_value_heads=1,
        attention_k_eq_v=True, num_hidden_layers=3, layer_types=["sliding_attention", "sliding_attention",
                                                                 "full_attention"],
        sliding_window=5, hidden_size_per_layer_input=0, final_logit_softcapping=3.0, tie_word_embeddings=False,
        rope_parameters=dict(full_attention=dict(rope_type="proportional", partial_rotary_factor=0.25, rope_theta=1e6),
                             sliding_attention=dict(rope_type="default", rope_theta=10000.0)))),
    # Gemma 4 26B-A4B's layout: in every layer 6 experts (2 per token) beside the dense MLP; windows of 5
    "gemma4-moe": ("Gemma4TextConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, global_head_dim=16, num_global_key_value_heads=1,
        attention_k_eq_v=True, num_hidden_layers=3, layer_types=["sliding_attention", "sliding_attention",
                                                                 "full_attention"],
        sliding_window=5, hidden_size_per_layer_input=0, final_logit_softcapping=3.0, enable_moe_block=True,
        num_experts=6, top_k_experts=2, moe_intermediate_size=16,
        rope_parameters=dict(full_attention=dict(rope_type="proportional", partial_rotary_factor=0.25, rope_theta=1e6),
                             sliding_attention=dict(rope_type="default", rope_theta=10000.0)))),
    # mixtures of experts: Qwen3-MoE with a dense first layer, 6 experts of which 2 per token, renormalised
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_hidden_layers=3,
                                         num_experts=6, num_experts_per_tok=2, moe_intermediate_size=16,
                                         mlp_only_layers=[0], norm_topk_prob=True, tie_word_embeddings=False)),
    # Qwen3.5-MoE: Qwen3.5's Gated DeltaNet and gated full-attention layers, each with 6 experts of which 2 per token
    # and a shared expert behind its sigmoid gate
    "qwen3_5_moe": ("Qwen3_5MoeTextConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                                 layer_types=["linear_attention", "full_attention"],
                                                 num_hidden_layers=2, linear_num_key_heads=2,
                                                 linear_num_value_heads=4, linear_key_head_dim=8,
                                                 linear_value_head_dim=12, max_position_embeddings=256,
                                                 num_experts=6, num_experts_per_tok=2, moe_intermediate_size=16,
                                                 shared_expert_intermediate_size=24, tie_word_embeddings=False)),
    # gpt-oss: sinks, biases on q/k/v/o, windows of 4 (layers 0 and 2) and a full layer, YaRN, 6 experts of which 2
    # per token through the clamped SwiGLU (a limit the perturbed weights reach); transformers' eager attention
    "gpt_oss": ("GptOssConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_hidden_layers=3,
                                     num_local_experts=6, num_experts_per_tok=2, sliding_window=4, swiglu_limit=1.5,
                                     rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0,
                                                          original_max_position_embeddings=16, beta_fast=32.0,
                                                          beta_slow=1.0, truncate=False))),
}
SIZES = dict(vocab_size=120, hidden_size=32, intermediate_size=56, num_hidden_layers=2, max_position_embeddings=64)


def tiny_hf_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """A transformers causal LM of `kind` with seeded random weights (norms and biases randomized too)."""
    import transformers

    class_name, kwargs = TINY[kind]
    sizes = dict(SIZES)
    if class_name == "FalconConfig":
        sizes = dict(vocab_size=sizes["vocab_size"], hidden_size=sizes["hidden_size"], num_hidden_layers=2,
                     max_position_embeddings=64, ffn_hidden_size=sizes["intermediate_size"])
    hf_config = getattr(transformers, class_name)(**{**sizes, **kwargs})
    torch.manual_seed(seed)
    # sdpa, as ours: eager attention differs from it by float error (1e-5 on the tiny Gemma 3); gpt-oss has no sdpa
    attention = "eager" if class_name == "GptOssConfig" else "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation=attention).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 1 else 0.2) + (1.0 if "norm" in name and
                                                                             name.endswith("weight") else 0.0))
        for name, b in model.named_buffers():  # Gemma 4's stored per-layer scalars
            if name.endswith("layer_scalar"):
                b.copy_(torch.rand_like(b) + 0.5)
    return model


def lit_model_from_hf(hf_model: torch.nn.Module, drop_lm_head: bool = False) -> GPT:
    config = Config.from_hf_config(hf_model.config.to_dict())
    items = [(k, v) for k, v in hf_model.state_dict().items() if not (drop_lm_head and k == "lm_head.weight")]
    model = GPT(config)
    model.load_state_dict(hf_to_lit(iter(items), config), strict=True)
    return model.eval()


@pytest.mark.parametrize("kind", list(TINY))
def test_logits_match_transformers(kind: str) -> None:
    hf_model = tiny_hf_model(kind)
    model = lit_model_from_hf(hf_model)
    assert family(model.config) == hf_model.config.model_type
    for T in (17, 9) + ((150,) if hf_model.config.max_position_embeddings > 150 else ()):
        # past the windows, the long-RoPE switch (12) and YaRN's original context (8), and before; Qwen3.5 past 2 chunks
        idx = torch.randint(0, SIZES["vocab_size"], (2, T), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = hf_model(idx).logits
            actual = model(idx)
        torch.testing.assert_close(actual, expected)
    if model.config.tie_embeddings:  # transformers saves tied models without lm_head
        assert model.lm_head.weight is model.transformer.wte.weight
        with torch.no_grad():
            torch.testing.assert_close(lit_model_from_hf(hf_model, drop_lm_head=True)(idx), expected)


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt_neox-parallel", "falcon-7b-like", "gemma3", "phi3-partial-sliding",
                                  "mistral-head_dim-sliding", "qwen3-head_dim", "ministral3-yarn",
                                  "olmo3-yarn-sliding", "smollm3-nope", "qwen3_5-hybrid", "gemma4-ple-shared-kv",
                                  "gemma4-k_eq_v", "qwen3_moe", "gpt_oss", "qwen3_5_moe", "gemma4-moe"])
def test_kv_cache_decoding_matches_full_forward(kind: str) -> None:
    # float64: the paths differ only in float error, which the Gemma-like weights make ~1e-5 in float32
    model = lit_model_from_hf(tiny_hf_model(kind, seed=2)).double()
    idx = torch.randint(0, SIZES["vocab_size"], (2, 14), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(idx)
        model.set_kv_cache(batch_size=2, max_seq_length=32)
        steps = [model(idx[:, :6], torch.arange(0, 6)), model(idx[:, 6:10], torch.arange(6, 10))]  # prefill, chunk
        steps += [model(idx[:, i:i + 1], torch.tensor([i])) for i in range(10, 14)]  # single tokens
    torch.testing.assert_close(torch.cat(steps, dim=1), full)
    model.clear_kv_cache()
    assert all(block.attn.kv_cache is None for block in model.transformer.h)


def test_hybrid_cached_decoding_across_chunks_matches_full_forward() -> None:
    """Qwen3.5's linear layers decode from their conv and recurrent state: a prefill past one chunk, a chunk across the
    next boundary, single tokens; per-row positions where one row restarts at 0 while the other continues."""
    model = lit_model_from_hf(tiny_hf_model("qwen3_5-hybrid", seed=2)).double()
    idx = torch.randint(0, SIZES["vocab_size"], (2, 140), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(idx)
        model.set_kv_cache(batch_size=2, max_seq_length=160)
        steps = [model(idx[:, :70], torch.arange(0, 70)), model(idx[:, 70:126], torch.arange(70, 126))]
        steps += [model(idx[:, i:i + 1], torch.tensor([i])) for i in range(126, 140)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full)
        # row 0 starts over with a new sequence, row 1 goes on with its own
        other = torch.randint(0, SIZES["vocab_size"], (1, 5), generator=torch.Generator().manual_seed(4))
        pos = torch.stack([torch.arange(0, 5), torch.arange(140, 145)])
        both = model(torch.cat([other, idx[1:, :5]]), pos)
    model.clear_kv_cache()
    with torch.no_grad():
        torch.testing.assert_close(both[0], model(other)[0])
        # (the norms round to float32 also in a float64 model: 145 tokens in one go round a few ulps differently)
        torch.testing.assert_close(both[1], model(torch.cat([idx[1:], idx[1:, :5]], 1))[0, 140:], rtol=1e-5,
                                   atol=1e-5)


def test_every_preset_builds_a_config_that_transformers_can_express() -> None:
    assert len(name_to_config) >= 20
    for name in name_to_config:
        config = Config.from_name(name)
        assert config.name == name and config.hf_config["name"] == name and config.hf_config["org"]
        assert config.n_head % config.n_query_groups == 0 and config.padded_vocab_size >= config.vocab_size
        # our config -> config.json -> our config keeps every hyperparameter that shapes the model
        back = Config.from_hf_config(hf_config_from_lit(config))
        for field in ("n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "intermediate_size",
                      "rope_n_elem", "rope_base", "parallel_residual", "shared_attention_norm", "bias",
                      "norm_class_name", "norm_eps", "mlp_class_name", "gelu_approximate", "tie_embeddings",
                      "padded_vocab_size", "block_size"):
            assert getattr(back, field) == getattr(config, field), (name, field)


def test_unknown_preset_lists_close_matches() -> None:
    with pytest.raises(ValueError, match="pythia-70m"):
        Config.from_name("pythia-70")
    with pytest.raises(ValueError, match="SmolLM2-135M-Instruct"):
        Config.from_name("SmolLM2-135M-instruct")


@pytest.mark.parametrize("name, published", [
    ("pythia-70m", 70_426_624),  # EleutherAI's Pythia table, embeddings and unembedding included
    ("Llama-2-7b-hf", 6_738_415_616),
])
def test_preset_parameter_count_matches_the_published_size(name: str, published: int) -> None:
    with torch.device("meta"):
        model = GPT(Config.from_name(name))
    assert num_parameters(model) == published


def test_logits_at_gives_the_full_logits_at_those_positions_and_the_same_loss() -> None:
    model = lit_model_from_hf(tiny_hf_model("llama-gqa", seed=4))
    gen = torch.Generator().manual_seed(5)
    idx = torch.randint(0, SIZES["vocab_size"], (3, 12), generator=gen)
    targets = torch.randint(0, SIZES["vocab_size"], (3, 12), generator=gen)
    targets[0, :7], targets[1, :3], targets[2, 9:] = -100, -100, -100  # prompt and padding positions
    at = targets != -100
    with torch.no_grad():
        full = model(idx)
        torch.testing.assert_close(model(idx, logits_at=at), full[at])
        torch.testing.assert_close(response_loss(model, idx, targets), chunked_cross_entropy(full, targets))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_cross_entropy_equals_torch_cross_entropy_in_float32(dtype: torch.dtype, reduction: str) -> None:
    """Loss and logits gradient as F.cross_entropy on the logits upcast to float32, with ignored targets and chunks
    that do not divide the rows; the logits are left as they were (float32 chunks are views of them)."""
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(3, 37, 101, generator=gen) * 4).to(dtype)
    targets = torch.randint(0, 101, (3, 37), generator=gen)
    targets[0, :5], targets[2, 30:] = -100, -100
    before = logits.clone()
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = chunked_cross_entropy(ours, targets, chunk_size=8, reduction=reduction)
    expected = torch.nn.functional.cross_entropy(theirs.float().flatten(0, 1), targets.flatten(), reduction=reduction)
    (loss * 1.7).backward()
    (expected * 1.7).backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(ours.grad, theirs.grad)
    assert ours.grad.dtype == dtype and torch.equal(ours.detach(), before)
    assert chunked_cross_entropy(logits, torch.full((3, 37), -100)).item() == 0  # nothing to learn: 0, not nan


@pytest.mark.parametrize("n_head, n_query_groups, scale", [(6, 2, None), (4, 4, None), (4, 1, 0.3)])
def test_folded_attention_equals_sdpa(n_head: int, n_query_groups: int, scale: Optional[float]) -> None:
    """The CPU training attention (query heads of a group stacked along the sequence) gives SDPA's causal attention
    and its gradients, for grouped, multi-head and multi-query attention, on a batch of 2 rows."""
    from lit_gpt.model import folded_attention

    gen = torch.Generator().manual_seed(7)
    q = torch.randn(2, 11, n_head, 16, generator=gen).transpose(1, 2).requires_grad_()  # (B, n_head, T, hs) view
    k = torch.randn(2, n_query_groups, 11, 16, generator=gen, requires_grad=True)
    v = torch.randn(2, n_query_groups, 11, 16, generator=gen, requires_grad=True)
    grad = torch.randn(2, n_head, 11, 16, generator=gen)
    ours = folded_attention(q, k, v, scale)
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                              enable_gqa=n_head != n_query_groups)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(torch.autograd.grad(ours, (q, k, v), grad), torch.autograd.grad(theirs, (q, k, v), grad))


def test_default_cpu_precision_is_the_faster_matmul(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16-true with AMX or where bf16 matmuls are measured 1.5x faster than float32 ones, else 32-true."""
    import lit_gpt.utils

    def precision(amx: bool, bf16_seconds: float) -> str:
        monkeypatch.setattr(lit_gpt.utils, "cpu_has_amx", lambda: amx)
        monkeypatch.setattr(lit_gpt.utils, "matmul_seconds", lambda dtype: bf16_seconds if dtype == torch.bfloat16
                            else 1.0)
        lit_gpt.utils.cpu_bf16_is_faster.cache_clear()
        return fastest_precision("cpu")

    try:
        assert precision(amx=True, bf16_seconds=2.0) == "bf16-true"
        assert precision(amx=False, bf16_seconds=2.0) == "32-true"  # converted to float32 first: slower
        assert precision(amx=False, bf16_seconds=0.9) == "32-true"  # not clearly faster
        assert precision(amx=False, bf16_seconds=0.25) == "bf16-true"  # native bf16 dot products (Zen 4)
    finally:
        lit_gpt.utils.cpu_bf16_is_faster.cache_clear()
    monkeypatch.undo()
    measured = lit_gpt.utils.matmul_seconds(torch.float32)
    assert 0 < measured < 10
