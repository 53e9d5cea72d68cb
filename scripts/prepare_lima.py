"""Tokenizes LIMA (1k curated conversations, GAIR/lima) into a prepared-data dir for finetuning."""

import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.data import DATASETS, check_prepare_args, load_rows, prepare  # noqa: E402
from lit_gpt.prompts import PromptStyleName  # noqa: E402
from lit_gpt.utils import cli, fail  # noqa: E402


def setup(
    checkpoint_dir: Path,
    destination_path: Path = Path("data/lima"),
    data_file: Path = DATASETS["lima"][1],
    val_file: Optional[Path] = None,
    val_split_fraction: Optional[float] = None,
    mask_inputs: bool = True,
    max_seq_length: Optional[int] = None,
    seed: int = 42,
    prompt_style: Optional[PromptStyleName] = None,
) -> None:
    """Prepares LIMA data: JSON lines of {"conversations": [user, assistant, user, ...]}.

    Only the first exchange of each conversation (its first user turn and the answer) is used; the count of
    longer conversations that were cut this way is printed.

    Args:
        checkpoint_dir: Checkpoint dir whose tokenizer (and default prompt style) is used.
        destination_path: Where train.pt, val.pt, prepare_config.json and prompt_style.json are written.
        data_file: LIMA's train.jsonl (default: where `python scripts/download.py --dataset lima` puts it; the
            dataset is gated: accept its terms on huggingface.co and set HF_TOKEN).
        val_file: A file of validation rows in the same format; default: split them off the data.
        val_split_fraction: Fraction of the rows held out for validation (default 0.05; not with --val_file).
        mask_inputs: Compute the loss on the answer tokens only (prompt tokens get label -100).
        max_seq_length: Cut samples to this many tokens; samples whose prompt alone is this long are skipped
            (default: the model's context length).
        seed: Seed of the train/val split.
        prompt_style: Prompt template. Default: the checkpoint's prompt_style.json, else the template its model was
            trained with (chat models), else alpaca.
    """
    check_prepare_args(checkpoint_dir, data_file, val_file, val_split_fraction, max_seq_length, "lima")
    rows = first_exchanges(data_file)
    val_rows = first_exchanges(val_file) if val_file else None
    prepare(rows, val_rows, checkpoint_dir=checkpoint_dir, destination_path=destination_path, source=str(data_file),
            prompt_style=prompt_style, max_seq_length=max_seq_length, mask_inputs=mask_inputs,
            val_split_fraction=val_split_fraction, seed=seed)


def first_exchanges(path: Path) -> list[dict]:
    rows, multi_turn = [], 0
    for number, row in enumerate(load_rows(path, required=()), 1):
        turns = row.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, str) for t in turns[:2]):
            fail(f"{str(path)!r} row {number} has no \"conversations\" list of at least two texts (user, answer)")
        multi_turn += len(turns) > 2
        rows.append({"instruction": turns[0], "input": "", "output": turns[1]})
    if multi_turn:
        print(f"{str(path)!r}: {multi_turn} of {len(rows)} conversations have more than one exchange; "
              "only the first exchange of each is used")
    return rows


if __name__ == "__main__":
    cli(setup, as_positional=False)
