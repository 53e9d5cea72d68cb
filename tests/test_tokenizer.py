"""lit_gpt.tokenizer against transformers.AutoTokenizer on the same files (SmolLM2's BPE, a trained sentencepiece)."""

import json
from pathlib import Path

import pytest
import torch

from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import UserError

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  two  spaces,   three   and a\ttab\t\tor two\n\nnewlines\r\nand CRLF",
    " leading space",
    "trailing spaces   ",
    "\n\n\tindented\n",
    "Ünïcödé: café, naïve, Straße, ﬁ ligature, Ångström",
    "中文测试，日本語のテキスト。한국어 문장입니다.",
    "Emoji 😀🎉 family 👩‍👩‍👧 flags 🇫🇷 and a lone combining é",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n  # base case\n    return fib(n - 1) + fib(n - 2)\n",
    "Numbers 1234567890, 3.14159 and 1e-5; $100.00 (50%)",
    "I'm sure they'll say we've done it, don't you think?",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<s>[INST] a prompt [/INST]</s> text after",
    "a <s> b </s>c",
    "",
    " ",
    "x",
]


def assert_matches_autotokenizer(checkpoint_dir: Path) -> Tokenizer:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(checkpoint_dir)
    ours = Tokenizer(checkpoint_dir)
    assert ours.vocab_size == len(reference)
    assert (ours.bos_id, ours.eos_id) == (reference.bos_token_id, reference.eos_token_id)
    for text in TEXTS:
        expected = reference.encode(text)
        ids = ours.encode(text)
        assert ids.dtype == torch.long and ids.dim() == 1
        assert ids.tolist() == expected, text
        assert ours.decode(ids) == reference.decode(expected), text
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(expected, skip_special_tokens=True)
        assert ours.decode(ids.tolist()) == ours.decode(ids)
    return ours


@pytest.fixture(scope="module")
def smollm2_tokenizer_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """agent B's converted SmolLM2 checkpoint when available, else its tokenizer.json rebuilt here from the GGUF."""
    try:
        return request.getfixturevalue("smollm2_dir")
    except pytest.FixtureLookupError:
        pass
    from gguf import GGUFReader

    fields = GGUFReader(request.getfixturevalue("smollm2_gguf")).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    merges = fields["tokenizer.ggml.merges"].contents()
    added = [dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
             for i, (t, kind) in enumerate(zip(tokens, types)) if kind == 3]  # 3: control
    byte_level = dict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=True)
    tokenizer_json = dict(
        version="1.0", truncation=None, padding=None, added_tokens=added, normalizer=None,
        pre_tokenizer=dict(type="Sequence", pretokenizers=[dict(type="Digits", individual_digits=True), byte_level]),
        post_processor=byte_level, decoder=byte_level,
        model=dict(type="BPE", dropout=None, unk_token=None, continuing_subword_prefix=None, end_of_word_suffix=None,
                   fuse_unk=False, byte_fallback=False, ignore_merges=False,
                   vocab={t: i for i, t in enumerate(tokens)}, merges=[m.split(" ") for m in merges]))
    out = tmp_path_factory.mktemp("SmolLM2-135M-Instruct")
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(dict(
        tokenizer_class="GPT2Tokenizer", bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>",
        pad_token="<|im_end|>", add_prefix_space=False, clean_up_tokenization_spaces=False)))
    return out


def test_smollm2_matches_autotokenizer(smollm2_tokenizer_dir: Path) -> None:
    tokenizer = assert_matches_autotokenizer(smollm2_tokenizer_dir)
    assert not tokenizer.add_bos
    for text in TEXTS:  # byte-level BPE loses nothing
        assert tokenizer.decode(tokenizer.encode(text)) == text
    im_end = tokenizer.token_to_id("<|im_end|>")
    assert tokenizer.eos_id == im_end and im_end in tokenizer.stop_ids


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-fallback BPE sentencepiece model trained like Llama's (identity normalization, whitespace kept)."""
    import sentencepiece as spm

    tmp = tmp_path_factory.mktemp("spm")
    corpus = "\n".join(TEXTS[:12] + [
        "Sentencepiece learns merges from raw text: spaces become the meta symbol before each word.",
        "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
        "Les naïfs ægithales hâtifs pondant à Noël où il gèle sont sûrs d'être déçus.",
        "for i in range(10):\n    print(i, i ** 2)\n",
    ])
    (tmp / "corpus.txt").write_text(corpus * 30, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(tmp / "corpus.txt"), model_prefix=str(tmp / "tokenizer"), vocab_size=600, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        character_coverage=0.99, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    return tmp / "tokenizer.model"


@pytest.mark.parametrize("tokenizer_config", [
    dict(tokenizer_class="LlamaTokenizer", bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True,
         add_eos_token=False, legacy=False, clean_up_tokenization_spaces=False),  # as Llama 2 and TinyLlama ship it
    dict(tokenizer_class="LlamaTokenizer", add_bos_token=True, legacy=True),
    dict(tokenizer_class="LlamaTokenizer"),
    dict(tokenizer_class="LlamaTokenizer", add_prefix_space=False, add_bos_token=False),
])
def test_sentencepiece_matches_autotokenizer(sentencepiece_model: Path, tmp_path: Path, tokenizer_config: dict
                                             ) -> None:
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    tokenizer = assert_matches_autotokenizer(tmp_path)
    assert tokenizer.add_bos == bool(tokenizer_config.get("add_bos_token"))
    for text in TEXTS:
        # like transformers, a single leading space merges into the prefix "▁" (and is lost on decode)
        if tokenizer_config.get("add_prefix_space", True) and text.startswith(" "):
            continue
        if tokenizer_config.get("legacy") and "<s>" in text:  # legacy: a "▁" after every special token too
            continue
        assert tokenizer.decode(tokenizer.encode(text, bos=False)) == text


def test_tokenizer_json_preferred_and_special_ids(smollm2_tokenizer_dir: Path, sentencepiece_model: Path,
                                                 tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((smollm2_tokenizer_dir / name).read_bytes())
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model.read_bytes())  # ignored: tokenizer.json wins
    (tmp_path / "generation_config.json").write_text(json.dumps(dict(bos_token_id=1, eos_token_id=[2, 0])))
    tokenizer = Tokenizer(tmp_path)
    assert tokenizer.vocab_size == 49152
    assert tokenizer.stop_ids == [2, 0]
    plain = tokenizer.encode("hello there").tolist()
    assert tokenizer.encode("hello there", bos=True, eos=True).tolist() == [1] + plain + [2]
    assert tokenizer.encode("hello there", bos=True, max_length=2).tolist() == [1] + plain[:1]


def test_ids_from_config_files_when_tokenizer_config_has_none(sentencepiece_model: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(dict(bos_token_id=2, eos_token_id=1)))
    tokenizer = Tokenizer(tmp_path)
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.stop_ids) == (2, 1, [1])
    ids = tokenizer.encode("a", bos=True, eos=True).tolist()
    assert ids == [2] + tokenizer.encode("a", bos=False).tolist() + [1]


def test_missing_tokenizer_fails_with_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        Tokenizer(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"no tokenizer.json or tokenizer.model.*scripts/download.py"):
        Tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\xff\xff garbage")
    with pytest.raises(UserError, match="Could not read"):
        Tokenizer(tmp_path)
