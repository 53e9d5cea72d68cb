"""Checkpoint dir -> GGUF, and LoRA adapter -> LoRA GGUF. The oracle is llama.cpp itself (the `xllamacpp` wheel: a
prebuilt CPU llama.cpp with its server's completion API, which returns top log-probs), run on what we export and
compared with our model; the reference for names, keys, shapes and types is a GGUF as llama.cpp's converter writes
it (tests/test_gguf.py's tiny ones, and the real SmolLM2 / Gemma 3 files from PyPI)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from test_gguf import ARCH_CASES, tiny_hf, train_byte_level_bpe, train_sentencepiece, write_gguf_like_llama_cpp

from lit_gpt.config import Config
from lit_gpt.gguf import convert_gguf
from lit_gpt.gguf_export import export_gguf
from lit_gpt.model import GPT
from lit_gpt.utils import load_checkpoint

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
