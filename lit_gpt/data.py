"""Instruction data and conversations: read rows, tokenize them with a prompt style, write a prepared-data dir, and
batch it for training.

A prepared-data dir holds `train.pt` and `val.pt` (lists of {"input_ids": (T,), "labels": (T,)} LongTensors, labels
-100 on masked prompt tokens), `prompt_style.json`, and `prepare_config.json` (how it was made), written last.
"""

import csv
import io
import json
import random
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import torch

from lit_gpt.generate import common_prefix_length
from lit_gpt.prompts import ChatStyle, PromptStyle, encode_in_context, resolve_prompt_style, save_prompt_style
from lit_gpt.utils import atomic_save, atomic_write_text, fail, read_json

IGNORE_INDEX = -100
# the public datasets of the prepare scripts: where `python scripts/download.py --dataset NAME` (the one script that
# goes online) fetches each from, and the path it writes, which the prepare script reads by default
DATASETS = {
    "alpaca": ("https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json",
               Path("data/alpaca/alpaca_data.json")),
    "dolly": ("https://huggingface.co/datasets/databricks/databricks-dolly-15k/resolve/main/databricks-dolly-15k.jsonl",
              Path("data/dolly/databricks-dolly-15k.jsonl")),
    "lima": ("https://huggingface.co/datasets/GAIR/lima/resolve/main/train.jsonl",  # gated: needs HF_TOKEN
             Path("data/lima/train.jsonl")),
    "gsm8k": ("https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/train.jsonl",
              Path("data/gsm8k/train.jsonl")),
}


def prepare_sample(example: dict, tokenizer: Any, style: PromptStyle, max_seq_length: int,
                   mask_inputs: bool = True) -> Optional[dict]:
    """Tokenizes `prompt + response_prefix + output + end` (eos or the style's `answer_end`); `labels` is -100 on
    the prompt tokens when `mask_inputs`.

    The prompt is encoded alone (as generation will see it) and the answer as it continues the prompt. The sample is
    cut to `max_seq_length` tokens ("truncated": True). Returns None when the prompt alone does not leave room for
    one answer token: such an example teaches nothing and the caller counts it as skipped.
    """
    prompt = style.apply(example["instruction"], example.get("input") or "")
    prompt_ids = tokenizer.encode(prompt)
    if len(prompt_ids) >= max_seq_length:
        return None
    answer = style.response_prefix + example["output"]
    full_ids = tokenizer.encode(prompt + answer)
    if torch.equal(full_ids[:len(prompt_ids)], prompt_ids):
        answer_ids = full_ids[len(prompt_ids):]
    else:  # the answer's first token merged with the prompt's last one: encode the answer on its own
        answer_ids = tokenizer.encode(answer, bos=False)
    end = style.answer_end_ids(tokenizer)  # eos, or the end-of-turn token of the chat template
    input_ids = torch.cat([prompt_ids, answer_ids, torch.tensor(end, dtype=torch.long)]).long()
    truncated = len(input_ids) > max_seq_length
    input_ids = input_ids[:max_seq_length]
    labels = input_ids.clone()
    if mask_inputs:
        labels[:len(prompt_ids)] = IGNORE_INDEX
    return {"input_ids": input_ids, "labels": labels, "truncated": truncated}


