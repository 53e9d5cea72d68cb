"""Verifiable rewards for reinforcement learning (finetune/grpo.py): the built-in reward functions, user ones loaded
from a file, and scoring a batch of completions with them as TRL's GRPOTrainer does.

A reward function is called `fn(prompts, completions, answers)` (positionally: lists of N texts, the rendered
prompts, the model's completions and the reference answers) and returns one reward per completion: a number, or None
where it does not apply (NaN in `score`; `combine` sums the weighted rewards of a completion over the functions,
ignoring NaN). Errors are one-line `ValueError`s, for the script to turn into `fail(...)`.
"""

import importlib.util
import inspect
import itertools
import numbers
import re
import sys
import threading
import traceback
from decimal import Decimal
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from lit_gpt.utils import first_line

RewardFunction = Callable[[list[str], list[str], list[str]], list[Optional[float]]]
# a number as a final answer: an optional sign and "$", digits with optional "," thousands separators, decimals
_NUMBER = re.compile(r"([-+]?)\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)")


def final_answer(completion: str) -> Optional[str]:
    """The completion's final answer: the first line of the text after its last "####", stripped, else the content
    of its last complete \\boxed{...} (braces balanced), else None."""
    if "####" in completion:
        answer = completion.rsplit("####", 1)[1].split("\n", 1)[0].strip()
        if answer:
            return answer
    return _last_boxed(completion)


def _last_boxed(text: str) -> Optional[str]:
    """The content of the last \\boxed{...} whose braces close, stripped (None: there is none)."""
    for start in reversed([m.end() for m in re.finditer(r"\\boxed\{", text)]):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def _number(text: str) -> Optional[Decimal]:
    """`text` as a number when it is one ("$1,234.50", "16.", "-3"), else None."""
    match = _NUMBER.fullmatch(text.strip())
    return Decimal(match[1] + match[2].replace(",", "")) if match else None


def _same(answer: str, reference: str) -> bool:
    a, b = _number(answer), _number(reference)
    return a == b if a is not None and b is not None else answer.strip() == reference.strip()


def exact_match_reward(prompts: list[str], completions: list[str], answers: list[str]) -> list[float]:
    """1.0 where the completion's `final_answer` equals the reference answer, else 0.0 (also without a final
    answer). Equal as numbers when both are numbers ("$1,234" == "1234.0"), else as stripped texts."""
    return [float(a is not None and _same(a, reference))
            for a, reference in zip(map(final_answer, completions), answers)]


def _check_math_verify() -> None:
    if importlib.util.find_spec("math_verify") is None:
        raise ValueError("--reward math needs math-verify: pip install math-verify")


def math_reward(prompts: list[str], completions: list[str], answers: list[str]) -> list[Optional[float]]:
    """1.0 where math-verify finds the completion's `final_answer` equal to the reference answer as a math expression
    (LaTeX or plain: "\\frac{1}{2}" == "0.5", "2\\sqrt{2}" == "\\sqrt{8}"), else 0.0 (also without a final answer);
    None where the reference does not parse (as TRL's accuracy_reward). Each is parsed as the content of a
    \\boxed{}, a number ("$1,234.") as its plain digits."""
    _check_math_verify()
    from math_verify import parse, verify

    # math-verify's timeouts use signal.alarm, which only works in the main thread (TRL turns them off elsewhere)
    timeout = 5 if threading.current_thread() is threading.main_thread() else None

    def expression(text: str) -> list:
        number = _number(text)
        return parse("\\boxed{" + (str(number) if number is not None else text) + "}", parsing_timeout=timeout)

    rewards = []
    for completion, reference in zip(completions, answers):
        gold, answer = expression(reference), final_answer(completion)
        rewards.append(None if not gold else
                       float(answer is not None and verify(gold, expression(answer), timeout_seconds=timeout)))
    return rewards


def format_reward(prompts: list[str], completions: list[str], answers: list[str]) -> list[float]:
    """1.0 where the completion ends in a final answer in the trained format, else 0.0: its last non-empty line,
    stripped, is "####", a space and an answer of at most 40 characters without "#" (GSM8K, data/arithmetic), or it
    holds a complete \\boxed{...} with non-empty content (anywhere). The answer is not checked. (A looser check,
    any text after "####", was gamed within 10 GRPO steps by completions of nothing but "#".)"""
    return [float(bool(FINAL_LINE.fullmatch(_last_line(c)) or _last_boxed(c))) for c in completions]


FINAL_LINE = re.compile(r"#### [^#\s][^#]{0,39}")


def _last_line(completion: str) -> str:
    lines = [line.strip() for line in completion.splitlines() if line.strip()]
    return lines[-1] if lines else ""


REWARDS: dict[str, RewardFunction] = {"exact_match": exact_match_reward, "math": math_reward, "format": format_reward}
_modules = itertools.count()  # a unique module name for each reward file loaded


