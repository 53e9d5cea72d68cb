"""LoRA / QLoRA finetuning: `python finetune/lora.py --checkpoint_dir ... --data_dir ... [--quantize bnb.nf4]`."""

import csv
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Literal, Optional, Union

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.config import Config
from lit_gpt.data import collate, load_prepared, longest_first, pack, target_count, token_budget_batches
from lit_gpt.generate import generate
from lit_gpt.lora import LoRAConfig, lora_filter, lora_state_dict, mark_only_lora_as_trainable, trainable_report
from lit_gpt.prompts import PromptStyle
from lit_gpt.quantize import check_quantize, load_model
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import (
    atomic_path,
    atomic_save,
    atomic_write_text,
    check_valid_checkpoint_dir,
    cli,
    fail,
    fastest_precision,
    lazy_load,
    num_parameters,
    response_loss,
)

# Hyperparameters: edit them here, or set any of them on the command line (e.g. `--learning_rate 1e-4`).
learning_rate = 3e-4
batch_size = 16  # examples per optimizer step (across all devices)
micro_batch_size = 4  # examples per forward/backward; gradients are accumulated up to `batch_size`
max_iters = 200  # optimizer steps; `--epochs` overrides it
warmup_steps = 10
weight_decay = 0.0
grad_clip = 1.0
min_lr_ratio = 0.1  # the cosine decay ends at learning_rate * min_lr_ratio
eval_interval = 50  # optimizer steps between validations (and sample generations)
eval_iters = 20  # validation micro-batches
save_interval = 50  # optimizer steps between resumable checkpoints
log_interval = 1
lora_r = 8
lora_alpha = 16
lora_dropout = 0.05
lora_query = True
lora_key = True
lora_value = True
lora_projection = True
lora_mlp = True
lora_head = True
padding_free = True  # lay the examples of a micro-batch end to end, each attending to itself only: no compute is
# spent on padding (measured on CPU: benchmarks/finetune.py --parts data); False pads each micro-batch to its longest
pad_multiple = 32  # without padding_free, on GPUs: pad micro-batches to a multiple of this length
sample_instruction = "What is 12 plus 30? Give the answer after ####."  # generated at every evaluation


