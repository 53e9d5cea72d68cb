"""Writes data/arithmetic/chat.jsonl: conversations of 2-3 arithmetic problems from train.jsonl.

    python data/arithmetic/make_chat.py [--seed 1234] [--out data/arithmetic/chat.jsonl]

Each line is {"messages": [{"role": "system" (a third of them), ...}, {"role": "user", ...}, {"role": "assistant",
...}, ...]}: the user asks a problem, the assistant answers it as train.jsonl does ("<equations>\\n#### N"), and the
user follows up with the next problem. Every problem of train.jsonl is used once; deterministic (seeded).
"""

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM_PROMPTS = ["You are a math tutor. Write one equation per line, then the answer after ####.",
                  "Solve word problems step by step and end with #### and the number."]
FIRST = ["{q}", "{q}", "Can you help me with this? {q}", "Here is a problem: {q}"]
FOLLOW_UPS = ["Next one: {q}", "Thanks! And this one? {q}", "{q}", "Great. Now try this: {q}", "One more. {q}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=HERE / "chat.jsonl")
    args = parser.parse_args()

    r = random.Random(args.seed)
    problems = [json.loads(line) for line in (HERE / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = []
    while problems:
        messages = [{"role": "system", "content": r.choice(SYSTEM_PROMPTS)}] if r.random() < 1 / 3 else []
        for turn in range(min(r.choice([2, 2, 3]), len(problems))):
            problem = problems.pop(0)
            ask = r.choice(FIRST if turn == 0 else FOLLOW_UPS)
            messages += [{"role": "user", "content": ask.format(q=problem["question"])},
                         {"role": "assistant", "content": problem["answer"]}]
        rows.append({"messages": messages})
    args.out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"Wrote {len(rows)} conversations to {str(args.out)!r}")


if __name__ == "__main__":
    main()