def load_rows(path: Union[str, Path], required: tuple = ("instruction", "output"),
              format: Optional[Literal["json", "csv"]] = None) -> list[dict]:
    """Rows of a JSON array or JSON-lines file, or of a CSV file with a header (`format`, default: by the suffix),
    each with string fields `required`."""
    path = Path(path)
    if not path.is_file():
        fail(f"Data file {str(path)!r} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        fail(f"{str(path)!r} is not UTF-8 text (byte {raw[e.start]:#04x} on line {line}); re-save it as UTF-8")
    if not text.strip():
        fail(f"Data file {str(path)!r} is empty")
    format = format or ("csv" if path.suffix.lower() == ".csv" else "json")
    if format == "csv":
        rows = _read_csv(text, path, required)
    elif text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            fail(f"{str(path)!r} is not valid JSON: {e}")
        where = [f"row {i}" for i in range(1, len(rows) + 1)]
    else:
        rows, where = [], []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    fail(f"{str(path)!r} line {number} is not valid JSON ({e}); expected a JSON array or JSON lines")
                where.append(f"row {len(rows)} (line {number})")
    if format == "json":
        for row, at in zip(rows, where):
            if not isinstance(row, dict):
                fail(f"{str(path)!r} {at} is a {type(row).__name__}, expected an object with "
                     f"{', '.join(required) or 'fields'}")
            _check_fields(row, required, path, at)
    if not rows:
        fail(f"Data file {str(path)!r} has no rows")
    return rows


def _read_csv(text: str, path: Path, required: tuple) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [name for name in required if name not in (reader.fieldnames or [])]
    if missing:
        fail(f"{str(path)!r} has no column {', '.join(map(repr, missing))} (header: {reader.fieldnames})")
    rows = []
    for row in reader:
        _check_fields(row, required, path, f"row {len(rows) + 1} (line {reader.line_num})")
        rows.append({k: v for k, v in row.items() if k is not None})
    return rows


def _check_fields(row: dict, required: tuple, path: Path, at: str) -> None:
    for name in required:
        if not isinstance(row.get(name), str):
            problem = "has no" if row.get(name) is None else "has a non-text"
            fail(f"{str(path)!r} {at} {problem} {name!r} field (fields: {', '.join(map(str, row))})")


def split_rows(rows: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Shuffles `rows` with `seed` and splits off `val_fraction` of them (at least one) as validation."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(rows) * val_fraction))
    if n_val >= len(rows):
        fail(f"Cannot split {len(rows)} examples into train and val with val_split_fraction={val_fraction}: "
             "add data or pass --val_file")
    return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]]


def check_prepare_args(checkpoint_dir: Path, data_file: Optional[Path], val_file: Optional[Path],
                       val_split_fraction: Optional[float], max_seq_length: Optional[int],
                       dataset: Optional[str] = None) -> None:
    """Flag checks shared by the prepare scripts, run before anything is read or written. `dataset`: the DATASETS
    entry whose download path is the default `data_file`."""
    if not (checkpoint_dir / "tokenizer.json").is_file() and not (checkpoint_dir / "tokenizer.model").is_file():
        fail(f"No tokenizer.json or tokenizer.model in {str(checkpoint_dir)!r}: --checkpoint_dir must be a checkpoint "
             "dir (python scripts/download.py --repo_id <org>/<name> creates one)")
    if dataset is not None and data_file == DATASETS[dataset][1] and not data_file.is_file():
        fail(f"No {dataset} data at {str(data_file)!r}: download it there with `python scripts/download.py --dataset "
             f"{dataset}`, or pass --data_file with a local copy")
    for flag, path in (("--data_file", data_file), ("--val_file", val_file)):
        if path is not None and not path.is_file():
            fail(f"{flag} {str(path)!r} does not exist")
    if val_file is not None and val_split_fraction is not None:
        fail("Pass either --val_file or --val_split_fraction, not both")
    if val_split_fraction is not None and not 0 < val_split_fraction < 1:
        fail(f"--val_split_fraction must be between 0 and 1 (exclusive), got {val_split_fraction}")
    if max_seq_length is not None and max_seq_length < 2:
        fail(f"--max_seq_length must be at least 2, got {max_seq_length}")


def prepare(train_rows: list[dict], val_rows: Optional[list[dict]], *, checkpoint_dir: Path, destination_path: Path,
            source: str, prompt_style: Optional[str] = None, max_seq_length: Optional[int] = None,
            mask_inputs: bool = True, val_split_fraction: Optional[float] = None, seed: int = 42) -> dict:
    """Tokenizes rows of {"instruction", "input" (optional), "output"}, splits off validation rows unless `val_rows`
    are given, writes the prepared-data dir and prints the counts. Returns prepare_config.json's content."""
    style, max_seq_length, tokenizer = _style_length_tokenizer(prompt_style, checkpoint_dir, max_seq_length)
    counts = {"train": 0, "val": 0, "truncated": 0, "skipped_prompt_too_long": 0, "skipped_empty_output": 0}
    skipped_rows = []

    def tokenize(rows: list[dict], where: str) -> list[dict]:
        samples = []
        for number, row in enumerate(rows, 1):
            if not row["output"].strip():
                counts["skipped_empty_output"] += 1
                skipped_rows.append(f"{where}row {number} (empty output)")
                continue
            sample = prepare_sample(row, tokenizer, style, max_seq_length, mask_inputs)
            if sample is None:
                counts["skipped_prompt_too_long"] += 1
                skipped_rows.append(f"{where}row {number} (prompt >= {max_seq_length} tokens)")
                continue
            counts["truncated"] += sample.pop("truncated")
            samples.append(sample)
        return samples

    train = tokenize(train_rows, "")
    val = tokenize(val_rows, "val_file ") if val_rows is not None else None
    config = {"checkpoint_dir": str(Path(checkpoint_dir).resolve()), "prompt_style": style.name,
              "max_seq_length": max_seq_length, "mask_inputs": mask_inputs, "seed": seed,
              "source": str(Path(source).resolve()), "counts": counts}
    return _finish(destination_path, train, val, style, config, skipped_rows, val_split_fraction, seed,
                   f"truncated {counts['truncated']} (cut to max_seq_length={max_seq_length})")


def _style_length_tokenizer(prompt_style: Optional[str], checkpoint_dir: Path, max_seq_length: Optional[int]
                            ) -> tuple[PromptStyle, int, Any]:
    """The prompt style, the max length (default: the model's context) and the tokenizer a prepare script uses."""
    from lit_gpt.config import Config
    from lit_gpt.tokenizer import Tokenizer

    style = resolve_prompt_style(prompt_style, checkpoint_dir)
    if max_seq_length is None:
        try:
            max_seq_length = Config.from_checkpoint(checkpoint_dir).block_size
        except (FileNotFoundError, ValueError):
            fail(f"Cannot read the model's context length from {str(checkpoint_dir)!r}: pass --max_seq_length")
    return style, max_seq_length, Tokenizer(checkpoint_dir)


def _finish(destination_path: Path, train: list[dict], val: Optional[list[dict]], style: PromptStyle, config: dict,
            skipped_rows: list[str], val_split_fraction: Optional[float], seed: int, truncated: str) -> dict:
    """Splits off validation samples unless `val` is given, writes the prepared-data dir with `config` (its
    "counts" filled in) and prints the counts (`truncated`: what was cut). Returns `config`."""
    if not train or val == []:
        fail(f"No {'training' if not train else 'validation'} examples left after skipping {len(skipped_rows)} "
             f"({', '.join(skipped_rows[:5])}): raise --max_seq_length or check the data")
    if val is None:
        train, val = split_rows(train, 0.05 if val_split_fraction is None else val_split_fraction, seed)
    counts = config["counts"]
    counts["train"], counts["val"] = len(train), len(val)
    write_prepared(destination_path, train, val, style, config)
    print(f"Wrote {str(destination_path)!r}: train {counts['train']}, val {counts['val']}, {truncated}, "
          f"skipped {len(skipped_rows)}")
    if skipped_rows:
        more = f" and {len(skipped_rows) - 10} more" if len(skipped_rows) > 10 else ""
        print(f"Skipped: {', '.join(skipped_rows[:10])}{more}")
    return config


def write_prepared(destination_path: Path, train: list[dict], val: list[dict], style: PromptStyle,
                   config: dict) -> None:
    """Each file is written atomically; prepare_config.json is removed first and written last, so a dir with one is
    complete (the dir may also hold the source files, so it is not replaced as a whole)."""
    destination_path.mkdir(parents=True, exist_ok=True)
    (destination_path / "prepare_config.json").unlink(missing_ok=True)
    atomic_save(train, destination_path / "train.pt")
    atomic_save(val, destination_path / "val.pt")
    save_prompt_style(style, destination_path)
    atomic_write_text(destination_path / "prepare_config.json", json.dumps(config, indent=2) + "\n")


# Conversations: rows of {"messages": [{"role": ..., "content": ...}, ...]} (OpenAI) or {"conversations": [{"from":
# ..., "value": ...}, ...]} (ShareGPT), rendered with a prompt style's `conversation_pieces`.
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
TrainOn = Literal["all", "assistant", "last"]


def load_conversations(path: Union[str, Path]) -> list[dict]:
    """The conversations of a JSON array or JSON-lines file (see `parse_conversation`)."""
    rows = load_rows(path, required=(), format="json")
    return [parse_conversation(row, f"{str(path)!r} row {number}") for number, row in enumerate(rows, 1)]


def parse_conversation(row: dict, at: str) -> dict:
    """{"system": str or None, "turns": [(user, answer), ...]}, or {"skip": kind, "reason": ...} for a conversation
    that teaches nothing or that chat templates cannot render: an empty user or assistant message, no assistant
    message, roles that are not user, assistant, user, assistant, ... after an optional system message (an empty
    system message counts as none). A row whose messages cannot be read (no `messages` or `conversations` list, a
    message without a text role and content, an unknown role) is an error naming `at`, the row."""
    key = "messages" if "messages" in row else "conversations"
    messages = row.get(key)
    if not isinstance(messages, list):
        fail(f"{at} has no 'messages' list ([{{\"role\": ..., \"content\": ...}}, ...]) nor 'conversations' list "
             f"([{{\"from\": ..., \"value\": ...}}, ...]) (fields: {', '.join(map(str, row))})")
    roles, texts = [], []
    for i, message in enumerate(messages):
        role, text = (message.get("role", message.get("from")), message.get("content", message.get("value"))) \
            if isinstance(message, dict) else (None, None)
        if not isinstance(role, str) or not isinstance(text, str):
            fail(f"{at} {key}[{i}] is not a {{\"role\", \"content\"}} or {{\"from\", \"value\"}} object of texts: "
                 f"{json.dumps(message)[:60]}")
        if role not in ROLES:
            fail(f"{at} {key}[{i}] has the unknown role {role!r} (known: {', '.join(ROLES)}): rename it or drop the "
                 "row")
        roles.append(ROLES[role])
        texts.append(text)
    system = texts[0] if roles[:1] == ["system"] else None
    first = int(system is not None)  # the index of the first user message
    if "assistant" not in roles:
        return {"skip": "no_assistant", "reason": "no assistant message"}
    for i, role in enumerate(roles[first:], first):
        expected = ("user", "assistant")[(i - first) % 2]
        if role != expected:
            return {"skip": "role_order", "reason": f"{key}[{i}] is {role}, expected {expected}"}
    if roles[-1] == "user":
        return {"skip": "role_order", "reason": "ends with a user message"}
    empty = [i for i in range(first, len(texts)) if not texts[i].strip()]
    if empty:
        return {"skip": "empty_message", "reason": f"empty {roles[empty[0]]} message {key}[{empty[0]}]"}
    turns = list(zip(texts[first::2], texts[first + 1::2]))
    return {"system": system if system and system.strip() else None, "turns": turns}


def prepare_conversation(conversation: dict, tokenizer: Any, style: PromptStyle, max_seq_length: int,
                         train_on: TrainOn = "assistant", system: Optional[str] = None) -> Optional[dict]:
    """Tokenizes a conversation of `parse_conversation` rendered by `style` ({"input_ids", "labels", "dropped"});
    `labels` is -100 except on every token (`train_on="all"`), on each answer and its end-of-turn token
    ("assistant") or on the last answer and its end-of-turn token only ("last"). `system`: the system message of
    a conversation without one (None: the style's default).

    A conversation longer than `max_seq_length` tokens loses whole turns, oldest first, the system message kept,
    until it fits ("dropped": how many). None when not even its last turn fits.
    """
    system = conversation["system"] or system
    turns = conversation["turns"]
    for dropped in range(len(turns)):
        pieces = tokenize_pieces(tokenizer, style, style.conversation_pieces(turns[dropped:], system=system))
        if sum(map(len, pieces)) <= max_seq_length:
            break
    else:
        return None
    input_ids = torch.tensor([i for piece in pieces for i in piece], dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    start = 0
    for number, piece in enumerate(pieces):
        answer = number % 2 == 1
        if train_on == "all" or (answer and (train_on == "assistant" or number == len(pieces) - 1)):
            labels[start:start + len(piece)] = input_ids[start:start + len(piece)]
        start += len(piece)
    return {"input_ids": input_ids, "labels": labels, "dropped": dropped}


def tokenize_pieces(tokenizer: Any, style: PromptStyle, pieces: list[str]) -> list[list[int]]:
    """The ids of each piece of `style.conversation_pieces` ([prompt, answer, prompt, answer, ...]).

    Chat styles: the ids of the pieces, concatenated, are the encoding of the whole text (a token that spans two
    pieces goes with the later one). Other styles: each answer gets `style.answer_end_ids` (eos) appended, and the
    text after it is encoded as it continues the text.
    """
    def encode(text: str) -> list[int]:
        return tokenizer.encode(text).tolist()

    if isinstance(style, ChatStyle):
        return _encode_split(encode, pieces)
    end, ids = style.answer_end_ids(tokenizer), []
    for k in range(0, len(pieces), 2):
        split = _encode_split(encode if k == 0 else partial(encode_in_context, tokenizer), pieces[k:k + 2])
        ids += [split[0]] + [answer + end for answer in split[1:]]
    return ids


def _encode_split(encode: Callable[[str], list[int]], pieces: list[str]) -> list[list[int]]:
    """`encode("".join(pieces))` cut into one part per piece: a piece's part ends where the encoding of the text up
    to its end stops agreeing with the whole encoding."""
    full, bounds, text = encode("".join(pieces)), [0], ""
    for piece in pieces[:-1]:
        text += piece
        bounds.append(max(bounds[-1], common_prefix_length(encode(text), full)))
    return [full[a:b] for a, b in zip(bounds, bounds[1:] + [len(full)])]


def prepare_chat(train_rows: list[dict], val_rows: Optional[list[dict]], *, checkpoint_dir: Path,
                 destination_path: Path, source: str, prompt_style: Optional[str] = None,
                 max_seq_length: Optional[int] = None, train_on: TrainOn = "assistant",
                 system_prompt: Optional[str] = None, val_split_fraction: Optional[float] = None,
                 seed: int = 42) -> dict:
    """Tokenizes conversations of `parse_conversation` (skips counted and listed), splits off validation ones unless
    `val_rows` are given, writes the prepared-data dir and prints the counts. Returns prepare_config.json's
    content."""
    style, max_seq_length, tokenizer = _style_length_tokenizer(prompt_style, checkpoint_dir, max_seq_length)
    counts = {"train": 0, "val": 0, "truncated": 0, "truncated_by_turns": {}, "own_system_prompt": 0,
              "skipped_too_long": 0, "skipped_no_assistant": 0, "skipped_role_order": 0, "skipped_empty_message": 0}
    skipped_rows = []

    def tokenize(rows: list[dict], where: str) -> list[dict]:
        samples = []
        for number, row in enumerate(rows, 1):
            sample = None if "skip" in row else prepare_conversation(row, tokenizer, style, max_seq_length,
                                                                     train_on, system_prompt)
            if sample is None:
                kind, reason = (row["skip"], row["reason"]) if "skip" in row else \
                    ("too_long", f"last turn > {max_seq_length} tokens")
                counts[f"skipped_{kind}"] += 1
                skipped_rows.append(f"{where}row {number} ({reason})")
                continue
            dropped = sample.pop("dropped")
            if dropped:
                counts["truncated"] += 1
                counts["truncated_by_turns"][str(dropped)] = counts["truncated_by_turns"].get(str(dropped), 0) + 1
            counts["own_system_prompt"] += row["system"] is not None
            samples.append(sample)
        return samples

    train = tokenize(train_rows, "")
    val = tokenize(val_rows, "val_file ") if val_rows is not None else None
    by_turns = sorted(counts["truncated_by_turns"].items(), key=lambda item: int(item[0]))
    counts["truncated_by_turns"] = dict(by_turns)
    note = ", ".join(f"by {n} turn{'s' if n != '1' else ''}: {k} conversation{'s' if k > 1 else ''}"
                     for n, k in by_turns)
    config = {"checkpoint_dir": str(Path(checkpoint_dir).resolve()), "prompt_style": style.name, "format": "chat",
              "max_seq_length": max_seq_length, "train_on": train_on, "system_prompt": system_prompt,
              "seed": seed, "source": str(Path(source).resolve()), "counts": counts}
    return _finish(destination_path, train, val, style, config, skipped_rows, val_split_fraction, seed,
                   f"truncated {counts['truncated']} ({note + '; ' if note else ''}oldest turns dropped to fit "
                   f"max_seq_length={max_seq_length})")


def load_prepared(data_dir: Union[str, Path]) -> tuple[list[dict], list[dict], dict]:
    """(train, val, prepare_config) of a prepared-data dir."""
    config = prepared_config(data_dir)
    splits = []
    for name in ("train.pt", "val.pt"):
        try:
            splits.append(torch.load(Path(data_dir) / name, weights_only=True))
        except Exception as e:
            fail(f"Could not read {str(Path(data_dir) / name)!r} ({type(e).__name__}): prepare the data again")
    return splits[0], splits[1], config


def prepared_config(data_dir: Union[str, Path]) -> dict:
    """The prepare_config.json of a prepared-data dir, checked."""
    data_dir = Path(data_dir)
    path = data_dir / "prepare_config.json"
    if not path.is_file():
        fail(f"{str(data_dir)!r} is not a prepared-data dir (no prepare_config.json): create it with "
             f"python scripts/prepare_alpaca.py (or another scripts/prepare_*.py) --destination_path {data_dir}")
    fix = "prepare the data again (scripts/prepare_*.py writes it)"
    config = read_json(path, fix)
    length = config.get("max_seq_length")
    if not isinstance(config.get("prompt_style"), str) or not (length is None or type(length) is int):
        fail(f"{str(path)!r} needs a prompt_style (a name) and a max_seq_length (a number or null); {fix}")
    return config


def collate(samples: list[dict], max_seq_length: Optional[int] = None, pad_multiple: int = 1,
            device: Optional[Union[str, torch.device]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, targets), each (B, T), for next-token training: `loss(model(input_ids), targets)`.

    Each sample is cut to `max_seq_length` tokens; input_ids are its tokens but the last, targets its labels shifted
    left by one. Padded to the longest in the batch, rounded up to `pad_multiple` (at most max_seq_length - 1):
    input_ids with 0, targets with -100.
    """
    lengths = [min(len(s["input_ids"]), max_seq_length or len(s["input_ids"])) - 1 for s in samples]
    length = -(-max(lengths) // pad_multiple) * pad_multiple
    if max_seq_length is not None:
        length = min(length, max_seq_length - 1)
    input_ids = torch.zeros((len(samples), length), dtype=torch.long)
    targets = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    for row, (sample, n) in enumerate(zip(samples, lengths)):
        input_ids[row, :n] = sample["input_ids"][:n]
        targets[row, :n] = sample["labels"][1:n + 1]
    return input_ids.to(device), targets.to(device)


def target_count(sample: dict, max_seq_length: Optional[int] = None) -> int:
    """How many targets (positions with a loss) `collate` gives this sample."""
    n = min(len(sample["input_ids"]), max_seq_length or len(sample["input_ids"])) - 1
    return int((sample["labels"][1:n + 1] != IGNORE_INDEX).sum())


def longest_first(data: list[dict]) -> list[int]:
    """All indices of `data`, longest sample first: training on them first makes an out-of-memory show up at step
    one instead of hours in."""
    return sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]), reverse=True)


def token_budget_batches(lengths: list[int], budget: int, padded: bool = False, count: int = 0) -> list[list[int]]:
    """The positions of `lengths` (the examples' token counts) in micro-batches of at most `budget` tokens: the lengths
    summed (padding-free) or, `padded`, the number of examples times the longest. First fit, longest first (running
    out of memory shows at the first micro-batch); an example longer than the budget runs alone. With `count`, the
    micro-batch holding the most tokens is halved until there are `count` (as far as there are examples): every
    process of a multi-device run must run as many forward and backward passes."""
    def cost(batch: list[int]) -> int:
        return len(batch) * lengths[batch[0]] if padded else sum(lengths[i] for i in batch)  # batch[0]: the longest

    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # first fit, longest first: few micro-batches
        fit = next((b for b in batches if cost(b + [i]) <= budget), None)
        if fit is None:
            batches.append([i])
        else:
            fit.append(i)
    while len(batches) < count and any(len(b) > 1 for b in batches):
        k = max((k for k, b in enumerate(batches) if len(b) > 1), key=lambda k: cost(batches[k]))
        half = len(batches[k]) // 2
        batches[k: k + 1] = [batches[k][:half], batches[k][half:]]
    return batches


def pack(samples: list[dict], max_seq_length: Optional[int] = None, device: Optional[Union[str, torch.device]] = None
         ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(input_ids, targets, lengths) for padding-free training: `loss(model(input_ids, lengths=lengths), targets)`.

    The samples, each cut and shifted as by `collate`, laid end to end in one row (1, T) with no padding; `lengths`
    are their lengths in it, for `GPT.forward`, which restarts positions and attention at each. A sample's last
    target is its own last label: no target crosses into the next sample.
    """
    lengths = [min(len(s["input_ids"]), max_seq_length or len(s["input_ids"])) - 1 for s in samples]
    input_ids = torch.cat([s["input_ids"][:n] for s, n in zip(samples, lengths)])
    targets = torch.cat([s["labels"][1:n + 1] for s, n in zip(samples, lengths)])
    return input_ids[None].to(device), targets[None].to(device), lengths


# Preference pairs (DPO), in TRL's three layouts: {"prompt": str, "chosen": str, "rejected": str} (the prompt an
# instruction), {"prompt": [messages], "chosen": [messages], "rejected": [messages]}, and the implicit prompt
# {"chosen": [messages], "rejected": [messages]} (their shared leading messages). A prepared sample is
# {"prompt_ids": (p,), "chosen_ids": (c,), "rejected_ids": (r,)}: prompt + chosen and prompt + rejected are the two
# sequences trained, each one encoding of its whole text, rendered as a conversation by the prompt style.
PREFERENCE_SKIPS = ("identical", "empty_answer", "not_one_answer", "prompts_differ", "role_order", "empty_message",
                    "identical_after_truncation", "prompt_too_long")


def load_preferences(path: Union[str, Path]) -> list[dict]:
    """The preference pairs of a JSON array or JSON-lines file (see `parse_preference`)."""
    rows = load_rows(path, required=(), format="json")
    return [parse_preference(row, f"{str(path)!r} row {number}") for number, row in enumerate(rows, 1)]


def parse_preference(row: dict, at: str) -> dict:
    """{"system": str or None, "turns": [(user, answer), ...] before the last user message, "prompt": that message,
    "chosen": str, "rejected": str}, or {"skip": kind, "reason": ...} (kinds: PREFERENCE_SKIPS) for a pair that
    teaches nothing: identical answers, an empty answer or prompt, an answer that is not one assistant message after
    the prompt, implicit prompts that differ, roles out of order (as `parse_conversation`). A row that cannot be read
    (a missing field or one neither a text nor a list, layouts mixed, a bad message) is an error naming `at`."""
    for name in ("prompt", "chosen", "rejected"):
        value = row.get(name)
        if (value is not None or name != "prompt") and not isinstance(value, (str, list)):
            problem = "has no" if value is None else "has a non-text, non-list"
            fail(f"{at} {problem} {name!r} field, expected a text or a list of {{\"role\", \"content\"}} messages "
                 f"(fields: {', '.join(map(str, row))})")
    given = [name for name in ("prompt", "chosen", "rejected") if row.get(name) is not None]
    if len({type(row[name]) for name in given}) > 1:
        kinds = ", ".join(f"{name!r} is a {'text' if isinstance(row[name], str) else 'list'}" for name in given)
        fail(f"{at} mixes layouts ({kinds}): give {', '.join(given)} all as texts or all as message lists")
    if isinstance(row["chosen"], str):
        if "prompt" not in given:
            fail(f"{at} has no 'prompt' field: texts need one (only message lists have an implicit prompt, their "
                 "shared leading messages)")
        if not row["prompt"].strip():
            return {"skip": "empty_message", "reason": "empty prompt"}
        prompt, chosen, rejected = [("user", row["prompt"])], [("assistant", row["chosen"])], \
            [("assistant", row["rejected"])]
    else:
        prompt, chosen, rejected = (_messages(row[name], f"{at} {name}") if name in given else None
                                    for name in ("prompt", "chosen", "rejected"))
        if prompt is None and chosen and rejected:
            shared = common_prefix_length(chosen[:-1], rejected[:-1])  # the last message of each is its answer
            if shared == 0:
                return {"skip": "prompts_differ", "reason": "chosen and rejected share no leading messages"}
            if len(chosen) - shared > 1 and len(rejected) - shared > 1:
                return {"skip": "prompts_differ", "reason": f"chosen and rejected differ from messages[{shared}] on"}
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        if [role for role, _ in answer] != ["assistant"]:
            roles = ", ".join(role for role, _ in answer) or "none"
            return {"skip": "not_one_answer", "reason": f"{name} is not one assistant message after the prompt "
                                                        f"(roles: {roles})"}
        if not answer[0][1].strip():
            return {"skip": "empty_answer", "reason": f"empty {name}"}
    if chosen == rejected:
        return {"skip": "identical", "reason": "identical chosen and rejected"}
    conversation = parse_conversation({"messages": [{"role": role, "content": text} for role, text in
                                                    prompt + chosen]}, at)
    if "skip" in conversation:
        return {"skip": conversation["skip"], "reason": f"prompt + chosen: {conversation['reason']}"}
    *turns, (message, _) = conversation["turns"]
    return {"system": conversation["system"], "turns": turns, "prompt": message, "chosen": chosen[0][1],
            "rejected": rejected[0][1]}


def _messages(messages: list, at: str) -> list[tuple[str, str]]:
    """(role, text) of each message, the roles as ROLES names them; a bad message is `parse_conversation`'s error."""
    parse_conversation({"messages": messages}, at)
    return [(ROLES[m.get("role", m.get("from"))], m.get("content", m.get("value"))) for m in messages]


def prepare_preference(preference: dict, tokenizer: Any, style: PromptStyle, max_seq_length: int,
                       system: Optional[str] = None) -> dict:
    """Tokenizes a pair of `parse_preference`: {"prompt_ids", "chosen_ids", "rejected_ids", "truncated_prompt",
    "truncated_answers"}, or {"skip": kind, "reason": ...}. `system`: the system message of a pair without one
    (None: the style's default).

    The prompt + answer of each is its conversation rendered by `style` and tokenized as SFT's conversations are
    (`tokenize_pieces`: one encoding of the whole text; plain styles: eos after the answer). prompt_ids are the
    tokens that both encodings share with the prompt's own (TRL's DPO trainer splits so too), the answers the rest.
    When prompt + the longer answer exceeds `max_seq_length`, the prompt loses its first tokens (BOS kept), down to
    max_seq_length // 2 of them, then the answers their last tokens.
    """
    system = preference["system"] or system
    turns, message = preference["turns"], preference["prompt"]

    def encode(pieces: list[str]) -> list[int]:
        return [i for piece in tokenize_pieces(tokenizer, style, pieces) for i in piece]

    own = encode(style.conversation_pieces(turns, message, system=system))
    chosen, rejected = (encode(style.conversation_pieces([*turns, (message, preference[name])], system=system))
                        for name in ("chosen", "rejected"))
    if chosen == rejected:
        return {"skip": "identical", "reason": "chosen and rejected identical once rendered"}
    p = min(common_prefix_length(own, chosen), common_prefix_length(own, rejected))
    prompt_ids, chosen_ids, rejected_ids = chosen[:p], chosen[p:], rejected[p:]
    longest = max(len(chosen_ids), len(rejected_ids))
    truncated_prompt = truncated_answers = False
    if p + longest > max_seq_length:
        keep = max(max_seq_length - longest, min(p, max_seq_length // 2))
        if keep < p:
            bos = int(prompt_ids[:1] == [tokenizer.bos_id])
            if keep <= bos:
                return {"skip": "prompt_too_long", "reason": f"no prompt token fits max_seq_length={max_seq_length}"}
            prompt_ids, truncated_prompt = prompt_ids[:bos] + prompt_ids[p - keep + bos:], True
        room = max_seq_length - len(prompt_ids)
        if longest > room:
            chosen_ids, rejected_ids, truncated_answers = chosen_ids[:room], rejected_ids[:room], True
            if chosen_ids == rejected_ids:
                return {"skip": "identical_after_truncation",
                        "reason": f"chosen and rejected identical once cut to max_seq_length={max_seq_length}"}
    return {"prompt_ids": torch.tensor(prompt_ids, dtype=torch.long),
            "chosen_ids": torch.tensor(chosen_ids, dtype=torch.long),
            "rejected_ids": torch.tensor(rejected_ids, dtype=torch.long),
            "truncated_prompt": truncated_prompt, "truncated_answers": truncated_answers}


def prepare_preferences(train_rows: list[dict], val_rows: Optional[list[dict]], *, checkpoint_dir: Path,
                        destination_path: Path, source: str, prompt_style: Optional[str] = None,
                        max_seq_length: Optional[int] = None, system_prompt: Optional[str] = None,
                        val_split_fraction: Optional[float] = None, seed: int = 42) -> dict:
    """Tokenizes pairs of `parse_preference` (skips counted and listed), splits off validation ones unless
    `val_rows` are given, writes the prepared-data dir ("format": "preference") and prints the counts. Returns
    prepare_config.json's content."""
    style, max_seq_length, tokenizer = _style_length_tokenizer(prompt_style, checkpoint_dir, max_seq_length)
    counts = {"train": 0, "val": 0, "truncated_prompt": 0, "truncated_answers": 0,
              **{f"skipped_{kind}": 0 for kind in PREFERENCE_SKIPS}}
    skipped_rows = []

    def tokenize(rows: list[dict], where: str) -> list[dict]:
        samples = []
        for number, row in enumerate(rows, 1):
            sample = row if "skip" in row else prepare_preference(row, tokenizer, style, max_seq_length,
                                                                  system_prompt)
            if "skip" in sample:
                counts[f"skipped_{sample['skip']}"] += 1
                skipped_rows.append(f"{where}row {number} ({sample['reason']})")
                continue
            counts["truncated_prompt"] += sample.pop("truncated_prompt")
            counts["truncated_answers"] += sample.pop("truncated_answers")
            samples.append(sample)
        return samples

    train = tokenize(train_rows, "")
    val = tokenize(val_rows, "val_file ") if val_rows is not None else None
    config = {"checkpoint_dir": str(Path(checkpoint_dir).resolve()), "prompt_style": style.name,
              "format": "preference", "max_seq_length": max_seq_length, "system_prompt": system_prompt,
              "seed": seed, "source": str(Path(source).resolve()), "counts": counts}
    return _finish(destination_path, train, val, style, config, skipped_rows, val_split_fraction, seed,
                   f"truncated {counts['truncated_prompt']} prompts (start cut) and {counts['truncated_answers']} "
                   f"answer pairs (ends cut) to fit max_seq_length={max_seq_length}")


# Prompts for reinforcement learning (finetune/grpo.py): rows with a prompt and a reference answer, rendered and
# tokenized as SFT renders a prompt. Three layouts: Alpaca {"instruction", "input" (optional), "output"}, GSM8K
# {"question", "answer"} (the reference answer of both: what follows the last "####", else the whole text), and
# {"prompt": text or [{"role", "content"}, ...], "answer": any JSON value}.
PROMPT_LAYOUTS = ('{"prompt": text or [{"role", "content"} messages], "answer"}, {"question", "answer"} (GSM8K) or '
                  '{"instruction", "input" (optional), "output"} (Alpaca)')


def load_prompt_rows(path: Union[str, Path]) -> list[dict]:
    """The rows (objects) of a JSON array or JSON-lines file, for `prepare_prompts`."""
    return load_rows(path, required=(), format="json")


def parse_prompt_row(row: dict, at: str) -> Optional[dict]:
    """{"prompt": text or [(role, content), ...] messages, "input": text (Alpaca's, else ""), "answer": text} of a
    row in one of the three layouts (PROMPT_LAYOUTS), or None when it has no answer (missing or empty). A row of no
    layout, a non-text prompt or messages that do not end a conversation with a user message are errors naming
    `at`, the row."""
    layout = next((keys for keys in (("prompt", "answer"), ("question", "answer"), ("instruction", "output"))
                   if keys[0] in row), None)
    if layout is None:
        fail(f"{at} is in none of the prompt layouts {PROMPT_LAYOUTS} (fields: {', '.join(map(str, row))})")
    key, answer_key = layout
    prompt, answer, input = row[key], row.get(answer_key), row.get("input") or ""
    if isinstance(prompt, list) and key == "prompt":
        prompt = _messages(prompt, f"{at} prompt")
        _prompt_conversation(prompt, at)
    elif not isinstance(prompt, str) or not isinstance(input, str):
        name = key if not isinstance(prompt, str) else "input"
        fail(f"{at} has a non-text {name!r} field{' (a text or a list of messages)' if name == 'prompt' else ''}")
    if answer is None:
        return None
    if key == "prompt":
        answer = answer if isinstance(answer, str) else json.dumps(answer)
    elif not isinstance(answer, str):
        fail(f"{at} has a non-text {answer_key!r} field")
    else:
        answer = answer.rsplit("####", 1)[-1]
    return {"prompt": prompt, "input": input, "answer": answer.strip()} if answer.strip() else None


def _prompt_conversation(messages: list[tuple[str, str]], at: str) -> tuple[Optional[str], list, str]:
    """(system, turns, message) of a prompt's messages: an optional system message, then user, assistant, ..., user
    (checked by `parse_conversation`, with an answer added)."""
    if not messages:
        fail(f"{at} has an empty 'prompt' list of messages")
    if messages[-1][0] != "user":
        fail(f"{at} prompt's last message is {messages[-1][0]!r}: it must be the user message to answer")
    conversation = parse_conversation({"messages": [{"role": role, "content": text} for role, text in messages]
                                       + [{"role": "assistant", "content": "answer"}]}, at)
    if "skip" in conversation:
        fail(f"{at} prompt: {conversation['reason']}: a prompt is an optional system message, then user, assistant, "
             "..., user messages, none empty")
    *turns, (message, _) = conversation["turns"]
    return conversation["system"], turns, message


def prepare_prompts(rows: list[dict], tokenizer: Any, style: PromptStyle, max_prompt_length: int,
                    where: str = "row") -> tuple[list[dict], list[tuple[str, str]]]:
    """(samples, skipped) of rows of `parse_prompt_row`'s layouts: each sample {"prompt_ids": (p,), "prompt_text",
    "answer"}; skipped: (where, reason) of each row without an answer. `where`: how the rows are named in messages
    (row 1, row 2, ...).

    A text prompt is rendered as SFT renders one (`prepare_sample`: `style.apply(instruction, input)`), messages as
    SFT's conversations (`style.conversation_pieces`, `tokenize_pieces`), up to where the answer starts. A prompt
    longer than `max_prompt_length` tokens is an error.
    """
    samples, skipped = [], []
    for number, row in enumerate(rows, 1):
        at = f"{where} {number}"
        parsed = parse_prompt_row(row, at)
        if parsed is None:
            skipped.append((at, "no answer"))
            continue
        if isinstance(parsed["prompt"], str):
            text = style.apply(parsed["prompt"], parsed["input"])
            prompt_ids = tokenizer.encode(text)
        else:
            system, turns, message = _prompt_conversation(parsed["prompt"], at)
            pieces = style.conversation_pieces(turns, message, system=system)
            text = "".join(pieces)
            prompt_ids = torch.tensor([i for piece in tokenize_pieces(tokenizer, style, pieces) for i in piece],
                                      dtype=torch.long)
        if len(prompt_ids) > max_prompt_length:
            fail(f"{at}: the prompt has {len(prompt_ids)} tokens, longer than the {max_prompt_length} allowed: shorten "
                 "it or raise --max_seq_length / lower --max_new_tokens")
        samples.append({"prompt_ids": prompt_ids.long(), "prompt_text": text, "answer": parsed["answer"]})
    return samples, skipped