def setup(
    checkpoint_dir: Path = Path("checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct"),
    data_dir: Path = Path("data/arithmetic"),
    out_dir: Path = Path("out/lora/arithmetic"),
    precision: Optional[Literal["bf16-true", "bf16-mixed", "16-true", "16-mixed", "32-true"]] = None,
    quantize: Optional[Literal["bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8"]] = None,
    devices: int = 1,
    num_nodes: int = 1,
    accelerator: Literal["auto", "cpu", "cuda"] = "auto",
    strategy: Literal["auto", "ddp", "fsdp"] = "auto",
    resume: Union[bool, Literal["auto"], Path] = False,
    seed: int = 1337,
    learning_rate: float = learning_rate,
    batch_size: int = batch_size,
    micro_batch_size: int = micro_batch_size,
    micro_batch_tokens: Optional[int] = None,
    max_iters: int = max_iters,
    epochs: Optional[float] = None,
    warmup_steps: int = warmup_steps,
    weight_decay: float = weight_decay,
    grad_clip: float = grad_clip,
    max_seq_length: Optional[int] = None,
    eval_interval: int = eval_interval,
    eval_iters: int = eval_iters,
    save_interval: int = save_interval,
    log_interval: int = log_interval,
    lora_r: int = lora_r,
    lora_alpha: int = lora_alpha,
    lora_dropout: float = lora_dropout,
    lora_query: bool = lora_query,
    lora_key: bool = lora_key,
    lora_value: bool = lora_value,
    lora_projection: bool = lora_projection,
    lora_mlp: bool = lora_mlp,
    lora_head: bool = lora_head,
    activation_checkpointing: bool = False,
    padding_free: bool = padding_free,
    sample_instruction: str = sample_instruction,
) -> None:
    """Finetunes a LoRA adapter on a prepared dataset.

    Args:
        checkpoint_dir: The base model (lit_model.pth, lit_config.json, tokenizer).
        data_dir: A dir written by a `scripts/prepare_*.py` script (train.pt, val.pt, prepare_config.json).
        out_dir: Where the adapter, lora_config.json, metrics.csv, loss.png and resumable checkpoints go.
        precision: Weights/compute precision; default: the fastest that works on the device (bf16-true on GPUs
            with bfloat16 and on CPUs whose bf16 matmuls are faster (measured), 32-true on other CPUs, 16-mixed on
            older GPUs).
        quantize: Quantize the frozen base weights with bitsandbytes (QLoRA): nf4, nf4 with double quantization,
            fp4, fp4-dq or int8.
        devices: Number of devices (processes) per node. More than one uses DDP (gloo on CPU, NCCL on GPUs).
        num_nodes: Number of nodes (machines), each running `devices` processes: launched by torchrun or SLURM.
        accelerator: cuda when there is a GPU (auto), or cpu to force the CPU.
        strategy: Fabric strategy for several devices: DDP (each process holds the whole model), or FSDP (the
            model, adapter and optimizer state sharded over the processes with PyTorch's FSDP2; not with
            --quantize).
        resume: Continue from the newest checkpoint in `out_dir/checkpoints` ("auto"), or from the given file.
        seed: Random seed (data order, LoRA init, dropout).
        learning_rate: Peak learning rate of AdamW.
        batch_size: Examples per optimizer step, over all devices.
        micro_batch_size: Examples per forward/backward pass on one device.
        micro_batch_tokens: Fill each forward/backward pass with examples up to this many tokens instead (padding-free:
            their lengths summed; padded: their number times the longest), longest first, so that memory follows a
            token budget whatever the lengths; an example longer than it runs alone. The global batch stays
            `batch_size` examples, each device taking an equal share. Validation uses it too.
        max_iters: Number of optimizer steps.
        epochs: Train for this many passes over the training set instead of `max_iters` steps.
        warmup_steps: Steps of linear warmup before the cosine decay.
        weight_decay: AdamW weight decay.
        grad_clip: Clip the gradient norm to this value (0 disables).
        max_seq_length: Truncate samples to this many tokens (default: the data's max_seq_length).
        eval_interval: Validate (and generate a sample) every this many steps.
        eval_iters: Number of validation micro-batches.
        save_interval: Write a resumable checkpoint every this many steps.
        log_interval: Print progress every this many steps.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha (the update is scaled by alpha / r).
        lora_dropout: Dropout on the LoRA path.
        lora_query: LoRA on the attention queries.
        lora_key: LoRA on the attention keys.
        lora_value: LoRA on the attention values.
        lora_projection: LoRA on the attention output projection.
        lora_mlp: LoRA on the MLP linears.
        lora_head: LoRA on the LM head.
        activation_checkpointing: Recompute activations in backward to save memory.
        padding_free: Run each micro-batch as one row of its examples laid end to end (positions and attention
            restart at each example, no padding); false pads the examples to the longest of the micro-batch.
        sample_instruction: Instruction answered by the model at every evaluation, to watch it learn.
    """
    import lightning as L

    hparams = {k: v for k, v in locals().items() if k != "L"}
    # every check that can fail happens before anything is loaded or written
    check_valid_checkpoint_dir(checkpoint_dir)
    if not (Path(data_dir) / "train.pt").is_file():
        fail(f"No prepared data in {str(data_dir)!r}. Create it with e.g.: python scripts/prepare_gsm8k.py "
             f"--data_file data/arithmetic/train.jsonl --checkpoint_dir {checkpoint_dir} --destination_path {data_dir}")
    if min(devices, num_nodes) < 1:
        fail(f"--devices and --num_nodes must be at least 1, got {devices} and {num_nodes}")
    world_size = devices * num_nodes
    if micro_batch_tokens is not None and micro_batch_tokens < 1:
        fail(f"--micro_batch_tokens must be at least 1, got {micro_batch_tokens}")
    if micro_batch_tokens is not None and batch_size % world_size:
        fail(f"--batch_size {batch_size} must be a multiple of --devices x --num_nodes = {world_size}")
    if micro_batch_tokens is None and batch_size % (micro_batch_size * world_size):
        fail(f"--batch_size {batch_size} must be a multiple of --micro_batch_size x --devices x --num_nodes = "
             f"{micro_batch_size * world_size}")
    if max_iters < 1 and epochs is None:
        fail("--max_iters must be at least 1 (or set --epochs)")
    if accelerator == "cuda" and not torch.cuda.is_available():
        fail("--accelerator cuda: no CUDA device is available here; use --accelerator cpu")
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if precision is None:
        precision = fastest_precision(accelerator)
    if quantize is not None:
        check_quantize(quantize, precision, accelerator)
    if strategy == "fsdp" and quantize:
        fail("--strategy fsdp does not shard bitsandbytes 4-bit/int8 weights: use --strategy ddp with --quantize "
             "(each process holds the quantized base), or --strategy fsdp without it")
    resume_path = find_resume(out_dir, resume, strategy == "fsdp")
    if strategy == "fsdp":
        from lightning.fabric.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(shard, data_parallel_size=world_size, tensor_parallel_size=1)
    elif world_size > 1:
        strategy = "ddp"

    fabric = L.Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                      precision=precision)
    fabric.launch(main, checkpoint_dir=Path(checkpoint_dir), data_dir=Path(data_dir), out_dir=Path(out_dir),
                  precision=precision, quantize=quantize, resume_path=resume_path, hparams=hparams)


