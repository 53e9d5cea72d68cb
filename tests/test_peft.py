"""PEFT adapters: export (peft on transformers gives our logits), import (our model gives peft's logits), bad inputs."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_merge import (
    VOCAB,
    leftovers,
    make_checkpoint,
    make_finetune_dir,
    script,
    tiny_config,
    tokens,
)
from test_model import SIZES, TINY, lit_model_from_hf, tiny_hf_model

from conftest import run_script
from lit_gpt.config import Config
from lit_gpt.convert import convert_hf_checkpoint, export_hf_checkpoint, load_lit_state_dict
from lit_gpt.load import load_model
from lit_gpt.lora import LoRAConfig, LoRALinear, add_lora, lora_filter, merge_lora_weights
from lit_gpt.utils import UserError

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def export(**kwargs) -> None:
    script("scripts/export_peft.py").main(**kwargs)


def import_(**kwargs) -> None:
    script("scripts/import_peft.py").main(**kwargs)


def hf_twin(checkpoint_dir: Path, hf_dir: Path):
    """The transformers model of one of our checkpoint dirs (same weights)."""
    config = Config.from_checkpoint(checkpoint_dir)
    export_hf_checkpoint(load_lit_state_dict(checkpoint_dir), config, checkpoint_dir, hf_dir)
    return transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


@torch.no_grad()
def peft_logits(hf_model, peft_dir: Path, x: torch.Tensor) -> torch.Tensor:
    peft_model = peft.PeftModel.from_pretrained(hf_model, peft_dir).eval()
    return peft_model(input_ids=x).logits


@torch.no_grad()
def our_logits(checkpoint_dir: Path, lora_path: Path, x: torch.Tensor) -> torch.Tensor:
    return load_model(checkpoint_dir, precision="32-true", lora_path=lora_path)(x)


# ---------------------------------------------------------------------------------------------------------------------
# export: our adapter -> PEFT


@pytest.mark.parametrize("kind, lora", [
    ("llama-gqa", LoRAConfig(r=4, alpha=8)),
    ("llama-tied", LoRAConfig(r=4, alpha=8)),  # lm_head adapter on a head tied to the embedding
    ("llama-gqa", LoRAConfig(r=2, alpha=6, key=False, projection=False, mlp=False, head=False)),
    ("neox", LoRAConfig(r=4, alpha=8)),  # q, k, v -> one query_key_value adapter of rank 12
    ("neox", LoRAConfig(r=3, alpha=5, key=False, mlp=False)),  # q, v -> rank 6
    ("falcon-mqa", LoRAConfig(r=4, alpha=8)),
])
def test_export_gives_our_logits_in_peft(kind, lora, tmp_path, smollm2_dir):
    base = make_checkpoint(tmp_path / "base", tiny_config(kind), smollm2_dir)
    out = make_finetune_dir(tmp_path / "run", base, lora)
    export(lora_path=out)
    peft_dir = out / "peft"
    x = tokens()
    expected = our_logits(base, out, x)
    hf_model = hf_twin(base, tmp_path / "hf")
    with torch.no_grad():
        base_out = hf_model(input_ids=x).logits
    actual = peft_logits(hf_model, peft_dir, x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert (actual - base_out).abs().max() > 0.1  # the adapter was applied

    peft_config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "LORA" and peft_config["task_type"] == "CAUSAL_LM"
    assert peft_config["r"] == lora.r and peft_config["lora_alpha"] == lora.alpha
    assert peft_config["base_model_name_or_path"] == str(base.resolve())  # tiny configs mirror no HF repo
    if kind.startswith("llama") and lora.mlp:
        assert peft_config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj",
                                                 "up_proj", "v_proj"]
    elif kind.startswith("llama"):
        assert peft_config["target_modules"] == ["q_proj", "v_proj"]
    else:
        parts = sum((lora.query, lora.key, lora.value))
        assert peft_config["rank_pattern"] == {"query_key_value": parts * lora.r}
        assert peft_config["alpha_pattern"] == {"query_key_value": parts * lora.alpha}
    if kind == "llama-tied":
        assert hf_model.lm_head.base_layer.weight is hf_model.model.embed_tokens.weight  # PEFT kept the tie


def test_export_names_the_hf_repo_and_trims_the_padded_vocabulary(tmp_path, smollm2_dir):
    config = tiny_config("llama-gqa", vocab_size=VOCAB - 100, padding_multiple=512,
                         hf_config=dict(org="someorg", name="tiny-llama"))
    assert config.padded_vocab_size == VOCAB
    base = make_checkpoint(tmp_path / "base", config, smollm2_dir)
    hf_config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**hf_config, "vocab_size": VOCAB - 100}))
    out = make_finetune_dir(tmp_path / "run", base, LoRAConfig(r=2, alpha=4))
    export(lora_path=out, out_dir=tmp_path / "peft")
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert peft_config["base_model_name_or_path"] == "someorg/tiny-llama"
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert tensors["base_model.model.lm_head.lora_B.weight"].shape == (VOCAB - 100, 2)
    assert tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"].shape == (2, 32)


# ---------------------------------------------------------------------------------------------------------------------
# import: PEFT -> our adapter


def hf_base(kind: str, tmp_path: Path, smollm2_dir: Path, seed: int = 0, **config_kwargs):
    """(a tiny random transformers model, our checkpoint dir converted from it by convert_hf_checkpoint). `kind`: one
    of test_model's TINY (every family, vocabulary SIZES["vocab_size"]) or "falcon", "neox", "llama" (VOCAB)."""
    torch.manual_seed(seed)
    if kind in TINY:
        model = tiny_hf_model(kind, seed)
    elif kind == "falcon":
        hf_config = transformers.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, multi_query=True, new_decoder_architecture=False,
                                              parallel_attn=True, bias=False, alibi=False, max_position_embeddings=64,
                                              **config_kwargs)
        model = transformers.FalconForCausalLM(hf_config)
    elif kind == "neox":
        hf_config = transformers.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=64, rotary_pct=0.25,
                                               max_position_embeddings=64, **config_kwargs)
        model = transformers.GPTNeoXForCausalLM(hf_config)
    else:
        hf_config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=88,
                                             max_position_embeddings=64, **config_kwargs)
        model = transformers.LlamaForCausalLM(hf_config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight") and kind not in TINY:
                param.uniform_(0.5, 1.5)
    hf_dir = tmp_path / f"hf-{kind}"
    model.save_pretrained(hf_dir)
    convert_hf_checkpoint(hf_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(smollm2_dir / name, hf_dir / name)
    return model.eval(), hf_dir


def peft_adapter(model, peft_dir: Path, seed: int = 2, **lora_kwargs):
    """A PEFT LoRA adapter on `model` with random non-zero A and B, saved to `peft_dir`; returns the PeftModel."""
    peft_model = peft.get_peft_model(model, peft.LoraConfig(**{"lora_dropout": 0.05, **lora_kwargs}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    peft_model.save_pretrained(peft_dir)
    return peft_model.eval()


@pytest.mark.parametrize("kind, lora_kwargs, switches", [
    ("llama", dict(r=4, lora_alpha=8, target_modules="all-linear"),
     dict(query=True, key=True, value=True, projection=True, mlp=True, head=False)),
    ("llama-tied", dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj", "lm_head"]),
     dict(query=True, key=True, value=True, projection=True, mlp=True, head=True)),
    ("llama", dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
     dict(query=True, key=False, value=True, projection=False, mlp=False, head=False)),
    # per-module ranks and alphas, one layer only, part of the MLP: zero-padded, rescaled, zero-filled
    ("llama", dict(r=4, lora_alpha=8, target_modules=["k_proj", "up_proj", "down_proj"], layers_to_transform=[1],
                   rank_pattern={"down_proj": 2}, alpha_pattern={"k_proj": 3}),
     dict(query=False, key=True, value=False, projection=False, mlp=True, head=False)),
    ("neox", dict(r=4, lora_alpha=8, target_modules=["query_key_value", "dense_h_to_4h", "lm_head"]),
     dict(query=True, key=True, value=True, projection=False, mlp=True, head=True)),
    ("falcon", dict(r=2, lora_alpha=4, target_modules=["query_key_value", "dense"]),  # multi-query: [q heads | k | v]
     dict(query=True, key=True, value=True, projection=True, mlp=False, head=False)),
])
def test_import_gives_peft_logits(kind, lora_kwargs, switches, tmp_path, smollm2_dir):
    model, checkpoint_dir = hf_base(kind.split("-")[0], tmp_path, smollm2_dir,
                                    **({"tie_word_embeddings": True} if kind == "llama-tied" else {}))
    assert Config.from_checkpoint(checkpoint_dir).tie_embeddings == model.config.tie_word_embeddings
    x = tokens()
    with torch.no_grad():
        base_out = model(input_ids=x).logits
    peft_model = peft_adapter(model, tmp_path / "peft", **lora_kwargs)
    with torch.no_grad():
        expected = peft_model(input_ids=x).logits
    assert (expected - base_out).abs().max() > 0.05  # the adapter changes the output

    import_(peft_dir=tmp_path / "peft", checkpoint_dir=checkpoint_dir, out_dir=tmp_path / "imported")
    run = json.loads((tmp_path / "imported" / "lora_config.json").read_text())
    assert {k: run["lora"][k] for k in switches} == switches
    assert run["lora"]["r"] == lora_kwargs["r"] and run["lora"]["dropout"] == 0.05
    assert run["model"] == Config.from_checkpoint(checkpoint_dir).to_dict()
    assert run["checkpoint_dir"] == str(checkpoint_dir.resolve()) and run["precision"] == "32-true"
    actual = our_logits(checkpoint_dir, tmp_path / "imported", x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)

    # the imported dir merges like one of finetune/lora.py
    script("scripts/merge_lora.py").main(lora_path=tmp_path / "imported", out_dir=tmp_path / "merged")
    with torch.no_grad():
        merged = load_model(tmp_path / "merged", precision="32-true")(x)
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4)


def test_import_via_cli_and_export_round_trip(tmp_path, smollm2_dir, capsys):
    model, checkpoint_dir = hf_base("llama", tmp_path, smollm2_dir)
    peft_adapter(model, tmp_path / "peft", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    proc = run_script("scripts/import_peft.py", "--peft_dir", tmp_path / "peft", "--checkpoint_dir", checkpoint_dir,
                      "--out_dir", tmp_path / "imported")
    assert "zero adapters" in proc.stdout  # gate_proj and up_proj: our mlp switch covers all three
    assert json.loads((tmp_path / "imported" / "prompt_style.json").read_text()) == {"name": "alpaca"}
    # generate/lora.py takes the imported dir as it takes a finetune out dir: greedy text == PEFT's greedy tokens
    script("generate/lora.py").main(lora_path=tmp_path / "imported", prompt="Hi", max_new_tokens=6, temperature=0.0,
                                    precision="32-true", stream=False)
    from lit_gpt.prompts import PromptStyle
    from lit_gpt.tokenizer import Tokenizer

    tokenizer = Tokenizer(checkpoint_dir)
    prompt = tokenizer.encode(PromptStyle.from_name("alpaca").apply("Hi"))[None]
    peft_model = peft.PeftModel.from_pretrained(hf_base("llama", tmp_path / "again", smollm2_dir)[0], tmp_path / "peft")
    with torch.no_grad():
        greedy = peft_model.eval().generate(input_ids=prompt, max_new_tokens=6, do_sample=False, eos_token_id=None)
    expected = tokenizer.decode(greedy[0, prompt.size(1):]).strip()
    assert capsys.readouterr().out.strip() == expected and len(expected) > 3
    export(lora_path=tmp_path / "imported", out_dir=tmp_path / "peft2")
    from safetensors.torch import load_file

    original = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    exported = load_file(tmp_path / "peft2" / "adapter_model.safetensors")
    for name, tensor in original.items():  # the same tensors (plus zero ones for gate_proj and up_proj)
        assert torch.equal(exported[name], tensor), name
    extra = set(exported) - set(original)
    assert extra and all("gate_proj" in n or "up_proj" in n for n in extra)
    assert all(not exported[n].any() for n in extra)


# ---------------------------------------------------------------------------------------------------------------------
# every family, both ways, on tiny random transformers models


SEPARATE = ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj", "v_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]  # PEFT's target_parameters of Qwen3-MoE's experts
GEMMA4_EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]  # Gemma 4's, beside its MLP


@pytest.mark.parametrize("kind, lora, lora_kwargs", [
    ("llama3-tied", LoRAConfig(r=2, alpha=6), dict(target_modules=SEPARATE)),  # lm_head tied to the embedding
    ("qwen2", LoRAConfig(r=2, alpha=6), dict(target_modules="all-linear")),  # qkv bias
    ("qwen3-head_dim", LoRAConfig(r=2, alpha=6), dict(target_modules="all-linear")),  # q/k norms, tied
    ("gemma3", LoRAConfig(r=2, alpha=6), dict(target_modules="all-linear")),  # 4 norms, window 5 < 14 tokens
    ("mistral-head_dim-sliding", LoRAConfig(r=2, alpha=6, value=False, mlp=False),
     dict(target_modules=["q_proj", "k_proj", "o_proj", "lm_head"])),
    # fused qkv_proj and gate_up_proj: rank 3r and 2r out; in, per-module ranks (padded) and alphas (rescaled)
    ("phi3-partial-sliding", LoRAConfig(r=2, alpha=6),
     dict(target_modules="all-linear", rank_pattern={"gate_up_proj": 2}, alpha_pattern={"qkv_proj": 3})),
    ("phi3-longrope", LoRAConfig(r=3, alpha=5, key=False, head=False),  # multi-head, tied; k rows unadapted
     dict(target_modules=["qkv_proj", "gate_up_proj", "down_proj", "lm_head"])),
    # the 2026 families: Gated DeltaNet projections (in_proj_qkv/z/b/a, out_proj) beside gated attention; YaRN;
    # output-only norms; NoPE layers
    ("qwen3_5-hybrid", LoRAConfig(r=2, alpha=6), dict(target_modules="all-linear")),
    ("olmo3-yarn-sliding", LoRAConfig(r=2, alpha=6), dict(target_modules="all-linear")),
    ("ministral3-yarn", LoRAConfig(r=2, alpha=6, mlp=False), dict(target_modules=["q_proj", "v_proj", "o_proj"])),
    ("smollm3-nope", LoRAConfig(r=2, alpha=6), dict(target_modules=SEPARATE)),
    # Gemma 4: layers without k/v projections (reused) or without v_proj (k = v); per-layer inputs left frozen
    ("gemma4-ple-shared-kv", LoRAConfig(r=2, alpha=6), dict(target_modules=SEPARATE)),
    ("gemma4-k_eq_v", LoRAConfig(r=2, alpha=6, key=False), dict(target_modules=SEPARATE)),
    # Gemma 4 26B-A4B's layout: the experts as target_parameters, the dense MLP beside them as gate/up/down_proj
    ("gemma4-moe", LoRAConfig(r=2, alpha=6),
     dict(target_modules=SEPARATE, target_parameters=GEMMA4_EXPERTS, lora_dropout=0.0)),
    # Qwen3-MoE: the experts as target_parameters (no dropout there); the dense first layer's MLP left out (PEFT on
    # transformers 5 takes gate_proj/up_proj/down_proj for the experts' v4 names)
    ("qwen3_moe", LoRAConfig(r=2, alpha=6, mlp=False),
     dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"], target_parameters=EXPERTS,
          lora_dropout=0.0)),
    # Qwen3.5-MoE: Gated DeltaNet projections, the experts as target_parameters, the shared expert's linears as
    # gate_proj/up_proj/down_proj (PEFT does not take those for the experts here); its sigmoid gate left frozen
    ("qwen3_5_moe", LoRAConfig(r=2, alpha=6),
     dict(target_modules=SEPARATE + ["in_proj_a", "in_proj_b", "in_proj_qkv", "in_proj_z", "out_proj"],
          target_parameters=EXPERTS, lora_dropout=0.0)),
    # gpt-oss: biased q/k/v/o projections, sinks, windows of 4; the experts' (E, in, out) tensors
    ("gpt_oss", LoRAConfig(r=2, alpha=6, mlp=False),
     dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"], target_parameters=EXPERTS,
          lora_dropout=0.0)),
])
def test_every_family_exports_to_and_imports_from_peft(kind, lora, lora_kwargs, tmp_path, smollm2_dir):
    model, base = hf_base(kind, tmp_path, smollm2_dir)
    x = tokens(length=14, high=SIZES["vocab_size"])  # past the sliding windows (5, 6) and the long-RoPE switch (12)
    with torch.no_grad():
        base_out = model(input_ids=x).logits

    # export: PEFT on the transformers model gives our LoRA model's logits
    out = make_finetune_dir(tmp_path / "run", base, lora)
    export(lora_path=out)
    expected = our_logits(base, out, x)
    actual = peft_logits(copy.deepcopy(model), out / "peft", x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert (actual - base_out).abs().max() > 0.1  # the adapter was applied
    peft_config = json.loads((out / "peft" / "adapter_config.json").read_text())
    assert peft_config["r"] == lora.r and peft_config["lora_alpha"] == lora.alpha
    if kind.startswith("phi3"):
        parts = sum((lora.query, lora.key, lora.value))
        assert peft_config["target_modules"] == sorted(["down_proj", "gate_up_proj", "o_proj", "qkv_proj"] +
                                                       ["lm_head"] * lora.head)
        assert peft_config["rank_pattern"] == {"qkv_proj": parts * lora.r, "gate_up_proj": 2 * lora.r}
        assert peft_config["alpha_pattern"] == {"qkv_proj": parts * lora.alpha, "gate_up_proj": 2 * lora.alpha}
    else:
        linear = ["in_proj_a", "in_proj_b", "in_proj_qkv", "in_proj_z", "out_proj"] * kind.startswith("qwen3_5")
        assert peft_config["target_modules"] == sorted(linear + [m for m in SEPARATE if not (
            (m in ("down_proj", "gate_proj", "up_proj") and not lora.mlp) or (m == "v_proj" and not lora.value)
            or (m == "k_proj" and not lora.key))])
        assert peft_config["rank_pattern"] == {}
    assert peft_config["target_parameters"] == (EXPERTS if kind in ("qwen3_moe", "gpt_oss", "qwen3_5_moe") else
                                                GEMMA4_EXPERTS if kind == "gemma4-moe" else None)

    # import: our model with the imported adapter gives the logits of `peft`'s model
    peft_model = peft_adapter(model, tmp_path / "peft", r=4, lora_alpha=8, **lora_kwargs)
    with torch.no_grad():
        expected = peft_model(input_ids=x).logits
    assert (expected - base_out).abs().max() > 0.05
    import_(peft_dir=tmp_path / "peft", checkpoint_dir=base, out_dir=tmp_path / "imported")
    imported = json.loads((tmp_path / "imported" / "lora_config.json").read_text())["lora"]
    assert imported["r"] == 4 and imported["alpha"] == 8
    torch.testing.assert_close(our_logits(base, tmp_path / "imported", x), expected, rtol=1e-4, atol=1e-4)


def test_expert_adapters_export_to_and_import_from_peft(tmp_path, smollm2_dir, capsys):
    """Experts only, out: PEFT's nested ParamWrapper keys, no dropout (said so); in: down_proj alone, with its own
    rank (zero-padded expert by expert) and alpha (rescaled), gate_up_proj zero. Both: PEFT's logits."""
    model, base = hf_base("qwen3_moe", tmp_path, smollm2_dir)
    x = tokens(length=14, high=SIZES["vocab_size"])
    with torch.no_grad():
        base_out = model(input_ids=x).logits
    lora = LoRAConfig(r=2, alpha=6, dropout=0.1, query=False, key=False, value=False, projection=False, mlp=False,
                      head=False)
    out = make_finetune_dir(tmp_path / "run", base, lora)
    export(lora_path=out)
    printed = capsys.readouterr().out
    assert "lora_dropout is written as 0, not the run's 0.1" in printed
    assert "targets mlp.experts.gate_up_proj, mlp.experts.down_proj," in printed
    expected = our_logits(base, out, x)
    actual = peft_logits(copy.deepcopy(model), out / "peft", x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert (actual - base_out).abs().max() > 0.1
    peft_config = json.loads((out / "peft" / "adapter_config.json").read_text())
    assert (peft_config["target_modules"], peft_config["target_parameters"]) == ([], EXPERTS)
    assert peft_config["lora_dropout"] == 0 and (peft_config["r"], peft_config["lora_alpha"]) == (2, 6)
    from safetensors.torch import load_file

    ours = torch.load(out / "lit_model_lora_finetuned.pth")
    exported = load_file(out / "peft" / "adapter_model.safetensors")
    assert len(exported) == 8  # 2 sparse layers x 2 tensors x (A, B); layer 0 is dense
    for layer in (1, 2):
        experts = f"base_model.model.model.layers.{layer}.mlp.experts"
        for key, name in [(f"{experts}.base_layer.lora_A.weight", "lora_A_gate_up"),
                          (f"{experts}.base_layer.lora_B.weight", "lora_B_gate_up"),
                          (f"{experts}.lora_A.weight", "lora_A_down"), (f"{experts}.lora_B.weight", "lora_B_down")]:
            assert torch.equal(exported[key], ours[f"transformer.h.{layer}.mlp.experts.{name}"]), key
    assert exported[f"{experts}.lora_A.weight"].shape == (6 * 2, 16)  # (E r, moe_intermediate_size)

    # import: down_proj only, rank 2 and alpha 3 of its own (r=4, alpha=8 elsewhere)
    peft_model = peft_adapter(model, tmp_path / "peft", r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj"],
                              target_parameters=["mlp.experts.down_proj"], rank_pattern={"down_proj": 2},
                              alpha_pattern={"down_proj": 3})
    with torch.no_grad():
        expected = peft_model(input_ids=x).logits
    saved = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    A, B = saved["base_model.model.model.layers.2.mlp.experts.lora_A.weight"], \
        saved["base_model.model.model.layers.2.mlp.experts.lora_B.weight"]
    assert A.shape == (6 * 2, 16) and B.shape == (32, 2 * 6)
    import_(peft_dir=tmp_path / "peft", checkpoint_dir=base, out_dir=tmp_path / "imported")
    printed = capsys.readouterr().out
    assert "have no PEFT counterpart (e.g. 'transformer.h.1.mlp.experts.gate_up_proj'): zero adapters" in printed
    assert "padded with zeros to rank 4" in printed and "rescaled" in printed and "(r=4, alpha=8, on query, experts;" \
        in printed
    run = json.loads((tmp_path / "imported" / "lora_config.json").read_text())["lora"]
    assert (run["r"], run["alpha"], run["experts"], run["query"], run["mlp"]) == (4, 8, True, True, False)
    imported = torch.load(tmp_path / "imported" / "lit_model_lora_finetuned.pth")
    A_ours = imported["transformer.h.2.mlp.experts.lora_A_down"].view(6, 4, 16)  # (E, r, in)
    B_ours = imported["transformer.h.2.mlp.experts.lora_B_down"].view(32, 4, 6)  # (out, r, E)
    assert torch.equal(A_ours[:, :2], A.view(6, 2, 16)) and not A_ours[:, 2:].any()
    torch.testing.assert_close(B_ours[:, :2], B.view(32, 2, 6) * (3 / 2) / (8 / 4))  # alpha / r: 3 / 2 -> 8 / 4
    assert not B_ours[:, 2:].any()
    assert not imported["transformer.h.1.mlp.experts.lora_B_gate_up"].any()
    actual = our_logits(base, tmp_path / "imported", x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert (expected - base_out).abs().max() > 0.05


def test_expert_adapter_refusals(tmp_path, smollm2_dir):
    """The dense layers' MLP adapters (PEFT would take gate_proj/up_proj/down_proj for the experts), the router
    (PEFT's all-linear adds it), adapters where target_parameters put none: one line each."""
    model, base = hf_base("qwen3_moe", tmp_path, smollm2_dir)
    out = make_finetune_dir(tmp_path / "run", base, LoRAConfig(r=2, alpha=4))
    with pytest.raises(UserError, match=r"of qwen3_moe for its experts, so the dense layers' MLP adapters "
                                        r"\(transformer.h.0.mlp.fc_1, ...\) would not load: finetune with "
                                        "--lora_mlp false") as e:
        export(lora_path=out)
    assert len(str(e.value)) < 300 and not (out / "peft").exists()

    def fails(match: str, peft_dir: Path) -> None:
        with pytest.raises(UserError, match=match) as e:
            import_(peft_dir=peft_dir, checkpoint_dir=base, out_dir=tmp_path / "imported")
        assert "\n" not in str(e.value) and len(str(e.value)) < 300 and not (tmp_path / "imported").exists()

    peft_adapter(copy.deepcopy(model), tmp_path / "all", r=2, lora_dropout=0.0, target_modules="all-linear")
    assert "gate.weight" in json.loads((tmp_path / "all" / "adapter_config.json").read_text())["target_parameters"]
    fails(r"targets parameter 'gate.weight', no expert tensor of .*never the router; PEFT's "
          r"target_modules='all-linear' adds gate.weight", tmp_path / "all")
    peft_adapter(model, tmp_path / "both", r=2, lora_dropout=0.0, target_modules=[], target_parameters=EXPERTS)
    config = json.loads((tmp_path / "both" / "adapter_config.json").read_text())
    (tmp_path / "both" / "adapter_config.json").write_text(json.dumps({**config, "target_parameters": EXPERTS[1:]}))
    fails(r"holds an adapter at 'model.layers.1.mlp.experts.base_layer', where its target_parameters "
          r"\['mlp.experts.down_proj'\] put none", tmp_path / "both")


@pytest.mark.parametrize("kind", ["gemma3", "phi3-partial-sliding"])
def test_merged_equals_unmerged(kind):
    model = lit_model_from_hf(tiny_hf_model(kind, seed=3))
    x = tokens(length=14, high=SIZES["vocab_size"])
    with torch.no_grad():
        base_out = model(x)
    add_lora(model, LoRAConfig(r=2, alpha=6, key=False, dropout=0.0))  # a fused qkv with unadapted k rows
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if lora_filter(name):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        unmerged = model(x)
        merge_lora_weights(model)
        assert all(m.merged for m in model.modules() if isinstance(m, LoRALinear))
        merged = model(x)
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
    assert (unmerged - base_out).abs().max() > 0.1


# ---------------------------------------------------------------------------------------------------------------------
# bad inputs


def test_import_rejects_what_it_cannot_represent(tmp_path, smollm2_dir):
    model, checkpoint_dir = hf_base("llama", tmp_path, smollm2_dir, tie_word_embeddings=True)
    fresh = copy.deepcopy(model)
    peft_adapter(model, tmp_path / "peft", r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"])
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())

    def fails(match: str, peft_dir: Path = tmp_path / "peft", base: Path = checkpoint_dir) -> None:
        with pytest.raises(UserError, match=match):
            import_(peft_dir=peft_dir, checkpoint_dir=base, out_dir=tmp_path / "imported")
        assert not (tmp_path / "imported").exists() and leftovers(tmp_path) == []

    for change, match in [({"use_dora": True}, "use_dora=True"), ({"use_rslora": True}, "use_rslora=True"),
                          ({"bias": "all"}, "bias='all'"), ({"modules_to_save": ["embed_tokens"]}, "modules_to_save"),
                          ({"init_lora_weights": "pissa"}, "base weights were changed"),
                          ({"peft_type": "IA3"}, "only LoRA adapters")]:
        (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({**config, **change}))
        fails(match)
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps(config))

    # a base whose lm_head differs from the one PEFT saved with the adapter
    other_model, other_dir = hf_base("llama", tmp_path / "o", smollm2_dir, seed=5, tie_word_embeddings=True)
    fails("differs from the base's 'lm_head.weight'", base=other_dir)
    # a base of another width: both shapes named
    wide = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=88, max_position_embeddings=64))
    peft_adapter(wide, tmp_path / "wide", r=4, lora_alpha=8, target_modules=["q_proj"])
    fails(r"q_proj' has lora_A \(4, 48\) and lora_B \(48, 4\), but .* needs lora_A \(r, 32\) and lora_B \(32, r\)",
          peft_dir=tmp_path / "wide")
    # adapted modules we have no LoRA for
    peft_adapter(fresh, tmp_path / "emb", r=4, target_modules=["embed_tokens"])
    fails("lora_embedding_A", peft_dir=tmp_path / "emb")

    (tmp_path / "broken").mkdir()
    fails("has no adapter_config.json", peft_dir=tmp_path / "broken")
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json")
    fails("is not valid JSON", peft_dir=tmp_path / "broken")
    (tmp_path / "broken" / "adapter_config.json").write_text(json.dumps(config))
    fails("has no adapter_model.safetensors", peft_dir=tmp_path / "broken")
    (tmp_path / "broken" / "adapter_model.safetensors").write_bytes(b"\x00" * 100)
    fails("Could not read", peft_dir=tmp_path / "broken")


