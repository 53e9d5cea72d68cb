"""GGUF -> checkpoint dir. The oracle is transformers loading the same GGUF file (model and tokenizer); where
transformers and llama.cpp tokenize differently, a small reference of llama.cpp's BPE written here."""

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import regex
import torch

from conftest import run_script
from lit_gpt.config import Config
from lit_gpt.gguf import convert_gguf
from lit_gpt.model import GPT
from lit_gpt.utils import UserError, load_checkpoint

SAMPLE = """The quick brown fox jumps over the lazy dog. I'm sure they'll say it's fine, aren't you?
def add(a, b):\n    return a + b  # 12 + 30 = 42\n\tTabs\tand   spaces   here.
Café déjà vu, naïve façade. 日本語のテキスト. Prices: $3.99, 1,000,000 and 3.14159! x² + y³ = ½
<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"""
TEXTS = ["Hello world!", "Hello 2024 world", "  multiple   spaces\n\n\ttabs  ", "I'm you're they'll it's",
         "Café déjà vu — naïve façade", "日本語のテキスト", "emoji 😀🎉 test", "def f(x):\n    return x**2  # c",
         "3.14159 and 1,000,000", "١٢٣ Arabic and १२३ Devanagari digits", "a\r\nb", "<|im_start|>user\nHi<|im_end|>\n",
         "x² + y³ = z½", " ½ ¼ ¾", "Ⅻ roman ⅷ", "10²", " ²", "", " ", "\n", "<|im_end|><|im_end|>"]


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
                    tokenizer: str = "gpt2", pre: str = "smollm", n_embd: int = 256, seed: int = 0) -> Path:
    """A 2-layer Llama GGUF with random weights written the way llama.cpp writes them, tensor types cycling
    through `types`, and a tokenizer trained on SAMPLE (byte-level BPE, or sentencepiece for "llama")."""
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
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def train_sentencepiece(workdir: Path) -> tuple:
    """(pieces, types, scores) of a byte-fallback sentencepiece BPE model trained on SAMPLE."""
    import sentencepiece as spm

    model = workdir / "spm.model"
    if not model.is_file():
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(SAMPLE.splitlines() * 20), model_prefix=str(workdir / "spm"), vocab_size=400,
            model_type="bpe", byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=True,
            remove_extra_whitespaces=False, character_coverage=1.0, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
             for i in range(len(pieces))]
    return pieces, types, [sp.get_score(i) for i in range(len(pieces))]


def hf_from_gguf(gguf_path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                dtype=torch.float32).eval()


def hf_tokenizer_from_gguf(gguf_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def load_lit(checkpoint_dir: Path) -> GPT:
    model = GPT(Config.from_checkpoint(checkpoint_dir))
    load_checkpoint(model, checkpoint_dir / "lit_model.pth")
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


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2"])
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


@pytest.mark.parametrize("case", ["missing", "not_gguf", "truncated", "gpt2_arch", "bert_arch", "IQ4_NL",
                                  "no_tokenizer_pre", "dir_exists"])
def test_bad_input_fails_before_writing(tmp_path, case):
    path = tmp_path / "model.gguf"
    if case == "not_gguf":
        path.write_text("just text\n")
    elif case == "truncated":
        write_tiny_gguf(tmp_path / "full.gguf", n_embd=64)
        path.write_bytes((tmp_path / "full.gguf").read_bytes()[:5000])
    elif case in ("gpt2_arch", "bert_arch"):
        write_tiny_gguf(path, arch=case.split("_")[0], n_embd=64)
    elif case == "IQ4_NL":
        write_tiny_gguf(path, types=("F32", "IQ4_NL"), n_embd=64)
    elif case == "no_tokenizer_pre":
        write_tiny_gguf(path, pre="no-such-pre", n_embd=64)
    elif case == "dir_exists":
        write_tiny_gguf(path, n_embd=64)
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    expected = {"missing": "No such GGUF file", "not_gguf": "is not a GGUF file", "truncated": "truncated or corrupt",
                "gpt2_arch": "holds a 'gpt2' model", "bert_arch": "holds a 'bert' model", "IQ4_NL": "type IQ4_NL",
                "no_tokenizer_pre": "'no-such-pre' pre-tokenizer", "dir_exists": "already exists and is not empty"}
    with pytest.raises(UserError, match=expected[case]):
        convert_gguf(path, tmp_path / "out")
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


# --- the real SmolLM2-135M-Instruct (Q4_1 GGUF): the converted dir against transformers on the same file ---

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On a CPU shared with other jobs, batch-1 decoding is ~10x faster on one thread than on two fighting ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
