"""Rewards for reinforcement learning (lit_gpt.rewards) and its prompts (lit_gpt.data): the built-in rewards on
typical completions, user reward files and their errors, combining as TRL's GRPOTrainer does, the prompt layouts,
and prompts rendered and tokenized as SFT renders them."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from lit_gpt.data import IGNORE_INDEX, load_prompt_rows, parse_prompt_row, prepare_conversation, prepare_prompts
from lit_gpt.prompts import PromptStyle
from lit_gpt.rewards import (
    combine,
    exact_match_reward,
    final_answer,
    format_reward,
    math_reward,
    resolve_rewards,
    score,
)
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import UserError


def rewards(function, completions: list, answers: list) -> list:
    return function([""] * len(completions), completions, answers)


def test_exact_match() -> None:
    cases = [("2 * 617 = 1234\n#### 1,234", "1234", 1.0),  # thousands separators
             ("#### $16.00", "16", 1.0), ("So 16 in all.\n#### 16.", "16.0", 1.0), ("#### -3", "-3", 1.0),
             ("#### 1,23", "123", 0.0),  # not a thousands separator: compared as texts
             ("The answer is \\boxed{42}.", "42", 1.0), ("\\boxed{3} and then \\boxed{4", "3", 1.0),  # cut off
             ("#### 12\n#### 13\n", "13", 1.0), ("#### 7\nbecause 3 + 4 = 7", "7", 1.0),  # the first line after it
             ("#### 15", "16", 0.0), ("I think it is 16", "16", 0.0), ("####\n16", "16", 0.0), ("", "16", 0.0),
             ("#### yes", " yes", 1.0), ("#### Yes", "yes", 0.0)]
    assert rewards(exact_match_reward, *zip(*[c[:2] for c in cases])) == [c[2] for c in cases]
    assert final_answer("\\boxed{\\frac{1}{2}} so") == "\\frac{1}{2}" and final_answer("1 + 1 = 2") is None


def test_math() -> None:
    cases = [("So \\boxed{\\frac{1}{2}}.", "0.5", 1.0), ("#### 0.5", "\\frac{1}{2}", 1.0),
             ("#### 2\\sqrt{2}", "\\sqrt{8}", 1.0), ("#### 1,234", "1234", 1.0), ("#### $16.", "16", 1.0),
             ("\\boxed{\\frac{1}{3}}", "0.5", 0.0), ("one half", "0.5", 0.0), ("#### 5", "", None)]
    assert rewards(math_reward, *zip(*[c[:2] for c in cases])) == [c[2] for c in cases]


def test_math_without_math_verify(monkeypatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "math_verify" else
                        find_spec(name, *a))
    with pytest.raises(ValueError, match=r"^--reward math needs math-verify: pip install math-verify$"):
        resolve_rewards("exact_match,math")


def test_format() -> None:
    cases = [("2 * 6 = 12\n#### 12\n\n", 1.0), ("  #### 12  ", 1.0), ("#### 12\nSo the answer is 12.", 0.0),
             ("#### \n", 0.0), ("12", 0.0), ("", 0.0), ("So it is \\boxed{5}, done.", 1.0), ("\\boxed{}", 0.0),
             ("\\boxed{5", 0.0), ("#" * 200, 0.0), ("#### ####", 0.0), ("#### 12 #", 0.0), ("####12", 0.0),
             ("#### " + "1" * 41, 0.0), ("#### twelve apples", 1.0)]
    assert rewards(format_reward, [c[0] for c in cases], [""] * len(cases)) == [c[1] for c in cases]


def test_combine_is_trl_nansum() -> None:
    nan = math.nan
    r = torch.tensor([[1.0, 0.0, 0.5], [nan, 1.0, 1.0], [nan, nan, 0.0], [nan, nan, nan], [0.0, 1.0, nan]])
    w = torch.tensor([1.0, 0.5, -2.0])
    expected = (r * w.unsqueeze(0)).nansum(dim=1)  # TRL 1.16, then its unscorable rows (all NaN) are NaN
    expected[torch.isnan(r).all(dim=1)] = nan
    out = combine(r, [1.0, 0.5, -2.0])
    torch.testing.assert_close(out, expected, equal_nan=True)
    torch.testing.assert_close(out, torch.tensor([0.0, -1.5, 0.0, nan, 0.5]), equal_nan=True)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_user_rewards_and_score(tmp_path: Path) -> None:
    good = write(tmp_path / "my_rewards.py", "from dataclasses import dataclass\n\n@dataclass\nclass Cut:\n"
                 "    at: int = 8\n\ndef short(prompts, completions, answers):\n"
                 "    return [1.0 if len(c) <= Cut().at else None for c in completions]\n\n"
                 "def count(prompts, completions, answers):\n    return [len(p) for p in prompts]\n")
    names, functions, weights = resolve_rewards(f"exact_match, {good}:short,{good}:count", "1,0.5,-1")
    assert names == ["exact_match", "short", "count"] and weights == [1.0, 0.5, -1.0]
    r = score(names, functions, weights, ["ab", "abc"], ["#### 4", "a long answer\n#### 5"], ["4", "4"])
    assert r.dtype == torch.float32 and r.shape == (2, 3)
    torch.testing.assert_close(r, torch.tensor([[1.0, 1.0, 2.0], [0.0, math.nan, 3.0]]), equal_nan=True)
    torch.testing.assert_close(combine(r, weights), torch.tensor([-0.5, -3.0]))
    assert resolve_rewards("format")[2] == [1.0] and resolve_rewards("format", [2])[2] == [2.0]


def test_user_reward_errors(tmp_path: Path) -> None:
    def error(spec: str, weights=None) -> str:
        with pytest.raises(ValueError) as e:
            resolve_rewards(spec, weights)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert error("exact_match,accuracy") == ("Unknown reward 'accuracy' in --reward 'exact_match,accuracy': give "
                                             "built-in names (exact_match, math, format) or path/to/file.py:function, "
                                             "separated by commas")
    assert error(f"{tmp_path / 'none.py'}:f") == f"Reward file {str(tmp_path / 'none.py')!r} does not exist"
    broken = write(tmp_path / "broken.py", "import os\nraise RuntimeError('no model here')\n")
    assert error(f"{broken}:f") == (f"Reward file {str(broken)!r} raised RuntimeError: no model here (broken.py line "
                                    "2) when imported")
    rewards = write(tmp_path / "rewards.py", "\n".join([
        "from math import sqrt", "LIMIT = 3", "def _helper(): pass",
        "def ok(p, c, a): return [1.0] * len(c)",
        "def boom(p, c, a):", "    return [1 / 0 for _ in c]",  # line 6
        "def few(p, c, a): return [1.0]",
        "def text(p, c, a): return ['1.0' for _ in c]"]))
    assert error(f"{rewards}:okay") == f"Reward file {str(rewards)!r} has no 'okay' (it defines: ok, boom, few, text)"
    assert error(f"{rewards}:LIMIT") == f"'{rewards}:LIMIT' is not a function (its type: int)"
    assert error(f"format,{rewards}:ok,{rewards}:ok") == (f"--reward 'format,{rewards}:ok,{rewards}:ok' names ok "
                                                           "twice: each reward needs its own name")
    assert error("exact_match,format", "1") == ("--reward_weights has 1 weight for 2 rewards (exact_match, format): "
                                                "give one per reward")
    assert error("exact_match,format", "1,x") == "--reward_weights '1,x' is not a comma-separated list of numbers"

    def score_error(name: str) -> str:
        with pytest.raises(ValueError) as e:
            score(*resolve_rewards(f"{rewards}:{name}"), ["p", "q"], ["c", "d"], ["a", "b"])
        return str(e.value)

    assert score_error("boom") == "The reward function 'boom' raised ZeroDivisionError: division by zero (rewards.py " \
                                  "line 6)"
    assert score_error("few") == ("The reward function 'few' returned 1 values, expected a list of 2 (one per "
                                  "completion)")
    assert score_error("text") == ("The reward function 'text' returned a str for completion 0 ('1.0'), expected a "
                                   "number or None")


def test_prompt_layouts() -> None:
    gsm8k = {"question": "What is 7 times 8?", "answer": "7 * 8 = 56\n#### 56"}
    assert parse_prompt_row(gsm8k, "row 1") == {"prompt": gsm8k["question"], "input": "", "answer": "56"}
    alpaca = {"instruction": "Add the numbers.", "input": "2 and 3", "output": " 5 "}
    assert parse_prompt_row(alpaca, "row 2") == {"prompt": "Add the numbers.", "input": "2 and 3", "answer": "5"}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 3?"},
                {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 4 + 4?"}]
    assert parse_prompt_row({"prompt": messages, "answer": 8}, "row 3") == {
        "prompt": [("system", "Be brief."), ("user", "2 + 3?"), ("assistant", "5"), ("user", "And 4 + 4?")],
        "input": "", "answer": "8"}
    assert parse_prompt_row({"prompt": "1/2 as a decimal?", "answer": "0.5 #### 1"}, "row 4")["answer"] == "0.5 #### 1"
    for row in ({"question": "q"}, {"question": "q", "answer": "#### "}, {"instruction": "i", "output": ""},
                {"prompt": "p", "answer": None}, {"prompt": "p", "answer": "  "}):
        assert parse_prompt_row(row, "row 5") is None

    def error(row: dict) -> str:
        with pytest.raises(UserError) as e:
            parse_prompt_row(row, "row 6")
        return str(e.value)

    assert error({"text": "q", "label": "1"}) == (
        'row 6 is in none of the prompt layouts {"prompt": text or [{"role", "content"} messages], "answer"}, '
        '{"question", "answer"} (GSM8K) or {"instruction", "input" (optional), "output"} (Alpaca) '
        '(fields: text, label)')
    assert error({"question": ["q"], "answer": "1"}) == "row 6 has a non-text 'question' field"
    assert error({"prompt": messages[:3], "answer": "1"}) == ("row 6 prompt's last message is 'assistant': it must "
                                                              "be the user message to answer")
    assert error({"prompt": [], "answer": "1"}) == "row 6 has an empty 'prompt' list of messages"
    assert error({"prompt": [messages[1], messages[3]], "answer": "1"}).startswith(
        "row 6 prompt: messages[1] is user, expected assistant: a prompt is an optional system message")
    assert error({"prompt": [{"role": "robot", "content": "hi"}], "answer": "1"}).startswith(
        "row 6 prompt messages[0] has the unknown role 'robot'")


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Tokenizer:
    return Tokenizer(smollm2_dir)


def test_prepare_prompts_renders_as_sft(tmp_path: Path, tokenizer: Tokenizer) -> None:
    rows = [{"question": "What is 7 times 8?", "answer": "7 * 8 = 56\n#### 56"},
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5\n#### 5"},
            {"question": "No answer here"},
            {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 3?"},
                        {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 4 + 4?"}],
             "answer": 8}]
    path = write(tmp_path / "prompts.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    assert load_prompt_rows(path) == rows
    for name in ("chatml", "alpaca"):
        style = PromptStyle.from_name(name)
        samples, skipped = prepare_prompts(load_prompt_rows(path), tokenizer, style, 200, where="prompts.jsonl row")
        assert skipped == [("prompts.jsonl row 3", "no answer")] and [s["answer"] for s in samples] == ["56", "5", "8"]
        texts = style.apply(rows[0]["question"]), style.apply("Add the numbers.", "2 and 3")
        for sample, text in zip(samples, texts):
            assert sample["prompt_text"] == text and sample["prompt_ids"].dtype == torch.long
            assert sample["prompt_ids"].tolist() == tokenizer.encode(text).tolist()
        # messages: the prompt part of SFT's rendering of the conversation with its answer
        sft = prepare_conversation({"system": "Be brief.", "turns": [("2 + 3?", "5"), ("And 4 + 4?", "8")]},
                                   tokenizer, style, 1000, train_on="last")
        prompt_length = int((sft["labels"] == IGNORE_INDEX).sum())
        assert samples[2]["prompt_ids"].tolist() == sft["input_ids"][:prompt_length].tolist()
        if name == "chatml":
            assert samples[2]["prompt_text"] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2 + 3?"
                                                 "<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n<|im_start|>user\n"
                                                 "And 4 + 4?<|im_end|>\n<|im_start|>assistant\n")
    longest = max(len(s["prompt_ids"]) for s in samples)
    with pytest.raises(UserError, match=rf"^prompts.jsonl row \d: the prompt has {longest} tokens, longer than the "
                                        rf"{longest - 1} allowed: shorten it or raise --max_seq_length / lower "
                                        r"--max_new_tokens$"):
        prepare_prompts(rows, tokenizer, style, longest - 1, where="prompts.jsonl row")


def test_chat_prompt_is_the_chat_template(tokenizer: Tokenizer, smollm2_dir: Path) -> None:
    """SmolLM2's own template (transformers' apply_chat_template) with add_generation_prompt=True."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    messages = [{"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": "5"},
                {"role": "user", "content": "And 4 + 4?"}]
    [sample], _ = prepare_prompts([{"prompt": messages, "answer": "8"}], tokenizer, PromptStyle.from_name("chatml"),
                                  200)
    assert sample["prompt_text"] == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert sample["prompt_ids"].tolist() == hf.apply_chat_template(messages, tokenize=True,
                                                                   add_generation_prompt=True)["input_ids"]