def find_resume(out_dir: Path, resume: Union[bool, str, Path], fsdp: bool) -> Optional[Path]:
    """The checkpoint to resume from: a step-*.pth file, or under FSDP a step-* dir of shards."""
    if resume is False:
        return None
    where = str(Path(out_dir) / "checkpoints")
    if resume is True or resume == "auto":
        found = sorted((Path(out_dir) / "checkpoints").glob("step-*[0-9]" if fsdp else "step-*.pth"))
        if not found and resume is True:
            fail(f"--resume: no {'--strategy fsdp ' if fsdp else ''}checkpoint in {where!r}")
        return found[-1] if found else None
    if not (Path(resume).is_dir() if fsdp else Path(resume).is_file()):
        fail(f"--resume {str(resume)!r} is not a checkpoint {'dir' if fsdp else 'file'}; pass one from {where!r}"
             f"{' (FSDP writes dirs of shards)' if fsdp else ''}")
    return Path(resume)


def shard(model, device_mesh):
    """FSDP2 (`ModelParallelStrategy`'s parallelize function): each block's weights, and the rest (embedding, head,
    final norm) together, sharded over the data-parallel processes; gathered for a block's forward and backward."""
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:
        fully_shard(block, mesh=device_mesh["data_parallel"])
    fully_shard(model, mesh=device_mesh["data_parallel"])
    return model


