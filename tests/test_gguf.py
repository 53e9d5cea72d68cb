"""GGUF -> checkpoint dir. The oracle is transformers loading the same GGUF file (model and tokenizer), and for each
architecture the transformers model a tiny GGUF was written from; where transformers and llama.cpp tokenize
differently, a small reference of llama.cpp's BPE written here, or sentencepiece."""

import functools
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import regex
import torch

from conftest import run_script
from lit_gpt.config import Config
from lit_gpt.gguf import convert_gguf
from lit_gpt.model import GPT
from lit_gpt.utils import UserError, lazy_load

SAMPLE = """The quick brown fox jumps over the lazy dog. I'm sure they'll say it's fine, aren't you?
def add(a, b):\n    return a + b  # 12 + 30 = 42\n\tTabs\tand   spaces   here.
Café déjà vu, naïve façade. 日本語のテキスト. Prices: $3.99, 1,000,000 and 3.14159! x² + y³ = ½
<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"""
TEXTS = ["Hello world!", "Hello 2024 world", "  multiple   spaces\n\n\ttabs  ", "I'm you're they'll it's",
         "Café déjà vu — naïve façade", "日本語のテキスト", "emoji 😀🎉 test", "def f(x):\n    return x**2  # c",
         "3.14159 and 1,000,000", "١٢٣ Arabic and १२३ Devanagari digits", "a\r\nb", "<|im_start|>user\nHi<|im_end|>\n",
         "x² + y³ = z½", " ½ ¼ ¾", "Ⅻ roman ⅷ", "10²", " ²", "", " ", "\n", "<|im_end|><|im_end|>",
         "parseHTTPResponse CamelCase DON'T McDonald's"]


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character table of byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def train_byte_level_bpe(vocab_size: int = 400) -> tuple:
    """(tokens, token_types, merges) of a byte-level BPE trained on SAMPLE, control tokens first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([SAMPLE] * 20, trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, [3 if t in specials else 1 for t in tokens], merges


def hf_to_gguf_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q/k rows: interleave the two halves of each head."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def encode_tensor(w: np.ndarray, qtype_name: str, rng: np.random.Generator) -> tuple:
    """(data, raw_dtype) for GGUFWriter.add_tensor. gguf-py cannot quantize K-quants: those get random blocks
    (bits 5 and 6 of every byte cleared so the fp16 block scales stay small and finite)."""
    from gguf import GGMLQuantizationType, quants
    from gguf.constants import GGML_QUANT_SIZES

    qtype = GGMLQuantizationType[qtype_name]
    if qtype_name == "F32":
        return w.astype(np.float32), None
    if qtype_name.endswith("_K") or qtype_name == "IQ4_NL":
        block, size = GGML_QUANT_SIZES[qtype]
        data = rng.integers(0, 256, (w.shape[0], w.shape[1] // block * size), dtype=np.uint8) & 0x9F
        return data, qtype
    return quants.quantize(w.astype(np.float32), qtype), qtype


def write_tiny_gguf(path: Path, *, arch: str = "llama", types: tuple = ("F32",), tie: bool = False,
                    tokenizer: str = "gpt2", pre: str = "smollm", n_embd: int = 256, seed: int = 0,
                    metadata: Optional[dict] = None, extra_tensors: Optional[dict] = None) -> Path:
    """A 2-layer Llama GGUF with random weights written the way llama.cpp writes them, tensor types cycling
    through `types`, and a tokenizer trained on SAMPLE (byte-level BPE, or sentencepiece for "llama"); `metadata`
    (str, int, float or list values) and `extra_tensors` (float32 arrays) added as they are."""
    import gguf

    rng = np.random.default_rng(seed)
    n_layer, n_head, n_kv, hs, inter = 2, 4, 2, n_embd // 4, 2 * n_embd
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("Tiny Test Model")
    writer.add_organization("TinyOrg")
    writer.add_block_count(n_layer)
    writer.add_context_length(128)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hs)
    if tokenizer == "gpt2":
        tokens, token_types, merges = train_byte_level_bpe()
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_merges(merges)
        writer.add_add_bos_token(False)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                                 "<|im_end|>\n{% endfor %}")
    else:
        tokens, token_types, scores = train_sentencepiece(path.parent)
        writer.add_tokenizer_model("llama")
        writer.add_token_scores(scores)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    for key, value in (metadata or {}).items():
        {str: writer.add_string, int: writer.add_uint32, float: writer.add_float32,
         list: writer.add_array}[type(value)](key, value)
    vocab = len(tokens)

    weights = {"token_embd.weight": (vocab, n_embd)}
    for i in range(n_layer):
        weights.update({f"blk.{i}.attn_q.weight": (n_head * hs, n_embd), f"blk.{i}.attn_k.weight": (n_kv * hs, n_embd),
                        f"blk.{i}.attn_v.weight": (n_kv * hs, n_embd), f"blk.{i}.attn_output.weight": (n_embd, n_embd),
                        f"blk.{i}.ffn_gate.weight": (inter, n_embd), f"blk.{i}.ffn_up.weight": (inter, n_embd),
                        f"blk.{i}.ffn_down.weight": (n_embd, inter)})
    if not tie:
        weights["output.weight"] = (vocab, n_embd)
    for k, (name, shape) in enumerate(weights.items()):
        w = rng.normal(0, 0.05, shape).astype(np.float32)
        if ".attn_q." in name or ".attn_k." in name:
            w = hf_to_gguf_permute(w, n_head if ".attn_q." in name else n_kv)
        data, raw_dtype = encode_tensor(w, types[k % len(types)], rng)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    norms = [f"blk.{i}.{n}.weight" for i in range(n_layer) for n in ("attn_norm", "ffn_norm")]
    for name in norms + ["output_norm.weight"]:
        writer.add_tensor(name, (1 + rng.normal(0, 0.1, n_embd)).astype(np.float32))
    for name, w in (extra_tensors or {}).items():
        writer.add_tensor(name, np.asarray(w, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


GEMMA_USER_DEFINED = ["<start_of_turn>", "<end_of_turn>", "\u2581\u2581", "\u2581" * 3]


def train_sentencepiece(workdir: Path, gemma: bool = False) -> tuple:
    """(pieces, types, scores) of a byte-fallback sentencepiece BPE model trained on SAMPLE. `gemma`: laid out like
    Gemma's (<pad> <eos> <bos> <unk> first, no space put before the text, turn markers and runs of spaces as
    user-defined pieces), with the token types and spellings llama.cpp's converter gives them: turn markers are
    control tokens, runs of spaces user-defined tokens spelled with real spaces."""
    import sentencepiece as spm

    model = workdir / ("spm_gemma.model" if gemma else "spm.model")
    if not model.is_file():
        layout = dict(add_dummy_prefix=True)
        if gemma:
            layout = dict(add_dummy_prefix=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
                          eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
                          user_defined_symbols=GEMMA_USER_DEFINED)
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(SAMPLE.splitlines() * 20), model_prefix=str(model.with_suffix("")), vocab_size=400,
            model_type="bpe", byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
            character_coverage=1.0, minloglevel=2, **layout)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
             for i in range(len(pieces))]
    for i, piece in enumerate(pieces):
        if gemma and piece in GEMMA_USER_DEFINED:
            spaces = not piece.strip("\u2581")
            pieces[i], types[i] = (piece.replace("\u2581", " "), 4) if spaces else (piece, 3)
    return pieces, types, [sp.get_score(i) for i in range(len(pieces))]


def hf_from_gguf(gguf_path: Path, **config_overrides) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                dtype=torch.float32, **config_overrides).eval()


def hf_tokenizer_from_gguf(gguf_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def load_lit(checkpoint_dir: Path) -> GPT:
    model = GPT(Config.from_checkpoint(checkpoint_dir))
    model.load_state_dict(lazy_load(checkpoint_dir / "lit_model.pth"))
    return model.eval()


@functools.lru_cache(maxsize=4)
def gguf_vocab(gguf_path: Path) -> tuple:
    """(token -> id, merge pair -> rank, control and user-defined tokens) of a GGUF's byte-level BPE vocabulary."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(fields["tokenizer.ggml.merges"].contents())}
    specials = sorted((t for t, k in zip(tokens, types) if k in (3, 4)), key=len, reverse=True)
    return {t: i for i, t in enumerate(tokens)}, ranks, specials


