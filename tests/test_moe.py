"""The MoE block against transformers' own sparse blocks (Qwen3-MoE, gpt-oss, Qwen3.5-MoE with its shared expert,
Gemma 4's router and experts), every weight perturbed, float32; the load-balancing loss against transformers'
`load_balancing_loss_func`; LoRA on the expert tensors against PEFT's `target_parameters` LoRA (outputs, adapter
gradients, merged tensors); merged == unmerged."""

from types import SimpleNamespace

import pytest
import torch

from lit_gpt.lora import mark_only_lora_as_trainable
from lit_gpt.moe import MoE, load_balancing_loss, router_logits

transformers = pytest.importorskip("transformers")

D, E, K, H = 32, 8, 2, 16  # n_embd, experts, experts per token, expert intermediate size


def moe_config(**kwargs) -> SimpleNamespace:
    """The fields MoE reads (the proposed Config fields), Qwen3-MoE's by default."""
    fields = dict(n_embd=D, n_expert=E, n_expert_per_token=K, moe_intermediate_size=H, router_bias=False,
                  router_scoring="softmax_topk", norm_topk_prob=True, router_norm=False, norm_eps=1e-6,
                  moe_activation="silu", gelu_approximate="none", swiglu_limit=7.0, swiglu_alpha=1.702,
                  moe_transposed=False, moe_interleaved=False, moe_bias=False, moe_shared_intermediate_size=0)
    return SimpleNamespace(**{**fields, **kwargs})


GPT_OSS = dict(router_bias=True, router_scoring="topk_softmax", moe_activation="clamped_swiglu", swiglu_limit=1.5,
               moe_transposed=True, moe_interleaved=True, moe_bias=True)
GEMMA4 = dict(router_norm=True, moe_activation="gelu", gelu_approximate="tanh")


