"""Tokenizes GSM8K-format math word problems (or the shipped data/arithmetic) into a prepared-data dir."""

import re
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.data import DATASETS, check_prepare_args, load_rows, prepare  # noqa: E402
from lit_gpt.prompts import PromptStyleName  # noqa: E402
from lit_gpt.utils import cli, fail  # noqa: E402


def setup(
    checkpoint_dir: Path,
    destination_path: Path = Path("data/gsm8k"),
    data_file: Path = DATASETS["gsm8k"][1],
    keep_calculator_annotations: bool = False,
    val_file: Optional[Path] = None,
    val_split_fraction: Optional[float] = None,
    mask_inputs: bool = True,
    max_seq_length: Optional[int] = None,
    seed: int = 42,
    prompt_style: Optional[PromptStyleName] = None,
) -> None:
    """Prepares JSON lines of {"question", "answer"} where the answer ends with a "#### <number>" line.

    The question is the instruction; the output is the whole answer, reasoning and final "#### N" line, so an
    evaluation can read the number after "####". E.g. --data_file data/arithmetic/train.jsonl (shipped).

    Args:
        checkpoint_dir: Checkpoint dir whose tokenizer (and default prompt style) is used.
        destination_path: Where train.pt, val.pt, prepare_config.json and prompt_style.json are written.
        data_file: A GSM8K-format train.jsonl (default: where `python scripts/download.py --dataset gsm8k` puts
            GSM8K's).
        keep_calculator_annotations: Keep GSM8K's calculator annotations like <<48/2=24>> in the answers.
        val_file: A file of validation rows in the same format; default: split them off the data.
        val_split_fraction: Fraction of the rows held out for validation (default 0.05; not with --val_file).
        mask_inputs: Compute the loss on the answer tokens only (prompt tokens get label -100).
        max_seq_length: Cut samples to this many tokens; samples whose prompt alone is this long are skipped
            (default: the model's context length).
        seed: Seed of the train/val split.
        prompt_style: Prompt template. Default: the checkpoint's prompt_style.json, else the template its model was
            trained with (chat models), else alpaca.
    """
    check_prepare_args(checkpoint_dir, data_file, val_file, val_split_fraction, max_seq_length, "gsm8k")
    rows = to_alpaca(data_file, keep_calculator_annotations)
    val_rows = to_alpaca(val_file, keep_calculator_annotations) if val_file else None
    prepare(rows, val_rows, checkpoint_dir=checkpoint_dir, destination_path=destination_path, source=str(data_file),
            prompt_style=prompt_style, max_seq_length=max_seq_length, mask_inputs=mask_inputs,
            val_split_fraction=val_split_fraction, seed=seed)


def to_alpaca(path: Path, keep_calculator_annotations: bool) -> list[dict]:
    rows = []
    for number, row in enumerate(load_rows(path, required=("question", "answer")), 1):
        answer = row["answer"].strip()
        if not re.search(r"####\s*\S", answer):
            fail(f"{str(path)!r} row {number} has no final \"#### <number>\" line in its answer")
        if not keep_calculator_annotations:
            answer = re.sub(r"<<[^<>]*>>", "", answer)
        rows.append({"instruction": row["question"].strip(), "input": "", "output": answer})
    return rows


if __name__ == "__main__":
    cli(setup, as_positional=False)