def llama_cpp_bpe_encode(text: str, gguf_path: Path, regexes: list) -> list:
    """llama.cpp's BPE tokenization, written from its description: split out control/user-defined tokens, apply
    the pre-tokenizer regexes one after the other (matches and the text between them become pieces), map each
    piece's UTF-8 bytes to the byte-level alphabet, then merge the adjacent pair of lowest merge rank (leftmost
    first) until none is left."""
    vocab, ranks, specials = gguf_vocab(gguf_path)
    byte_chars = bytes_to_unicode()
    ids = []
    for part in regex.split("(" + "|".join(map(regex.escape, specials)) + ")", text):
        if part in vocab and part in specials:
            ids.append(vocab[part])
            continue
        pieces = [part] if part else []
        for pattern in regexes:
            split = []
            for piece in pieces:
                pos = 0
                for m in regex.finditer(pattern, piece):
                    split += [piece[pos:m.start()]] if m.start() > pos else []
                    split += [m.group()] if m.end() > m.start() else []
                    pos = max(pos, m.end())
                split += [piece[pos:]] if pos < len(piece) else []
            pieces = split
        for piece in pieces:
            symbols = [byte_chars[b] for b in piece.encode("utf-8")]
            while len(symbols) > 1:
                rank, i = min((ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(symbols, symbols[1:])))
                if rank == float("inf"):
                    break
                symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
            ids += [vocab[s] for s in symbols]
    return ids


# llama.cpp's SmolLM pre-tokenizer: each numeral alone, then GPT-2's regex (src/llama-vocab.cpp)
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
SMOLLM_REGEXES = [r"\p{N}", GPT2_REGEX]


ALL_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
HF_NAMES = {"attn.proj": "self_attn.o_proj", "mlp.fc_1": "mlp.gate_proj", "mlp.fc_2": "mlp.up_proj",
            "mlp.proj": "mlp.down_proj", "norm_1": "input_layernorm", "norm_2": "post_attention_layernorm"}