def resolve_rewards(spec: str, weights: Optional[Union[str, Sequence[float]]] = None
                    ) -> tuple[list[str], list[RewardFunction], list[float]]:
    """(names, functions, weights) of `spec`, a comma-separated list of built-in reward names (REWARDS) and
    `path/to/file.py:function` entries. A user function's name is its own (the metric `rewards/<name>/mean`).
    `weights`: one per reward, a comma-separated text or a sequence of numbers (default: 1.0 each)."""
    names, functions, files = [], [], {}
    for entry in (e.strip() for e in spec.split(",")):
        if entry in REWARDS:
            if entry == "math":
                _check_math_verify()
            names.append(entry)
            functions.append(REWARDS[entry])
            continue
        path, _, name = entry.rpartition(":")
        if not path or not name:
            raise ValueError(f"Unknown reward {entry!r} in --reward {spec!r}: give built-in names "
                             f"({', '.join(REWARDS)}) or path/to/file.py:function, separated by commas")
        if path not in files:
            files[path] = _load_file(Path(path))
        function = getattr(files[path], name, None)
        if function is None:
            found = [k for k, v in vars(files[path]).items() if inspect.isfunction(v) and not k.startswith("_")
                     and v.__module__ == files[path].__name__]
            raise ValueError(f"Reward file {path!r} has no {name!r} (it defines: {', '.join(found) or 'nothing'})")
        if not callable(function):
            raise ValueError(f"{entry!r} is not a function (its type: {type(function).__name__})")
        names.append(getattr(function, "__name__", name))
        functions.append(function)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"--reward {spec!r} names {', '.join(twice)} twice: each reward needs its own name")
    return names, functions, _weights(weights, names)


def _load_file(path: Path) -> object:
    if not path.is_file():
        raise ValueError(f"Reward file {str(path)!r} does not exist")
    name = f"lit_gpt_reward_{next(_modules)}_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise ValueError(f"Reward file {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and the like in the file look themselves up there
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ValueError(f"Reward file {str(path)!r} raised {first_line(e)}{_where(e, path)} when imported") from e
    return module


def _where(e: BaseException, path: Optional[Path] = None) -> str:
    """Where `e` was raised, as " (file.py line N)": the innermost frame in `path` (default: of all), else ""."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if path is None or Path(f.filename).resolve() == path.resolve()]
    return f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})" if frames else ""


def _weights(weights: Optional[Union[str, Sequence[float]]], names: list[str]) -> list[float]:
    if weights is None:
        return [1.0] * len(names)
    if isinstance(weights, str):
        try:
            weights = [float(w) for w in weights.split(",")]
        except ValueError:
            raise ValueError(f"--reward_weights {weights!r} is not a comma-separated list of numbers") from None
    if len(weights) != len(names):
        raise ValueError(f"--reward_weights has {len(weights)} weight{'s' * (len(weights) != 1)} for "
                         f"{len(names)} reward{'s' * (len(names) != 1)} ({', '.join(names)}): give one per reward")
    return [float(w) for w in weights]


def score(names: list[str], functions: list[RewardFunction], weights: list[float], prompts: list[str],
          completions: list[str], answers: list[str]) -> torch.Tensor:
    """(N, F) float32: the reward of each of the N completions by each of the F functions, NaN where one returned
    None. `weights` are `combine`'s (unused here: the arguments are `resolve_rewards`'s three, then the batch)."""
    n = len(completions)
    rewards = torch.empty(n, len(functions), dtype=torch.float32)
    for j, (name, function) in enumerate(zip(names, functions)):
        try:
            values = function(prompts, completions, answers)
        except Exception as e:
            raise ValueError(f"The reward function {name!r} raised {first_line(e)}{_where(e)}") from e
        if hasattr(values, "tolist"):  # a tensor or an array
            values = values.tolist()
        if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != n:
            got = f"{len(values)} values" if isinstance(values, (list, tuple)) else f"a {type(values).__name__}"
            raise ValueError(f"The reward function {name!r} returned {got}, expected a list of {n} (one per "
                             "completion)")
        for i, value in enumerate(values):
            if value is not None and not isinstance(value, numbers.Real):
                raise ValueError(f"The reward function {name!r} returned a {type(value).__name__} for completion {i} "
                                 f"({str(value)[:40]!r}), expected a number or None")
            rewards[i, j] = float("nan") if value is None else float(value)
    return rewards


def combine(rewards: torch.Tensor, weights: Union[Sequence[float], torch.Tensor]) -> torch.Tensor:
    """(N,): each completion's rewards (N, F) times the weights, summed over the functions ignoring NaN; NaN where
    every function returned None (TRL 1.16's sum_then_normalize: such a row is left out of the group's mean and std,
    and its advantage set to 0)."""
    weights = torch.as_tensor(weights, dtype=rewards.dtype, device=rewards.device)
    total = (rewards * weights.unsqueeze(0)).nansum(dim=1)
    total[torch.isnan(rewards).all(dim=1)] = torch.nan
    return total
