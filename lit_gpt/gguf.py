"""Turns a llama.cpp GGUF file (Llama architecture) into a complete checkpoint dir.

The dir holds our GPT's weights (dequantized), `lit_config.json`, the Hugging Face `config.json`, a `tokenizer.json`
rebuilt from the GGUF's own vocabulary, `tokenizer_config.json`, `generation_config.json` and, for ChatML chat
templates, `prompt_style.json`. Where transformers' GGUF loader and llama.cpp disagree, we follow llama.cpp: it is
what the file was made for.
"""

import json
import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from lit_gpt.config import Config, name_to_config
from lit_gpt.convert import hf_config_from_lit
from lit_gpt.utils import atomic_dir, fail

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
CONTROL, USER_DEFINED, UNKNOWN, BYTE = 3, 4, 2, 6  # llama.cpp token types (the sentencepiece ones)

# llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp, `llm_tokenizer_bpe`), applied one after the other, each
# splitting every piece the previous ones left (matches and the text between them become pieces).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
_PRE_TOKENIZERS = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"],
    **dict.fromkeys(["gpt-2", "phi-2", "mpt", "olmo", "jais"], [_GPT2]),
    # SmolLM's own tokenizer.json says the same: every digit alone (`Digits`), then GPT-2's byte-level regex
    **dict.fromkeys(["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"],
                    [r"\p{N}", _GPT2]),
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"], [_LLAMA3]),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"], [_QWEN2]),
}
_IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "falcon3"}  # a word that is a token is taken whole
# llama.cpp turns `clean_spaces` off for these (no space clean-up when decoding)
_NO_CLEAN_SPACES = {"smollm", "command-r", "qwen2", "deepseek-r1-qwen", "megrez"}