def test_tiny_gguf_every_tensor_type_matches_transformers(tmp_path):
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", types=ALL_TYPES, tie=False)
    out = convert_gguf(gguf_path, tmp_path / "ckpt")
    ours, hf = load_lit(out), hf_from_gguf(gguf_path)
    c = ours.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_query_groups, c.head_size, c.tie_embeddings) == (2, 256, 4, 2, 64, False)

    # every weight equals transformers' dequantized one, q and k rows back in rotate-half order
    sd, hf_sd = ours.state_dict(), hf.state_dict()
    pairs = [("transformer.wte.weight", "model.embed_tokens.weight"), ("lm_head.weight", "lm_head.weight"),
             ("transformer.ln_f.weight", "model.norm.weight")]
    for i in range(c.n_layer):
        q, k, v = sd[f"transformer.h.{i}.attn.qkv.weight"].split([256, 128, 128])
        for ours_w, name in [(q, "q_proj"), (k, "k_proj"), (v, "v_proj")]:
            torch.testing.assert_close(ours_w, hf_sd[f"model.layers.{i}.self_attn.{name}.weight"], rtol=0, atol=0)
        pairs += [(f"transformer.h.{i}.{a}.weight", f"model.layers.{i}.{b}.weight") for a, b in HF_NAMES.items()]
    for a, b in pairs:
        torch.testing.assert_close(sd[a], hf_sd[b], rtol=0, atol=0, msg=f"{a} != {b}")

    idx = torch.randint(0, c.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(idx).logits
        torch.testing.assert_close(ours(idx), expected, rtol=1e-5, atol=1e-5)

        # config.json describes transformers' model: a LlamaForCausalLM built from it runs its weights identically
        from transformers import AutoConfig, LlamaForCausalLM

        rebuilt = LlamaForCausalLM(AutoConfig.from_pretrained(out)).eval()
        rebuilt.load_state_dict(hf_sd)
        torch.testing.assert_close(rebuilt(idx).logits, expected, rtol=0, atol=0)


def test_script_writes_a_complete_dir_named_from_the_metadata(tmp_path):
    gguf_path = write_tiny_gguf(tmp_path / "tiny-model.Q8_0.gguf", types=("Q8_0", "F16"), tie=True)
    proc = run_script("scripts/convert_gguf_checkpoint.py", "--gguf_path", gguf_path, cwd=tmp_path)
    out = tmp_path / "checkpoints" / "TinyOrg" / "Tiny-Test-Model"  # general.organization / general.name
    assert str(out.relative_to(tmp_path)) in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "lit_config.json", "lit_model.pth", "prompt_style.json",
        "tokenizer.json", "tokenizer_config.json"]
    assert not [p for p in (out.parent).iterdir() if p != out]  # no temp dir left behind
    config = Config.from_checkpoint(out)
    assert config.name == "Tiny-Test-Model" and config.hf_config == {"org": "TinyOrg", "name": "Tiny-Test-Model"}
    assert config.tie_embeddings and json.loads((out / "prompt_style.json").read_text()) == {"name": "chatml"}
    state = torch.load(out / "lit_model.pth", weights_only=True)
    assert state["lm_head.weight"] is state["transformer.wte.weight"] or torch.equal(state["lm_head.weight"],
                                                                                    state["transformer.wte.weight"])

    run_script("scripts/convert_gguf_checkpoint.py", "--gguf_path", gguf_path, "--checkpoint_dir", "bf16",
               "--dtype", "bfloat16", cwd=tmp_path)
    bf16 = torch.load(tmp_path / "bf16" / "lit_model.pth", weights_only=True)
    assert {t.dtype for t in bf16.values()} == {torch.bfloat16}
    assert all(torch.equal(bf16[k], v.bfloat16()) for k, v in state.items())
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2", "gpt-4o"])
def test_tiny_byte_level_tokenizer_matches_transformers(tmp_path, pre):
    from tokenizers import Tokenizer

    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", pre=pre, n_embd=64)
    ours = Tokenizer.from_file(str(convert_gguf(gguf_path, tmp_path / "ckpt") / "tokenizer.json"))
    hf = hf_tokenizer_from_gguf(gguf_path)
    for text in TEXTS + SAMPLE.splitlines():
        ids = ours.encode(text).ids
        assert ids == hf(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == text


def test_tiny_smollm_tokenizer_follows_llama_cpp(tmp_path):
    """The vocabulary here has digit merges ("4 2" ...). llama.cpp's 'smollm' pre-tokenizer never lets a digit
    merge; transformers' GGUF loader uses GPT-2's pre-tokenizer for it, so on digits it does merge: we follow
    llama.cpp (what SmolLM was trained with) and differ from transformers there, and only there."""
    from tokenizers import Tokenizer

    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", pre="smollm", n_embd=64)
    ours = Tokenizer.from_file(str(convert_gguf(gguf_path, tmp_path / "ckpt") / "tokenizer.json"))
    hf = hf_tokenizer_from_gguf(gguf_path)
    differ = []
    for text in TEXTS + SAMPLE.splitlines():
        ids = ours.encode(text).ids
        assert ids == llama_cpp_bpe_encode(text, gguf_path, SMOLLM_REGEXES), text
        if ids != hf(text)["input_ids"]:
            differ.append(text)
            assert regex.search(r"\p{N}", text), text
    assert "3.14159 and 1,000,000" in differ and " ½ ¼ ¾" in differ and "Hello world!" not in differ


def test_tiny_sentencepiece_tokenizer_matches_sentencepiece_and_transformers(tmp_path):
    """sentencepiece (whose BPE llama.cpp re-implements) is the oracle. transformers' GGUF tokenizer agrees except on
    text that starts with a space: it then adds no "▁" prefix, while sentencepiece and llama.cpp always add one."""
    import sentencepiece as spm
    from tokenizers import Tokenizer

    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", tokenizer="llama", n_embd=64)
    out = convert_gguf(gguf_path, tmp_path / "ckpt")
    ours = Tokenizer.from_file(str(out / "tokenizer.json"))
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spm.model"))
    hf = hf_tokenizer_from_gguf(gguf_path)
    assert json.loads((out / "tokenizer_config.json").read_text())["add_bos_token"] is True  # llama.cpp's default
    differ = []
    for text in [t for t in TEXTS if "<|" not in t] + SAMPLE.splitlines():
        ids = ours.encode(text, add_special_tokens=False).ids
        assert ids == sp.encode(text), text
        assert ours.encode(text).ids == [1] + ids
        assert ours.decode(ids) == text
        if [1] + ids != hf(text)["input_ids"]:
            differ.append(text)
    assert differ and all(t[0].isspace() for t in differ) and " ½ ¼ ¾" in differ, differ


# (write_tiny_gguf arguments, the error) of files that are refused
REFUSED = {
    "gpt2_arch": (dict(arch="gpt2"), "holds a 'gpt2' model, which cannot be converted"),
    "bert_arch": (dict(arch="bert"), "holds a 'bert' model"),
    "qwen2moe_arch": (dict(arch="qwen2moe"), "holds a 'qwen2moe' model \\(a mixture of experts\\)"),
    "moe": (dict(metadata={"llama.expert_count": 8}), "is a mixture-of-experts llama model, .* \\(of those: qwen3moe"),
    "qwen3moe_no_experts": (dict(arch="qwen3moe"), "lacks qwen3moe.expert_count"),
    "qwen3moe_groups": (dict(arch="qwen3moe", metadata={"qwen3moe.expert_count": 8, "qwen3moe.expert_used_count": 2,
                                                        "qwen3moe.expert_group_count": 2}), "routes its experts in"),
    "yarn": (dict(metadata={"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0}),
             "RoPE scaling of type 'yarn'"),
    "rope_freqs": (dict(extra_tensors={"rope_freqs.weight": np.linspace(1, 3, 8) ** 2}),
                   "'rope_freqs' tensor is not Llama 3's RoPE scaling"),
    "qwen2_rope_freqs": (dict(arch="qwen2", extra_tensors={"rope_freqs.weight": np.ones(8)}),
                         "'rope_freqs' tensor in a qwen2 model"),
    "softcapping": (dict(arch="gemma3", metadata={"gemma3.final_logit_softcapping": 30.0}), "soft-caps its logits"),
    "IQ4_NL": (dict(types=("F32", "IQ4_NL")), "type IQ4_NL"),
    "no_tokenizer_pre": (dict(pre="no-such-pre"), "'no-such-pre' pre-tokenizer"),
    "missing_bias": (dict(arch="qwen2"), "does not hold a qwen2 model we can convert: missing blk.0.attn_q.bias"),
    "query_scale_without_yarn": (dict(arch="mistral3", metadata={"mistral3.attention.temperature_scale": 0.1}),
                                 "scales its queries over mistral3.attention.temperature_length=None positions"),
    "qwen35_without_ssm_keys": (dict(arch="qwen35"), "lacks one of the keys qwen35.ssm"),
    "olmo2_yarn_without_original": (dict(arch="olmo2", metadata={"olmo2.rope.scaling.type": "yarn",
                                                                 "olmo2.rope.scaling.factor": 4.0}),
                                    "YaRN RoPE scaling but no olmo2.rope.scaling.original_context_length"),
    "gemma4_no_pattern": (dict(arch="gemma4"), "has no gemma4.attention.sliding_window_pattern with a flag per"),
    "gemma4_pattern": (dict(arch="gemma4", metadata={"gemma4.attention.sliding_window_pattern": [False, True]}),
                       "has global layers \\[0\\], not every N-th layer"),
    "gemma4_attn_softcapping": (dict(arch="gemma4", metadata={"gemma4.attn_logit_softcapping": 50.0}),
                                "soft-caps its logits \\(gemma4.attn_logit_softcapping=50.0\\)"),
    "gemma4_rope_scaling": (dict(arch="gemma4", metadata={"gemma4.attention.sliding_window_pattern": [True, False],
                                                          "gemma4.rope.scaling.type": "linear",
                                                          "gemma4.rope.scaling.factor": 2.0}),
                            "has RoPE scaling 'linear' \\(factor 2.0\\)"),
    "gemma4_rope_freqs": (dict(arch="gemma4", metadata={"gemma4.attention.sliding_window_pattern": [True, False]},
                               extra_tensors={"rope_freqs.weight": [1, 1, 2, 2, 1e30, 1e30, 1e30, 1e30]}),
                          "'rope_freqs' tensor is not Gemma 4's proportional RoPE"),
    "gemma4_swa_rope": (dict(arch="gemma4", metadata={"gemma4.attention.sliding_window_pattern": [True, False],
                                                      "gemma4.rope.dimension_count_swa": 8}),
                        "RoPE on part of each head, which our model does not support for gemma4"),
    "mistral3_two_yarn_magnitudes": (dict(arch="mistral3", metadata={
        "mistral3.rope.scaling.type": "yarn", "mistral3.rope.scaling.factor": 4.0,
        "mistral3.rope.scaling.original_context_length": 16, "mistral3.rope.scaling.yarn_log_multiplier": 1.0,
        "mistral3.rope.scaling.attn_factor": 0.9}), "has both mistral3.rope.scaling.yarn_log_multiplier and attn"),
}


@pytest.mark.parametrize("case", ["missing", "not_gguf", "truncated", "dir_exists", *REFUSED])
def test_bad_input_fails_before_writing(tmp_path, case):
    path = tmp_path / "model.gguf"
    if case == "not_gguf":
        path.write_text("just text\n")
    elif case == "truncated":
        write_tiny_gguf(tmp_path / "full.gguf", n_embd=64)
        path.write_bytes((tmp_path / "full.gguf").read_bytes()[:5000])
    elif case in REFUSED:
        write_tiny_gguf(path, n_embd=64, **REFUSED[case][0])
    elif case == "dir_exists":
        write_tiny_gguf(path, n_embd=64)
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    expected = {"missing": "No such GGUF file", "not_gguf": "is not a GGUF file", "truncated": "truncated or corrupt",
                "dir_exists": "already exists and is not empty", **{k: v[1] for k, v in REFUSED.items()}}
    with pytest.raises(UserError, match=expected[case]) as info:
        convert_gguf(path, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "dir_exists":
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import lit_gpt.gguf

    path = write_tiny_gguf(tmp_path / "tiny.gguf", n_embd=64)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lit_gpt.gguf.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        convert_gguf(path, tmp_path / "deep" / "out")
    assert list((tmp_path / "deep").iterdir()) == []


def test_script_error_is_one_line(tmp_path):
    proc = run_script("scripts/convert_gguf_checkpoint.py", "--gguf_path", tmp_path / "missing.gguf", check=False)
    assert proc.returncode == 1
    assert proc.stderr == f"error: No such GGUF file: {str(tmp_path / 'missing.gguf')!r}\n"


def test_help():
    proc = run_script("scripts/convert_gguf_checkpoint.py", "--help")
    assert "--gguf_path" in proc.stdout and "--checkpoint_dir" in proc.stdout and "bfloat16" in proc.stdout


# --- every architecture: a transformers model written into a GGUF as llama.cpp's converter writes it ---

# (GGUF architecture, transformers config class, kwargs, tokenizer) of tiny models. Windows are shorter than the
# test sequence (12 tokens), Phi-3's LongRoPE switches to its long factors past 8 positions.
_LLAMA = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=False)
_GEMMA3 = dict(num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=4,
               query_pre_attn_scalar=32, tie_word_embeddings=True)
ARCH_CASES = {
    # factors other than Llama 3.x's and 32 frequencies, two of them between the bands: the fit has to find them
    "llama3": ("llama", "LlamaConfig", dict(_LLAMA, rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=16.0, low_freq_factor=2.0, high_freq_factor=6.0,
        original_max_position_embeddings=8192)), "llama-bpe"),
    "llama-linear": ("llama", "LlamaConfig", dict(_LLAMA, rope_parameters=dict(
        rope_type="linear", rope_theta=10000.0, factor=4.0)), "llama-bpe"),
    "qwen2": ("qwen2", "Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                           rope_theta=1e6, rms_norm_eps=1e-6), "qwen2"),
    "qwen3": ("qwen3", "Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                           tie_word_embeddings=False, rope_theta=1e6, rms_norm_eps=1e-6), "qwen2"),
    "gemma3": ("gemma3", "Gemma3TextConfig", dict(_GEMMA3, rope_parameters=dict(
        full_attention=dict(rope_type="default", rope_theta=1e6),
        sliding_attention=dict(rope_type="default", rope_theta=10000.0))), "gemma"),
    "gemma3-linear": ("gemma3", "Gemma3TextConfig", dict(_GEMMA3, rope_parameters=dict(
        full_attention=dict(rope_type="linear", factor=8.0, rope_theta=1e6),
        sliding_attention=dict(rope_type="default", rope_theta=10000.0))), "gemma"),
    # Phi-4-mini-like: RoPE on 75% of each head, LongRoPE, tied embeddings, and a window (Phi-3-mini's)
    "phi3": ("phi3", "Phi3Config", dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=6,
                                        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                        original_max_position_embeddings=8, rope_parameters=dict(
                                            rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.75,
                                            original_max_position_embeddings=8,
                                            short_factor=[1.0, 1.1, 1.3, 1.6, 2.0, 2.5],
                                            long_factor=[1.0, 2.0, 3.5, 6.0, 9.0, 14.0])), "gpt-4o"),
}
# What transformers' GGUF loader (5.x) gets wrong per case, as the config values that fix it; None where that takes
# more than a value or two, and the test compares against the model the GGUF was written from alone:
# - llama: it ignores `rope_freqs` and the `rope.scaling.*` keys, so it loses Llama 3's and linear RoPE scaling;
# - qwen3: it ignores `attention.key_length` and keeps Qwen3Config's head_dim of 128 (right for every released Qwen3);
# - gemma3: the file has no attention scalar and transformers assumes 256 (llama.cpp: the head size), and it ignores
#   the linear RoPE scaling of the global layers; the local base (10000) and layer pattern (6) it assumes as llama.cpp;
# - phi3: it ignores `rope.dimension_count` (RoPE on the whole head), the window and the LongRoPE factors, and
#   cannot build a model of under 32000 tokens without the file's pad id (Phi3Config's default is 32000).
GGUF_LOADER_FIXES = {"llama3": None, "llama-linear": None, "qwen2": {}, "qwen3": {"head_dim": 32},
                     "gemma3": {"query_pre_attn_scalar": 32}, "gemma3-linear": None, "phi3": None}


def tiny_hf(case: str, vocab_size: int) -> torch.nn.Module:
    """A transformers model of `case` with seeded random weights, norms included."""
    import transformers

    _, class_name, kwargs, _ = ARCH_CASES[case]
    sizes = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 max_position_embeddings=64)
    config = getattr(transformers, class_name)(**{**sizes, **kwargs})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Gemma's norms scale by 1 + weight: centred on 0; the others' on 1
            one = name.endswith("norm.weight") and config.model_type != "gemma3_text"
            p.copy_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.1) + (1.0 if one else 0.0))
    return model


