"""Every preset builds a model whose parameter count is the one its publishers state."""

import json
from pathlib import Path

import pytest
import torch

from lit_gpt.config import Config, name_to_config
from lit_gpt.model import GPT
from lit_gpt.utils import num_parameters

# preset -> (total, non-embedding) parameters as published, None where a source states only the other one.
# Non-embedding = total less the embedding matrix and, when untied, the output matrix. Sources: "HF" is the size
# the Hugging Face model page reads from the safetensors metadata, "card" the model card, "report" a paper.
PUBLISHED = {
    # Pythia README, non-embedding column
    "pythia-70m": (None, "18.9M"), "pythia-160m": (None, "85.1M"), "pythia-410m": (None, "302M"),
    "pythia-1b": (None, "806M"), "pythia-1.4b": (None, "1.21B"), "pythia-2.8b": (None, "2.52B"),
    "pythia-6.9b": (None, "6.44B"), "pythia-12b": (None, "11.3B"),
    # HF
    **{f"Llama-2-{size}{kind}-hf": (total, None) for kind in ("", "-chat")
       for size, total in (("7b", "6.74B"), ("13b", "13.0B"), ("70b", "69.0B"))},
    "Mistral-7B-v0.1": ("7.24B", None), "falcon-7b": ("7.22B", None), "falcon-7b-instruct": ("7.22B", None),
    # cards
    "TinyLlama-1.1B-intermediate-step-1431k-3T": ("1.1B", None), "TinyLlama-1.1B-Chat-v1.0": ("1.1B", None),
    **{f"SmolLM2-{size}{kind}": (size, None) for kind in ("", "-Instruct") for size in ("135M", "360M", "1.7B")},
    # Llama 3.2 card (1.23B, 3.21B); HF for 3.1 and 3.3
    **{f"Llama-{size}{kind}": (total, None) for kind in ("", "-Instruct")
       for size, total in (("3.2-1B", "1.23B"), ("3.2-3B", "3.21B"), ("3.1-8B", "8.03B"))},
    "Llama-3.3-70B-Instruct": ("70.6B", None),
    # Qwen2.5 and Qwen3 cards
    **{f"Qwen2.5-{size}{kind}": sizes for kind in ("", "-Instruct") for size, sizes in (
        ("0.5B", ("0.49B", "0.36B")), ("1.5B", ("1.54B", "1.31B")), ("3B", ("3.09B", "2.77B")),
        ("7B", ("7.61B", "6.53B")), ("14B", ("14.7B", "13.1B")), ("32B", ("32.5B", "31.0B")),
        ("72B", ("72.7B", "70.0B")))},
    **{f"Qwen3-{size}": sizes for size, sizes in (
        ("0.6B", ("0.6B", "0.44B")), ("1.7B", ("1.7B", "1.4B")), ("4B", ("4.0B", "3.6B")),
        ("8B", ("8.2B", "6.95B")), ("14B", ("14.8B", "13.2B")), ("32B", ("32.8B", "31.2B")))},
    # Qwen3-MoE cards ("30.5B in total", "Non-Embedding: 29.9B"; "235B in total", "234B"), the 2507 ones as their base's
    **{f"Qwen3-{size}{kind}": sizes for kind in ("", "-Instruct-2507", "-Thinking-2507")
       for size, sizes in (("30B-A3B", ("30.5B", "29.9B")), ("235B-A22B", ("235B", "234B")))},
    # gpt-oss: OpenAI's gpt-oss model card (arXiv 2508.10925), table 1 ("Total": 20.91B, 116.83B)
    "gpt-oss-20b": ("20.91B", None), "gpt-oss-120b": ("116.83B", None),
    # Gemma 3: 270m HF and card; the others the Gemma 3 technical report (table 1), whose 4b/12b/27b totals
    # include the vision encoder
    "gemma-3-270m": ("268M", "100M"), "gemma-3-270m-it": ("268M", "100M"),
    **{f"gemma-3-{size}{kind}": (None, non_embedding) for kind in ("-pt", "-it") for size, non_embedding in (
        ("1b", "698M"), ("4b", "3209M"), ("12b", "10759M"), ("27b", "25600M"))},
    # HF
    "Phi-3-mini-4k-instruct": ("3.82B", None), "Phi-4-mini-instruct": ("3.84B", None),
    "Mistral-Nemo-Base-2407": ("12.2B", None), "Mistral-Nemo-Instruct-2407": ("12.2B", None),
    # Qwen3.5 cards ("Number of Parameters" of the language model; the multi-token-prediction layer, not in these
    # presets, adds under 2%)
    **{f"Qwen3.5-{size}{kind}": (size, None) for kind in ("", "-Base") for size in ("0.8B", "2B", "4B", "9B")},
    "Qwen3.5-27B": ("27B", None),
    # SmolLM3 card ("a 3B parameter language model")
    "SmolLM3-3B": ("3B", None), "SmolLM3-3B-Base": ("3B", None),
    # Ministral 3 cards ("3.4B Language Model", "13.5B Language Model"). The 8B card's "8.4B Language Model" is its
    # 8,489,553,920 parameters cut, not rounded (config.json gives them exactly): the Ministral 3 report's "8B" instead
    "Ministral-3-3B-Base-2512": ("3.4B", None), "Ministral-3-8B-Base-2512": ("8B", None),
    "Ministral-3-14B-Base-2512": ("13.5B", None),
    # HF
    **{f"OLMo-2-{size}{kind}": (total, None) for kind in ("", "-Instruct")
       for size, total in (("1124-7B", "7.3B"), ("1124-13B", "13.7B"), ("0325-32B", "32.2B"))},
    "Olmo-3-1025-7B": ("7.3B", None), "Olmo-3-1125-32B": ("32.2B", None),
    # whatmodel.sh's model pages (the Hub pages now round to "7B" / "32B")
    "Olmo-3-7B-Instruct": ("7.3B", None), "Olmo-3-7B-Think": ("7.3B", None), "Olmo-3-32B-Think": ("32.2B", None),
    "Olmo-3.1-32B-Instruct": ("32.2B", None),
    # Gemma 4 cards: "2.3B effective (5.1B with embeddings)", "4.5B effective (8B with embeddings)", "30.7B", beside
    # vision encoders of ~150M, ~150M, ~550M and audio encoders of ~300M (E2B, E4B). The 31B's figure is its text
    # decoder (its safetensors hold 31.27B with the vision encoder); the E2B's and E4B's totals count their encoders,
    # which ENCODERS adds to these text-decoder presets' counts
    **{f"gemma-4-{size}{kind}": (total, None) for kind in ("", "-it")
       for size, total in (("E2B", "5.1B"), ("E4B", "8B"), ("31B", "30.7B"), ("26B-A4B", "25.2B"))},
    # Qwen3.5-MoE cards ("35B in total and 3B activated", ...; the language model, without the multi-token-prediction
    # layer)
    **{f"Qwen3.5-{size}": (size.split("-")[0], None)
       for size in ("35B-A3B", "35B-A3B-Base", "122B-A10B", "397B-A17B")},
}
# parameters a published total counts beyond the model the preset builds: Gemma 4 E2B's and E4B's vision and audio
# encoders, as their cards give them
ENCODERS = {f"gemma-4-{size}{kind}": ("150M", "300M") for size in ("E2B", "E4B") for kind in ("", "-it")}
# no count published (StableLM-Alpha's card says 3B/7B of 3.6B/7.9B models; the Pythia table predates these two)
NOT_PUBLISHED = {"stablelm-base-alpha-3b", "stablelm-base-alpha-7b", "pythia-14m", "pythia-31m"}


