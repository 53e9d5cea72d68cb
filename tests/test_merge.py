"""scripts/merge_lora.py: merged == unmerged, a self-sufficient output dir, transformers on the export, bad inputs."""

import importlib.util
import json
import shutil
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_script
from lit_gpt.config import Config
from lit_gpt.convert import hf_config_from_lit
from lit_gpt.load import load_model
from lit_gpt.lora import LoRAConfig, lora_filter, lora_state_dict
from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import UserError, check_valid_checkpoint_dir

VOCAB = 49152  # the SmolLM2 tokenizer copied into the tiny checkpoint dirs
LLAMA = dict(rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm",
             mlp_class_name="LLaMAMLP", intermediate_size=88)
CONFIGS = {
    "llama-gqa": dict(LLAMA, n_head=4, n_query_groups=2),
    "llama-tied": dict(LLAMA, n_head=4, n_query_groups=4, tie_embeddings=True),
    "neox": dict(n_head=4, rotary_percentage=0.25, parallel_residual=True, bias=True),
    "falcon-mqa": dict(n_head=4, n_query_groups=1, rotary_percentage=1.0, parallel_residual=True,
                       shared_attention_norm=True, bias=False),
    # a Gated DeltaNet layer and a gated full-attention one; OLMo 3's output norms, window and YaRN
    "qwen3_5-hybrid": dict(LLAMA, n_head=4, n_query_groups=2, head_size=8, rotary_percentage=0.25, norm_eps=1e-6,
                           norm_unit_offset=True, norm_qk=True, attention_output_gate=True, linear_attention=True,
                           global_layer_every=2, linear_n_key_heads=2, linear_n_value_heads=4,
                           linear_key_head_size=8, linear_value_head_size=12, hf_model_type="qwen3_5_text"),
    "olmo3-yarn": dict(LLAMA, n_head=4, n_query_groups=2, norm_qk=True, norm_qk_all_heads=True, norm_upcast=True,
                       pre_norms=False, post_norms=True, sliding_window=4, global_layer_every=2,
                       rope_local_base=10000, hf_model_type="olmo3",
                       rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=8, beta_fast=32,
                                         beta_slow=1, truncate=True, attention_factor=1.1386)),
    # Qwen3-MoE: a dense first layer, 4 experts of 24 (2 per token) with their adapters
    "qwen3_moe": dict(LLAMA, n_layer=3, n_head=4, n_query_groups=2, head_size=8, norm_qk=True, n_expert=4,
                      n_expert_per_token=2, moe_intermediate_size=24, moe_dense_layers=[0], hf_model_type="qwen3_moe"),
    # Qwen3.5-MoE: the Qwen3.5 layers above, each with 4 experts of 24 (2 per token) and a shared expert of 16
    "qwen3_5_moe": dict(LLAMA, n_head=4, n_query_groups=2, head_size=8, rotary_percentage=0.25, norm_eps=1e-6,
                        norm_unit_offset=True, norm_qk=True, attention_output_gate=True, linear_attention=True,
                        global_layer_every=2, linear_n_key_heads=2, linear_n_value_heads=4, linear_key_head_size=8,
                        linear_value_head_size=12, n_expert=4, n_expert_per_token=2, moe_intermediate_size=24,
                        moe_shared_intermediate_size=16, hf_model_type="qwen3_5_moe_text"),
    # gpt-oss: sinks, biases on q/k/v/o, a window of 4 and a full layer, YaRN, 4 transposed experts of 24 with biases
    # (2 per token) and their adapters
    "gpt_oss": dict(LLAMA, n_head=4, n_query_groups=2, head_size=8, bias=True, qkv_bias=True, norm_upcast=True,
                    attention_sinks=True, sliding_window=4, global_layer_every=2, rope_base=150000,
                    rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=16, beta_fast=32.0,
                                      beta_slow=1.0, truncate=False, attention_factor=1.1386),
                    n_expert=4, n_expert_per_token=2, moe_intermediate_size=24, router_bias=True,
                    router_scoring="topk_softmax", moe_activation="clamped_swiglu", moe_transposed=True,
                    moe_interleaved=True, moe_bias=True, hf_model_type="gpt_oss"),
    # Gemma 4: per-layer inputs, the last two layers reusing keys and values, global layers of their own head size
    # with k = v, proportional RoPE, softcapping
    "gemma4": dict(LLAMA, mlp_class_name="GemmaMLP", gelu_approximate="tanh", n_layer=4, n_head=4, n_query_groups=2,
                   head_size=8, global_head_size=16, global_n_query_groups=1, attention_k_eq_v=True, norm_qk=True,
                   norm_v=True, norm_upcast=True, post_norms=True, scale_embeddings=True, attention_scalar=1.0,
                   sliding_window=4, global_layer_every=2, rope_base=1000000, rope_local_base=10000,
                   rope_scaling=dict(type="proportional", partial_rotary_factor=0.25, factor=1.0), kv_shared_layers=2,
                   double_wide_mlp=True, per_layer_embd=8, layer_scalar=True, final_logit_softcapping=30.0,
                   tie_embeddings=True, hf_model_type="gemma4_text"),
    # Gemma 4 26B-A4B's layout: a window layer and a global one with k = v, each with 4 experts of 24 (2 per token)
    # beside the dense MLP
    "gemma4-moe": dict(LLAMA, mlp_class_name="GemmaMLP", gelu_approximate="tanh", n_head=4, n_query_groups=2,
                       head_size=8, global_head_size=16, global_n_query_groups=1, attention_k_eq_v=True, norm_qk=True,
                       norm_v=True, norm_upcast=True, post_norms=True, scale_embeddings=True, attention_scalar=1.0,
                       sliding_window=4, global_layer_every=2, rope_base=1000000, rope_local_base=10000,
                       rope_scaling=dict(type="proportional", partial_rotary_factor=0.25, factor=1.0),
                       layer_scalar=True, final_logit_softcapping=30.0, tie_embeddings=True, n_expert=4,
                       n_expert_per_token=2, moe_intermediate_size=24, router_norm=True, moe_activation="gelu",
                       moe_with_mlp=True, hf_model_type="gemma4_text"),
}