def main(fabric, checkpoint_dir: Path, data_dir: Path, out_dir: Path, precision: str, quantize: Optional[str],
         resume_path: Optional[Path], hparams: dict) -> None:
    h = hparams
    fabric.seed_everything(h["seed"])  # same LoRA init and data order on every rank
    train_data, val_data, data_config = load_prepared(data_dir)
    max_seq_length = h["max_seq_length"] or data_config.get("max_seq_length") or max(len(x["input_ids"])
                                                                                     for x in train_data)
    config = Config.from_checkpoint(checkpoint_dir)
    max_seq_length = min(max_seq_length, config.block_size)
    steps_per_epoch = max(1, len(train_data) // h["batch_size"])
    max_iters = math.ceil(h["epochs"] * steps_per_epoch) if h["epochs"] is not None else h["max_iters"]

    lora_config = LoRAConfig(r=h["lora_r"], alpha=h["lora_alpha"], dropout=h["lora_dropout"], query=h["lora_query"],
                             key=h["lora_key"], value=h["lora_value"], projection=h["lora_projection"],
                             mlp=h["lora_mlp"], head=h["lora_head"])
    t0 = time.perf_counter()
    model = load_model(checkpoint_dir, precision=precision, quantize=quantize, device=fabric.device,
                       lora_config=lora_config, max_seq_length=max_seq_length)
    mark_only_lora_as_trainable(model)
    model.train()  # load_model returns eval mode; LoRA dropout needs train mode
    model.activation_checkpointing = h["activation_checkpointing"]
    fabric.print(f"Loaded {str(checkpoint_dir)!r} in {time.perf_counter() - t0:.1f}s "
                 f"(precision {precision}, quantize {quantize})")
    fabric.print(trainable_report(model))
    fabric.print(f"frozen params: {num_parameters(model, requires_grad=False):,}")

    model = fabric.setup_module(model)  # the optimizer comes after: FSDP replaces the parameters by their shards
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=h["learning_rate"], weight_decay=h["weight_decay"])
    optimizer = fabric.setup_optimizers(optimizer)
    raw_model = model.module  # the GPT itself: its parameter names are the adapter's keys
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(h["warmup_steps"], max_iters))

    tokenizer = Tokenizer(checkpoint_dir)
    prompt_style = PromptStyle.from_name(data_config["prompt_style"])
    run_config = {"lora": lora_config.to_dict(), "model": config.to_dict(),
                  "checkpoint_dir": str(checkpoint_dir.resolve()), "prompt_style": prompt_style.name,
                  "data": {**data_config, "data_dir": str(data_dir.resolve())},
                  "train": {k: (str(v) if isinstance(v, Path) else v) for k, v in h.items()},
                  "precision": precision, "quantize": quantize}
    state = {"iter_num": 0, "step_count": 0, "data_rng": torch.Generator().manual_seed(h["seed"]),
             "metrics": [], "elapsed": 0.0}
    if resume_path is not None:
        resume_from(resume_path, raw_model, optimizer, scheduler, state, fabric)

    fabric.barrier()
    train(fabric, model, raw_model, optimizer, scheduler, train_data, val_data, tokenizer, prompt_style, out_dir,
          run_config, state, max_iters, max_seq_length, h)


def lr_lambda(warmup_steps: int, max_iters: int):
    """Linear warmup to the peak learning rate, then cosine decay to `min_lr_ratio` of it."""
    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, max_iters - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return fn