def llama_cpp_rope_freqs(base: float, dim: int, s: dict) -> torch.Tensor:
    """llama.cpp's converter for Llama 3 scaling: a divisor per frequency, in float32, against an original context
    of 8192 whatever the config says."""
    original, low, high, factor = 8192, s["low_freq_factor"], s["high_freq_factor"], s["factor"]
    divisors = []
    for freq in 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)):
        wavelength = 2 * math.pi / freq
        smooth = (original / wavelength - low) / (high - low)
        divisors.append(1.0 if wavelength < original / high else factor if wavelength > original / low
                        else 1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(divisors, dtype=torch.float32)


# Hugging Face name part -> GGUF (llama.cpp's tensor names)
GGUF_NAMES = [("model.embed_tokens.", "token_embd."), ("lm_head.", "output."), ("model.norm.", "output_norm."),
              ("model.layers.", "blk."), (".input_layernorm.", ".attn_norm."), (".self_attn.q_proj.", ".attn_q."),
              (".self_attn.k_proj.", ".attn_k."), (".self_attn.v_proj.", ".attn_v."),
              (".self_attn.qkv_proj.", ".attn_qkv."), (".self_attn.o_proj.", ".attn_output."),
              (".self_attn.q_norm.", ".attn_q_norm."), (".self_attn.k_norm.", ".attn_k_norm."),
              (".pre_feedforward_layernorm.", ".ffn_norm."), (".post_feedforward_layernorm.", ".post_ffw_norm."),
              (".mlp.gate_proj.", ".ffn_gate."), (".mlp.up_proj.", ".ffn_up."), (".mlp.gate_up_proj.", ".ffn_up."),
              (".mlp.down_proj.", ".ffn_down.")]


def write_gguf_like_llama_cpp(path: Path, case: str, model: torch.nn.Module, name: str = "Tiny Model") -> Path:
    """`model` as llama.cpp's convert_hf_to_gguf.py writes it (F32): its metadata keys, tensor names, Llama's q/k
    rows interleaved, Gemma's norms stored as 1 + weight, RoPE scaling as tensors where llama.cpp keeps it so."""
    import gguf

    arch, _, _, pre = ARCH_CASES[case]
    c = model.config
    rope = c.rope_parameters.get("full_attention", c.rope_parameters)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(rope["rope_theta"])
    if arch in ("qwen3", "gemma3") or head_dim != c.hidden_size // c.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    tensors = {}
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
        if rope["rope_type"] == "llama3":
            tensors["rope_freqs.weight"] = llama_cpp_rope_freqs(rope["rope_theta"], head_dim, rope)
    if arch == "gemma3":
        writer.add_sliding_window(c.sliding_window)
        if case == "gemma3":  # recent converters write the local base too; older ones leave it to llama.cpp's 10000
            writer.add_rope_freq_base_swa(c.rope_parameters["sliding_attention"]["rope_theta"])
    if arch == "phi3":
        original = rope["original_max_position_embeddings"]
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_rope_dimension_count(int(rope["partial_rotary_factor"] * c.hidden_size) // c.num_attention_heads)
        writer.add_sliding_window(c.sliding_window or 0)
        ratio = c.max_position_embeddings / original
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(ratio) / math.log(original)))
        tensors["rope_factors_long.weight"] = torch.tensor(rope["long_factor"], dtype=torch.float32)
        tensors["rope_factors_short.weight"] = torch.tensor(rope["short_factor"], dtype=torch.float32)

    if pre == "gemma":
        tokens, token_types, scores = train_sentencepiece(path.parent, gemma=True)
        writer.add_tokenizer_model("llama")
        writer.add_token_scores(scores)
        writer.add_bos_token_id(2)
        writer.add_eos_token_id(1)
        writer.add_unk_token_id(3)
        writer.add_pad_token_id(0)
        writer.add_add_bos_token(True)
        writer.add_add_space_prefix(False)
    else:
        tokens, token_types, merges = train_byte_level_bpe()
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    assert len(tokens) == c.vocab_size

    for hf_name, w in model.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue  # llama.cpp uses the embedding
        if arch == "gemma3" and hf_name.endswith("norm.weight"):
            w = w + 1  # Gemma3RMSNorm scales by 1 + weight: llama.cpp stores that
        if arch == "llama" and (".q_proj." in hf_name or ".k_proj." in hf_name):
            w = torch.from_numpy(hf_to_gguf_permute(w.numpy(), c.num_attention_heads if ".q_proj." in hf_name
                                                    else c.num_key_value_heads))
        name = hf_name.replace(".post_attention_layernorm.", ".post_attention_norm." if arch == "gemma3"
                               else ".ffn_norm.")
        for hf_part, gguf_part in GGUF_NAMES:
            name = name.replace(hf_part, gguf_part)
        tensors[name] = w
    for name, w in tensors.items():
        writer.add_tensor(name, w.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("case", list(ARCH_CASES))
def test_every_architecture_matches_transformers(tmp_path, case):
    """Our model converted from the GGUF gives the logits of the transformers model the GGUF was written from, and of
    transformers loading the GGUF itself where its loader gets the architecture right (GGUF_LOADER_FIXES)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    vocab_size = len(train_sentencepiece(tmp_path, gemma=True)[0] if ARCH_CASES[case][3] == "gemma"
                     else train_byte_level_bpe()[0])
    source = tiny_hf(case, vocab_size)
    gguf_path = write_gguf_like_llama_cpp(tmp_path / "tiny.gguf", case, source)
    out = convert_gguf(gguf_path, tmp_path / "ckpt")
    ours = load_lit(out)
    c, hf_config = ours.config, json.loads((out / "config.json").read_text())
    assert c.hf_model_type == source.config.model_type == hf_config["model_type"]

    idx = torch.randint(0, vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = source(idx).logits
        torch.testing.assert_close(ours(idx), expected, rtol=1e-5, atol=1e-5)
        # config.json describes the same model: transformers built from it runs the source's weights identically
        rebuilt = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out), attn_implementation="sdpa")
        rebuilt.load_state_dict(source.state_dict())
        torch.testing.assert_close(rebuilt.eval()(idx).logits, expected, rtol=1e-5, atol=1e-5)
        if GGUF_LOADER_FIXES[case] is not None:
            from_gguf = hf_from_gguf(gguf_path, attn_implementation="sdpa", **GGUF_LOADER_FIXES[case])
            torch.testing.assert_close(ours(idx), from_gguf(idx).logits, rtol=1e-5, atol=1e-5)


def test_what_llama_cpp_does_not_store_is_recovered(tmp_path):
    """Llama 3's RoPE scaling comes back from `rope_freqs`; Gemma 3's attention scalar, layer pattern and local base
    are llama.cpp's (head size, every 6th, 10000) unless the file is named after a preset, whose values it takes."""
    import lit_gpt.gguf

    source = tiny_hf("llama3", len(train_byte_level_bpe()[0]))
    llama = convert_gguf(write_gguf_like_llama_cpp(tmp_path / "llama.gguf", "llama3", source), tmp_path / "llama")
    assert Config.from_checkpoint(llama).rope_scaling == dict(
        type="llama3", factor=16.0, low_freq_factor=2.0, high_freq_factor=6.0, original_max_position_embeddings=8192)

    vocab_size = len(train_sentencepiece(tmp_path, gemma=True)[0])
    source = tiny_hf("gemma3-linear", vocab_size)
    c = Config.from_checkpoint(convert_gguf(write_gguf_like_llama_cpp(tmp_path / "g.gguf", "gemma3-linear", source),
                                            tmp_path / "gemma"))
    assert (c.attention_scalar, c.global_layer_every, c.rope_local_base, c.sliding_window, c.rope_scaling) == (
        32, 6, 10000, 4, dict(type="linear", factor=8.0))
    assert [c.is_sliding(i) for i in range(7)] == [True] * 5 + [False, True]

    preset = dict(c.to_dict(), name="gemma-3-tiny-it", hf_config=dict(org="google", name="gemma-3-tiny-it"),
                  attention_scalar=20, global_layer_every=3, rope_local_base=5000)
    named = write_gguf_like_llama_cpp(tmp_path / "gemma-3-tiny-it-Q8_0.gguf", "gemma3-linear", source, name="x")
    with pytest.MonkeyPatch.context() as m:
        m.setitem(lit_gpt.gguf.name_to_config, preset["name"], preset)
        out = convert_gguf(named, tmp_path / "named")
    c = Config.from_checkpoint(out)
    assert (c.name, c.attention_scalar, c.global_layer_every, c.rope_local_base) == ("gemma-3-tiny-it", 20, 3, 5000)
    assert json.loads((out / "config.json").read_text())["query_pre_attn_scalar"] == 20


def test_tiny_gemma3_tokenizer_follows_sentencepiece(tmp_path):
    """Gemma's vocabulary as llama.cpp's converter writes it: no space before the text, turn markers as control tokens,
    runs of spaces as user-defined tokens spelled with real spaces, which llama.cpp (like sentencepiece) matches whole,
    longest first. sentencepiece is the oracle. transformers' GGUF tokenizer makes those runs ordinary BPE tokens
    instead; it agrees except on runs no single token covers: 4 spaces are "\u2581\u2581\u2581" + "\u2581d" for
    sentencepiece and us, "\u2581\u2581" + "\u2581\u2581" + "d" for transformers."""
    import sentencepiece as spm
    from tokenizers import Tokenizer

    vocab_size = len(train_sentencepiece(tmp_path, gemma=True)[0])
    gguf_path = write_gguf_like_llama_cpp(tmp_path / "tiny.gguf", "gemma3", tiny_hf("gemma3", vocab_size))
    out = convert_gguf(gguf_path, tmp_path / "ckpt")
    ours = Tokenizer.from_file(str(out / "tokenizer.json"))
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spm_gemma.model"))
    hf = hf_tokenizer_from_gguf(gguf_path)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["add_bos_token"]) == ("<bos>", "<eos>", True)
    texts = [t for t in TEXTS if "<|" not in t] + SAMPLE.splitlines() + [
        "a  b   c    d", "  two spaces first", "<start_of_turn>user\nHi<end_of_turn>\n"]
    differ = []
    for text in texts:
        ids = ours.encode(text, add_special_tokens=False).ids
        assert ids == sp.encode(text), text
        assert ours.encode(text).ids == [2] + ids
        assert ours.decode(ids, skip_special_tokens=False) == text
        if hf(text)["input_ids"] != [2] + ids:
            differ.append(text)
    assert differ == [t for t in texts if "    " in t] and differ, differ


