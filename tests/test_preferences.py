"""Preference data (scripts/prepare_preferences.py, lit_gpt.data): TRL's three layouts give the same samples, chat
styles render as transformers' apply_chat_template, prompt + answer is one encoding of the whole text, truncation,
bad rows, and the shipped data/arithmetic/preferences.jsonl."""

import importlib.util
import json
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch

from conftest import REPO, run_script
from lit_gpt.data import load_prepared, parse_preference, prepare_conversation, prepare_preference, prepare_sample
from lit_gpt.prompts import PromptStyle
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import UserError

SYSTEM = "You are a math tutor."
HISTORY = [("What is 2 + 3?", "2 + 3 = 5\n#### 5")]
# (question, chosen, rejected)
PAIRS = [("What is 7 times 8?", "7 * 8 = 56\n#### 56", "7 * 8 = 54\n#### 54"),
         ("Sam has 12 pens and gives away 5. How many are left?", "12 - 5 = 7\n#### 7", "12 + 5 = 17\n#### 17"),
         ("Share 20 cookies among 4 friends. How many each?", "20 / 4 = 5\n#### 5", "20 / 4 = 6\n#### 6")]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prepare_preferences", REPO / "scripts" / "prepare_preferences.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def message(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def head(system: str = None, history: list = ()) -> list:
    """The messages before the last user message: an optional system message, then earlier turns."""
    out = [message("system", system)] if system else []
    for user, answer in history:
        out += [message("user", user), message("assistant", answer)]
    return out


def row(layout: str, question: str, chosen: str, rejected: str, system: str = None, history: list = ()) -> dict:
    """A pair in one of TRL's layouts: "text", "conversational" or "implicit" (the prompt: the shared messages)."""
    if layout == "text":
        assert system is None and not history
        return {"prompt": question, "chosen": chosen, "rejected": rejected}
    prompt = head(system, history) + [message("user", question)]
    if layout == "conversational":
        return {"prompt": prompt, "chosen": [message("assistant", chosen)],
                "rejected": [message("assistant", rejected)]}
    return {"chosen": prompt + [message("assistant", chosen)], "rejected": prompt + [message("assistant", rejected)]}


def prepare(tmp_path: Path, checkpoint_dir: Path, rows: list, name: str = "pairs.jsonl", **flags) -> tuple:
    data_file = tmp_path / name
    if name.endswith(".json"):
        data_file.write_text(json.dumps(rows), encoding="utf-8")
    else:
        data_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / f"out-{name}"
    load_script().setup(checkpoint_dir=checkpoint_dir, data_file=data_file, destination_path=out, **flags)
    return load_prepared(out)


def sample(pair: dict, tokenizer: Tokenizer, style: str, max_seq_length: int = 1000, system: str = None) -> dict:
    return prepare_preference(parse_preference(pair, "row"), tokenizer, PromptStyle.from_name(style), max_seq_length,
                              system)


def ids(*tensors: torch.Tensor) -> list:
    return [i for t in tensors for i in t.tolist()]


@pytest.mark.parametrize("style", ["chatml", "alpaca"])
def test_layouts_and_file_formats_give_identical_samples(tmp_path: Path, smollm2_dir: Path, style: str) -> None:
    contents = [(*pair, None, []) for pair in PAIRS] + [(*PAIRS[0], SYSTEM, HISTORY), (*PAIRS[1], None, HISTORY),
                                                        (*PAIRS[2], SYSTEM, [])]
    results = []
    for name, layout in (("a.jsonl", "conversational"), ("b.json", "conversational"), ("c.jsonl", "implicit"),
                         ("d.json", "implicit")):
        rows = [row(layout, *content) for content in contents]
        results.append(prepare(tmp_path, smollm2_dir, rows, name, val_split_fraction=0.3, prompt_style=style))
    # the text layout holds the pairs without a system message or history
    text = prepare(tmp_path, smollm2_dir, [row("text", *pair) for pair in PAIRS] * 2, "e.jsonl", prompt_style=style,
                   val_split_fraction=0.3)
    train, val, config = results[0]
    assert len(train) == 4 and len(val) == 2 and all(len(s["chosen_ids"]) and len(s["rejected_ids"]) for s in train)
    assert config["format"] == "preference" and config["prompt_style"] == style and config["system_prompt"] is None
    assert config["counts"]["train"] == 4 and config["counts"]["val"] == 2
    assert set(train[0]) == {"prompt_ids", "chosen_ids", "rejected_ids"} and train[0]["prompt_ids"].dtype == torch.long
    for other_train, other_val, _ in results[1:]:
        for a, b in zip(train + val, other_train + other_val, strict=True):
            assert all(torch.equal(a[key], b[key]) for key in a)
    tokenizer = Tokenizer(smollm2_dir)
    by_prompt = {tokenizer.decode(s["prompt_ids"]): s for s in train + val}
    for s in text[0] + text[1]:
        assert all(torch.equal(s[key], by_prompt[tokenizer.decode(s["prompt_ids"])][key]) for key in s)


@pytest.mark.parametrize("style", ["chatml", "alpaca", "qa"])
def test_text_pairs_render_as_instruction_data(smollm2_dir: Path, style: str) -> None:
    """prompt + chosen: the tokens finetuning on instruction data trains on (lit_gpt.data.prepare_sample)."""
    tokenizer = Tokenizer(smollm2_dir)
    for question, chosen, rejected in PAIRS:
        s = sample(row("text", question, chosen, rejected), tokenizer, style)
        for answer, answer_ids in ((chosen, s["chosen_ids"]), (rejected, s["rejected_ids"])):
            sft = prepare_sample({"instruction": question, "output": answer}, tokenizer, PromptStyle.from_name(style),
                                 1000)
            assert ids(s["prompt_ids"], answer_ids) == sft["input_ids"].tolist()
            assert len(s["prompt_ids"]) == (sft["labels"] == -100).sum()


def test_chat_style_is_the_chat_template(smollm2_dir: Path) -> None:
    """SmolLM2's own template (transformers' apply_chat_template): the prompt is its render with
    add_generation_prompt=True, prompt + answer the encoding of the whole templated conversation, up to the answer's
    <|im_end|> (the template's newline after it starts the next turn)."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer = Tokenizer(smollm2_dir)
    for system, history in ((None, []), (SYSTEM, []), (SYSTEM, HISTORY), (None, HISTORY)):
        for question, chosen, rejected in PAIRS:
            pair = row("conversational", question, chosen, rejected, system, history)
            s = sample(pair, tokenizer, "chatml")
            prompt = hf.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
            assert tokenizer.decode(s["prompt_ids"]) == prompt
            if system is None:
                assert prompt.startswith(f"<|im_start|>system\n{PromptStyle.from_name('chatml').system}<|im_end|>")
            for answer, answer_ids in ((pair["chosen"], s["chosen_ids"]), (pair["rejected"], s["rejected_ids"])):
                whole = hf.apply_chat_template(pair["prompt"] + answer, tokenize=True)["input_ids"]
                assert ids(s["prompt_ids"], answer_ids) == whole[:-1] and hf.decode(whole[-1:]) == "\n"
                assert tokenizer.decode(answer_ids) == answer[0]["content"] + "<|im_end|>"
    # --system_prompt: the system message of a pair without one
    s = sample(row("text", *PAIRS[0]), tokenizer, "chatml", system="Be brief.")
    prompt = hf.apply_chat_template(head("Be brief.") + [message("user", PAIRS[0][0])], tokenize=False,
                                    add_generation_prompt=True)
    assert tokenizer.decode(s["prompt_ids"]) == prompt


def test_plain_style_is_one_encoding_of_the_whole_text(smollm2_dir: Path) -> None:
    tokenizer, style = Tokenizer(smollm2_dir), PromptStyle.from_name("alpaca")
    eos = [tokenizer.eos_id]
    question = PAIRS[0][0]
    prompt = style.apply(question)
    for chosen, rejected in ((PAIRS[0][1], PAIRS[0][2]), ("\n\n7 * 8 = 56", "\n\n7 * 8 = 54")):
        s = sample(row("text", question, chosen, rejected), tokenizer, "alpaca")
        for answer, answer_ids in ((chosen, s["chosen_ids"]), (rejected, s["rejected_ids"])):
            assert ids(s["prompt_ids"], answer_ids) == tokenizer.encode(prompt + answer).tolist() + eos
    # "Response:\n" + "\n\n7": the prompt's last "\n" merges with the answers' "\n\n" into one token, which goes to
    # the answers: the prompt is what both whole encodings share with the prompt's own
    own = tokenizer.encode(prompt).tolist()
    assert ids(s["prompt_ids"]) == own[:-1] and tokenizer.decode(s["chosen_ids"][:1]) == "\n\n\n"
    # with a system message and earlier turns: the same tokens as finetuning on the conversation
    s = sample(row("conversational", *PAIRS[1], SYSTEM, HISTORY), tokenizer, "alpaca")
    sft = prepare_conversation({"system": SYSTEM, "turns": HISTORY + [PAIRS[1][:2]]}, tokenizer, style, 1000)
    assert ids(s["prompt_ids"], s["chosen_ids"]) == sft["input_ids"].tolist()
    assert tokenizer.decode(s["prompt_ids"]).startswith(f"{SYSTEM}\n\n{style.apply(HISTORY[0][0])}")


@pytest.fixture
def bos_checkpoint(tmp_path: Path, smollm2_dir: Path) -> Path:
    """SmolLM2's tokenizer, made to add a BOS token (<|endoftext|>)."""
    path = tmp_path / "bos-checkpoint"
    path.mkdir()
    shutil.copy(smollm2_dir / "tokenizer.json", path)
    (path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "bos_token": "<|endoftext|>",
                                                            "eos_token": "<|im_end|>"}))
    return path


