"""LoRA / QLoRA finetuning: `python finetune/lora.py --checkpoint_dir ... --data_dir ... [--quantize bnb.nf4]`.

The recipe: its hyperparameters (below: edit them here, or set any on the command line, e.g. `--learning_rate 1e-4`),
its data (a prepared instruction or chat dir), its loss (the cross-entropy of the response tokens) and a sample
generation at every evaluation. The loop (checkpoints, resume, epochs, micro-batching, metrics) is `lit_gpt.training`.
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.config import Config
from lit_gpt.data import collate, load_prepared, pack, prepared_config, target_count
from lit_gpt.generate import generate
from lit_gpt.prompts import PromptStyle
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.training import Launch, TrainArgs, Trainer, make_fabric, max_seq_length, prepare_run
from lit_gpt.utils import check_valid_checkpoint_dir, cli, fail, response_loss

HYPERPARAMETERS = TrainArgs(
    learning_rate=2e-3,  # the sweep on SmolLM2-135M (README); QLoRA used 2e-4 for 7B-13B, 1e-4 for 33B-65B
    lr_schedule="cosine",
    warmup_fraction=0.1,
    min_lr_ratio=0.1,
    batch_size=16,  # examples per optimizer step (across all devices)
    micro_batch_size=4,  # examples per forward/backward; gradients are accumulated up to `batch_size`
    micro_batch_tokens=None,
    max_iters=200,  # optimizer steps; `--epochs` overrides it
    epochs=None,
    weight_decay=0.0,
    grad_clip=1.0,
    max_seq_length=None,  # the data's
    eval_interval=50,  # optimizer steps between validations (and sample generations)
    eval_iters=20,  # validation micro-batches
    save_interval=50,  # optimizer steps between resumable checkpoints
    log_interval=1,
    lora_r=8,
    lora_alpha=16,
    lora_dropout=0.05,
    lora_query=True,
    lora_key=True,
    lora_value=True,
    lora_projection=True,
    lora_mlp=True,
    lora_head=True,
    lora_experts=True,  # mixture-of-experts models: the expert tensors too
    router_aux_loss_coef=None,  # mixture-of-experts models: the load-balancing loss weight (None: the model's)
    # lay the examples of a micro-batch end to end, each attending to itself only: no compute is spent on padding
    # (measured on CPU: benchmarks/finetune.py --parts data); False pads each micro-batch to its longest
    padding_free=True,
    pad_multiple=32,
    activation_checkpointing=False,
    seed=1337,
)
SAMPLE_INSTRUCTION = "What is 12 plus 30? Give the answer after ####."  # answered at every evaluation


def setup(
    checkpoint_dir: Path = Path("checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct"),
    data_dir: Path = Path("data/arithmetic"),
    out_dir: Path = Path("out/lora/arithmetic"),
    launch: Launch = Launch(),
    hp: TrainArgs = HYPERPARAMETERS,
    sample_instruction: str = SAMPLE_INSTRUCTION,
) -> None:
    """Finetunes a LoRA adapter on a prepared dataset.

    Args:
        checkpoint_dir: The base model (lit_model.pth, lit_config.json, tokenizer).
        data_dir: A dir written by a `scripts/prepare_*.py` script (train.pt, val.pt, prepare_config.json).
        out_dir: Where the adapter, lora_config.json, metrics.csv, loss.png and resumable checkpoints go.
        launch: Precision, quantization, devices, resume (see lit_gpt.training.Launch).
        hp: The hyperparameters (see lit_gpt.training.TrainArgs).
        sample_instruction: Instruction answered by the model at every evaluation, to watch it learn.
    """
    # every check that can fail happens before anything is loaded or written
    check_valid_checkpoint_dir(checkpoint_dir)
    if not (Path(data_dir) / "train.pt").is_file():
        fail(f"No prepared data in {str(data_dir)!r}. Create it with e.g.: python scripts/prepare_gsm8k.py "
             f"--data_file data/arithmetic/train.jsonl --checkpoint_dir {checkpoint_dir} --destination_path {data_dir}")
    data_config = prepared_config(data_dir)
    if data_config.get("format") == "preference":
        fail(f"{str(data_dir)!r} holds preference pairs, which are for finetune/dpo.py: python finetune/dpo.py "
             f"--checkpoint_dir {checkpoint_dir} --data_dir {data_dir}")
    run = prepare_run(checkpoint_dir, data_dir, data_config, out_dir, launch, hp, objective="sft")
    fabric = make_fabric(run)
    fabric.launch(main, run=run, data_dir=Path(data_dir), sample_instruction=sample_instruction)


def main(fabric, run, data_dir: Path, sample_instruction: str) -> None:
    train_data, val_data, data_config = load_prepared(data_dir)
    config = Config.from_checkpoint(run.checkpoint_dir)
    length = max_seq_length(run.hp, data_config, config, train_data, lambda s: len(s["input_ids"]))
    trainer = Trainer(fabric, run, length)
    tokenizer = Tokenizer(run.checkpoint_dir)
    prompt_style = PromptStyle.from_name(data_config["prompt_style"])
    trainer.fit(train_data, val_data, SFT(length, run.hp, fabric.device, tokenizer, prompt_style, sample_instruction))


class SFT:
    """Supervised finetuning: the summed cross-entropy of the response tokens; a step's loss is their mean."""

    perplexity = True

    def __init__(self, max_seq_length: int, hp: TrainArgs, device: torch.device, tokenizer: Tokenizer,
                 prompt_style: PromptStyle, sample_instruction: str) -> None:
        self.max_seq_length, self.hp, self.device = max_seq_length, hp, device
        self.tokenizer, self.prompt_style, self.sample_instruction = tokenizer, prompt_style, sample_instruction

    def length(self, sample: dict) -> int:
        return min(len(sample["input_ids"]), self.max_seq_length) - 1

    def count(self, sample: dict) -> int:
        return target_count(sample, self.max_seq_length)

    def loss(self, model, samples: list) -> tuple:
        """Padding-free: the examples packed in one row (`lengths` of the examples in it); else padded to the longest
        (on GPUs to a multiple of `pad_multiple`: few distinct shapes, little kernel warm-up; CPU kernels have no
        per-shape warm-up, measured)."""
        if self.hp.padding_free:
            input_ids, targets, lengths = pack(samples, self.max_seq_length, self.device)
        else:
            pad = self.hp.pad_multiple if self.device.type == "cuda" else 1
            (input_ids, targets), lengths = collate(samples, self.max_seq_length, pad, self.device), None
        return response_loss(model, input_ids, targets, reduction="sum", lengths=lengths), {}

    @torch.no_grad()
    def evaluate(self, fabric, model) -> None:
        prompt = self.tokenizer.encode(self.prompt_style.apply(self.sample_instruction)).to(fabric.device)
        max_new = min(64, model.max_seq_length - len(prompt))
        out = generate(model, prompt, max_new, temperature=0.0,
                       stop_tokens=self.prompt_style.stop_tokens(self.tokenizer)) if max_new > 0 else prompt[:0]
        fabric.print(f"sample: {self.sample_instruction!r} -> {self.tokenizer.decode(out)!r}", flush=True)


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(setup)