# --- the real SmolLM2-135M-Instruct (Q4_1 GGUF): the converted dir against transformers on the same file ---

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_gguf):
    return hf_from_gguf(smollm2_gguf)


@pytest.fixture(scope="module")
def hf_smollm2_tokenizer(smollm2_gguf):
    return hf_tokenizer_from_gguf(smollm2_gguf)


def test_smollm2_dir_describes_the_model(smollm2_dir, smollm2_gguf, hf_smollm2_tokenizer):
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoTokenizer

    config = Config.from_checkpoint(smollm2_dir)
    # the file's hyperparameters are exactly those of the preset it is named after
    assert config.to_dict() == Config.from_name("SmolLM2-135M-Instruct").to_dict()
    hf_config = AutoConfig.from_pretrained(smollm2_dir)
    assert (hf_config.num_hidden_layers, hf_config.hidden_size, hf_config.num_key_value_heads,
            hf_config.tie_word_embeddings, hf_config.vocab_size) == (30, 576, 3, True, 49152)

    fields = GGUFReader(smollm2_gguf).fields
    tokenizer_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == fields["tokenizer.chat_template"].contents()
    assert {k: tokenizer_config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token", "add_bos_token")} == {
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>",
        "add_bos_token": False}
    assert json.loads((smollm2_dir / "generation_config.json").read_text()) == {
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    assert json.loads((smollm2_dir / "prompt_style.json").read_text()) == {"name": "chatml"}

    # transformers reads the dir's tokenizer files like its own GGUF tokenizer
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == \
        hf_smollm2_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)