# mixture-of-experts preset -> the activated parameters its model card states ("... and 3.3B activated")
ACTIVE = {f"Qwen3-{size}{kind}": active for kind in ("", "-Instruct-2507", "-Thinking-2507")
          for size, active in (("30B-A3B", "3.3B"), ("235B-A22B", "22B"))}
# gpt-oss's model card, table 1 ("Active Parameters"; its HF cards: 3.6B, 5.1B)
ACTIVE.update({"gpt-oss-20b": "3.61B", "gpt-oss-120b": "5.13B"})
# the Qwen3.5-MoE cards (their names' A3B, A10B, A17B) and Gemma 4's ("26B A4B": 25.2B total, 3.8B active)
ACTIVE.update({f"Qwen3.5-{size}": size.split("-A")[1].removesuffix("-Base")
               for size in ("35B-A3B", "35B-A3B-Base", "122B-A10B", "397B-A17B")})
ACTIVE.update({"gemma-4-26B-A4B": "3.8B", "gemma-4-26B-A4B-it": "3.8B"})
# cards whose figure is our count cut to its digits, not rounded: Qwen3-30B-A3B's "3.3B" of 3,353,032,704
CUT = {name for name in ACTIVE if name.startswith("Qwen3-30B-A3B")}
# cards that do not count the embedding matrix as active (a lookup, no compute): gpt-oss's (its unembedding counts)
ACTIVE_LESS_EMBEDDING = {"gpt-oss-20b", "gpt-oss-120b"}