@lru_cache
def script(path: str):
    """A script imported as a module, to call its `main` in this process (a subprocess costs seconds of imports)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def merge(**kwargs) -> None:
    script("scripts/merge_lora.py").main(**kwargs)


def tiny_config(kind: str, **kwargs) -> Config:
    return Config(**{**dict(name=f"tiny-{kind}", n_layer=2, n_embd=32, vocab_size=VOCAB, padding_multiple=512,
                            block_size=64), **CONFIGS[kind], **kwargs})


def make_checkpoint(path: Path, config: Config, tokenizer_dir: Path, dtype: torch.dtype = torch.float32,
                    seed: int = 0) -> Path:
    """A checkpoint dir like a converted one: random weights, lit_config.json, config.json, tokenizer files."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm_1.weight") or name.endswith("norm_2.weight") or "ln_f" in name:
                param.uniform_(0.5, 1.5)  # not all ones: a wrong norm mapping would show
    path.mkdir(parents=True)
    torch.save({k: v.to(dtype) for k, v in model.state_dict().items()}, path / "lit_model.pth")
    config.save(path / "lit_config.json")
    (path / "config.json").write_text(json.dumps(hf_config_from_lit(config, dtype, bos_token_id=1, eos_token_id=2)))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(tokenizer_dir / name, path / name)
    return path


def make_finetune_dir(path: Path, checkpoint_dir: Path, lora: LoRAConfig, seed: int = 1, std: float = 0.1,
                      precision: str = "32-true", prompt_style: str = "alpaca") -> Path:
    """An out dir as finetune/lora.py writes it, with random (non-zero) A and B."""
    model = random_lora_model(checkpoint_dir, lora, seed, std, precision)
    return save_finetune_dir(path, model, checkpoint_dir, lora, precision, prompt_style)


def random_lora_model(checkpoint_dir: Path, lora: LoRAConfig, seed: int = 1, std: float = 0.1,
                      precision: str = "32-true") -> GPT:
    model = load_model(checkpoint_dir, precision=precision, lora_config=lora)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if lora_filter(name):
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def save_finetune_dir(path: Path, model: GPT, checkpoint_dir: Path, lora: LoRAConfig, precision: str = "32-true",
                      prompt_style: str = "alpaca") -> Path:
    path.mkdir(parents=True)
    torch.save(lora_state_dict(model), path / "lit_model_lora_finetuned.pth")
    run = {"lora": lora.to_dict(), "model": model.config.to_dict(), "checkpoint_dir": str(checkpoint_dir.resolve()),
           "prompt_style": prompt_style, "data": {}, "train": {}, "precision": precision, "quantize": None}
    (path / "lora_config.json").write_text(json.dumps(run))
    (path / "prompt_style.json").write_text(json.dumps({"name": prompt_style}))
    return path


