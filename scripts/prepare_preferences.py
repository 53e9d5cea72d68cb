"""Tokenizes preference pairs (a JSON array or JSON lines) into a prepared-data dir for preference finetuning (DPO).

Each row holds a prompt, a chosen (better) and a rejected (worse) answer, in one of TRL's three layouts (other
fields are ignored):

    {"prompt": "...", "chosen": "...", "rejected": "..."}                                          (texts)
    {"prompt": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}, ...],
     "chosen": [{"role": "assistant", "content": "..."}], "rejected": [{"role": "assistant", ...}]}  (conversational)
    {"chosen": [..., {"role": "assistant", "content": "..."}], "rejected": [..., {"role": "assistant", ...}]}
                                                                                              (implicit prompt)

A text prompt is an instruction, rendered as finetuning on instruction data renders it (chat styles: a one-turn
conversation). A conversational prompt may start with a system message and hold earlier turns (user and assistant in
turn, ending with a user message); the implicit prompt is the leading messages chosen and rejected share. Each answer
is one assistant message. Chat prompt styles render prompt + answer exactly as their model's chat template does
(the prompt as with add_generation_prompt=True, each answer ending with its end-of-turn token); the plain styles
append eos. Each of prompt + chosen and prompt + rejected is one encoding of its whole text; the prepared sample is
{"prompt_ids", "chosen_ids", "rejected_ids"}, the prompt being the tokens both share. prepare_config.json records
"format": "preference", system_prompt and the counts, which the finetune script reads: no flag to repeat.

Truncation. A pair longer than --max_seq_length (prompt + the longer answer) first loses the start of its prompt (its
last tokens are kept, BOS too) down to half of --max_seq_length, then the ends of its answers; how many prompts and
answer pairs were cut is printed and recorded.

Bad rows. An error (exit 1, nothing written) names the row: a file that is not UTF-8, not JSON (array or lines) or
empty; a row that is not an object; a missing chosen or rejected, or a field neither a text nor a list; layouts
mixed (a text prompt with message-list answers, ...); texts without a prompt; a message without a text role and
content; an unknown role. A counted, listed skip: identical chosen and rejected (also once rendered or cut to fit),
an empty answer or prompt, an answer that is not exactly one assistant message after the prompt, implicit prompts
that differ (no shared leading messages, or more than one message left on each side), roles out of order, a prompt
of which no token fits.
"""

import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.data import check_prepare_args, load_preferences, prepare_preferences  # noqa: E402
from lit_gpt.prompts import PromptStyleName  # noqa: E402
from lit_gpt.utils import cli  # noqa: E402


def setup(
    checkpoint_dir: Path,
    data_file: Path,
    destination_path: Path = Path("data/preferences"),
    val_file: Optional[Path] = None,
    val_split_fraction: Optional[float] = None,
    system_prompt: Optional[str] = None,
    max_seq_length: Optional[int] = None,
    seed: int = 42,
    prompt_style: Optional[PromptStyleName] = None,
) -> None:
    """Prepares a JSON array or JSON-lines file of preference pairs (prompt, chosen, rejected).

    Args:
        checkpoint_dir: Checkpoint dir whose tokenizer (and default prompt style) is used.
        data_file: The data file.
        destination_path: Where train.pt, val.pt, prepare_config.json and prompt_style.json are written.
        val_file: A file of validation pairs in the same format; default: split them off the data.
        val_split_fraction: Fraction of the pairs held out for validation (default 0.05; not with --val_file).
        system_prompt: The system message of pairs that have none (default: the prompt style's own, if any).
        max_seq_length: The longest prompt + answer: longer pairs lose the start of their prompt (which keeps at
            least max_seq_length // 2 tokens), then the ends of their answers (default: the model's context length).
        seed: Seed of the train/val split.
        prompt_style: Prompt template. Default: the checkpoint's prompt_style.json, else the template its model was
            trained with (chat models), else alpaca.
    """
    check_prepare_args(checkpoint_dir, data_file, val_file, val_split_fraction, max_seq_length)
    rows = load_preferences(data_file)
    val_rows = load_preferences(val_file) if val_file else None
    prepare_preferences(rows, val_rows, checkpoint_dir=checkpoint_dir, destination_path=destination_path,
                        source=str(data_file), prompt_style=prompt_style, max_seq_length=max_seq_length,
                        system_prompt=system_prompt, val_split_fraction=val_split_fraction, seed=seed)


if __name__ == "__main__":
    cli(setup, as_positional=False)