SCALE = {"M": 1e6, "B": 1e9}


def value(published: str) -> float:
    """A published "8.03B" or "268M" as a number."""
    return float(published[:-1]) * SCALE[published[-1]]


def matches(count: float, published: str) -> bool:
    """`count` agrees with a published "8.03B" or "268M": within 1% or half a unit of its last digit."""
    unit = 10.0 ** -len(published[:-1].partition(".")[2]) * SCALE[published[-1]]
    return abs(count - value(published)) <= max(0.01 * value(published), unit / 2)


def cut_to(count: float, published: str) -> bool:
    """`count` cut (not rounded) to the digits of a published "3.3B" is that figure."""
    unit = 10.0 ** -len(published[:-1].partition(".")[2]) * SCALE[published[-1]]
    return int(count // unit) == round(value(published) / unit)


def active_parameters(model: GPT) -> int:
    """The parameters one token goes through: all but, in each mixture-of-experts layer, the weights of the experts
    the router does not pick (the shared expert and the router count)."""
    k, unused = model.config.n_expert_per_token, 0
    for module in model.modules():
        experts = getattr(module, "gate_up_proj", None)
        if isinstance(experts, torch.nn.Parameter):
            n_expert = experts.shape[0]
            unused += sum(p.numel() for p in module.parameters(recurse=False)) * (n_expert - k) // n_expert
    return num_parameters(model) - unused


def meta_model(name: str) -> GPT:
    """The preset's model with its weights on the meta device; a short block_size, as it only sizes the RoPE
    cache, a buffer the model computes on the CPU."""
    with torch.device("meta"):
        return GPT(Config.from_name(name, block_size=64))


def test_every_preset_has_a_published_size() -> None:
    assert set(PUBLISHED) | NOT_PUBLISHED == set(name_to_config)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_the_published_size(name: str) -> None:
    model = meta_model(name)
    config, total = model.config, num_parameters(model)
    non_embedding = total - config.padded_vocab_size * config.n_embd * (1 if config.tie_embeddings else 2)
    published_total, published_non_embedding = PUBLISHED[name]
    counted = total + sum(value(encoder) for encoder in ENCODERS.get(name, ()))
    assert published_total is None or matches(counted, published_total), (counted, published_total)
    assert published_non_embedding is None or matches(non_embedding, published_non_embedding), \
        (non_embedding, published_non_embedding)


def test_every_mixture_of_experts_preset_has_a_published_active_size() -> None:
    assert {name for name, c in name_to_config.items() if c.get("n_expert")} == set(ACTIVE)


@pytest.mark.parametrize("name", sorted(ACTIVE))
def test_active_parameter_count_matches_the_published_size(name: str) -> None:
    model = meta_model(name)
    active, published = active_parameters(model), ACTIVE[name]
    if name in ACTIVE_LESS_EMBEDDING:
        active -= model.transformer.wte.weight.numel()
    assert cut_to(active, published) if name in CUT else matches(active, published), (active, published)


def test_active_parameters_of_qwen3_30b_a3b() -> None:
    """The total less 48 layers x 120 unused experts x 3 x 2048 x 768 weights; the card's 3.3B is that cut, 3.4B
    rounded (`matches` refuses it), and the cut of a count past 3.4B is not 3.3B."""
    model = meta_model("Qwen3-30B-A3B")
    assert active_parameters(model) == num_parameters(model) - 48 * 120 * 3 * 2048 * 768 == 3_353_032_704
    assert not matches(3_353_032_704, "3.3B") and cut_to(3_353_032_704, "3.3B") and not cut_to(3.41e9, "3.3B")


@pytest.mark.parametrize("name, published", [
    # exact counts of the safetensors metadata (total_size / 2 bytes of bfloat16), catching what 1% cannot:
    # q/k/v biases (Qwen2.5), q/k norms and four norms per block (Gemma 3), the Llama 3.2 and Phi-3 layouts
    ("Qwen2.5-0.5B", 494_032_768),
    ("gemma-3-270m", 268_098_176),
    ("gemma-3-1b-pt", 999_885_952),
    ("Llama-3.2-1B", 1_235_814_400),
    ("Phi-3-mini-4k-instruct", 3_821_079_552),
    # the text model of Qwen3.5-122B-A10B's BF16 checkpoint (without vision tower and multi-token prediction), as a
    # training project's checkpoint validation script expects it: 48 layers of 256 experts, 32 query heads
    ("Qwen3.5-122B-A10B", 122_111_526_912),
])
def test_exact_parameter_count(name: str, published: int) -> None:
    assert num_parameters(meta_model(name)) == published


@pytest.mark.parametrize("name, config_json", [
    ("Qwen3.5-0.8B", "Qwen3.5-0.8B.json"),
    ("OLMo-2-1124-7B-Instruct", "OLMo-2-1124-7B-Instruct.json"),
    ("gpt-oss-20b", "gpt-oss-20b.json"),
])
def test_preset_is_its_published_config_json(name: str, config_json: str) -> None:
    """The preset is what `Config.from_hf_config` reads from the repo's config.json, field by field."""
    hf = json.loads((Path(__file__).parent / "data" / "hf_configs" / config_json).read_text())
    ignore = {"name", "hf_config"}  # config.json names no repo (the OLMo one: "allenai/open_instruct_dev")
    converted = {k: v for k, v in Config.from_hf_config(hf).to_dict().items() if k not in ignore}
    assert {k: v for k, v in Config.from_name(name).to_dict().items() if k not in ignore} == converted


# Qwen/Qwen3-30B-A3B-Thinking-2507's config as transformers 5.7 printed it on loading (a model report of the checkpoint,
# found by the library search; the Hub was out of reach)
QWEN3_30B_A3B_THINKING_2507 = {
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
    "decoder_sparse_step": 1, "dtype": "bfloat16", "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 262144,
    "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe", "moe_intermediate_size": 768,
    "norm_topk_prob": True, "num_attention_heads": 32, "num_experts_per_tok": 8, "num_hidden_layers": 48,
    "num_key_value_heads": 4, "num_local_experts": 128, "output_router_logits": False, "pad_token_id": None,
    "rms_norm_eps": 1e-06, "rope_parameters": {"rope_theta": 10000000, "rope_type": "default"},
    "router_aux_loss_coef": 0.001, "sliding_window": None, "tie_word_embeddings": False,
    "transformers_version": "5.7.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}


def test_qwen3_2507_preset_is_its_config() -> None:
    """Field by field; the Instruct-2507 preset is taken to be the same architecture (its card gives the same layout,
    counts and 262,144 context; no config.json of its own was read)."""
    ignore = {"name", "hf_config"}
    converted = {k: v for k, v in Config.from_hf_config(QWEN3_30B_A3B_THINKING_2507).to_dict().items()
                 if k not in ignore}
    for name in ("Qwen3-30B-A3B-Thinking-2507", "Qwen3-30B-A3B-Instruct-2507"):
        assert {k: v for k, v in Config.from_name(name).to_dict().items() if k not in ignore} == converted


def test_gemma_3_270m_is_mostly_embeddings() -> None:
    model = meta_model("gemma-3-270m")
    assert matches(num_parameters(model), "268M")
    assert matches(model.transformer.wte.weight.numel(), "0.17B")  # the card: "170 million embedding parameters"
    assert model.lm_head.weight is model.transformer.wte.weight


def test_gemma_4_e2b_is_mostly_per_layer_embeddings() -> None:
    """E2B's "2.3B effective" is its decoder without the per-layer embedding table, a lookup of 35 x 256 features per
    token. (E4B's "4.5B effective" is not that difference, 4.64B, and no split of decoder, embedding tables and
    encoders tried gives both cards' effective figures.)"""
    model = meta_model("gemma-4-E2B")
    table = model.transformer.wte_per_layer.weight
    assert table.shape == (262144, 35 * 256)
    assert matches(num_parameters(model) - table.numel(), "2.3B")


def test_matches_reads_the_precision_of_the_published_figure() -> None:
    assert matches(1_720_574_976, "1.7B") and not matches(1_720_574_976, "1.70B")
    assert matches(8_030_261_248, "8.03B") and not matches(8_200_000_000, "8.03B")
    assert matches(6_738_415_616, "7B") and not matches(6_738_415_616, "7.0B")



# the text_config of google/gemma-4-26B-A4B's config.json and of Qwen/Qwen3.5-35B-A3B's, as copies of them found by the
# library search give their fields (test fixtures of inference engines; the Hub was out of reach), in their
# vision-language wrappers
GEMMA_4_26B_A4B = {"model_type": "gemma4", "tie_word_embeddings": True, "text_config": {
    "model_type": "gemma4_text", "vocab_size": 262144, "hidden_size": 2816, "intermediate_size": 2112,
    "num_hidden_layers": 30, "num_attention_heads": 16, "num_key_value_heads": 8, "num_global_key_value_heads": 2,
    "head_dim": 256, "global_head_dim": 512, "attention_k_eq_v": True, "sliding_window": 1024,
    "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(30)],
    "max_position_embeddings": 262144, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
    "final_logit_softcapping": 30.0, "enable_moe_block": True, "num_experts": 128, "top_k_experts": 8,
    "moe_intermediate_size": 704, "hidden_size_per_layer_input": 0, "num_kv_shared_layers": 0,
    "use_double_wide_mlp": False, "attention_bias": False, "use_bidirectional_attention": "vision",
    "tie_word_embeddings": True, "rope_parameters": {
        "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}}}
QWEN3_5_35B_A3B = {"model_type": "qwen3_5_moe", "tie_word_embeddings": False, "text_config": {
    "model_type": "qwen3_5_moe_text", "vocab_size": 248320, "hidden_size": 2048, "num_hidden_layers": 40,
    "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "hidden_act": "silu", "rms_norm_eps": 1e-6,
    "max_position_embeddings": 262144, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
    "linear_value_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
    "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512, "num_experts": 256, "num_experts_per_tok": 8,
    "router_aux_loss_coef": 0.001, "full_attention_interval": 4, "attention_bias": False,
    "layer_types": ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(40)],
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25,
                        "mrope_interleaved": True, "mrope_section": [11, 11, 10]}}}


@pytest.mark.parametrize("names, hf", [(("gemma-4-26B-A4B", "gemma-4-26B-A4B-it"), GEMMA_4_26B_A4B),
                                       (("Qwen3.5-35B-A3B", "Qwen3.5-35B-A3B-Base"), QWEN3_5_35B_A3B)])
def test_moe_presets_are_their_config(names: tuple, hf: dict) -> None:
    ignore = {"name", "hf_config"}
    converted = {k: v for k, v in Config.from_hf_config(hf).to_dict().items() if k not in ignore}
    for name in names:
        assert {k: v for k, v in Config.from_name(name).to_dict().items() if k not in ignore} == converted, name