def tokens(length: int = 12, batch: int = 2, high: int = 1000) -> torch.Tensor:
    return torch.randint(0, high, (batch, length), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def lora_logits(checkpoint_dir: Path, lora_path: Path, x: torch.Tensor, precision: str = "32-true") -> torch.Tensor:
    return load_model(checkpoint_dir, precision=precision, lora_path=lora_path)(x).float()


@torch.no_grad()
def base_logits(checkpoint_dir: Path, x: torch.Tensor, precision: str = "32-true") -> torch.Tensor:
    return load_model(checkpoint_dir, precision=precision)(x).float()


def leftovers(parent: Path) -> list:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_merged_equals_unmerged_float32(kind, tmp_path, smollm2_dir):
    base = make_checkpoint(tmp_path / "base", tiny_config(kind), smollm2_dir)
    lora = LoRAConfig(r=4, alpha=8, key=kind != "neox")  # neox: query and value only
    out = make_finetune_dir(tmp_path / "out" / "run", base, lora)
    if kind == "llama-tied":  # once end to end through the command line
        proc = run_script("scripts/merge_lora.py", "--lora_path", out, "--out_dir", tmp_path / "merged")
        assert "peak memory (RSS)" in proc.stdout
    else:
        merge(lora_path=out, out_dir=tmp_path / "merged")
    x = tokens()
    expected = lora_logits(base, out, x)
    merged = base_logits(tmp_path / "merged", x)
    # float32 rounding of (W + B A) x against W x + B (A x), grown through the layers: up to 1.5e-5 (Gemma 4, on an
    # AMX Xeon; the kernels' summation order differs between CPUs)
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=3e-5)
    assert (expected - base_logits(base, x)).abs().max() > 0.1  # the adapter changes the output
    state = torch.load(tmp_path / "merged" / "lit_model.pth", weights_only=True)
    assert not any(lora_filter(k) for k in state) and all(t.dtype == torch.float32 for t in state.values())
    merged_config = Config.from_checkpoint(tmp_path / "merged")
    assert merged_config.tie_embeddings is False  # a merged head adapter unties a tied head
    hf_config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert hf_config["tie_word_embeddings"] is False and hf_config["num_hidden_layers"] == merged_config.n_layer
    assert leftovers(tmp_path) == []


def test_tied_model_without_head_adapter_stays_tied(tmp_path, smollm2_dir):
    base = make_checkpoint(tmp_path / "base", tiny_config("llama-tied"), smollm2_dir)
    out = make_finetune_dir(tmp_path / "run", base, LoRAConfig(r=4, alpha=8, head=False))
    merge(lora_path=out / "lit_model_lora_finetuned.pth", out_dir=tmp_path / "merged")
    x = tokens()
    torch.testing.assert_close(base_logits(tmp_path / "merged", x), lora_logits(base, out, x), rtol=1e-5, atol=1e-5)
    assert Config.from_checkpoint(tmp_path / "merged").tie_embeddings is True
    state = torch.load(tmp_path / "merged" / "lit_model.pth", weights_only=True)
    assert state["lm_head.weight"].untyped_storage().data_ptr() == \
        state["transformer.wte.weight"].untyped_storage().data_ptr()  # saved once


def test_bf16_merge_within_rounding_and_precision_flag(tmp_path, smollm2_dir):
    config = tiny_config("llama-gqa")
    base = make_checkpoint(tmp_path / "base", config, smollm2_dir, dtype=torch.bfloat16)
    out = make_finetune_dir(tmp_path / "run", base, LoRAConfig(r=4, alpha=8), precision="bf16-true")
    merge(lora_path=out, out_dir=tmp_path / "merged")
    state = torch.load(tmp_path / "merged" / "lit_model.pth", weights_only=True)
    assert all(t.dtype == torch.bfloat16 for t in state.values())  # the base's saved precision
    x = tokens()
    reference = lora_logits(base, out, x, "32-true")  # bf16 weights, float32 compute
    unmerged = lora_logits(base, out, x, "bf16-true")
    merged = base_logits(tmp_path / "merged", x, "bf16-true")
    error_unmerged, error_merged = (unmerged - reference).abs().max(), (merged - reference).abs().max()
    assert error_merged < 3 * error_unmerged + 2e-2, (error_merged, error_unmerged)  # one more bf16 rounding

    merge(lora_path=out, out_dir=tmp_path / "merged32", precision="32-true")
    state = torch.load(tmp_path / "merged32" / "lit_model.pth", weights_only=True)
    assert all(t.dtype == torch.float32 for t in state.values())
    assert json.loads((tmp_path / "merged32" / "config.json").read_text())["torch_dtype"] == "float32"
    merged32 = base_logits(tmp_path / "merged32", x, "32-true")
    torch.testing.assert_close(merged32, reference, rtol=1e-4, atol=1e-4)  # merged in float32 from the bf16 base


