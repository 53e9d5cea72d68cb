"""Writes data/arithmetic/{train,test}.jsonl: small arithmetic word problems in GSM8K format.

    python data/arithmetic/make_data.py [--n_train 600] [--n_test 100] [--seed 1234]

Each row is {"question": ..., "answer": "<one equation per line>\\n#### <number>"}. The generator is deterministic
(seeded); test questions never appear in train. See README.md next to this file.
"""

import argparse
import json
import random
from pathlib import Path
from typing import Callable

NAMES = ["Tom", "Anna", "Sam", "Lisa", "Ben", "Maria", "Leo", "Emma", "Noah", "Mia", "Jack", "Lily", "Omar", "Zoe",
         "Ravi", "Sara", "Paul", "Nina", "Carlos", "Ava"]
ITEMS = [("apple", "apples"), ("pen", "pens"), ("book", "books"), ("notebook", "notebooks"), ("cookie", "cookies"),
         ("ticket", "tickets"), ("toy car", "toy cars"), ("cupcake", "cupcakes"), ("sticker", "stickers"),
         ("orange", "oranges"), ("candle", "candles"), ("mug", "mugs")]
THINGS = ["marbles", "stickers", "cards", "candies", "stamps", "shells", "coins", "beads", "crayons", "balloons"]
MOVERS = [("car", "drives", "km"), ("train", "travels", "km"), ("cyclist", "rides", "km"), ("runner", "runs", "km"),
          ("boat", "sails", "miles"), ("bus", "travels", "miles")]
RELATIVES = ["brother", "sister", "cousin", "friend"]

Problem = tuple[str, list[tuple[str, int]]]  # question, [(equation left side, value), ...]; the last value answers


def shop_one(r: random.Random) -> Problem:
    name, (_, items), n, price = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 9), r.randint(2, 9)
    return (f"{name} buys {n} {items} for ${price} each. How much does {name} spend?",
            [(f"{n} * {price}", n * price)])


def shop_two(r: random.Random) -> Problem:
    name, (_, items), (other, _) = r.choice(NAMES), r.choice(ITEMS), r.choice(ITEMS)
    n, price, extra = r.randint(2, 6), r.randint(2, 9), r.randint(2, 15)
    return (f"{name} buys {n} {items} at ${price} each and one {other} for ${extra}. "
            f"How much does {name} spend in total?",
            [(f"{n} * {price}", n * price), (f"{n * price} + {extra}", n * price + extra)])


def shop_change(r: random.Random) -> Problem:
    name, (_, items), n, price = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 5), r.randint(2, 9)
    paid = r.choice([p for p in (20, 50, 100) if p > n * price])
    return (f"{name} buys {n} {items} for ${price} each and pays with a ${paid} bill. How much change does "
            f"{name} get?", [(f"{n} * {price}", n * price), (f"{paid} - {n * price}", paid - n * price)])


def share_one(r: random.Random) -> Problem:
    name, things, friends, each = r.choice(NAMES), r.choice(THINGS), r.randint(2, 9), r.randint(2, 9)
    total = friends * each
    return (f"{name} has {total} {things} and shares them equally among {friends} friends. How many {things} does "
            "each friend get?", [(f"{total} / {friends}", each)])


def share_two(r: random.Random) -> Problem:
    name, things, friends, each = r.choice(NAMES), r.choice(THINGS), r.randint(2, 6), r.randint(2, 8)
    have = r.randint(1, friends * each - 1)
    more = friends * each - have
    return (f"{name} has {have} {things} and gets {more} more. {name} shares all of them equally among {friends} "
            f"friends. How many {things} does each friend get?",
            [(f"{have} + {more}", have + more), (f"{have + more} / {friends}", each)])


def left_one(r: random.Random) -> Problem:
    name, things, have = r.choice(NAMES), r.choice(THINGS), r.randint(8, 30)
    gave = r.randint(2, have - 1)
    return (f"{name} had {have} {things} and gave {gave} to a friend. How many {things} does {name} have left?",
            [(f"{have} - {gave}", have - gave)])


def collect_two(r: random.Random) -> Problem:
    name, things, have, got = r.choice(NAMES), r.choice(THINGS), r.randint(3, 20), r.randint(2, 15)
    lost = r.randint(1, have + got - 1)
    return (f"{name} has {have} {things}, finds {got} more and then loses {lost}. How many {things} does "
            f"{name} have now?", [(f"{have} + {got}", have + got), (f"{have + got} - {lost}", have + got - lost)])


