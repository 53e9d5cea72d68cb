"""Writes data/arithmetic/preferences.jsonl: arithmetic word problems, each with a correct and a wrong answer, for
preference finetuning (DPO).

    python data/arithmetic/make_preferences.py [--n 600] [--seed 5678] [--out data/arithmetic/preferences.jsonl]

Each line is {"prompt": question, "chosen": answer, "rejected": wrong answer}, the question and the answer as in
train.jsonl ("<one equation per line>\\n#### N"), from make_data.py's templates; no question is one of train.jsonl
or test.jsonl. The wrong answer makes one mistake: one equation's result is off by a little (1, 2 or 10) or computed
with another operation, and the lines after it compute correctly from the wrong value, so that its "#### N" follows
from the mistake. Deterministic (seeded).
"""

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_data import make_split  # noqa: E402

Step = list  # [left, operation, right, result]


def compute(left: int, operation: str, right: int) -> Optional[int]:
    """`left operation right` when it is a non-negative integer, else None."""
    if operation == "/":
        return left // right if right and left % right == 0 else None
    value = {"+": left + right, "-": left - right, "*": left * right}[operation]
    return value if value >= 0 else None


def parse(answer: str) -> list[Step]:
    """The equations of an answer, "12 + 4 = 16" lines before its "#### N" line."""
    steps = []
    for line in answer.splitlines()[:-1]:
        left, operation, right, result = re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (\d+)", line).groups()
        steps.append([int(left), operation, int(right), int(result)])
    return steps


def write(steps: list[Step]) -> str:
    return "".join(f"{left} {operation} {right} = {result}\n" for left, operation, right, result in steps) + \
        f"#### {steps[-1][3]}"


def carry(steps: list[Step], i: int, wrong: int) -> Optional[list[Step]]:
    """`steps` with the result of step i replaced by `wrong` and the later steps computed from it: the one operand of
    a later step equal to a changed result takes its new value (in make_data.py's templates every result but the
    last is an operand of a later step). None when a changed result appears as no operand or as more than one (which
    one is it would be a guess), or a later result is no longer a non-negative integer."""
    out = [list(step) for step in steps]
    out[i][3] = wrong
    changed = [(i, steps[i][3])]
    while changed:
        k, old = changed.pop()
        if k == len(steps) - 1:
            continue
        uses = [(j, side) for j in range(k + 1, len(steps)) for side in (0, 2) if steps[j][side] == old]
        if len(uses) != 1:
            return None
        [(j, side)] = uses
        out[j][side] = out[k][3]
        value = compute(*out[j][:3])
        if value is None:
            return None
        out[j][3] = value
        changed.append((j, steps[j][3]))
    return out


def mistake(r: random.Random, steps: list[Step]) -> list[Step]:
    """`steps` with one result wrong (off by a little, or another operation) and the rest carried through: the final
    result differs."""
    for _ in range(1000):
        i = r.randrange(len(steps))
        left, operation, right, result = steps[i]
        if r.random() < 0.5:
            wrong = result + r.choice([-10, -2, -1, 1, 2, 10])
        else:
            wrong = compute(left, r.choice([o for o in "+-*/" if o != operation]), right)
        if wrong is None or wrong < 0 or wrong == result:
            continue
        out = carry(steps, i, wrong)
        if out is not None and out[-1][3] != steps[-1][3]:
            return out
    raise AssertionError(f"No mistake found for {write(steps)!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--seed", type=int, default=5678)  # make_data.py's train and test: 1234
    parser.add_argument("--out", type=Path, default=HERE / "preferences.jsonl")
    args = parser.parse_args()

    r = random.Random(args.seed)
    splits = {name: [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines()]
              for name in ("train.jsonl", "test.jsonl")}
    seen = {row["question"] for rows in splits.values() for row in rows}
    rows = []
    for problem in make_split(r, args.n, seen):
        steps = parse(problem["answer"])
        assert write(steps) == problem["answer"], problem
        rows.append({"prompt": problem["question"], "chosen": problem["answer"], "rejected": write(mistake(r, steps))})
    test = {row["question"] for row in splits["test.jsonl"]}
    assert not any(row["prompt"] in test for row in rows) and all(row["rejected"] != row["chosen"] for row in rows)
    args.out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"Wrote {len(rows)} preference pairs to {str(args.out)!r}")


if __name__ == "__main__":
    main()
