"""Functions the task YAMLs of this folder name with `!function utils.<name>` (lm-eval loads this file by path)."""

import random
import zlib
from pathlib import Path
from typing import Any


def local_json(data_files: dict, config_source: str = "", **metadata: Any) -> Any:
    """`custom_dataset` of the local tasks: `datasets.load_dataset("json", data_files=...)` with relative paths
    taken from the folder of the task's YAML, so a task runs from any working directory (lm-eval resolves a
    `dataset_kwargs: {data_files: ...}` from the working directory). lm-eval calls it with the task's metadata and
    dataset_kwargs; `config_source` is the path of the YAML."""
    import datasets

    folder = Path(config_source).resolve().parent if config_source else Path.cwd()
    files = {split: str(folder / path) for split, path in data_files.items()}
    missing = [path for path in files.values() if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"The task's data file {missing[0]!r} does not exist (relative data_files are read "
                                f"from the folder of the task's YAML, {str(folder)!r})")
    return datasets.load_dataset("json", data_files=files)


def gsm8k_number(answer: str) -> str:
    """The final answer of a GSM8K-format answer: what follows '####', without thousands separators."""
    return answer.split("####")[-1].strip().replace(",", "")


def arithmetic_choices(dataset: Any) -> Any:
    """`process_docs` of lit_arithmetic_mc: four candidate results per problem, the right one and three near misses
    a model that half-knows the arithmetic could pick (off by one or two, off by ten, doubled, halved). The choices
    and their order depend on the question only, so every run and every model sees the same ones."""

    def add_choices(doc: dict) -> dict:
        answer = int(gsm8k_number(doc["answer"]))
        rng = random.Random(zlib.crc32(doc["question"].encode("utf-8")))
        near = [answer + 1, answer - 1, answer + 2, answer - 2, answer + 10, answer - 10, answer * 2, answer // 2]
        near = sorted({n for n in near if n >= 0 and n != answer})
        choices = [answer] + rng.sample(near, 3)
        rng.shuffle(choices)
        return {"choices": [str(c) for c in choices], "label": choices.index(answer)}

    return dataset.map(add_choices)