def test_output_dir_is_self_sufficient(tmp_path, smollm2_dir, capsys):
    """generate/base.py and the eval script on the merged dir give what generate/lora.py and the eval script give on
    the adapter, with nothing copied by hand (and the adapter deleted)."""
    base = make_checkpoint(tmp_path / "base", tiny_config("llama-gqa"), smollm2_dir)
    out = make_finetune_dir(tmp_path / "run", base, LoRAConfig(r=4, alpha=8), prompt_style="chatml")
    merged = tmp_path / "merged"
    merge(lora_path=out, out_dir=merged)
    capsys.readouterr()
    check_valid_checkpoint_dir(merged)
    assert json.loads((merged / "prompt_style.json").read_text()) == {"name": "chatml"}  # the adapter's, not alpaca
    assert (merged / "generation_config.json").is_file() and (merged / "tokenizer_config.json").is_file()
    text = "Merged weights, same tokenizer: 12 + 30 = 42"
    assert Tokenizer(merged).encode(text).tolist() == Tokenizer(base).encode(text).tolist()
    assert Tokenizer(merged).stop_ids == Tokenizer(base).stop_ids
    assert Config.from_checkpoint(merged).n_embd == 32

    greedy = dict(prompt="What food do llamas eat?", max_new_tokens=8, temperature=0.0, precision="32-true",
                  stream=False)
    script("generate/lora.py").main(lora_path=out, **greedy)
    with_adapter = capsys.readouterr().out
    evaluation = dict(tasks="lit_cloze", limit=4, batch_size=4, precision="32-true", bootstrap_iters=0)
    script("eval/lm_eval_harness.py").setup(lora_path=out, save_filepath=tmp_path / "lora.json", **evaluation)
    shutil.rmtree(out)  # nothing in the merged dir refers back to the adapter
    capsys.readouterr()
    script("generate/base.py").main(checkpoint_dir=merged, **greedy)
    assert capsys.readouterr().out == with_adapter and len(set(with_adapter.strip())) > 3, with_adapter
    script("eval/lm_eval_harness.py").setup(checkpoint_dir=merged, save_filepath=tmp_path / "merged.json",
                                            **evaluation)
    scores = [json.loads((tmp_path / f"{name}.json").read_text())["results"]["lit_cloze"]
              for name in ("lora", "merged")]
    metrics = [k for k in scores[0] if k.startswith("acc")]
    assert metrics and all(scores[1][k] == pytest.approx(scores[0][k]) for k in metrics)


def test_default_out_dir_and_step_checkpoint(tmp_path, smollm2_dir, monkeypatch):
    base = make_checkpoint(tmp_path / "base", tiny_config("llama-gqa"), smollm2_dir)
    out = make_finetune_dir(tmp_path / "lora" / "myrun", base, LoRAConfig(r=2, alpha=4))
    (out / "checkpoints").mkdir()
    adapter = torch.load(out / "lit_model_lora_finetuned.pth", weights_only=True)
    torch.save({"adapter": adapter, "step_count": 5}, out / "checkpoints" / "step-000005.pth")
    monkeypatch.chdir(tmp_path)
    merge(lora_path=out / "checkpoints" / "step-000005.pth")
    merged = tmp_path / "out" / "merged" / "myrun-step-000005"  # relative to the working dir
    x = tokens()
    torch.testing.assert_close(base_logits(merged, x), lora_logits(base, out, x), rtol=1e-5, atol=1e-5)


def test_merged_export_loads_in_transformers(tmp_path, smollm2_dir):
    transformers = pytest.importorskip("transformers")
    for kind in ("llama-tied", "neox"):
        base = make_checkpoint(tmp_path / kind / "base", tiny_config(kind), smollm2_dir)
        out = make_finetune_dir(tmp_path / kind / "run", base, LoRAConfig(r=4, alpha=8))
        merge(lora_path=out, out_dir=tmp_path / kind / "merged")
        script("scripts/convert_lit_checkpoint.py").main(checkpoint_dir=tmp_path / kind / "merged",
                                                         out_dir=tmp_path / kind / "hf")
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / kind / "hf", dtype=torch.float32)
        x = tokens()
        with torch.no_grad():
            actual = hf_model.eval()(input_ids=x).logits
        torch.testing.assert_close(actual, lora_logits(base, out, x), rtol=1e-4, atol=1e-4)


