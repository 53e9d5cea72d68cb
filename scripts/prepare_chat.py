"""Tokenizes conversations (a JSON array or JSON lines) into a prepared-data dir.

Each row holds one conversation, in either layout (other fields are ignored):

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}, ...]}                                   (OpenAI)
    {"conversations": [{"from": "system", "value": "..."}, {"from": "human", "value": "..."},
                       {"from": "gpt", "value": "..."}, ...]}                                      (ShareGPT)

Roles: system, user (or human), assistant (or gpt); either key pair is read in either list. A conversation is an
optional system message, then user and assistant messages in turn, ending with an answer. Chat prompt styles render
it exactly as their model's chat template does (the system message where the template puts it; none given: the
style's default system message, if it has one). The plain styles (alpaca, qa, falcon-instruct) chain their one-turn
prompt, answer and eos, turn after turn, after the system message as a first paragraph.

The loss goes on the assistant answers, each with its end-of-turn token (<|im_end|>, <|eot_id|>, <end_of_turn>,
<|end|>, eos), by default; --train_on last: the last answer only; all: every token. A conversation longer than
--max_seq_length loses whole turns (a user message and its answer), oldest first, the system message kept, until it
fits; how many conversations lost how many turns is printed and recorded in prepare_config.json ("format": "chat",
train_on, system_prompt, counts), which finetune/lora.py reads: no flag to repeat.

Bad rows. An error (exit 1, nothing written) names the row: a file that is not UTF-8, not JSON (array or lines) or
empty; a row that is not an object or has neither a `messages` nor a `conversations` list; a message without a text
role and content; an unknown role (e.g. "tool"). A counted, listed skip: an empty user or assistant message, a
conversation without an assistant message, roles out of order (assistant first, two user or two assistant messages
in a row, a system message after the first, a user message last), a conversation whose last turn alone is longer
than --max_seq_length. An empty system message counts as none.
"""

import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.data import TrainOn, check_prepare_args, load_conversations, prepare_chat  # noqa: E402
from lit_gpt.prompts import PromptStyleName  # noqa: E402
from lit_gpt.utils import cli  # noqa: E402


def setup(
    checkpoint_dir: Path,
    data_file: Path,
    destination_path: Path = Path("data/chat"),
    val_file: Optional[Path] = None,
    val_split_fraction: Optional[float] = None,
    train_on: TrainOn = "assistant",
    system_prompt: Optional[str] = None,
    max_seq_length: Optional[int] = None,
    seed: int = 42,
    prompt_style: Optional[PromptStyleName] = None,
) -> None:
    """Prepares a JSON array or JSON-lines file of conversations (`messages` or ShareGPT `conversations`).

    Args:
        checkpoint_dir: Checkpoint dir whose tokenizer (and default prompt style) is used.
        data_file: The data file.
        destination_path: Where train.pt, val.pt, prepare_config.json and prompt_style.json are written.
        val_file: A file of validation conversations in the same format; default: split them off the data.
        val_split_fraction: Fraction of the conversations held out for validation (default 0.05; not with
            --val_file).
        train_on: Which tokens get a loss: every assistant answer with its end-of-turn token (assistant), the last
            answer only (last), or every token (all).
        system_prompt: The system message of conversations that have none (default: the prompt style's own, if any).
        max_seq_length: Drop the oldest turns of longer conversations; skip those whose last turn alone is longer
            (default: the model's context length).
        seed: Seed of the train/val split.
        prompt_style: Prompt template. Default: the checkpoint's prompt_style.json, else the template its model was
            trained with (chat models), else alpaca.
    """
    check_prepare_args(checkpoint_dir, data_file, val_file, val_split_fraction, max_seq_length)
    rows = load_conversations(data_file)
    val_rows = load_conversations(val_file) if val_file else None
    prepare_chat(rows, val_rows, checkpoint_dir=checkpoint_dir, destination_path=destination_path,
                 source=str(data_file), prompt_style=prompt_style, max_seq_length=max_seq_length, train_on=train_on,
                 system_prompt=system_prompt, val_split_fraction=val_split_fraction, seed=seed)


if __name__ == "__main__":
    cli(setup, as_positional=False)
