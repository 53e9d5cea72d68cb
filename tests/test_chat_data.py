"""Conversation data (scripts/prepare_chat.py, lit_gpt.data): each chat style's rendering against its published
template, labels exactly on the assistant tokens, both layouts, truncation, bad rows, and a finetune end to end."""

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch
from test_prompts import EARLIER_ANSWERS_END, SYSTEM_FAMILIES, render

from conftest import REPO, run_script
from lit_gpt.data import IGNORE_INDEX, load_prepared, prepare_conversation
from lit_gpt.prompts import PromptStyle
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import UserError

SYSTEM = "You are a math tutor."
TURNS = [("What is 7 times 8?", "7 * 8 = 56\n#### 56"), ("And 9 times 9?", "9 * 9 = 81\n#### 81"),
         ("Now add them.", "56 + 81 = 137\n#### 137")]
# the special tokens of every chat template, for a tiny byte-level BPE tokenizer trained on the spot
SPECIAL = ["<s>", "</s>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eot_id|>", "<start_of_turn>", "<end_of_turn>", "<|system|>", "<|user|>",
           "<|assistant|>", "<|end|>", "<|endoftext|>", "[INST]", "[/INST]"]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prepare_chat", REPO / "scripts" / "prepare_chat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def messages(turns: list, system: str = None, layout: str = "messages") -> list:
    """A conversation in the OpenAI layout, or ShareGPT's (`layout="conversations"`: from/value, human/gpt)."""
    out = [("system", system)] if system else []
    for user, answer in turns:
        out += [("user", user), ("assistant", answer)]
    if layout == "messages":
        return [{"role": role, "content": text} for role, text in out]
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return [{"from": names[role], "value": text} for role, text in out]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_tokenizers(tmp_path_factory) -> dict:
    """{bos: Tokenizer}: a byte-level BPE tokenizer knowing every template's special tokens, adding `bos` ("": none)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    corpus = [f"{user} {answer} {SYSTEM} system user assistant model" for user, answer in TURNS] * 20
    hf.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizers = {}
    for bos in ("", "<s>", "<bos>", "<|begin_of_text|>"):
        path = tmp_path_factory.mktemp("tokenizer")
        hf.save(str(path / "tokenizer.json"))
        (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": bos or "<s>", "eos_token": "</s>",
                                                                "add_bos_token": bool(bos)}))
        tokenizers[bos] = Tokenizer(path)
    return tokenizers


def label_runs(labels: torch.Tensor) -> list:
    """(start, end) of each run of labelled positions."""
    runs, start = [], None
    for i, labelled in enumerate((labels != IGNORE_INDEX).tolist() + [False]):
        if labelled and start is None:
            start = i
        elif not labelled and start is not None:
            runs.append((start, i))
            start = None
    return runs


def check_chat_labels(name: str, template: str, variables: dict, bos: str, end: str, tokenizer: Tokenizer) -> None:
    """A 3-turn conversation with a system message: its tokens are the encoding of the text the model's template
    renders, and the labels sit exactly on each answer and its end-of-turn token."""
    style = PromptStyle.from_name(name)
    conversation = {"system": SYSTEM, "turns": TURNS}
    sample = prepare_conversation(conversation, tokenizer, style, 1000)
    ids, labels = sample["input_ids"], sample["labels"]
    assert sample["dropped"] == 0 and ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
    whole = "".join(style.conversation_pieces(TURNS, system=SYSTEM))
    assert ids.tolist() == tokenizer.encode(whole).tolist()  # one encoding of the whole text, not pieces glued
    text = tokenizer.decode(ids)
    assert text == bos + whole
    rendered = render(template, messages(TURNS, SYSTEM), False, **variables)
    if name == "mistral-nemo":  # its template drops the system message when an answer comes last
        text = text.replace(f"{SYSTEM}\n\n", "")
    assert rendered.startswith(text) and rendered[len(text):] in ("", "\n", "<|endoftext|>", "\n<|endoftext|>")
    assert text.startswith(bos + ("[INST]" if name == "mistral-nemo" else ""))

    runs = label_runs(labels)
    assert len(runs) == 3 and torch.equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])
    end = " </s>" if name == "llama2-chat" else end
    for i, ((start, stop), (_, answer)) in enumerate(zip(runs, TURNS)):
        prefix = style.response_prefix if name not in ("qwen3", "qwen3.5") or i == 2 else ""  # Qwen: think on the last
        ends = end if i == len(TURNS) - 1 else EARLIER_ANSWERS_END.get(name, end)  # gpt-oss: <|end|> before the last
        assert tokenizer.decode(ids[start:stop]) == prefix + answer + ends, name
    last = prepare_conversation(conversation, tokenizer, style, 1000, train_on="last")
    assert label_runs(last["labels"]) == runs[-1:] and torch.equal(last["input_ids"], ids)
    assert torch.equal(prepare_conversation(conversation, tokenizer, style, 1000, train_on="all")["labels"], ids)


@pytest.mark.parametrize("name, template, variables, bos, end", SYSTEM_FAMILIES)
def test_labels_sit_on_the_answers_of_every_chat_style(name, template, variables, bos, end, tiny_tokenizers):
    check_chat_labels(name, template, variables, bos, end, tiny_tokenizers[bos])


def test_labels_with_real_tokenizers(smollm2_dir: Path, smollm2_gguf: Path, gemma3_dir: Path) -> None:
    """SmolLM2's tokenizer (ChatML and the Qwen styles, which share its special tokens) and Gemma 3's."""
    from gguf import GGUFReader

    smollm2 = Tokenizer(smollm2_dir)
    template = GGUFReader(smollm2_gguf).fields["tokenizer.chat_template"].contents()
    check_chat_labels("chatml", template, {}, "", "<|im_end|>", smollm2)
    for family in SYSTEM_FAMILIES:
        if family[0].startswith("qwen"):
            check_chat_labels(*family, smollm2)
        if family[0] == "gemma3":
            check_chat_labels(*family, Tokenizer(gemma3_dir))


@pytest.mark.parametrize("name", ["alpaca", "qa", "falcon-instruct"])
def test_plain_styles_end_each_answer_with_eos(name: str, smollm2_dir: Path) -> None:
    tokenizer, style = Tokenizer(smollm2_dir), PromptStyle.from_name(name)
    sample = prepare_conversation({"system": SYSTEM, "turns": TURNS}, tokenizer, style, 1000)
    ids, runs = sample["input_ids"], label_runs(sample["labels"])
    assert tokenizer.decode(ids).startswith(f"{SYSTEM}\n\n{style.apply(TURNS[0][0])}")
    assert [tokenizer.decode(ids[a:b]) for a, b in runs] == [style.response_prefix + answer + "<|im_end|>"
                                                             for _, answer in TURNS]
    assert tokenizer.decode(ids) == "<|im_end|>".join(style.conversation_pieces(TURNS, system=SYSTEM)[i] +
                                                      style.conversation_pieces(TURNS, system=SYSTEM)[i + 1]
                                                      for i in range(0, 6, 2)) + "<|im_end|>"


def prepare(tmp_path: Path, checkpoint_dir: Path, rows: list, name: str = "chat.jsonl", **flags) -> tuple:
    data_file = tmp_path / name
    if name.endswith(".json"):
        data_file.write_text(json.dumps(rows), encoding="utf-8")
    else:
        write_jsonl(data_file, rows)
    out = tmp_path / f"out-{name}"
    load_script().setup(checkpoint_dir=checkpoint_dir, data_file=data_file, destination_path=out, **flags)
    return load_prepared(out)


def test_layouts_and_file_formats_give_identical_samples(tmp_path: Path, smollm2_dir: Path) -> None:
    conversations = [(TURNS[:n], SYSTEM if n % 2 else None) for n in (1, 2, 3)] * 3
    results = []
    for name, layout in (("a.jsonl", "messages"), ("b.json", "messages"), ("c.jsonl", "conversations"),
                         ("d.json", "conversations")):
        rows = [{layout: messages(turns, system, layout), "id": i} for i, (turns, system) in
                enumerate(conversations)]
        results.append(prepare(tmp_path, smollm2_dir, rows, name, val_split_fraction=0.3))
    # ShareGPT rows with user/assistant in "from" read the same
    rows = [{"conversations": [{"from": m["role"], "value": m["content"]} for m in messages(turns, system)]}
            for turns, system in conversations]
    results.append(prepare(tmp_path, smollm2_dir, rows, "e.jsonl", val_split_fraction=0.3))
    train, val, config = results[0]
    assert len(train) == 6 and len(val) == 3
    assert config["format"] == "chat" and config["train_on"] == "assistant" and config["prompt_style"] == "chatml"
    for other_train, other_val, _ in results[1:]:
        for a, b in zip(train + val, other_train + other_val):
            assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_system_prompt_and_train_on(tmp_path: Path, smollm2_dir: Path, capsys) -> None:
    tokenizer = Tokenizer(smollm2_dir)
    rows = [{"messages": messages(TURNS[:2], SYSTEM)}, {"messages": messages(TURNS[:2])},
            {"messages": messages(TURNS[:2], " ")}]  # an empty system message counts as none
    val = [{"messages": messages(TURNS[2:])}]
    (tmp_path / "val.jsonl").write_text(json.dumps(val[0]) + "\n")
    train, val, config = prepare(tmp_path, smollm2_dir, rows, train_on="last", system_prompt="Be brief.",
                                 val_file=tmp_path / "val.jsonl")
    texts = [tokenizer.decode(s["input_ids"]) for s in train + val]
    assert texts[0].startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{TURNS[0][0]}")
    assert all(text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") for text in texts[1:])
    assert [len(label_runs(s["labels"])) for s in train + val] == [1, 1, 1, 1]
    assert tokenizer.decode(train[0]["input_ids"][train[0]["labels"] != IGNORE_INDEX]) == TURNS[1][1] + "<|im_end|>"
    assert config["system_prompt"] == "Be brief." and config["train_on"] == "last"
    assert config["counts"]["own_system_prompt"] == 1 and config["counts"]["train"] == 3
    assert "train 3, val 1, truncated 0" in capsys.readouterr().out


def test_long_conversations_lose_their_oldest_turns(tmp_path: Path, smollm2_dir: Path, capsys) -> None:
    tokenizer, style = Tokenizer(smollm2_dir), PromptStyle.from_name("chatml")

    def length(turns: list) -> int:
        return len(tokenizer.encode("".join(style.conversation_pieces(turns, system=SYSTEM))))

    first = ("What is 7 times 8? Show each step, please.", TURNS[0][1])
    max_len = length(TURNS[1:])  # fits the last two turns of three
    assert length([first] + TURNS[1:]) > max_len >= length(TURNS[2:]) and length([first, TURNS[1]]) > max_len
    long = ("Repeat this: " + "word " * 200, "word")
    rows = [messages([first] + TURNS[1:], SYSTEM), messages([first] + TURNS[1:], SYSTEM),
            messages([first, TURNS[1], long], SYSTEM), messages([first, first] + TURNS[1:], SYSTEM),
            messages(TURNS[1:], SYSTEM)]
    train, val, config = prepare(tmp_path, smollm2_dir, [{"messages": m} for m in rows], max_seq_length=max_len,
                                 val_split_fraction=0.25)
    out = capsys.readouterr().out
    assert "train 3, val 1, truncated 3 (by 1 turn: 2 conversations, by 2 turns: 1 conversation;" in out
    assert "skipped 1" in out and f"Skipped: row 3 (last turn > {max_len} tokens)" in out
    assert config["counts"]["truncated_by_turns"] == {"1": 2, "2": 1} and config["counts"]["skipped_too_long"] == 1
    texts = sorted(tokenizer.decode(s["input_ids"]) for s in train + val)
    assert texts.count("".join(style.conversation_pieces(TURNS[1:], system=SYSTEM))) == 4  # 3 cut + 1 as it was
    assert max(len(s["input_ids"]) for s in train + val) <= max_len
    assert all(text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>") for text in texts)  # the system kept


def test_bad_rows_are_listed_skips(tmp_path: Path, smollm2_dir: Path, capsys) -> None:
    good = {"messages": messages(TURNS[:1])}
    bad = [
        ({"messages": messages([("What?", "   ")])}, "empty assistant message messages[1]"),
        ({"messages": messages([("", "Yes.")])}, "empty user message messages[0]"),
        ({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]},
         "no assistant message"),
        ({"messages": messages(TURNS[:1])[::-1]}, "messages[0] is assistant, expected user"),
        ({"messages": messages(TURNS[:1])[:1] + messages(TURNS[:1])}, "messages[1] is user, expected assistant"),
        ({"messages": messages(TURNS[:1]) + messages(TURNS[:1])[1:]}, "messages[2] is assistant, expected user"),
        ({"messages": messages(TURNS[:1]) + messages([], SYSTEM)}, "messages[2] is system, expected user"),
        ({"conversations": messages(TURNS[:1], layout="conversations") + [{"from": "human", "value": "More?"}]},
         "ends with a user message"),
    ]
    train, val, config = prepare(tmp_path, smollm2_dir, [good, *[row for row, _ in bad], good, good],
                                 val_split_fraction=0.34)
    out = capsys.readouterr().out
    assert "train 2, val 1" in out and f"skipped {len(bad)}" in out
    assert "Skipped: " + ", ".join(f"row {i} ({reason})" for i, (_, reason) in enumerate(bad, 2)) in out
    assert {k: v for k, v in config["counts"].items() if k.startswith("skipped")} == {
        "skipped_too_long": 0, "skipped_no_assistant": 1, "skipped_role_order": 5, "skipped_empty_message": 2}


@pytest.mark.parametrize("content, message", [
    (b'{"messages": [{"role": "tool", "content": "42"}]}\n', "row 1 messages[0] has the unknown role 'tool'"),
    (b'[{"text": "hi"}]', "row 1 has no 'messages' list"),
    (b'{"messages": "hi"}\n', "row 1 has no 'messages' list"),
    (b'{"messages": [{"role": "user", "content": "a"}]}\n{"conversations": [{"from": "human", "text": "b"}]}\n',
     "row 2 conversations[0] is not a {\"role\", \"content\"} or {\"from\", \"value\"} object of texts"),
    (b'{"messages": [{"role": "user", "content": ["a"]}]}\n', "row 1 messages[0] is not a"),
    (b'{"messages": [1]}\n', "row 1 messages[0] is not a"),
    (b'[["a"]]', "row 1 is a list, expected an object"),
    (b'{"messages": []}\n{oops\n', "line 2 is not valid JSON"),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n', "is not UTF-8 text (byte 0xe9 on line 1)"),
    (b"", "is empty"),
])
def test_bad_rows_are_errors(tmp_path: Path, smollm2_dir: Path, content: bytes, message: str) -> None:
    data_file = tmp_path / "chat.jsonl"
    data_file.write_bytes(content)
    with pytest.raises(UserError) as e:
        load_script().setup(checkpoint_dir=smollm2_dir, data_file=data_file, destination_path=tmp_path / "out")
    assert message in str(e.value) and repr(str(data_file)) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_help() -> None:
    out = run_script("scripts/prepare_chat.py", "--help").stdout
    for flag in ("--checkpoint_dir", "--data_file", "--destination_path", "--val_file", "--val_split_fraction",
                 "--train_on", "--system_prompt", "--max_seq_length", "--seed", "--prompt_style"):
        assert flag in out, flag
    assert "{all,assistant,last}" in out and "tinyllama-chat" in out


def test_shipped_conversations_are_reproducible(tmp_path: Path) -> None:
    shipped = REPO / "data" / "arithmetic" / "chat.jsonl"
    run_script("data/arithmetic/make_chat.py", "--out", tmp_path / "chat.jsonl")
    assert (tmp_path / "chat.jsonl").read_bytes() == shipped.read_bytes() and shipped.stat().st_size < 300_000
    rows = [json.loads(line) for line in shipped.read_text().splitlines()]
    turns = [sum(m["role"] == "user" for m in row["messages"]) for row in rows]
    assert 200 <= len(rows) <= 300 and set(turns) == {2, 3}
    assert 0.2 < sum(row["messages"][0]["role"] == "system" for row in rows) / len(rows) < 0.5
    assert all(re.search(r"\n#### \d+$", m["content"]) for row in rows for m in row["messages"]
               if m["role"] == "assistant")


def test_chat_finetune_end_to_end(tmp_path: Path, smollm2_dir: Path) -> None:
    """SmolLM2-135M-Instruct: prepare the shipped conversations, finetune a LoRA adapter for a few steps, then chat
    with it: the answers to two held-out problems in a row (the second with the first in its prompt) come in the
    trained format."""
    data, out = tmp_path / "data", tmp_path / "out"
    proc = run_script("scripts/prepare_chat.py", "--checkpoint_dir", smollm2_dir, "--data_file",
                      REPO / "data/arithmetic/chat.jsonl", "--destination_path", data, "--max_seq_length", 160)
    assert ("train 242, val 13, truncated 92 (by 1 turn: 89 conversations, by 2 turns: 3 conversations; "
            "oldest turns dropped to fit max_seq_length=160), skipped 0") in proc.stdout
    run_script("finetune/lora.py", "--checkpoint_dir", smollm2_dir, "--data_dir", data, "--out_dir", out,
               "--precision", "32-true", "--max_iters", 8, "--batch_size", 4, "--micro_batch_size", 4,
               "--learning_rate", 3e-3, "--warmup_fraction", 0.1, "--eval_interval", 8, "--eval_iters", 1,
               "--save_interval", 100)
    run = json.loads((out / "lora_config.json").read_text())
    assert run["prompt_style"] == "chatml" and run["data"]["format"] == "chat"
    problems = [json.loads(line) for line in (REPO / "data/arithmetic/test.jsonl").read_text().splitlines()[:2]]
    proc = run_script("generate/chat.py", "--lora_path", out, "--temperature", 0, "--max_new_tokens", 48,
                      stdin=f"{problems[0]['question']}\nNext one: {problems[1]['question']}\n")
    # each answer: equations, one a line, then "#### N" (the answers follow each other on stdout)
    assert re.fullmatch(r"((.+ = .+\n)+#### \d+\n){2}", proc.stdout), proc.stdout