def smollm2_prompts(tokenizer) -> list:
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    return [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
            "The quick brown fox jumps over the lazy dog. Then it",
            "def fibonacci(n):\n    "]


@pytest.fixture(scope="module")
def lit_smollm2(smollm2_dir):
    return load_lit(smollm2_dir)


def test_smollm2_logits_match_transformers(lit_smollm2, hf_smollm2, hf_smollm2_tokenizer):
    """Measured max abs difference: 0.0 on every prompt (the same dequantized float32 weights and the same
    operations), with logits up to ~38 in size. Asserted at float32 rounding level."""
    ours = lit_smollm2
    for prompt in smollm2_prompts(hf_smollm2_tokenizer):
        idx = hf_smollm2_tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected, actual = hf_smollm2(idx).logits, ours(idx)
        assert (actual - expected).abs().max().item() <= 1e-4, prompt


def test_smollm2_greedy_decoding_matches_transformers(lit_smollm2, hf_smollm2, hf_smollm2_tokenizer):
    ours = lit_smollm2
    eos = hf_smollm2_tokenizer.eos_token_id
    for prompt in smollm2_prompts(hf_smollm2_tokenizer)[:2]:
        idx = hf_smollm2_tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected = hf_smollm2.generate(idx, max_new_tokens=20, do_sample=False, pad_token_id=eos)[0, idx.size(1):]
            # our KV-cache loop: prefill the prompt, then one token at a time
            ours.set_kv_cache(batch_size=1, max_seq_length=idx.size(1) + 20)
            logits = ours(idx, torch.arange(idx.size(1)))
            tokens = []
            for pos in range(idx.size(1), idx.size(1) + 20):
                token = logits[0, -1].argmax()
                tokens.append(int(token))
                if token == eos:
                    break
                logits = ours(token.view(1, 1), torch.tensor([pos]))
            ours.clear_kv_cache()
        assert tokens == expected.tolist(), (hf_smollm2_tokenizer.decode(tokens), hf_smollm2_tokenizer.decode(expected))


def test_smollm2_tokenizer_follows_llama_cpp(smollm2_dir, smollm2_gguf, hf_smollm2_tokenizer):
    """SmolLM2's vocabulary has no merge with an ASCII digit, so splitting digits apart (llama.cpp) or not
    (transformers) only matters for numerals whose UTF-8 bytes merge with a space before them: " ½" is
    ["Ġ", "Â½"] for llama.cpp and for us, ["ĠÂ", "½"] for transformers. Everywhere else we agree with both."""
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    differ = []
    for text in TEXTS + SAMPLE.splitlines():
        ids = ours.encode(text).ids
        assert ids == llama_cpp_bpe_encode(text, smollm2_gguf, SMOLLM_REGEXES), text
        assert ours.decode(ids, skip_special_tokens=False) == text
        if ids != hf_smollm2_tokenizer(text)["input_ids"]:
            differ.append(text)
    assert set(differ) == {t for t in TEXTS + SAMPLE.splitlines() if regex.search(r" [^\x00-\x7f]*[²³½¼¾ⅷ]", t)}
    assert " ½ ¼ ¾" in differ
