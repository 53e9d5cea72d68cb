"""Text <-> token ids for a checkpoint dir, encoding and decoding like `transformers.AutoTokenizer` on its files.

`tokenizer.json` is run by the `tokenizers` library; a bare `tokenizer.model` by `sentencepiece`, with the
pre-processing that transformers' Llama tokenizer applies to it (no normalization, a "▁" prepended to the first
piece of text unless it starts with a space, special tokens written in the text split out).
"""

import re
from pathlib import Path
from typing import Iterable, List, Optional, Union

import torch

from lit_gpt.utils import fail, read_json


class Tokenizer:
    def __init__(self, checkpoint_dir: Union[str, Path]) -> None:
        checkpoint_dir = Path(checkpoint_dir)
        self.checkpoint_dir = checkpoint_dir
        repo_id = "/".join(checkpoint_dir.parts[-2:]) if len(checkpoint_dir.parts) >= 2 else "<org>/<name>"
        if not checkpoint_dir.is_dir():
            fail(f"Tokenizer: checkpoint dir {str(checkpoint_dir)!r} does not exist. Create it with: "
                 f"python scripts/download.py --repo_id {repo_id} --checkpoint_dir {checkpoint_dir}")
        self.tokenizer_config = _read_json(checkpoint_dir / "tokenizer_config.json")
        special_tokens_map = _read_json(checkpoint_dir / "special_tokens_map.json")
        generation_config = _read_json(checkpoint_dir / "generation_config.json")
        hf_config = _read_json(checkpoint_dir / "config.json")

        if (checkpoint_dir / "tokenizer.json").is_file():
            self.backend = _HFBackend(checkpoint_dir / "tokenizer.json")
        elif (checkpoint_dir / "tokenizer.model").is_file():
            self.backend = _SentencePieceBackend(checkpoint_dir / "tokenizer.model", self.tokenizer_config)
        else:
            fail(f"{str(checkpoint_dir)!r} has no tokenizer.json or tokenizer.model. Get the tokenizer files with: "
                 f"python scripts/download.py --repo_id {repo_id} --checkpoint_dir {checkpoint_dir} --force")

        def special_id(key: str) -> Optional[int]:
            for source in (self.tokenizer_config, special_tokens_map):
                token = _content(source.get(f"{key}_token"))
                if isinstance(token, str) and self.backend.token_to_id(token) is not None:
                    return self.backend.token_to_id(token)
            for source in (generation_config, hf_config):
                value = source.get(f"{key}_token_id")
                value = value[0] if isinstance(value, list) and value else value
                if isinstance(value, int):
                    return value
            return self.backend.default_id(key)

        self.bos_id: Optional[int] = special_id("bos")
        self.eos_id: Optional[int] = special_id("eos")
        stop_ids = [self.eos_id] + _as_list(generation_config.get("eos_token_id"))
        self.stop_ids: List[int] = list(dict.fromkeys(i for i in stop_ids if i is not None))
        add_bos = self.tokenizer_config.get("add_bos_token")
        self.add_bos: bool = bool(add_bos) if add_bos is not None else self.backend.adds_bos(self.bos_id)
        self.clean_up_spaces = bool(self.tokenizer_config.get("clean_up_tokenization_spaces")) and \
            not self.backend.is_bpe

    @property
    def vocab_size(self) -> int:
        return self.backend.vocab_size

    def token_to_id(self, token: str) -> Optional[int]:
        return self.backend.token_to_id(token)

    def encode(self, text: str, bos: Optional[bool] = None, eos: bool = False, max_length: int = -1
               ) -> torch.Tensor:
        """1-D LongTensor of ids. bos=None: prepend BOS when the checkpoint's tokenizer does (AutoTokenizer's
        default); max_length > 0 truncates the result (special tokens included)."""
        ids = self.backend.encode(text)
        if (self.add_bos if bos is None else bos):
            if self.bos_id is None:
                fail(f"The tokenizer in {str(self.checkpoint_dir)!r} has no BOS token: encode with bos=False")
            ids = [self.bos_id] + ids
        if eos:
            if self.eos_id is None:
                fail(f"The tokenizer in {str(self.checkpoint_dir)!r} has no EOS token: encode with eos=False")
            ids = ids + [self.eos_id]
        if max_length > 0:
            ids = ids[:max_length]
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Union[torch.Tensor, Iterable[int]], skip_special_tokens: bool = False) -> str:
        """Text of `ids`, special tokens included unless skipped (AutoTokenizer.decode's defaults)."""
        ids = ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]
        text = self.backend.decode(ids, skip_special_tokens)
        if self.clean_up_spaces:  # transformers applies it to non-BPE models only
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                                  (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(before, after)
        return text


class _HFBackend:
    """A `tokenizers` pipeline from tokenizer.json, used without its post-processor (BOS/EOS are added by us)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self.tokenizer = HFTokenizer.from_file(str(path))
        except Exception as e:
            fail(f"Could not read {str(path)!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.is_bpe = type(self.tokenizer.model).__name__ == "BPE"

    def token_to_id(self, token: str) -> Optional[int]:
        return self.tokenizer.token_to_id(token)

    def default_id(self, key: str) -> Optional[int]:
        return None

    def adds_bos(self, bos_id: Optional[int]) -> bool:
        """Whether the post-processor of tokenizer.json puts BOS in front of a sequence."""
        with_special = self.tokenizer.encode("a", add_special_tokens=True).ids
        without = self.tokenizer.encode("a", add_special_tokens=False).ids
        return bos_id is not None and len(with_special) > len(without) and with_special[0] == bos_id

    def encode(self, text: str) -> List[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: List[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


class _SentencePieceBackend:
    """sentencepiece with transformers' pre- and post-processing for Llama-style `tokenizer.model` files."""

    def __init__(self, path: Path, tokenizer_config: dict) -> None:
        import sentencepiece as spm

        model = path.read_bytes()
        try:
            pieces = _sentencepiece_pieces(model)
            # Protobuf merges a repeated message field into the first one: this appended NormalizerSpec turns
            # off normalization, the dummy prefix and whitespace squashing (transformers does none of these).
            override = b"\x0a\x08identity" + b"\x12\x00" + b"\x18\x00" + b"\x20\x00"
            self.sp = spm.SentencePieceProcessor(model_proto=model + b"\x1a" + bytes([len(override)]) + override)
        except Exception as e:
            fail(f"Could not read the sentencepiece model {str(path)!r} (corrupt?): {type(e).__name__}: {e}")
        self.vocab_size = self.sp.get_piece_size()
        self.is_bpe = True  # transformers always loads a tokenizer.model as a BPE Llama tokenizer
        self.pieces = [piece for piece, _ in pieces]
        self.piece_to_id = {piece: i for i, piece in enumerate(self.pieces)}
        # transformers splits these out of the text (added tokens); it skips the special ones when asked
        special = {piece for piece, kind in pieces if kind in (2, 3)}  # unknown, control
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            special.add(_content(tokenizer_config.get(key)))
        added = {piece for piece, kind in pieces if kind == 4}  # user defined
        for token in (tokenizer_config.get("added_tokens_decoder") or {}).values():
            (special if isinstance(token, dict) and token.get("special") else added).add(_content(token))
        special = {t for t in special if isinstance(t, str) and t in self.piece_to_id}
        split = sorted(special | {t for t in added if isinstance(t, str) and t in self.piece_to_id}, key=len,
                       reverse=True)
        self.special_ids = {self.piece_to_id[t] for t in special}
        self.split_pattern = re.compile("(" + "|".join(map(re.escape, split)) + ")") if split else None
        self.add_prefix_space = tokenizer_config.get("add_prefix_space", True) is not False
        self.prepend_every_piece = bool(tokenizer_config.get("legacy", False))  # transformers' "always" scheme

    def token_to_id(self, token: str) -> Optional[int]:
        return self.piece_to_id.get(token)

    def default_id(self, key: str) -> Optional[int]:
        i = self.sp.bos_id() if key == "bos" else self.sp.eos_id()
        return i if i >= 0 else None

    def adds_bos(self, bos_id: Optional[int]) -> bool:
        return False  # transformers adds BOS to a bare tokenizer.model only when tokenizer_config says so

    def encode(self, text: str) -> List[int]:
        parts = self.split_pattern.split(text) if self.split_pattern else [text]
        ids: List[int] = []
        for i, part in enumerate(parts):
            if not part:
                continue
            if i % 2 == 1:  # a special token written in the text
                ids.append(self.piece_to_id[part])
                continue
            first = i == 0
            if self.add_prefix_space and (first or self.prepend_every_piece) and not part.startswith((" ", "▁")):
                part = " " + part
            ids.extend(self.sp.encode(part))
        return ids

    def decode(self, ids: List[int], skip_special_tokens: bool) -> str:
        """Pieces with "▁" as spaces, runs of <0xXX> byte pieces as UTF-8 (one U+FFFD per byte if invalid)."""
        out: List[str] = []
        byte_run = bytearray()
        for i in ids:
            if skip_special_tokens and i in self.special_ids:
                continue
            piece = self.pieces[i] if 0 <= i < len(self.pieces) else ""
            if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
                byte_run.append(int(piece[3:5], 16))
                continue
            out.append(_decode_bytes(byte_run))
            byte_run.clear()
            out.append(piece.replace("▁", " "))
        out.append(_decode_bytes(byte_run))
        text = "".join(out)
        if self.add_prefix_space and text.startswith(" "):
            text = text[1:]
        return text


def _decode_bytes(data: bytearray) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(data)


def _sentencepiece_pieces(model: bytes) -> List[tuple]:
    """(piece, type) of every vocabulary entry of a serialized sentencepiece ModelProto (field 1, repeated)."""

    def varint(data: bytes, pos: int) -> tuple:
        value, shift = 0, 0
        while True:
            byte = data[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if byte < 0x80:
                return value, pos

    def fields(data: bytes) -> Iterable[tuple]:
        pos = 0
        while pos < len(data):
            key, pos = varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = varint(data, pos)
            elif wire == 1:
                value, pos = data[pos:pos + 8], pos + 8
            elif wire == 2:
                length, pos = varint(data, pos)
                value, pos = data[pos:pos + length], pos + length
            elif wire == 5:
                value, pos = data[pos:pos + 4], pos + 4
            else:
                raise ValueError(f"unexpected protobuf wire type {wire}")
            if pos > len(data):
                raise ValueError("truncated protobuf")
            yield number, value

    pieces = []
    for number, value in fields(model):
        if number == 1:
            entry = dict(fields(value))
            pieces.append((entry.get(1, b"").decode("utf-8"), entry.get(3, 1)))  # type defaults to NORMAL (1)
    if not pieces:
        raise ValueError("no vocabulary in the model")
    return pieces


def _content(token: object) -> object:
    return token.get("content") if isinstance(token, dict) else token


def _read_json(path: Path) -> dict:
    return read_json(path, "fix it, or download it again (scripts/download.py --force)") if path.is_file() else {}


def _as_list(value: object) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