def test_import_failure_through_the_cli(tmp_path, smollm2_dir):
    model, checkpoint_dir = hf_base("llama", tmp_path, smollm2_dir)
    peft_adapter(model, tmp_path / "peft", r=4, target_modules=["q_proj"], use_dora=True)
    proc = run_script("scripts/import_peft.py", "--peft_dir", tmp_path / "peft", "--checkpoint_dir", checkpoint_dir,
                      "--out_dir", tmp_path / "imported", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and "DoRA" in proc.stderr
    assert not (tmp_path / "imported").exists() and leftovers(tmp_path) == []


def test_export_rejects_a_base_that_does_not_fit(tmp_path, smollm2_dir):
    base = make_checkpoint(tmp_path / "base", tiny_config("neox"), smollm2_dir)
    other = make_checkpoint(tmp_path / "other", tiny_config("neox", n_embd=64), smollm2_dir)
    out = make_finetune_dir(tmp_path / "run", base, LoRAConfig(r=4, alpha=8))
    with pytest.raises(UserError, match=r"has shape \(4, 32\) in the adapter but \(4, 64\) in the model.*tiny-neox"):
        export(lora_path=out, checkpoint_dir=other)
    assert not (out / "peft").exists() and leftovers(out) == []
    (out / "peft").mkdir()
    (out / "peft" / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="already exists and is not empty"):
        export(lora_path=out)
    shutil.rmtree(base)  # the base is gone: the model recorded in lora_config.json is enough
    export(lora_path=out, out_dir=tmp_path / "peft")
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("script_path, flags", [
    ("scripts/export_peft.py", ["--lora_path", "--out_dir", "--checkpoint_dir", "--base_model_name_or_path"]),
    ("scripts/import_peft.py", ["--peft_dir", "--checkpoint_dir", "--out_dir", "--prompt_style"]),
])
def test_help(script_path, flags):
    proc = run_script(script_path, "--help")
    assert all(flag in proc.stdout for flag in flags), proc.stdout