def perturb(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (transformers leaves the expert tensors uninitialized and the routers zero), scales
    around 1."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = name.endswith("scale")
            p.copy_((1 if scale else 0) + torch.randn_like(p) * (0.3 if scale else 0.2))
    return module


def ours_from(hf_state: dict, config: SimpleNamespace, names: dict) -> MoE:
    """Our block with transformers' weights, `names`: our parameter <- theirs where they differ."""
    theirs = {ours: names.get(ours, ours) for ours in MoE(config).state_dict()}
    moe = MoE(config)
    moe.load_state_dict({ours: hf_state[t] for ours, t in theirs.items()}, strict=True)
    return moe


QWEN3_NAMES = {"router.weight": "gate.weight"}
QWEN35_NAMES = {**QWEN3_NAMES, "shared_expert.fc_1.weight": "shared_expert.gate_proj.weight",
                "shared_expert.fc_2.weight": "shared_expert.up_proj.weight",
                "shared_expert.proj.weight": "shared_expert.down_proj.weight",
                "shared_expert.gate.weight": "shared_expert_gate.weight"}
GEMMA4_NAMES = {"router.weight": "router.proj.weight", "router_scale": "router.scale",
                "per_expert_scale": "router.per_expert_scale"}


def qwen3_hf_config(**kwargs):
    return transformers.Qwen3MoeConfig(
        vocab_size=64, hidden_size=D, intermediate_size=48, moe_intermediate_size=H, num_experts=E,
        num_experts_per_tok=K, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        experts_implementation="eager", **kwargs)


def gpt_oss_hf_config():
    return transformers.GptOssConfig(
        vocab_size=64, hidden_size=D, intermediate_size=H, num_local_experts=E, num_experts_per_tok=K,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16, swiglu_limit=1.5,
        experts_implementation="eager")


def inputs(T: int = 20, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(2, T // 2, D) if T % 2 == 0 else torch.randn(1, T, D)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
@pytest.mark.parametrize("T", [20, 3])  # 3 tokens: most experts get none
@pytest.mark.parametrize("implementation", ["eager", "grouped_mm"])  # grouped_mm: transformers' default in a model
def test_qwen3_moe(norm_topk_prob, T, implementation):
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    hf_config = qwen3_hf_config(norm_topk_prob=norm_topk_prob)
    hf_config._experts_implementation = implementation
    hf = perturb(Qwen3MoeSparseMoeBlock(hf_config))
    config = moe_config(norm_topk_prob=norm_topk_prob)
    moe = ours_from(hf.state_dict(), config, QWEN3_NAMES)
    x = inputs(T)
    torch.testing.assert_close(moe(x), hf(x))
    torch.testing.assert_close(moe.router_logits, hf.gate(x.view(-1, D))[0])


def test_gpt_oss():
    """Top-k logits (with the router bias) then softmax; interleaved, transposed experts with biases; the clamped
    SwiGLU with a limit low enough that both clamps act."""
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    hf = perturb(GptOssMLP(gpt_oss_hf_config()))
    moe = ours_from(hf.state_dict(), moe_config(**GPT_OSS), {})
    x = inputs()
    gate_up = torch.einsum("nd,edo->neo", x.view(-1, D), hf.experts.gate_up_proj) + hf.experts.gate_up_proj_bias
    assert (gate_up[..., ::2] > 1.5).float().mean() > 0.05 and (gate_up[..., 1::2] < -1.5).float().mean() > 0.05
    torch.testing.assert_close(moe(x), hf(x)[0])


def test_qwen3_5_moe_shared_expert():
    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeSparseMoeBlock

    hf_config = transformers.Qwen3_5MoeTextConfig(
        hidden_size=D, moe_intermediate_size=H, shared_expert_intermediate_size=24, num_experts=E,
        num_experts_per_tok=K, num_hidden_layers=1, layer_types=["full_attention"], experts_implementation="eager")
    hf = perturb(Qwen3_5MoeSparseMoeBlock(hf_config))
    moe = ours_from(hf.state_dict(), moe_config(moe_shared_intermediate_size=24), QWEN35_NAMES)
    x = inputs()
    torch.testing.assert_close(moe(x), hf(x))


def test_gemma4_router_experts():
    """Gemma 4 routes the residual stream (normalised, scaled) and runs the experts on its pre-norm'd copy: two
    inputs here, the block's norms around them are the model's."""
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextExperts, Gemma4TextRouter

    hf_config = transformers.Gemma4TextConfig(
        hidden_size=D, intermediate_size=48, moe_intermediate_size=H, num_experts=E, top_k_experts=K,
        enable_moe_block=True, num_hidden_layers=1, layer_types=["full_attention"],
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, experts_implementation="eager")
    router, experts = perturb(Gemma4TextRouter(hf_config)), perturb(Gemma4TextExperts(hf_config), seed=2)
    hf_state = {**{f"router.{k}": v for k, v in router.state_dict().items()},
                **{f"experts.{k}": v for k, v in experts.state_dict().items()}}
    moe = ours_from(hf_state, moe_config(**GEMMA4), GEMMA4_NAMES)
    residual, normed = inputs(seed=1) * 3, inputs(seed=2)
    _, weights, chosen = router(residual.view(-1, D))
    torch.testing.assert_close(moe(normed, router_x=residual), experts(normed.view(-1, D), chosen, weights).view(
        normed.shape))


def test_load_balancing_loss():
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    torch.manual_seed(0)
    logits = [torch.randn(20, E) * 2, torch.randn(20, E)]
    mask = torch.ones(2, 10)
    mask[0, 7:] = 0
    mask[1, :2] = 0
    torch.testing.assert_close(load_balancing_loss(logits, K), load_balancing_loss_func(tuple(logits), E, K))
    torch.testing.assert_close(load_balancing_loss(logits, K, mask),
                               load_balancing_loss_func(tuple(logits), E, K, attention_mask=mask))
    assert not torch.allclose(load_balancing_loss(logits, K), load_balancing_loss(logits, K, mask))

    # from a forward: the layers' logits, and a gradient that reaches the routers
    model = torch.nn.Sequential(MoE(moe_config()), MoE(moe_config()))
    model(inputs())
    found = router_logits(model)
    assert len(found) == 2 and found[0].shape == (20, E)
    load_balancing_loss(found, K).backward()
    assert all(m.router.weight.grad.abs().sum() > 0 for m in model)


def peft_model(hf_model, r: int = 2, alpha: int = 5, seed: int = 3):
    """PEFT's target_parameters LoRA on both expert tensors of every layer, A and B random (nonzero)."""
    peft = pytest.importorskip("peft")

    lora = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=[],
                           target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    model = peft.get_peft_model(hf_model, lora)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    return model


def peft_adapters(hf_block) -> dict:
    """PEFT's adapters by our names: the first targeted parameter (gate_up_proj) is the inner wrapper,
    `experts.base_layer.lora_A`, down_proj the outer one, `experts.lora_A`."""
    outer = hf_block.experts
    return {"lora_A_gate_up": outer.base_layer.lora_A["default"].weight,
            "lora_B_gate_up": outer.base_layer.lora_B["default"].weight,
            "lora_A_down": outer.lora_A["default"].weight, "lora_B_down": outer.lora_B["default"].weight}


FAMILIES = {  # transformers' model, its block's output, our config, names
    "qwen3_moe": (lambda: transformers.Qwen3MoeForCausalLM(qwen3_hf_config(norm_topk_prob=True)), lambda y: y,
                  moe_config(), QWEN3_NAMES),
    "gpt_oss": (lambda: transformers.GptOssForCausalLM(gpt_oss_hf_config()), lambda y: y[0], moe_config(**GPT_OSS),
                {}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_experts_match_peft(family):
    """Same outputs and adapter gradients as PEFT (nonzero A and B; experts (E, out, in) and gpt-oss's transposed
    (E, in, out)); gradients reach the adapters only; merged == unmerged, and == PEFT's merged tensors."""
    build, output, config, names = FAMILIES[family]
    hf_model = perturb(build())
    block = hf_model.model.layers[0].mlp
    moe = ours_from({k.replace("experts.base_layer.base_layer.", "experts."): v for k, v in block.state_dict().items()},
                    config, names)
    model = peft_model(hf_model)
    block = model.base_model.model.model.layers[0].mlp
    moe.experts.add_lora(2, 5)
    adapters = peft_adapters(block)
    with torch.no_grad():
        for name, p in adapters.items():
            getattr(moe.experts, name).copy_(p)
    mark_only_lora_as_trainable(moe)
    assert sorted(n for n, p in moe.named_parameters() if p.requires_grad) == sorted(f"experts.{n}" for n in adapters)

    x = inputs()
    torch.testing.assert_close(moe(x), output(block(x)))

    # gradients in float64: in float32 PEFT's W + s B A and our x A^T B^T round differently, by up to ~2e-5 of the
    # adapter gradients (not within float32's default tolerance)
    moe.double(), model.double()
    x = x.double()
    y, y_hf = moe(x), output(block(x))
    torch.testing.assert_close(y, y_hf)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_hf.backward(grad)
    for name, p in adapters.items():
        assert getattr(moe.experts, name).grad.abs().mean() > 1e-3
        torch.testing.assert_close(getattr(moe.experts, name).grad, p.grad)
    assert all(p.grad is None for n, p in moe.named_parameters() if "lora_" not in n)

    with torch.no_grad():
        moe.experts.merge()
        moe.experts.merge()  # a second merge changes nothing
        torch.testing.assert_close(moe(x), y)
        merged = model.merge_and_unload().model.layers[0].mlp.experts
        for name in ("gate_up_proj", "down_proj"):
            torch.testing.assert_close(getattr(moe.experts, name), getattr(merged, name))


def test_lora_starts_as_identity_and_merges():
    """A fresh adapter (B zero) changes nothing; after training-like changes to B, merged == unmerged for the
    non-transposed and the transposed layouts, with a shared expert and Gemma 4's router."""
    for config in (moe_config(moe_shared_intermediate_size=24), moe_config(**GPT_OSS), moe_config(**GEMMA4)):
        moe = perturb(MoE(config))
        x = inputs()
        with torch.no_grad():
            y0 = moe(x)
            moe.experts.add_lora(4, 8)
            torch.testing.assert_close(moe(x), y0, rtol=0, atol=0)
            for name in ("lora_B_gate_up", "lora_B_down"):
                getattr(moe.experts, name).normal_(0, 0.3)
            y = moe(x)
            assert (y - y0).abs().max() > 1e-2
            moe.experts.merge()
            torch.testing.assert_close(moe(x), y)


@pytest.mark.parametrize("kind", ["qwen3_moe", "qwen3_5_moe", "gpt_oss"])
def test_load_balancing_loss_of_a_whole_model_is_transformers(kind):
    """`load_balancing_loss` over a tiny model's routers == transformers' `aux_loss` (output_router_logits=True),
    without and with an attention mask (a padded row's padding not counted)."""
    from test_model import lit_model_from_hf, tiny_hf_model

    hf = tiny_hf_model(kind)
    ours = lit_model_from_hf(hf)
    x = torch.randint(0, 100, (2, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x)
    mask[1, 7:] = 0
    for attention_mask in (None, mask):
        with torch.no_grad():
            expected = hf(x, attention_mask=attention_mask, output_router_logits=True).aux_loss
        ours(x)  # with gradients: the routers keep their logits
        k = ours.config.n_expert_per_token
        actual = load_balancing_loss(router_logits(ours), k, None if attention_mask is None else attention_mask)
        torch.testing.assert_close(actual, expected)