def distance_one(r: random.Random) -> Problem:
    mover, verb, unit = r.choice(MOVERS)
    speed, hours = r.choice(range(5, 65, 5)), r.randint(2, 6)
    return (f"A {mover} {verb} {speed} {unit} every hour. How many {unit} does it cover in {hours} hours?",
            [(f"{speed} * {hours}", speed * hours)])


def distance_two(r: random.Random) -> Problem:
    name, (_, verb, unit) = r.choice(NAMES), r.choice(MOVERS[2:4])
    morning, afternoon = r.randint(2, 20), r.randint(2, 20)
    if r.random() < 0.5:
        return (f"{name} {verb} {morning} {unit} in the morning and {afternoon} {unit} in the afternoon. How many "
                f"{unit} does {name} cover in total?", [(f"{morning} + {afternoon}", morning + afternoon)])
    days = r.randint(2, 5)
    return (f"{name} {verb} {morning} {unit} in the morning and {afternoon} {unit} in the afternoon, every day for "
            f"{days} days. How many {unit} does {name} cover in total?",
            [(f"{morning} + {afternoon}", morning + afternoon),
             (f"{morning + afternoon} * {days}", (morning + afternoon) * days)])


def age_one(r: random.Random) -> Problem:
    name, relative, age, diff = r.choice(NAMES), r.choice(RELATIVES), r.randint(5, 40), r.randint(2, 12)
    if r.random() < 0.5:
        return (f"{name} is {age} years old. {name}'s {relative} is {diff} years older. How old is the {relative}?",
                [(f"{age} + {diff}", age + diff)])
    age += diff
    return (f"{name} is {age} years old. {name}'s {relative} is {diff} years younger. How old is the {relative}?",
            [(f"{age} - {diff}", age - diff)])


def age_two(r: random.Random) -> Problem:
    name, relative, age, diff = r.choice(NAMES), r.choice(RELATIVES), r.randint(5, 30), r.randint(2, 9)
    years = r.randint(2, 10)
    return (f"{name} is {age} years old and {name}'s {relative} is {diff} years older. How old will the {relative} "
            f"be in {years} years?", [(f"{age} + {diff}", age + diff), (f"{age + diff} + {years}", age + diff + years)])


def shop_three(r: random.Random) -> Problem:
    name, (_, items), (_, others) = r.choice(NAMES), *r.sample(ITEMS, 2)
    n, price, m, other_price = r.randint(2, 5), r.randint(2, 6), r.randint(2, 5), r.randint(2, 6)
    a, b = n * price, m * other_price
    return (f"{name} buys {n} {items} at ${price} each and {m} {others} at ${other_price} each. How much does "
            f"{name} spend in total?", [(f"{n} * {price}", a), (f"{m} * {other_price}", b), (f"{a} + {b}", a + b)])


# (template, weight): mostly one and two operations, a few three-step ones
TEMPLATES: list[tuple[Callable[[random.Random], Problem], int]] = [
    (shop_one, 3), (share_one, 3), (left_one, 3), (distance_one, 3), (age_one, 3),
    (shop_two, 2), (shop_change, 2), (share_two, 2), (collect_two, 2), (distance_two, 2), (age_two, 2),
    (shop_three, 1),
]


def make_row(r: random.Random) -> dict:
    template = r.choices([t for t, _ in TEMPLATES], weights=[w for _, w in TEMPLATES])[0]
    question, steps = template(r)
    lines = [f"{expr} = {value}" for expr, value in steps]
    return {"question": question, "answer": "\n".join(lines) + f"\n#### {steps[-1][1]}"}


def make_split(r: random.Random, n: int, exclude: set) -> list[dict]:
    rows, seen = [], set(exclude)
    while len(rows) < n:
        row = make_row(r)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_train", type=int, default=600)
    parser.add_argument("--n_test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out_dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()

    r = random.Random(args.seed)
    train = make_split(r, args.n_train, set())
    test = make_split(r, args.n_test, {row["question"] for row in train})
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        path = args.out_dir / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        print(f"Wrote {len(rows)} rows to {str(path)!r}")


if __name__ == "__main__":
    main()