class GGUFFile:
    """The metadata and (memory-mapped) tensors of a GGUF file, checked to be a Llama model we can convert."""

    def __init__(self, path: Union[str, Path]) -> None:
        path = Path(path)
        if not path.is_file():
            fail(f"No such GGUF file: {str(path)!r}")
        with open(path, "rb") as fp:
            if fp.read(4) != b"GGUF":
                fail(f"{str(path)!r} is not a GGUF file (it does not start with the 'GGUF' magic)")
        from gguf import GGUFReader

        try:
            self.reader = GGUFReader(path)
        except Exception as e:  # truncated or corrupt header: gguf raises ValueError, IndexError, ...
            fail(f"Could not read GGUF file {str(path)!r} (truncated or corrupt?): {type(e).__name__}: {e}")
        self.path = path
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self.get("general.architecture")
        if arch != "llama":
            fail(f"{str(path)!r} holds a {arch!r} model; only the 'llama' architecture (Llama, Mistral, SmolLM2, "
                 "TinyLlama ...) can be converted")
        bad = sorted({t.tensor_type.name for t in self.reader.tensors} - set(SUPPORTED_TYPES))
        if bad:
            fail(f"{str(path)!r} has tensors of type {', '.join(bad)}, which cannot be converted. "
                 f"Supported: {', '.join(SUPPORTED_TYPES)}")

    def get(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()


def config_from_gguf(gguf: GGUFFile) -> Config:
    """A `Config` whose hyperparameters come from the file; named after a preset when the file is one."""
    def arch(key: str, default: Any = None) -> Any:
        return gguf.get(f"llama.{key}", default)

    where = repr(str(gguf.path))
    required = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")
    missing = [f"llama.{k}" for k in required if arch(k) is None]
    if missing:
        fail(f"{where} lacks the metadata {', '.join(missing)}: it is not a complete Llama GGUF")
    if arch("expert_count", 0):
        fail(f"{where} is a mixture-of-experts model, which cannot be converted")
    if arch("rope.scaling.type", "none") not in ("none", None) or "rope_freqs.weight" in gguf.tensors:
        fail(f"{where} uses RoPE scaling, which our model does not support")
    if "token_embd.weight" not in gguf.tensors:
        fail(f"{where} has no 'token_embd.weight' tensor")
    n_head = arch("attention.head_count")
    n_query_groups = arch("attention.head_count_kv", n_head)
    if isinstance(n_head, list) or isinstance(n_query_groups, list):
        fail(f"{where} has a different number of heads per layer, which cannot be converted")
    n_embd = arch("embedding_length")
    head_size = arch("attention.key_length", n_embd // n_head)
    if arch("attention.value_length", head_size) != head_size or arch("rope.dimension_count", head_size) != head_size:
        fail(f"{where}: key, value and rotary sizes differ, which our model does not support")
    tokens = gguf.get("tokenizer.ggml.tokens")
    if tokens is None:
        fail(f"{where} has no tokenizer (no 'tokenizer.ggml.tokens'), so it cannot make a checkpoint dir")
    embedding_rows = int(gguf.tensors["token_embd.weight"].shape[1])  # GGUF shapes are (columns, rows)
    rope_base = float(arch("rope.freq_base", 10000.0))
    norm_eps = arch("attention.layer_norm_rms_epsilon", 1e-5)
    config = Config(
        name="", block_size=arch("context_length", 2048), vocab_size=len(tokens), padding_multiple=1,
        padded_vocab_size=embedding_rows, n_layer=arch("block_count"), n_head=n_head, n_embd=n_embd,
        head_size=head_size, n_query_groups=n_query_groups, rotary_percentage=1.0,
        rope_base=int(rope_base) if rope_base.is_integer() else rope_base, parallel_residual=False, bias=False,
        tie_embeddings="output.weight" not in gguf.tensors, norm_class_name="RMSNorm",
        # the file stores float32: 1e-5 reads as 9.9999997e-06; the shortest float32 spelling gives 1e-5 back
        norm_eps=float(str(np.float32(norm_eps))), mlp_class_name="LLaMAMLP",
        intermediate_size=arch("feed_forward_length"))
    org, name = _model_name(gguf, config)
    config.name, config.hf_config = name, {"org": org, "name": name}
    return config


def _model_name(gguf: GGUFFile, config: Config) -> tuple:
    """(org, name): a preset's when the file name or metadata names one with this model's shape, else the file's."""
    stem = re.sub(r"[.\-_](I?Q\d\w*|F16|F32|BF16)$", "", gguf.path.stem, flags=re.IGNORECASE)
    basename, size, finetune = (gguf.get(f"general.{k}") for k in ("basename", "size_label", "finetune"))
    candidates = [stem, gguf.get("general.name")]
    if basename and size:
        candidates += [f"{basename}-{size}-{finetune}", f"{basename}-{size}"]

    def norm(s: str) -> str:
        return re.sub(r"[^0-9a-z.]", "", s.lower())

    shape = ("n_layer", "n_embd", "n_head", "n_query_groups", "intermediate_size", "vocab_size")
    presets = {norm(name): preset for name, preset in name_to_config.items()}
    for candidate in filter(None, candidates):
        preset = presets.get(norm(candidate))
        if preset is not None and all(getattr(Config(**preset), k) == getattr(config, k) for k in shape):
            return preset["hf_config"]["org"], preset["name"]
    name = re.sub(r"[^\w.\-]+", "-", gguf.get("general.name") or stem).strip("-") or "model"
    return gguf.get("general.organization") or "gguf", name


def load_gguf_weights(gguf: GGUFFile, config: Config, dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """Our GPT's state dict, dequantizing one tensor at a time from the memory-mapped file."""
    from gguf import dequantize

    c = config
    _check_tensors(gguf, c)

    def tensor(name: str) -> torch.Tensor:
        t = gguf.tensors[name]
        w = dequantize(t.data, t.tensor_type)  # float32 (rows, columns); for F32 a read-only view of the file
        return torch.tensor(w).to(dtype)

    def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
        # llama.cpp interleaves each head's rows (0, hs/2, 1, hs/2 + 1, ...) for its RoPE kernel; our RoPE (and
        # Hugging Face's) rotates the two halves of a head: put the rows back in half order, as transformers does
        return w.reshape(n_heads, c.head_size // 2, 2, -1).transpose(1, 2).reshape(w.shape)

    state = {"transformer.wte.weight": tensor("token_embd.weight")}
    for i in range(c.n_layer):
        b, p = f"blk.{i}.", f"transformer.h.{i}."
        q = unpermute(tensor(b + "attn_q.weight"), c.n_head)
        k = unpermute(tensor(b + "attn_k.weight"), c.n_query_groups)
        state[p + "attn.qkv.weight"] = torch.cat((q, k, tensor(b + "attn_v.weight")))
        del q, k
        state[p + "norm_1.weight"] = tensor(b + "attn_norm.weight")
        state[p + "attn.proj.weight"] = tensor(b + "attn_output.weight")
        state[p + "norm_2.weight"] = tensor(b + "ffn_norm.weight")
        state[p + "mlp.fc_1.weight"] = tensor(b + "ffn_gate.weight")
        state[p + "mlp.fc_2.weight"] = tensor(b + "ffn_up.weight")
        state[p + "mlp.proj.weight"] = tensor(b + "ffn_down.weight")
    state["transformer.ln_f.weight"] = tensor("output_norm.weight")
    # tied: the same tensor under both names (GPT's state dict has both), stored once by torch.save
    state["lm_head.weight"] = state["transformer.wte.weight"] if c.tie_embeddings else tensor("output.weight")
    return state


def _check_tensors(gguf: GGUFFile, config: Config) -> None:
    """Fails on missing, unexpected or misshapen tensors before anything is dequantized or written."""
    c = config
    shapes = {"token_embd.weight": (c.n_embd, c.padded_vocab_size), "output_norm.weight": (c.n_embd,)}
    if not c.tie_embeddings:
        shapes["output.weight"] = (c.n_embd, c.padded_vocab_size)
    q, kv = c.n_head * c.head_size, c.n_query_groups * c.head_size
    for i in range(c.n_layer):
        shapes.update({f"blk.{i}.{k}.weight": s for k, s in [
            ("attn_norm", (c.n_embd,)), ("attn_q", (c.n_embd, q)), ("attn_k", (c.n_embd, kv)),
            ("attn_v", (c.n_embd, kv)), ("attn_output", (q, c.n_embd)), ("ffn_norm", (c.n_embd,)),
            ("ffn_gate", (c.n_embd, c.intermediate_size)), ("ffn_up", (c.n_embd, c.intermediate_size)),
            ("ffn_down", (c.intermediate_size, c.n_embd))]})
    where = repr(str(gguf.path))
    missing = [n for n in shapes if n not in gguf.tensors]
    extra = [n for n in gguf.tensors if n not in shapes]
    if missing or extra:
        fail(f"{where} does not hold a Llama model we can convert: " +
             (f"missing {', '.join(missing[:5])}" if missing else f"unexpected {', '.join(extra[:5])}"))
    for name, shape in shapes.items():
        found = tuple(int(s) for s in gguf.tensors[name].shape)
        if found != shape:
            fail(f"{where}: tensor {name!r} has GGUF shape {list(found)}, expected {list(shape)}")


def build_tokenizer(gguf: GGUFFile) -> Any:
    """A `tokenizers.Tokenizer` rebuilt from the GGUF vocabulary, as llama.cpp tokenizes with it."""
    model = gguf.get("tokenizer.ggml.model")
    if model == "gpt2":
        tokenizer = _byte_level_bpe(gguf)
    elif model == "llama":
        tokenizer = _sentencepiece_bpe(gguf)
    else:
        fail(f"{str(gguf.path)!r} has a {model!r} tokenizer; only 'gpt2' (byte-level BPE) and 'llama' "
             "(sentencepiece) tokenizers can be converted")
    from tokenizers import AddedToken, processors

    tokens, types = gguf.get("tokenizer.ggml.tokens"), gguf.get("tokenizer.ggml.token_type") or []
    # control (and unknown) tokens are special: matched whole in any text, skipped when decoding special tokens;
    # user-defined ones are matched whole too, but are ordinary text (llama.cpp always splits the text on both)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, k in zip(tokens, types) if k in (CONTROL, UNKNOWN)])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t, k in zip(tokens, types) if k == USER_DEFINED])
    specials = _special_tokens(gguf)
    bos, eos = specials.get("bos_token"), specials.get("eos_token")
    add_bos, add_eos = _add_bos_eos(gguf)
    if (add_bos and bos is None) or (add_eos and eos is None):
        fail(f"{str(gguf.path)!r} asks to add a BOS/EOS token but does not say which token that is")
    if add_bos or add_eos:
        ids = {bos: gguf.get("tokenizer.ggml.bos_token_id"), eos: gguf.get("tokenizer.ggml.eos_token_id")}
        single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
        pair = single + [s.replace(":0", ":1").replace("$A", "$B") for s in single]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, ids[t]) for t in dict.fromkeys(
                ([bos] if add_bos else []) + ([eos] if add_eos else []))])
    elif model == "gpt2":
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _byte_level_bpe(gguf: GGUFFile) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokens, merges = gguf.get("tokenizer.ggml.tokens"), gguf.get("tokenizer.ggml.merges")
    pre = gguf.get("tokenizer.ggml.pre") or "default"
    if pre not in _PRE_TOKENIZERS:
        fail(f"{str(gguf.path)!r} uses llama.cpp's {pre!r} pre-tokenizer, which is not supported. "
             f"Supported: {', '.join(sorted(_PRE_TOKENIZERS))}")
    if not merges:
        fail(f"{str(gguf.path)!r} has a BPE tokenizer without merges ('tokenizer.ggml.merges')")
    vocab = {t: i for i, t in enumerate(tokens)}
    try:
        # llama.cpp splits a merge at the first space after its first character
        pairs = [(m[:m.index(" ", 1)], m[m.index(" ", 1) + 1:]) for m in merges]
        tokenizer = Tokenizer(models.BPE(vocab, pairs, ignore_merges=pre in _IGNORE_MERGES))
    except Exception as e:  # a merge without a space, or of tokens not in the vocabulary
        fail(f"{str(gguf.path)!r}: its vocabulary and merges do not fit together: {type(e).__name__}: {e}")
    # transformers' GGUF loader gives 'smollm' (and other names it does not list) GPT-2's pre-tokenizer, which
    # does not split digits apart: " 2024" stays one piece. llama.cpp (and SmolLM's own tokenizer.json) split every
    # digit off first. SmolLM2's vocabulary has no merge with a digit, so the ids agree on ASCII digits; they can
    # differ on other numerals (e.g. "²", "½") whose UTF-8 bytes do merge with a neighbour.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _PRE_TOKENIZERS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(gguf: GGUFFile) -> Any:
    """llama.cpp's sentencepiece tokenizer as a byte-fallback BPE: it merges the adjacent pair whose joined text is
    the best-scored token first, which is BPE with every two-token split of a token ranked by that token's score."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens, types = gguf.get("tokenizer.ggml.tokens"), gguf.get("tokenizer.ggml.token_type") or []
    scores = gguf.get("tokenizer.ggml.scores")
    if scores is None or len(types) != len(tokens):
        fail(f"{str(gguf.path)!r} has a sentencepiece tokenizer without token scores or types")
    vocab = {t: i for i, t in enumerate(tokens)}
    mergeable = {t for t, k in zip(tokens, types) if k not in (CONTROL, BYTE, UNKNOWN)}
    ranked = []
    for token, score in zip(tokens, scores):
        if token in mergeable:
            ranked += [(-score, vocab[token], token[:j], token[j:]) for j in range(1, len(token))
                       if token[:j] in mergeable and token[j:] in mergeable]
    merges = [(a, b) for _, _, a, b in sorted(ranked)]
    unk_id = gguf.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None else None
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True,
                                     byte_fallback=any(k == BYTE for k in types)))
    steps = [normalizers.Replace(" ", "\u2581")]
    add_space = gguf.get("tokenizer.ggml.add_space_prefix", True)
    if add_space:  # llama.cpp puts a space before the text (and after each special token)
        steps.insert(0, normalizers.Prepend("\u2581"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                          + ([decoders.Strip(" ", 1, 0)] if add_space else []))
    return tokenizer


def _special_tokens(gguf: GGUFFile) -> Dict[str, str]:
    tokens = gguf.get("tokenizer.ggml.tokens")
    ids = {name: gguf.get(f"tokenizer.ggml.{key}_token_id") for name, key in
           [("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")]}
    return {name: tokens[i] for name, i in ids.items() if i is not None and 0 <= i < len(tokens)}


def _add_bos_eos(gguf: GGUFFile) -> tuple:
    """llama.cpp's defaults: sentencepiece and Llama-3-style vocabularies add a BOS token, others do not."""
    default_bos = gguf.get("tokenizer.ggml.model") == "llama" or gguf.get("tokenizer.ggml.pre") in _IGNORE_MERGES
    return (bool(gguf.get("tokenizer.ggml.add_bos_token", default_bos)),
            bool(gguf.get("tokenizer.ggml.add_eos_token", False)))


def checkpoint_files(gguf: GGUFFile, config: Config, dtype: torch.dtype = torch.float32) -> Dict[str, dict]:
    """The JSON files of the checkpoint dir besides `lit_config.json`: HF config, tokenizer and generation configs,
    prompt style."""
    tokens = gguf.get("tokenizer.ggml.tokens")
    specials = _special_tokens(gguf)
    add_bos, add_eos = _add_bos_eos(gguf)
    template = gguf.get("tokenizer.chat_template")
    tokenizer_config = {"add_bos_token": add_bos, "add_eos_token": add_eos, **specials,
                        "clean_up_tokenization_spaces": gguf.get("tokenizer.ggml.pre") not in _NO_CLEAN_SPACES
                        and gguf.get("tokenizer.ggml.model") == "gpt2",
                        "model_max_length": config.block_size, "tokenizer_class": "PreTrainedTokenizerFast"}
    if template:
        tokenizer_config["chat_template"] = template
    ids = {f"{name}_token_id": gguf.get(f"tokenizer.ggml.{key}_token_id")
           for name, key in [("bos", "bos"), ("eos", "eos"), ("pad", "padding")]}
    ids = {k: v for k, v in ids.items() if v is not None and 0 <= v < len(tokens)}
    generation = dict(ids)
    stop = [i for i in (ids.get("eos_token_id"), gguf.get("tokenizer.ggml.eot_token_id"),
                        gguf.get("tokenizer.ggml.eom_token_id")) if i is not None]
    if len(set(stop)) > 1:  # end-of-turn tokens end generation too
        generation["eos_token_id"] = list(dict.fromkeys(stop))
    files = {"config.json": hf_config_from_lit(config, dtype, **ids), "tokenizer_config.json": tokenizer_config,
             "generation_config.json": generation}
    if template and "<|im_start|>" in template:
        files["prompt_style.json"] = {"name": "chatml"}
    return files


def convert_gguf(gguf_path: Union[str, Path], checkpoint_dir: Optional[Union[str, Path]] = None,
                 dtype: torch.dtype = torch.float32) -> Path:
    """Writes the checkpoint dir of a GGUF file (default: checkpoints/<org>/<name>) and returns its path.

    Everything is checked before anything is written; the dir is assembled next to its final place and renamed
    into it at the end, so it is never half-written. Weights are dequantized to `dtype` one tensor at a time.
    """
    gguf = GGUFFile(gguf_path)
    config = config_from_gguf(gguf)
    _check_tensors(gguf, config)
    tokenizer = build_tokenizer(gguf)
    files = checkpoint_files(gguf, config, dtype)
    if checkpoint_dir is None:
        checkpoint_dir = Path("checkpoints", config.hf_config["org"], config.hf_config["name"])
    with atomic_dir(checkpoint_dir) as tmp:
        torch.save(load_gguf_weights(gguf, config, dtype), tmp / "lit_model.pth")
        config.save(tmp / "lit_config.json")
        tokenizer.save(str(tmp / "tokenizer.json"))
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
    return Path(checkpoint_dir)