def test_truncation_cuts_the_prompt_start_then_the_answer_ends(tmp_path: Path, bos_checkpoint: Path, capsys) -> None:
    tokenizer = Tokenizer(bos_checkpoint)
    bos, L = tokenizer.bos_id, 64
    long_prompt = "Repeat this: " + "word " * 60
    rows = [row("text", long_prompt, "Done.", "No."),  # the prompt cut
            row("text", long_prompt, "word " * 50, "x " * 20),  # the prompt cut to L // 2, then the answers
            row("text", long_prompt, "word " * 50 + "yes", "word " * 50 + "no"),  # identical once cut
            row("text", *PAIRS[1])]  # fits
    val_file = tmp_path / "val.jsonl"
    val_file.write_text(json.dumps(row("text", *PAIRS[0])) + "\n")
    train, val, config = prepare(tmp_path, bos_checkpoint, rows, prompt_style="alpaca", max_seq_length=L,
                                 val_file=val_file)
    out = capsys.readouterr().out
    assert ("train 3, val 1, truncated 2 prompts (start cut) and 1 answer pairs (ends cut) to fit max_seq_length=64, "
            "skipped 1") in out
    assert "Skipped: row 3 (chosen and rejected identical once cut to max_seq_length=64)" in out
    counts = config["counts"]
    assert counts["truncated_prompt"] == 2 and counts["truncated_answers"] == 1
    assert counts["skipped_identical_after_truncation"] == 1 and config["max_seq_length"] == L
    full = [sample(r, tokenizer, "alpaca") for r in rows]
    assert all(len(f["prompt_ids"]) + max(len(f["chosen_ids"]), len(f["rejected_ids"])) > L for f in full[:3])
    for s in train:
        assert len(s["prompt_ids"]) + max(len(s["chosen_ids"]), len(s["rejected_ids"])) <= L
        assert s["prompt_ids"][0] == bos
    cut, both, fits = train
    prompt = full[0]["prompt_ids"]
    assert prompt[0] == bos and len(cut["prompt_ids"]) == L - len(full[0]["chosen_ids"]) < len(prompt)
    assert torch.equal(cut["prompt_ids"][1:], prompt[len(prompt) - len(cut["prompt_ids"]) + 1:])  # its last tokens
    assert torch.equal(cut["chosen_ids"], full[0]["chosen_ids"]) and torch.equal(cut["rejected_ids"],
                                                                                 full[0]["rejected_ids"])
    assert len(both["prompt_ids"]) == L // 2 and torch.equal(both["prompt_ids"][1:], prompt[-(L // 2 - 1):])
    assert torch.equal(both["chosen_ids"], full[1]["chosen_ids"][:L - L // 2])  # its first tokens
    assert torch.equal(both["rejected_ids"], full[1]["rejected_ids"]) and len(both["rejected_ids"]) < L - L // 2
    assert all(torch.equal(fits[key], full[3][key]) for key in fits)
    # a prompt of which only BOS would fit
    assert sample(rows[0], tokenizer, "alpaca", max_seq_length=3) == {
        "skip": "prompt_too_long", "reason": "no prompt token fits max_seq_length=3"}


def test_bad_pairs_are_listed_skips(tmp_path: Path, smollm2_dir: Path, capsys) -> None:
    good = row("text", *PAIRS[0])
    question, chosen, rejected = PAIRS[1]
    user, answer = message("user", question), message("assistant", chosen)
    bad = [
        (row("text", question, chosen, chosen), "identical", "identical chosen and rejected"),
        (row("conversational", question, chosen, chosen, SYSTEM, HISTORY), "identical",
         "identical chosen and rejected"),
        (row("text", question, "  ", rejected), "empty_answer", "empty chosen"),
        (row("conversational", question, chosen, "\n"), "empty_answer", "empty rejected"),
        (row("text", " ", chosen, rejected), "empty_message", "empty prompt"),
        ({"prompt": [user], "chosen": [answer, answer], "rejected": [message("assistant", rejected)]},
         "not_one_answer", "chosen is not one assistant message after the prompt (roles: assistant, assistant)"),
        ({"prompt": [user], "chosen": [answer], "rejected": [user]}, "not_one_answer",
         "rejected is not one assistant message after the prompt (roles: user)"),
        ({"prompt": [user], "chosen": [], "rejected": [answer]}, "not_one_answer",
         "chosen is not one assistant message after the prompt (roles: none)"),
        ({"chosen": [user, answer], "rejected": [message("user", "Other?"), message("assistant", rejected)]},
         "prompts_differ", "chosen and rejected share no leading messages"),
        ({"chosen": [message("system", SYSTEM), user, answer],
          "rejected": [message("system", SYSTEM), message("user", "Other?"), message("assistant", rejected)]},
         "prompts_differ", "chosen and rejected differ from messages[1] on"),
        ({"chosen": [user, answer], "rejected": [user, answer, user, message("assistant", rejected)]},
         "not_one_answer",
         "rejected is not one assistant message after the prompt (roles: assistant, user, assistant)"),
        ({"prompt": [user, answer], "chosen": [answer], "rejected": [message("assistant", rejected)]}, "role_order",
         "prompt + chosen: messages[2] is assistant, expected user"),
        ({"prompt": [], "chosen": [answer], "rejected": [message("assistant", rejected)]}, "role_order",
         "prompt + chosen: messages[0] is assistant, expected user"),
        ({"prompt": [message("user", ""), message("assistant", "?"), user], "chosen": [answer],
          "rejected": [message("assistant", rejected)]}, "empty_message",
         "prompt + chosen: empty user message messages[0]"),
    ]
    train, val, config = prepare(tmp_path, smollm2_dir, [good, *[r for r, _, _ in bad], good, good],
                                 val_split_fraction=0.34)
    out = capsys.readouterr().out
    assert "train 2, val 1" in out and f"skipped {len(bad)}" in out
    assert "Skipped: " + ", ".join(f"row {i} ({reason})" for i, (_, _, reason) in enumerate(bad[:10], 2)) + \
        f" and {len(bad) - 10} more" in out
    skipped = {k: v for k, v in config["counts"].items() if k.startswith("skipped_")}
    assert skipped == {"skipped_identical": 2, "skipped_empty_answer": 2, "skipped_not_one_answer": 4,
                       "skipped_prompts_differ": 2, "skipped_role_order": 2, "skipped_empty_message": 2,
                       "skipped_identical_after_truncation": 0, "skipped_prompt_too_long": 0}
    for r, kind, reason in bad:
        assert parse_preference(r, "row") == {"skip": kind, "reason": reason}
    # answers that differ only where the template strips them (Llama 3.1 strips each message)
    assert sample(row("text", question, chosen, f" {chosen}\n"), Tokenizer(smollm2_dir), "llama3.1") == {
        "skip": "identical", "reason": "chosen and rejected identical once rendered"}


TEXTS = {"prompt": "q", "chosen": "a", "rejected": "b"}
LISTS = {"prompt": [message("user", "q")], "chosen": [message("assistant", "a")],
         "rejected": [message("assistant", "b")]}


def jsonl(*rows: dict) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.mark.parametrize("content, error", [
    (b"[1]", "row 1 is a int, expected an object"),
    (b'[["q", "a", "b"]]', "row 1 is a list, expected an object"),
    (jsonl(TEXTS, {"prompt": "q", "chosen": "a"}), "row 2 has no 'rejected' field"),
    (jsonl({**TEXTS, "chosen": None}), "row 1 has no 'chosen' field"),
    (jsonl({**TEXTS, "rejected": 3}), "row 1 has a non-text, non-list 'rejected' field"),
    (jsonl({**TEXTS, "prompt": {"text": "q"}}), "row 1 has a non-text, non-list 'prompt' field"),
    (jsonl({**LISTS, "prompt": "q"}), "row 1 mixes layouts ('prompt' is a text, 'chosen' is a list, 'rejected' is a "
                                      "list): give prompt, chosen, rejected all as texts or all as message lists"),
    (jsonl({**LISTS, "chosen": "a"}), "row 1 mixes layouts ('prompt' is a list, 'chosen' is a text"),
    (jsonl({"chosen": "a", "rejected": [message("assistant", "b")]}), "row 1 mixes layouts"),
    (jsonl({"chosen": "a", "rejected": "b"}), "row 1 has no 'prompt' field: texts need one"),
    (jsonl({**LISTS, "prompt": [{"role": "user"}]}), "row 1 prompt messages[0] is not a {\"role\", \"content\"}"),
    (jsonl({**LISTS, "chosen": [{"content": "a"}]}), "row 1 chosen messages[0] is not a {\"role\", \"content\"}"),
    (jsonl({"chosen": [message("user", "q"), 7], "rejected": LISTS["rejected"]}), "row 1 chosen messages[1] is not"),
    (jsonl({**LISTS, "rejected": [message("tool", "42")]}), "row 1 rejected messages[0] has the unknown role 'tool'"),
    (b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n{oops\n', "line 2 is not valid JSON"),
    (b"", "is empty"),
])
def test_bad_rows_are_errors(tmp_path: Path, smollm2_dir: Path, content: bytes, error: str) -> None:
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_bytes(content)
    with pytest.raises(UserError) as e:
        load_script().setup(checkpoint_dir=smollm2_dir, data_file=data_file, destination_path=tmp_path / "out")
    assert error in str(e.value) and repr(str(data_file)) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_an_error_exits_1_with_one_line(tmp_path: Path, smollm2_dir: Path) -> None:
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_bytes(jsonl(TEXTS, {**LISTS, "prompt": "q"}))
    proc = run_script("scripts/prepare_preferences.py", "--checkpoint_dir", smollm2_dir, "--data_file", data_file,
                      "--destination_path", tmp_path / "out", check=False)
    assert proc.returncode == 1 and not (tmp_path / "out").exists()
    assert f"{str(data_file)!r} row 2 mixes layouts" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_help() -> None:
    out = run_script("scripts/prepare_preferences.py", "--help").stdout
    for flag in ("--checkpoint_dir", "--data_file", "--destination_path", "--val_file", "--val_split_fraction",
                 "--system_prompt", "--max_seq_length", "--seed", "--prompt_style"):
        assert flag in out, flag
    assert "tinyllama-chat" in out and re.search(r"lose\s+the\s+start\s+of\s+their\s+prompt", out)


def check_equations(answer: str) -> list[bool]:
    """Whether each equation line of an answer is right; the "#### N" line must repeat the last result."""
    *lines, final = answer.split("\n")
    results = []
    for line in lines:
        left, operation, right, result = re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (\d+)", line).groups()
        value = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__truediv__}[operation](int(left),
                                                                                                      int(right))
        results.append(value == int(result))
    assert final == f"#### {result}", answer
    return results


def test_shipped_preferences_are_reproducible_and_prepare(tmp_path: Path, smollm2_dir: Path) -> None:
    shipped = REPO / "data" / "arithmetic" / "preferences.jsonl"
    run_script("data/arithmetic/make_preferences.py", "--out", tmp_path / "preferences.jsonl")
    assert (tmp_path / "preferences.jsonl").read_bytes() == shipped.read_bytes() and shipped.stat().st_size < 200_000
    rows = [json.loads(line) for line in shipped.read_text().splitlines()]
    seen = {json.loads(line)["question"] for name in ("train.jsonl", "test.jsonl")
            for line in (REPO / "data" / "arithmetic" / name).read_text().splitlines()}
    assert len(rows) == 600 and len({r["prompt"] for r in rows}) == 600 and not {r["prompt"] for r in rows} & seen
    for r in rows:
        right, wrong = check_equations(r["chosen"]), check_equations(r["rejected"])
        assert all(right) and wrong.count(False) == 1 and len(wrong) == len(right), r
        # the lines before the mistake are the chosen ones; the final number differs
        first = wrong.index(False)
        assert r["rejected"].split("\n")[:first] == r["chosen"].split("\n")[:first]
        assert r["rejected"].split("\n")[-1] != r["chosen"].split("\n")[-1]
    assert 100 < sum(check_equations(r["rejected"])[0] for r in rows)  # many mistakes after the first line
    proc = run_script("scripts/prepare_preferences.py", "--checkpoint_dir", smollm2_dir, "--data_file", shipped,
                      "--destination_path", tmp_path / "data")
    assert ("train 570, val 30, truncated 0 prompts (start cut) and 0 answer pairs (ends cut) to fit "
            "max_seq_length=8192, skipped 0") in proc.stdout
    train, val, config = load_prepared(tmp_path / "data")
    assert config["format"] == "preference" and config["source"] == str(shipped)
    tokenizer = Tokenizer(smollm2_dir)
    by_question = {r["prompt"]: r for r in rows}
    for s in train[:20]:
        question = re.search(r"<\|im_start\|>user\n(.*)<\|im_end\|>", tokenizer.decode(s["prompt_ids"])).group(1)
        assert tokenizer.decode(s["chosen_ids"]) == by_question[question]["chosen"] + "<|im_end|>"
        assert tokenizer.decode(s["rejected_ids"]) == by_question[question]["rejected"] + "<|im_end|>"