def test_smollm2_merge_convert_transformers(tmp_path, smollm2_dir):
    """The real model: LoRA on SmolLM2-135M -> merge -> convert_lit_checkpoint -> transformers logits."""
    transformers = pytest.importorskip("transformers")
    lora = LoRAConfig(r=2, alpha=4, mlp=False)
    model = random_lora_model(smollm2_dir, lora, std=0.02)
    x = Tokenizer(smollm2_dir).encode("The capital of France is Paris, and the capital of Italy is")[None]
    with torch.no_grad():
        expected = model(x)
    out = save_finetune_dir(tmp_path / "run", model, smollm2_dir, lora, prompt_style="chatml")
    del model
    merge(lora_path=out, out_dir=tmp_path / "merged")
    script("scripts/convert_lit_checkpoint.py").main(checkpoint_dir=tmp_path / "merged", out_dir=tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        actual = hf_model(input_ids=x).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-3)
    assert hf_model.config.tie_word_embeddings is False  # the head adapter was merged into its own matrix
    embedding = hf_model.get_input_embeddings().weight
    base = torch.load(smollm2_dir / "lit_model.pth", mmap=True, weights_only=True)
    assert torch.equal(embedding, base["transformer.wte.weight"])  # the embedding keeps the base values
    assert not torch.equal(hf_model.lm_head.weight, embedding)


# ---------------------------------------------------------------------------------------------------------------------
# bad inputs: a clear message, exit status 1, nothing written


def merge_fails(tmp_path: Path, match: str, **kwargs) -> None:
    with pytest.raises(UserError, match=match):
        merge(**kwargs, out_dir=tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and leftovers(tmp_path) == []


def test_base_that_does_not_match_names_both_shapes(tmp_path, smollm2_dir):
    base = make_checkpoint(tmp_path / "base", tiny_config("llama-gqa"), smollm2_dir)
    other = make_checkpoint(tmp_path / "other", tiny_config("llama-gqa", n_embd=48), smollm2_dir)
    out = make_finetune_dir(tmp_path / "run", base, LoRAConfig(r=4, alpha=8))
    proc = run_script("scripts/merge_lora.py", "--lora_path", out, "--checkpoint_dir", other,
                      "--out_dir", tmp_path / "merged", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "has shape (4, 32) in the adapter but (4, 48) in the model" in proc.stderr, proc.stderr
    assert "tiny-llama-gqa" in proc.stderr and str(other) in proc.stderr
    assert not (tmp_path / "merged").exists() and leftovers(tmp_path) == []


def test_adapter_that_is_not_one(tmp_path, smollm2_dir):
    base = make_checkpoint(tmp_path / "base", tiny_config("llama-gqa"), smollm2_dir)
    out = make_finetune_dir(tmp_path / "run", base, LoRAConfig(r=4, alpha=8))
    adapter = out / "lit_model_lora_finetuned.pth"

    shutil.copyfile(base / "lit_model.pth", adapter)  # a base checkpoint where the adapter should be
    merge_fails(tmp_path, r"not a LoRA adapter \(it looks like a base lit_model\.pth\).*found .*transformer\.wte",
                lora_path=out)
    adapter.write_text("not a checkpoint\n")
    merge_fails(tmp_path, "Could not read", lora_path=out)
    torch.save([1, 2, 3], adapter)
    merge_fails(tmp_path, "is not a LoRA adapter", lora_path=out)
    (out / "lora_config.json").unlink()
    merge_fails(tmp_path, "No lora_config.json next to", lora_path=out)
    (out / "lora_config.json").write_text("{\"lora\": {\"r\": 4}}")
    merge_fails(tmp_path, "is not a lora_config.json", lora_path=out)
    merge_fails(tmp_path, "No adapter at", lora_path=tmp_path / "nowhere")


def test_existing_out_dir_and_missing_base(tmp_path, smollm2_dir):
    base = make_checkpoint(tmp_path / "base", tiny_config("llama-gqa"), smollm2_dir)
    out = make_finetune_dir(tmp_path / "run", base, LoRAConfig(r=4, alpha=8))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    with pytest.raises(UserError, match="already exists and is not empty"):
        merge(lora_path=out, out_dir=tmp_path / "taken")
    assert (tmp_path / "taken" / "file").read_text() == "keep me"
    shutil.rmtree(base)
    merge_fails(tmp_path, f"{base}.* does not exist", lora_path=out)


def test_help():
    proc = run_script("scripts/merge_lora.py", "--help")
    for flag in ("--lora_path", "--checkpoint_dir", "--out_dir", "--precision"):
        assert flag in proc.stdout
    assert "bf16-true" in proc.stdout and "lora_config.json" in proc.stdout
