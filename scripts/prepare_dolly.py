"""Tokenizes Databricks' Dolly 15k instruction data into a prepared-data dir for finetuning."""

import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.data import DATASETS, check_prepare_args, load_rows, prepare  # noqa: E402
from lit_gpt.prompts import PromptStyleName  # noqa: E402
from lit_gpt.utils import cli  # noqa: E402


def setup(
    checkpoint_dir: Path,
    destination_path: Path = Path("data/dolly"),
    data_file: Path = DATASETS["dolly"][1],
    val_file: Optional[Path] = None,
    val_split_fraction: Optional[float] = None,
    mask_inputs: bool = True,
    max_seq_length: Optional[int] = None,
    seed: int = 42,
    prompt_style: Optional[PromptStyleName] = None,
) -> None:
    """Prepares Dolly data: JSON lines of {"instruction", "context", "response"}; context becomes the input.

    Args:
        checkpoint_dir: Checkpoint dir whose tokenizer (and default prompt style) is used.
        destination_path: Where train.pt, val.pt, prepare_config.json and prompt_style.json are written.
        data_file: databricks-dolly-15k.jsonl (default: where `python scripts/download.py --dataset dolly` puts it).
        val_file: A file of validation rows in the same format; default: split them off the data.
        val_split_fraction: Fraction of the rows held out for validation (default 0.05; not with --val_file).
        mask_inputs: Compute the loss on the answer tokens only (prompt tokens get label -100).
        max_seq_length: Cut samples to this many tokens; samples whose prompt alone is this long are skipped
            (default: the model's context length).
        seed: Seed of the train/val split.
        prompt_style: Prompt template. Default: the checkpoint's prompt_style.json, else the template its model was
            trained with (chat models), else alpaca.
    """
    check_prepare_args(checkpoint_dir, data_file, val_file, val_split_fraction, max_seq_length, "dolly")
    rows = to_alpaca(load_rows(data_file, required=("instruction", "response")))
    val_rows = to_alpaca(load_rows(val_file, required=("instruction", "response"))) if val_file else None
    prepare(rows, val_rows, checkpoint_dir=checkpoint_dir, destination_path=destination_path, source=str(data_file),
            prompt_style=prompt_style, max_seq_length=max_seq_length, mask_inputs=mask_inputs,
            val_split_fraction=val_split_fraction, seed=seed)


def to_alpaca(rows: list[dict]) -> list[dict]:
    return [{"instruction": row["instruction"], "input": row.get("context") or "", "output": row["response"]}
            for row in rows]


if __name__ == "__main__":
    cli(setup, as_positional=False)