def train(fabric, model, raw_model, optimizer, scheduler, train_data: list, val_data: list, tokenizer: Tokenizer,
          prompt_style: PromptStyle, out_dir: Path, run_config: dict, state: dict, max_iters: int,
          max_seq_length: int, h: dict) -> None:
    order = longest_first(train_data)  # indices: longest first, so an out-of-memory shows up at step one
    n_train = len(train_data)
    tokens_done, t_start = 0, time.perf_counter()
    elapsed_before = state["elapsed"]
    if state["step_count"] == 0 and fabric.global_rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("metrics.csv", "loss.png"):  # a fresh run starts a fresh log
            (out_dir / stale).unlink(missing_ok=True)

    while state["step_count"] < max_iters:
        step = state["step_count"]
        # the global batch of this step: the same on every rank; rank r takes micro-batches r, r + world, ...
        if step == 0:
            global_idx = order[: h["batch_size"]]
        else:
            global_idx = torch.randint(n_train, (h["batch_size"],), generator=state["data_rng"]).tolist()
        mine = my_micro_batches(global_idx, train_data, max_seq_length, fabric, h)
        # the loss of the step: the token losses of the whole global batch (all micro-batches, all devices) summed,
        # divided by its number of targets; every rank counts them from the same global batch (no communication)
        n_targets = max(1, sum(target_count(train_data[j], max_seq_length) for j in global_idx))
        loss_sum = 0.0
        for i, idx in enumerate(mine):
            input_ids, targets, lengths = micro_batch([train_data[j] for j in idx], max_seq_length, fabric, h)
            with fabric.no_backward_sync(model, enabled=i < len(mine) - 1):
                loss = response_loss(model, input_ids, targets, reduction="sum", lengths=lengths)
                fabric.backward(loss * (fabric.world_size / n_targets))  # DDP averages the gradients of the ranks
            loss_sum += loss.item()
            del loss  # its graph (holding the logits the loss was computed from) would outlive the next forward pass
            # tokens the model read (padding excluded), over all devices
            read = sum(min(len(train_data[j]["input_ids"]), max_seq_length) - 1 for j in idx)
            tokens_done += read * fabric.world_size
        loss_value = all_sum(fabric, loss_sum) / n_targets
        if not math.isfinite(loss_value):
            stop_not_finite(fabric, f"loss became {loss_value}", step + 1, out_dir)
        if h["grad_clip"] > 0:
            fabric.clip_gradients(model, optimizer, max_norm=h["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        state["step_count"] = step = step + 1
        state["iter_num"] += len(mine)

        elapsed = elapsed_before + time.perf_counter() - t_start
        row = {"step": step, "loss": loss_value, "lr": lr, "val_loss": "", "tokens_per_sec": "",
               "elapsed": round(elapsed, 2)}
        if step % h["log_interval"] == 0 or step == max_iters:
            tok_s = tokens_done / max(1e-9, time.perf_counter() - t_start)
            eta = (elapsed - elapsed_before) / max(1, step - state.get("start_step", 0)) * (max_iters - step)
            row["tokens_per_sec"] = round(tok_s, 1)
            fabric.print(f"step {step}/{max_iters} | loss {loss_value:.4f} | lr {lr:.2e} | {tok_s:,.0f} tokens/s | "
                         f"elapsed {fmt_time(elapsed)} | eta {fmt_time(eta)} | peak mem {peak_memory(fabric):.2f} GB",
                         flush=True)
        if step % h["eval_interval"] == 0 or step == max_iters:
            val_loss = validate(fabric, model, val_data, max_seq_length, h)
            row["val_loss"] = round(val_loss, 4)
            fabric.print(f"step {step}: val loss {val_loss:.4f}, val ppl {math.exp(min(val_loss, 50)):.2f}")
            sample = generate_sample(fabric, raw_model, tokenizer, prompt_style, h["sample_instruction"])
            fabric.print(f"sample: {h['sample_instruction']!r} -> {sample!r}", flush=True)
        state["metrics"].append(row)
        state["elapsed"] = elapsed
        if step % h["save_interval"] == 0 or step == max_iters:
            if not all(torch.isfinite(v).all() for v in adapter_weights(raw_model).values()):
                stop_not_finite(fabric, "LoRA weights became inf/NaN", step, out_dir)
            path = out_dir / "checkpoints" / f"step-{step:06d}{'' if is_sharded(raw_model) else '.pth'}"
            save_checkpoint(fabric, raw_model, optimizer, scheduler, state, path)
            write_metrics(fabric, state["metrics"], out_dir)

    save_adapter(fabric, raw_model, out_dir, run_config, tokenizer)
    if fabric.global_rank == 0:
        fabric.print(f"Saved the adapter to {str(out_dir / 'lit_model_lora_finetuned.pth')!r}. Next: "
                     f"python scripts/merge_lora.py --lora_path {out_dir}  or  python generate/lora.py "
                     f"--lora_path {out_dir} --prompt \"...\"")


def stop_not_finite(fabric, what: str, step: int, out_dir: Path) -> None:
    """Stops the run on every rank with one message; the last checkpoint written stays the last good one."""
    fabric.print(f"error: {what} at step {step}; stopping. The last good checkpoint is in "
                 f"{str(out_dir / 'checkpoints')!r}: lower --learning_rate or check the data, then --resume auto",
                 file=sys.stderr)
    raise SystemExit(1)


def trainable_parameters(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def my_micro_batches(global_idx: list[int], data: list[dict], max_seq_length: int, fabric, h: dict) -> list:
    """This rank's micro-batches (lists of indices into `data`) of the global batch `global_idx`: micro-batches of
    `micro_batch_size`, rank r taking r, r + world, ...; or, with `micro_batch_tokens`, rank r's share
    global_idx[r::world] filled up to the token budget, in as many micro-batches as the rank that needs the most."""
    world, rank = fabric.world_size, fabric.global_rank
    if h["micro_batch_tokens"] is None:
        size = h["micro_batch_size"]
        return [global_idx[i: i + size] for i in range(0, len(global_idx), size)][rank::world]
    shares = [global_idx[r::world] for r in range(world)]
    lengths = [[min(len(data[j]["input_ids"]), max_seq_length) - 1 for j in share] for share in shares]
    padded = not h["padding_free"]
    count = max(len(token_budget_batches(n, h["micro_batch_tokens"], padded)) for n in lengths)
    return [[shares[rank][i] for i in batch]
            for batch in token_budget_batches(lengths[rank], h["micro_batch_tokens"], padded, count)]


def micro_batch(samples: list[dict], max_seq_length: int, fabric, h: dict) -> tuple:
    """(input_ids, targets, lengths) on the device: packed in one row (`lengths` of the examples in it), or padded
    to the longest (`lengths` None; on GPUs to a multiple of `pad_multiple`: few distinct shapes, little kernel
    warm-up; CPU kernels have no per-shape warm-up, measured)."""
    if h["padding_free"]:
        return pack(samples, max_seq_length, fabric.device)
    pad = pad_multiple if fabric.device.type == "cuda" else 1
    return (*collate(samples, max_seq_length, pad, fabric.device), None)


@torch.no_grad()
def validate(fabric, model, val_data: list, max_seq_length: int, h: dict) -> float:
    """The mean token loss over the first `eval_iters` x `micro_batch_size` examples of the validation set (each rank
    runs them all)."""
    model.eval()
    total, count = 0.0, 0
    mbs = h["micro_batch_size"]
    examples = list(range(min(len(val_data), h["eval_iters"] * mbs)))
    if h["micro_batch_tokens"] is None:
        batches = [examples[start: start + mbs] for start in range(0, len(examples), mbs)]
    else:  # the same examples, in micro-batches of the token budget
        lengths = [min(len(val_data[i]["input_ids"]), max_seq_length) - 1 for i in examples]
        batches = token_budget_batches(lengths, h["micro_batch_tokens"], not h["padding_free"])
    for batch in batches:
        input_ids, targets, lengths = micro_batch([val_data[i] for i in batch], max_seq_length, fabric, h)
        total += response_loss(model, input_ids, targets, reduction="sum", lengths=lengths).item()
        count += int((targets != -100).sum())
    model.train()
    return total / max(1, count)


def all_sum(fabric, value: float) -> float:
    """The sum of `value` over all ranks."""
    if fabric.world_size == 1:
        return value
    return float(fabric.all_reduce(torch.tensor(value, dtype=torch.float64, device=fabric.device), reduce_op="sum"))


@torch.no_grad()
def generate_sample(fabric, module, tokenizer: Tokenizer, prompt_style: PromptStyle, instruction: str) -> str:
    module.eval()
    prompt = tokenizer.encode(prompt_style.apply(instruction)).to(fabric.device)
    max_new = min(64, module.max_seq_length - len(prompt))
    out = generate(module, prompt, max_new, temperature=0.0,
                   stop_tokens=prompt_style.stop_tokens(tokenizer)) if max_new > 0 else prompt[:0]
    module.clear_kv_cache()
    module.train()
    return tokenizer.decode(out)


def is_sharded(model) -> bool:
    """Whether FSDP holds `model`'s weights as shards (DTensors)."""
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def adapter_weights(model) -> dict:
    """The LoRA weights as whole tensors (under FSDP gathered from the shards: every rank must call this)."""
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in lora_state_dict(model).items()}


def sharded_state(model, optimizer) -> dict:
    """This rank's shards of the adapter and of the optimizer state, keyed by parameter name (FSDP checkpoints)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"adapter": {k: v for k, v in model_state.items() if lora_filter(k)}, "optimizer": optimizer_state}


def save_checkpoint(fabric, model, optimizer, scheduler, state: dict, path: Path) -> None:
    """A resumable checkpoint: adapter, optimizer, scheduler, step, data and RNG state (written atomically). Under
    FSDP a dir: each rank writes its shards of the adapter and optimizer state (torch.distributed.checkpoint), rank 0
    the rest (meta.pth)."""
    meta = {"scheduler": scheduler.state_dict(), "iter_num": state["iter_num"],
            "step_count": state["step_count"], "data_rng": state["data_rng"].get_state(),
            "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
            "metrics": state["metrics"], "elapsed": state["elapsed"]}
    if fabric.device.type == "cuda":  # LoRA dropout's masks are drawn on the GPU
        meta["cuda_rng"] = torch.cuda.get_rng_state(fabric.device)
    if not is_sharded(model):
        if fabric.global_rank == 0:
            atomic_save({"adapter": lora_state_dict(model), "optimizer": optimizer.state_dict(), **meta}, path)
        fabric.barrier()
        return
    import torch.distributed.checkpoint as dcp

    tmp = path.with_name(path.name + ".tmp")
    if fabric.global_rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    fabric.barrier()
    dcp.save(sharded_state(model, optimizer), checkpoint_id=tmp)
    if fabric.global_rank == 0:
        atomic_save(meta, tmp / "meta.pth")
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    fabric.barrier()


def resume_from(path: Path, model, optimizer, scheduler, state: dict, fabric) -> None:
    if is_sharded(model):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        if not (path / "meta.pth").is_file():
            fail(f"{str(path)!r} is not a resumable --strategy fsdp checkpoint of finetune/lora.py (no meta.pth)")
        shards = sharded_state(model, optimizer)
        dcp.load(shards, checkpoint_id=path)
        set_state_dict(model, optimizer, model_state_dict=shards["adapter"], optim_state_dict=shards["optimizer"],
                       options=StateDictOptions(strict=False))
        checkpoint = lazy_load(path / "meta.pth")
    else:
        checkpoint = lazy_load(path)
        missing = [k for k in ("adapter", "optimizer", "scheduler", "step_count") if k not in checkpoint]
        if missing:
            fail(f"{str(path)!r} is not a resumable checkpoint of finetune/lora.py (no {', '.join(missing)})")
        from lit_gpt.lora import load_lora_state_dict

        load_lora_state_dict(model, checkpoint["adapter"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    state.update(iter_num=checkpoint["iter_num"], step_count=checkpoint["step_count"],
                 metrics=list(checkpoint["metrics"]), elapsed=checkpoint["elapsed"],
                 start_step=checkpoint["step_count"])
    state["data_rng"].set_state(checkpoint["data_rng"])
    torch.set_rng_state(checkpoint["torch_rng"])
    if fabric.device.type == "cuda" and "cuda_rng" in checkpoint:
        torch.cuda.set_rng_state(checkpoint["cuda_rng"], fabric.device)
    random.setstate(checkpoint["python_rng"])
    fabric.print(f"Resumed from {str(path)!r} at step {state['step_count']}")


def save_adapter(fabric, model, out_dir: Path, run_config: dict, tokenizer: Tokenizer) -> None:
    """The adapter (LoRA weights only, one plain file also under FSDP) and everything needed to rebuild the model it
    belongs to."""
    adapter = adapter_weights(model)
    if fabric.global_rank == 0:
        atomic_save(adapter, out_dir / "lit_model_lora_finetuned.pth")
        atomic_write_text(out_dir / "lora_config.json", json.dumps(run_config, indent=2, default=str))
        atomic_write_text(out_dir / "prompt_style.json", json.dumps({"name": run_config["prompt_style"]}))
    fabric.barrier()


def write_metrics(fabric, metrics: list, out_dir: Path) -> None:
    """metrics.csv and a loss-curve PNG (train and validation), both written atomically."""
    if fabric.global_rank != 0 or not metrics:
        return
    with atomic_path(out_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as fp:
        writer = csv.DictWriter(fp, fieldnames=list(metrics[0]))
        writer.writeheader()
        writer.writerows(metrics)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in metrics], [r["loss"] for r in metrics], label="train loss", alpha=0.7)
    val = [(r["step"], r["val_loss"]) for r in metrics if r["val_loss"] != ""]
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(f"LoRA finetune: {out_dir}")
    ax.legend()
    ax.grid(alpha=0.3)
    with atomic_path(out_dir / "loss.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def peak_memory(fabric) -> float:
    """Peak memory in GB: CUDA allocator peak on GPUs, the process's peak resident set size on CPU."""
    if fabric.device.type == "cuda":
        return torch.cuda.max_memory_allocated(fabric.device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def fmt_time(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(setup)
