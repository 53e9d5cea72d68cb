"""The training loop every finetune script shares: its settings, the run's out dir, Fabric, the model with its LoRA
adapter, AdamW and the learning-rate schedule, epochs, micro-batching with the exact token-sum loss, validation, the
progress line, metrics.csv + plots + experiment trackers, resumable checkpoints that know their run, and the adapter.

A finetune script (`finetune/lora.py`) supplies its hyperparameters (a `TrainArgs` at its top), its data and its
`Objective`: what a micro-batch's loss is, what each example counts for and what to do at each evaluation.

An out dir holds, when a run is done, `lit_model_lora_finetuned.pth` (the adapter), `prompt_style.json` and
`lora_config.json` (the run's record: model, data, LoRA, hyperparameters, prompt style, the adapter's sha256),
written in that order, each atomically: `lora_config.json` comes last and names the adapter it belongs to, so that a
reader (`lit_gpt.load`) never pairs an adapter with another run's settings. Besides: `metrics.csv`, `loss.png`,
and `checkpoints/step-NNNNNN.pth` (FSDP: dirs of shards), each holding the record of its run.
"""

import csv
import dataclasses
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Literal, Optional, Protocol, Union

import torch

from lit_gpt.config import Config
from lit_gpt.data import token_budget_batches
from lit_gpt.load import ADAPTER_FILE, RUN_FILE, check_adapter_fits, load_lora_run, load_model
from lit_gpt.lora import (
    LoRAConfig,
    keep_reference,
    load_lora_state_dict,
    lora_filter,
    lora_state_dict,
    mark_only_lora_as_trainable,
    trainable_report,
)
from lit_gpt.moe import load_balancing_loss, router_logits
from lit_gpt.quantize import check_quantize
from lit_gpt.utils import (
    atomic_path,
    atomic_save,
    atomic_write_text,
    fail,
    fastest_precision,
    file_sha256,
    lazy_load,
    num_parameters,
    peak_memory_gb,
)

RUN_FILES = (ADAPTER_FILE, "prompt_style.json", RUN_FILE)  # written in this order: the record last


@dataclass
class TrainArgs:
    """The hyperparameters of a finetune run. Their defaults are at the top of each finetune script.

    Args:
        learning_rate: Peak learning rate of AdamW.
        lr_schedule: The learning rate after warmup: cosine or linear decay to min_lr_ratio x the peak, or constant.
        warmup_fraction: The first this fraction of the steps warm the learning rate up linearly to its peak.
        min_lr_ratio: Where the cosine or linear decay ends, as a fraction of the peak learning rate.
        batch_size: Examples per optimizer step, over all devices.
        micro_batch_size: Examples per forward/backward pass on one device; gradients are accumulated up to
            batch_size.
        micro_batch_tokens: Fill each forward/backward pass with examples up to this many tokens instead
            (padding-free: their lengths summed; padded: their number times the longest), longest first, so that
            memory follows a token budget whatever the lengths; an example longer than it runs alone. The global batch
            stays batch_size examples, each device taking an equal share. Validation uses it too.
        max_iters: Number of optimizer steps.
        epochs: Train for this many passes over the training set instead of max_iters steps. Each epoch visits every
            example once, in a new seeded order (the first batch of the first: the longest examples, so that an
            out-of-memory shows at step one); batches run on across an epoch's end.
        weight_decay: AdamW weight decay.
        grad_clip: Clip the gradient norm to this value (0 disables).
        max_seq_length: Truncate examples to this many tokens (default: the data's max_seq_length).
        eval_interval: Validate (and run the script's evaluation, e.g. a sample generation) every this many steps.
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
        lora_experts: LoRA on the expert tensors of mixture-of-experts layers (one pair per tensor, as PEFT's
            target_parameters; no dropout there); the router stays frozen.
        router_aux_loss_coef: Mixture-of-experts models: add this times the routers' load-balancing loss (the Switch
            Transformer's, as transformers computes it over all layers: n_expert * sum_e f_e P_e) to each training
            micro-batch's loss, a prompt that answers share counted once per answer (as in TRL's rows); the step's is
            the mean of its micro-batches' (one micro-batch: transformers' `loss + router_aux_loss_coef * aux_loss`).
            The routers stay frozen (as PEFT leaves them): it trains the adapter through the routers' inputs. Needs
            padding_free (padding would count as tokens). Printed as aux_loss, apart from loss. None: the model's
            config.json value (transformers' default, as TRL); 0: off.
        padding_free: Run each micro-batch as one row of its examples laid end to end (positions and attention
            restart at each example, no padding); false pads the examples to the longest of the micro-batch.
        pad_multiple: Without padding_free, on GPUs: pad micro-batches to a multiple of this length (few distinct
            shapes, little kernel warm-up; CPUs pad to the longest).
        activation_checkpointing: Recompute activations in backward to save memory.
        seed: Random seed (data order, LoRA init, dropout).
    """

    learning_rate: float
    lr_schedule: Literal["cosine", "linear", "constant"]
    warmup_fraction: float
    min_lr_ratio: float
    batch_size: int
    micro_batch_size: int
    micro_batch_tokens: Optional[int]
    max_iters: int
    epochs: Optional[float]
    weight_decay: float
    grad_clip: float
    max_seq_length: Optional[int]
    eval_interval: int
    eval_iters: int
    save_interval: int
    log_interval: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_query: bool
    lora_key: bool
    lora_value: bool
    lora_projection: bool
    lora_mlp: bool
    lora_head: bool
    lora_experts: bool
    router_aux_loss_coef: Optional[float]
    padding_free: bool
    pad_multiple: int
    activation_checkpointing: bool
    seed: int

    def lora_config(self) -> LoRAConfig:
        return LoRAConfig(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout, query=self.lora_query,
                          key=self.lora_key, value=self.lora_value, projection=self.lora_projection, mlp=self.lora_mlp,
                          head=self.lora_head, experts=self.lora_experts)


# settings that change how a run is computed, not what it computes: a resume may change them
NOT_DEFINING = {"micro_batch_size", "micro_batch_tokens", "eval_interval", "eval_iters", "save_interval",
                "log_interval", "padding_free", "pad_multiple", "activation_checkpointing"}


@dataclass
class Launch:
    """Where and how a finetune script runs: the same flags for every finetune script.

    Args:
        precision: Weights/compute precision; default: the fastest that works on the device (bf16-true on GPUs with
            bfloat16 and on CPUs whose bf16 matmuls are faster (measured), 32-true on other CPUs, 16-mixed on older
            GPUs).
        quantize: Quantize the frozen base weights with bitsandbytes (QLoRA): nf4, nf4 with double quantization, fp4,
            fp4-dq or int8.
        devices: Number of devices (processes) per node. More than one uses DDP (gloo on CPU, NCCL on GPUs).
        num_nodes: Number of nodes (machines), each running `devices` processes: launched by torchrun or SLURM.
        accelerator: cuda when there is a GPU (auto), or cpu to force the CPU.
        strategy: Fabric strategy for several devices: DDP (each process holds the whole model), or FSDP (the model,
            adapter and optimizer state sharded over the processes with PyTorch's FSDP2; not with --quantize).
        resume: Continue from the newest checkpoint in `out_dir/checkpoints` ("auto": if there is one; true: there
            must be one), or from the given checkpoint. Only a checkpoint of the same run (model, data, LoRA,
            hyperparameters) resumes.
        overwrite: Start afresh in an out dir that holds another run's checkpoints or adapter, removing them.
        logger: Where metrics go besides metrics.csv and its plot: csv (nowhere else), tensorboard (out_dir/logs),
            wandb or mlflow (out_dir/mlruns), through Fabric's loggers.
    """

    precision: Optional[Literal["bf16-true", "bf16-mixed", "16-true", "16-mixed", "32-true"]] = None
    quantize: Optional[Literal["bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8"]] = None
    devices: int = 1
    num_nodes: int = 1
    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    resume: Union[bool, Literal["auto"], Path] = False
    overwrite: bool = False
    logger: Literal["csv", "tensorboard", "wandb", "mlflow"] = "csv"


@dataclass
class Run:
    """A checked finetune run, ready to launch: `prepare_run` makes it before anything is loaded or written."""

    checkpoint_dir: Path
    out_dir: Path
    hp: TrainArgs
    launch: Launch
    precision: str
    accelerator: str
    record: dict  # what defines the run, also what lora_config.json holds (without the adapter's sha256)
    resume_path: Optional[Path]


def prepare_run(checkpoint_dir: Path, data_dir: Path, data_config: dict, out_dir: Path, launch: Launch, hp: TrainArgs,
                objective: str, objective_args: Optional[dict] = None) -> Run:
    """Checks the flags, resolves precision and device, and finds the checkpoint to resume from (of the same run
    only). Every check that can fail happens here, before anything is loaded or written. `objective_args`: the
    script's own settings (e.g. DPO's beta), recorded with the hyperparameters."""
    world_size = launch.devices * launch.num_nodes
    if min(launch.devices, launch.num_nodes) < 1:
        fail(f"--devices and --num_nodes must be at least 1, got {launch.devices} and {launch.num_nodes}")
    if hp.micro_batch_tokens is not None and hp.micro_batch_tokens < 1:
        fail(f"--micro_batch_tokens must be at least 1, got {hp.micro_batch_tokens}")
    if hp.micro_batch_tokens is not None and hp.batch_size % world_size:
        fail(f"--batch_size {hp.batch_size} must be a multiple of --devices x --num_nodes = {world_size}")
    if hp.micro_batch_tokens is None and hp.batch_size % (hp.micro_batch_size * world_size):
        fail(f"--batch_size {hp.batch_size} must be a multiple of --micro_batch_size x --devices x --num_nodes = "
             f"{hp.micro_batch_size * world_size}")
    if hp.max_iters < 1 and hp.epochs is None:
        fail("--max_iters must be at least 1 (or set --epochs)")
    if hp.epochs is not None and not hp.epochs > 0:
        fail(f"--epochs must be above 0, got {hp.epochs}")
    if not 0 <= hp.warmup_fraction < 1 or not 0 <= hp.min_lr_ratio <= 1:
        fail(f"--warmup_fraction must be in [0, 1) and --min_lr_ratio in [0, 1], got {hp.warmup_fraction} and "
             f"{hp.min_lr_ratio}")
    accelerator = launch.accelerator
    if accelerator == "cuda" and not torch.cuda.is_available():
        fail("--accelerator cuda: no CUDA device is available here; use --accelerator cpu")
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    precision = launch.precision or fastest_precision(accelerator)
    if launch.quantize is not None:
        check_quantize(launch.quantize, precision, accelerator)
    if launch.strategy == "fsdp" and launch.quantize:
        fail("--strategy fsdp does not shard bitsandbytes 4-bit/int8 weights: use --strategy ddp with --quantize "
             "(each process holds the quantized base), or --strategy fsdp without it")
    config = Config.from_checkpoint(checkpoint_dir)
    coef = hp.router_aux_loss_coef
    if coef is not None and coef < 0:
        fail(f"--router_aux_loss_coef must be at least 0, got {coef}")
    if coef and not any(config.is_sparse(i) for i in range(config.n_layer)):
        fail(f"--router_aux_loss_coef: {config.name!r} has no mixture-of-experts layers; leave it unset")
    hp = dataclasses.replace(hp, router_aux_loss_coef=config.router_aux_loss_coef if coef is None else coef)
    if hp.router_aux_loss_coef and not hp.padding_free:
        fail(f"--padding_free false: the routers' load-balancing loss (--router_aux_loss_coef "
             f"{hp.router_aux_loss_coef}{', the model default' if coef is None else ''}) would count the padding as "
             "tokens; keep --padding_free true or set --router_aux_loss_coef 0")
    record = {"objective": objective, "checkpoint_dir": str(Path(checkpoint_dir).resolve()),
              "model": config.to_dict(), "lora": hp.lora_config().to_dict(),
              "prompt_style": data_config["prompt_style"],
              "data": {**data_config, "data_dir": str(Path(data_dir).resolve())},
              "train": {k: str(v) if isinstance(v, Path) else v
                        for k, v in {**dataclasses.asdict(hp), **(objective_args or {})}.items()},
              "precision": precision, "quantize": launch.quantize}
    resume_path = find_resume(Path(out_dir), launch, record)
    return Run(Path(checkpoint_dir), Path(out_dir), hp, launch, precision, accelerator, record, resume_path)


def start_from_adapter(lora_path: Optional[Path], hp: TrainArgs, checkpoint_dir: Path) -> tuple:
    """(the starting adapter's run or None, hp with the adapter's LoRA settings, what the run record says of it) for
    a --lora_path to continue training from (DPO, GRPO after SFT); fails if the adapter does not fit the model."""
    if lora_path is None:
        return None, hp, {"lora_path": None}
    start = load_lora_run(lora_path)
    check_adapter_fits(start, Config.from_checkpoint(checkpoint_dir), checkpoint_dir)
    changed = {f"lora_{k}": getattr(start.lora, k) for k in ("r", "alpha", "query", "key", "value", "projection",
                                                             "mlp", "head")
               if getattr(hp, f"lora_{k}") != getattr(start.lora, k)}
    if changed:
        print(f"--lora_path: the starting adapter's LoRA settings: {changed}")
        hp = dataclasses.replace(hp, **changed)
    return start, hp, {"lora_path": str(start.adapter_file.resolve()),
                       "lora_path_sha256": file_sha256(start.adapter_file)}


def find_resume(out_dir: Path, launch: Launch, record: dict) -> Optional[Path]:
    """The checkpoint to resume from (a step-*.pth file, or under FSDP a step-* dir of shards), None for a fresh run.
    A checkpoint of another run is refused, naming what differs; so is a fresh run into a dir holding one."""
    fsdp, resume = launch.strategy == "fsdp", launch.resume
    where = str(out_dir / "checkpoints")
    found = sorted((out_dir / "checkpoints").glob("step-*[0-9]" if fsdp else "step-*.pth"))
    if resume is False or (resume == "auto" and not found):
        used = [str(p.relative_to(out_dir)) for p in [*sorted((out_dir / "checkpoints").glob("step-*")),
                                                        out_dir / ADAPTER_FILE] if p.exists()]
        if used and not launch.overwrite:
            fail(f"{str(out_dir)!r} holds another run ({used[-1]}): continue it with --resume auto, start a new one "
                 f"with another --out_dir, or replace it with --overwrite true")
        return None
    if launch.overwrite:
        fail("--overwrite true starts afresh: it cannot go with --resume; drop one of them")
    if resume is True or resume == "auto":
        if not found:
            fail(f"--resume: no {'--strategy fsdp ' if fsdp else ''}checkpoint in {where!r}")
        path = found[-1]
    else:
        path = Path(resume)
        if not (path.is_dir() if fsdp else path.is_file()):
            fail(f"--resume {str(resume)!r} is not a checkpoint {'dir' if fsdp else 'file'}; pass one from {where!r}"
                 f"{' (FSDP writes dirs of shards)' if fsdp else ''}")
    check_same_run(path, lazy_load(path / "meta.pth" if fsdp else path).get("run"), record)
    return path


def check_same_run(path: Path, saved: Optional[dict], record: dict) -> None:
    """Fails, naming the settings that differ, unless the checkpoint at `path` is of the run `record` describes."""
    if not isinstance(saved, dict):
        fail(f"{str(path)!r} does not record its run (not a checkpoint of this version's finetune scripts): start "
             f"afresh with --overwrite true, or use another --out_dir")

    def defining(r: dict) -> dict:
        flat = {k: v for k, v in r.items() if k not in ("train", "data", "model", "lora")}
        flat.update({k: v for k, v in r.get("train", {}).items()  # LoRA's settings come under lora.*
                     if k not in NOT_DEFINING and not k.startswith("lora_")})
        flat.update({f"data.{k}": v for k, v in r.get("data", {}).items()})
        flat.update({f"model.{k}": v for k, v in r.get("model", {}).items()})
        flat.update({f"lora.{k}": v for k, v in r.get("lora", {}).items()})
        return flat

    old, new = defining(saved), defining(json.loads(json.dumps(record, default=str)))
    differ = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
              if old.get(k) != new.get(k)]
    if differ:
        fail(f"--resume: {str(path)!r} is a checkpoint of another run ({'; '.join(differ[:6])}"
             f"{f'; and {len(differ) - 6} more' if len(differ) > 6 else ''}): resume with that run's settings, or "
             f"start a new run with another --out_dir (or --overwrite true)")


def make_fabric(run: Run):
    """The Fabric of a run: strategy (DDP, FSDP2), precision and the experiment tracker."""
    import lightning as L

    launch, world_size = run.launch, run.launch.devices * run.launch.num_nodes
    strategy = launch.strategy
    if strategy == "fsdp":
        from lightning.fabric.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(shard, data_parallel_size=world_size, tensor_parallel_size=1)
    elif world_size > 1:
        strategy = "ddp"
    return L.Fabric(accelerator=run.accelerator, devices=launch.devices, num_nodes=launch.num_nodes, strategy=strategy,
                    precision=run.precision, loggers=tracker(launch.logger, run.out_dir))


def tracker(name: str, out_dir: Path) -> list:
    """Fabric's logger for `--logger` (none for csv: metrics.csv is always written)."""
    if name == "csv":
        return []
    needs = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}[name]
    import importlib.util

    if not any(importlib.util.find_spec(package) for package in needs):
        fail(f"--logger {name} needs the {needs[0]} package: pip install {needs[0]}")
    if name == "tensorboard":
        from lightning.fabric.loggers import TensorBoardLogger

        return [TensorBoardLogger(root_dir=out_dir / "logs", name="")]
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return [WandbLogger(project="lit-lora", name=out_dir.name, save_dir=str(out_dir))]
    from lightning.pytorch.loggers import MLFlowLogger

    return [MLFlowLogger(experiment_name="lit-lora", run_name=out_dir.name, tracking_uri=f"file:{out_dir / 'mlruns'}")]


def shard(model, device_mesh):
    """FSDP2 (`ModelParallelStrategy`'s parallelize function): each block's weights, and the rest (embedding, head,
    final norm) together, sharded over the data-parallel processes; gathered for a block's forward and backward."""
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:
        fully_shard(block, mesh=device_mesh["data_parallel"])
    fully_shard(model, mesh=device_mesh["data_parallel"])
    return model


class Objective(Protocol):
    """What a finetune script trains for. The loss of a step is `loss`'s sums over the step's micro-batches (on every
    device) divided by the `count`s of its examples summed: the same whatever the micro-batching."""

    def length(self, sample: dict) -> int:
        """Tokens the model reads for this example (token budgets, tokens/s)."""

    def count(self, sample: dict) -> int:
        """What this example adds to the step's normalizer (SFT: its target tokens)."""

    def loss(self, model, samples: list) -> tuple[torch.Tensor, dict]:
        """The summed loss of a micro-batch (a tensor to backpropagate) and its metrics' sums (floats, optional)."""

    def evaluate(self, fabric, model) -> None:
        """At every evaluation, after validation (e.g. print a sample generation); `model` is the unwrapped GPT."""

    # optional: `perplexity = True`: validation also prints exp(loss) (a loss that is a mean token cross-entropy);
    # `start_batch(samples)`, called with all the examples of a step (of every device) before its
    # micro-batches, and with the validation examples before validation: for a loss normalized by a batch total
    # other than the sum of `count`s (ORPO's token mean next to its pair mean);
    # `rollout(fabric, model, micro_batches, step) -> (micro_batches, n)` (reinforcement learning): called with this
    # device's micro-batches of the step's examples (prompts) and the unwrapped model, returns what the step trains
    # on instead (e.g. the prompts' sampled completions) and the step's normalizer over all devices;
    # `step_metrics(fabric) -> metrics`: after the step's micro-batches, metrics that are not sums (floats, the same
    # on every device);
    # `repeat_batches = k`: each batch of examples makes k consecutive steps (GRPO's num_iterations);
    # `validate(fabric, model, val_data) -> metrics` replaces the loss over the validation examples (all given);
    # `progress = [metric names]`: the metrics of the progress line (default: all; metrics.csv has all).


def max_seq_length(hp: TrainArgs, data_config: dict, config: Config, train_data: list, length: Callable) -> int:
    """--max_seq_length, else the data's, else its longest example; at most the model's context."""
    longest = hp.max_seq_length or data_config.get("max_seq_length") or max(map(length, train_data))
    return min(longest, config.block_size)


class Trainer:
    """The model with its adapter, the optimizer and schedule, the run's state; `fit` trains it."""

    def __init__(self, fabric, run: Run, max_seq_length: int, start_adapter: Optional[dict] = None) -> None:
        """`start_adapter`: LoRA weights to start from (e.g. an SFT adapter); the model keeps a frozen copy as its
        reference (`lit_gpt.lora.reference_model`)."""
        hp = self.hp = run.hp
        self.fabric, self.run, self.out_dir = fabric, run, run.out_dir
        fabric.seed_everything(hp.seed, verbose=False)  # same LoRA init and dropout on every rank
        t0 = time.perf_counter()
        model = load_model(run.checkpoint_dir, precision=run.precision, quantize=run.launch.quantize,
                           device=fabric.device, lora_config=hp.lora_config(), max_seq_length=max_seq_length)
        if start_adapter is not None:
            load_lora_state_dict(model, start_adapter)
            keep_reference(model)
        mark_only_lora_as_trainable(model)
        model.train()  # load_model returns eval mode; LoRA dropout needs train mode
        model.activation_checkpointing = hp.activation_checkpointing
        fabric.print(f"Loaded {str(run.checkpoint_dir)!r} in {time.perf_counter() - t0:.1f}s "
                     f"(precision {run.precision}, quantize {run.launch.quantize})")
        fabric.print(trainable_report(model))
        fabric.print(f"frozen params: {num_parameters(model, requires_grad=False):,}")
        self.model = fabric.setup_module(model)  # the optimizer comes after: FSDP replaces parameters by their shards
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=hp.learning_rate,
                                      weight_decay=hp.weight_decay)
        self.optimizer = fabric.setup_optimizers(optimizer)
        self.raw_model = self.model.module  # the GPT itself: its parameter names are the adapter's keys
        self.max_seq_length = max_seq_length
        self.state = {"iter_num": 0, "step_count": 0, "metrics": [], "elapsed": 0.0}
        self.scheduler = None  # made by `fit`: the number of steps depends on the data (--epochs)

    def fit(self, train_data: list, val_data: list, objective: Objective) -> None:
        """Trains to `max_iters` steps (or `epochs`), validating, checkpointing and logging, then saves the adapter."""
        fabric, hp, state, out_dir = self.fabric, self.hp, self.state, self.out_dir
        order = EpochOrder(train_data, hp.batch_size, hp.seed, objective.length)
        repeat = getattr(objective, "repeat_batches", 1)
        max_iters = order.steps(hp.epochs) * repeat if hp.epochs is not None else hp.max_iters
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(hp, max_iters))
        if self.run.resume_path is not None:
            self.resume_from(self.run.resume_path)
        if fabric.global_rank == 0:
            clean_out_dir(out_dir, fresh=self.run.resume_path is None)
            if state["step_count"] == 0:
                for logger in fabric.loggers:
                    logger.log_hyperparams(self.run.record["train"])
        fabric.barrier()

        tokens_done, t_start = 0, time.perf_counter()
        elapsed_before, start_step = state["elapsed"], state["step_count"]
        while state["step_count"] < max_iters:
            step = state["step_count"]
            global_idx = order.batch(step // repeat)  # the same on every rank; each rank takes its share
            mine = [[train_data[j] for j in idx] for idx in self.micro_batches(global_idx, train_data, objective)]
            # the loss of the step: the losses of the whole global batch (all micro-batches, all devices) summed,
            # divided by its count (SFT: its targets); every rank counts them from the same global batch
            n = max(1, sum(objective.count(train_data[j]) for j in global_idx))
            if hasattr(objective, "start_batch"):
                objective.start_batch([train_data[j] for j in global_idx])
            if hasattr(objective, "rollout"):
                mine, n = objective.rollout(fabric, self.raw_model, mine, step)
            sums: dict = {"loss": 0.0}
            # the step's load-balancing loss: the mean of its micro-batches' (on every device), in units of n
            aux_weight = hp.router_aux_loss_coef and n / all_sum(fabric, {"m": len(mine)})["m"]
            top_k = self.raw_model.config.n_expert_per_token
            for i, batch in enumerate(mine):
                with fabric.no_backward_sync(self.model, enabled=i < len(mine) - 1):
                    loss, metrics = objective.loss(self.model, batch)
                    total = loss
                    if aux_weight:  # the routers of the objective's forward with gradients (not the reference's)
                        raw = self.raw_model
                        aux = load_balancing_loss(router_logits(raw), top_k, raw.router_weights)
                        total = loss + hp.router_aux_loss_coef * aux_weight * aux
                        metrics = {**metrics, "aux_loss": aux.item() * aux_weight}
                    fabric.backward(total * (fabric.world_size / n))  # DDP averages the gradients of the ranks
                for key, value in {"loss": loss.item(), **metrics}.items():
                    sums[key] = sums.get(key, 0.0) + value
                del loss, total  # its graph (holding the logits) would outlive the next forward pass
                tokens_done += sum(map(objective.length, batch)) * fabric.world_size
            means = {key: value / n for key, value in all_sum(fabric, sums).items()}
            if hasattr(objective, "step_metrics"):
                means.update(objective.step_metrics(fabric))
            if not math.isfinite(means["loss"]):
                self.stop_not_finite(f"loss became {means['loss']}", step + 1)
            if hp.grad_clip > 0:
                fabric.clip_gradients(self.model, self.optimizer, max_norm=hp.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            lr = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            state["step_count"] = step = step + 1
            state["iter_num"] += len(mine)

            elapsed = elapsed_before + time.perf_counter() - t_start
            row = {"step": step, "epoch": round(step // repeat * hp.batch_size / len(train_data), 4), **means, "lr": lr,
                   "val_loss": "", "tokens_per_sec": "", "elapsed": round(elapsed, 2)}
            if step % hp.log_interval == 0 or step == max_iters:
                tok_s = tokens_done / max(1e-9, time.perf_counter() - t_start)
                eta = (elapsed - elapsed_before) / max(1, step - start_step) * (max_iters - step)
                row["tokens_per_sec"] = round(tok_s, 1)
                shown = getattr(objective, "progress", None) or means  # the progress line's metrics
                extra = "".join(f" | {key} {means[key]:.4f}" for key in shown if key != "loss" and key in means)
                fabric.print(f"step {step}/{max_iters} | epoch {row['epoch']:.2f} | loss {means['loss']:.4f}{extra} | "
                             f"lr {lr:.2e} | {tok_s:,.0f} tokens/s | elapsed {fmt_time(elapsed)} | eta "
                             f"{fmt_time(eta)} | peak mem {peak_memory_gb(fabric.device):.2f} GB", flush=True)
            if step % hp.eval_interval == 0 or step == max_iters:
                val = self.validate(val_data, objective)
                row.update({f"val_{key}": round(value, 4) for key, value in val.items()})
                shown = {**({"loss": val["loss"], "ppl": math.exp(min(val["loss"], 50))}
                            if getattr(objective, "perplexity", False) else {}), **val}
                fabric.print(f"step {step}: " + ", ".join(f"val {key} {value:.4f}" for key, value in shown.items()))
                self.raw_model.eval()
                objective.evaluate(fabric, self.raw_model)
                self.raw_model.train()
            state["metrics"].append(row)
            state["elapsed"] = elapsed
            fabric.log_dict({k: v for k, v in row.items() if k != "step" and v != ""}, step=step)
            if step % hp.save_interval == 0 or step == max_iters:
                if not all(torch.isfinite(v).all() for v in adapter_weights(self.raw_model).values()):
                    self.stop_not_finite("LoRA weights became inf/NaN", step)
                path = out_dir / "checkpoints" / f"step-{step:06d}{'' if is_sharded(self.raw_model) else '.pth'}"
                self.save_checkpoint(path)
                write_metrics(fabric, state["metrics"], out_dir)
        self.save_adapter()

    def micro_batches(self, global_idx: list[int], data: list[dict], objective: Objective) -> list:
        """This rank's micro-batches (lists of indices into `data`) of the global batch `global_idx`."""
        lengths = [objective.length(data[j]) for j in global_idx]
        positions = rank_micro_batches(lengths, self.hp, self.fabric.world_size, self.fabric.global_rank)
        return [[global_idx[i] for i in batch] for batch in positions]

    @torch.no_grad()
    def validate(self, val_data: list, objective: Objective) -> dict:
        """The loss and metrics over the first `eval_iters` x `micro_batch_size` validation examples (each rank runs
        them all), normalized as in training."""
        hp = self.hp
        if hasattr(objective, "validate"):
            return objective.validate(self.fabric, self.raw_model, val_data)
        self.model.eval()
        examples = list(range(min(len(val_data), hp.eval_iters * hp.micro_batch_size)))
        if hp.micro_batch_tokens is None:
            batches = [examples[i: i + hp.micro_batch_size] for i in range(0, len(examples), hp.micro_batch_size)]
        else:  # the same examples, in micro-batches of the token budget
            lengths = [objective.length(val_data[i]) for i in examples]
            batches = token_budget_batches(lengths, hp.micro_batch_tokens, not hp.padding_free)
        if hasattr(objective, "start_batch"):
            objective.start_batch([val_data[i] for i in examples])
        sums: dict = {"loss": 0.0}
        for batch in batches:
            loss, metrics = objective.loss(self.model, [val_data[i] for i in batch])
            for key, value in {"loss": loss.item(), **metrics}.items():
                sums[key] = sums.get(key, 0.0) + value
        n = max(1, sum(objective.count(val_data[i]) for i in examples))
        self.model.train()
        return {key: value / n for key, value in sums.items()}

    def stop_not_finite(self, what: str, step: int) -> None:
        """Stops the run on every rank with one message; the last checkpoint written stays the last good one."""
        self.fabric.print(f"error: {what} at step {step}; stopping. The last good checkpoint is in "
                          f"{str(self.out_dir / 'checkpoints')!r}: lower --learning_rate or check the data, then "
                          f"--resume auto", file=sys.stderr)
        raise SystemExit(1)

    def save_checkpoint(self, path: Path) -> None:
        """A resumable checkpoint: adapter, optimizer, scheduler, step, data and RNG state, and the record of its run
        (written atomically). Under FSDP a dir: each rank writes its shards of the adapter and optimizer state
        (torch.distributed.checkpoint), rank 0 the rest (meta.pth)."""
        fabric, state = self.fabric, self.state
        meta = {"run": self.run.record, "scheduler": self.scheduler.state_dict(), "iter_num": state["iter_num"],
                "step_count": state["step_count"], "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                "metrics": state["metrics"], "elapsed": state["elapsed"]}
        if fabric.device.type == "cuda":  # LoRA dropout's masks are drawn on the GPU
            meta["cuda_rng"] = torch.cuda.get_rng_state(fabric.device)
        if not is_sharded(self.raw_model):
            if fabric.global_rank == 0:
                atomic_save({"adapter": lora_state_dict(self.raw_model), "optimizer": self.optimizer.state_dict(),
                             **meta}, path)
            fabric.barrier()
            return
        import torch.distributed.checkpoint as dcp

        tmp = path.with_name(path.name + ".tmp")
        if fabric.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        fabric.barrier()
        dcp.save(sharded_state(self.raw_model, self.optimizer), checkpoint_id=tmp)
        if fabric.global_rank == 0:
            atomic_save(meta, tmp / "meta.pth")
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
        fabric.barrier()

    def resume_from(self, path: Path) -> None:
        fabric, model, optimizer, state = self.fabric, self.raw_model, self.optimizer, self.state
        if is_sharded(model):
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            shards = sharded_state(model, optimizer)
            dcp.load(shards, checkpoint_id=path)
            set_state_dict(model, optimizer, model_state_dict=shards["adapter"], optim_state_dict=shards["optimizer"],
                           options=StateDictOptions(strict=False))
            checkpoint = lazy_load(path / "meta.pth")
        else:
            checkpoint = lazy_load(path)
            load_lora_state_dict(model, checkpoint["adapter"])
            optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        state.update(iter_num=checkpoint["iter_num"], step_count=checkpoint["step_count"],
                     metrics=list(checkpoint["metrics"]), elapsed=checkpoint["elapsed"])
        torch.set_rng_state(checkpoint["torch_rng"])
        if fabric.device.type == "cuda" and "cuda_rng" in checkpoint:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"], fabric.device)
        random.setstate(checkpoint["python_rng"])
        fabric.print(f"Resumed from {str(path)!r} at step {state['step_count']}")

    def save_adapter(self) -> None:
        """The adapter (LoRA weights only, one plain file also under FSDP), prompt_style.json, then lora_config.json:
        the run's record with the adapter's sha256, so that a crash between the writes is seen, never a stale pair."""
        fabric, out_dir = self.fabric, self.out_dir
        adapter = adapter_weights(self.raw_model)
        if fabric.global_rank == 0:
            atomic_save(adapter, out_dir / ADAPTER_FILE)
            atomic_write_text(out_dir / "prompt_style.json", json.dumps({"name": self.run.record["prompt_style"]}))
            digest = file_sha256(out_dir / ADAPTER_FILE)
            atomic_write_text(out_dir / RUN_FILE,
                              json.dumps({**self.run.record, "adapter_sha256": digest}, indent=2, default=str))
            fabric.print(f"Saved the adapter to {str(out_dir / ADAPTER_FILE)!r}. Next: python scripts/merge_lora.py "
                         f"--lora_path {out_dir}  or  python generate/lora.py --lora_path {out_dir} --prompt \"...\"")
        fabric.barrier()


def clean_out_dir(out_dir: Path, fresh: bool) -> None:
    """Removes the temporary files of writes that a kill interrupted and, for a fresh run (--overwrite was checked),
    everything of an earlier one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        for stale in (*RUN_FILES, "metrics.csv", "loss.png"):
            (out_dir / stale).unlink(missing_ok=True)
    for tmp in {*out_dir.glob("*.tmp"), *out_dir.glob("checkpoints/*.tmp")}:  # pathlib's * matches .names too
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def rank_micro_batches(lengths: list[int], hp: TrainArgs, world: int, rank: int) -> list[list[int]]:
    """Rank `rank`'s micro-batches of a global batch whose examples have these `lengths`, as positions in it:
    micro-batches of `micro_batch_size`, rank r taking r, r + world, ...; or, with `micro_batch_tokens`, rank r's
    share (positions r, r + world, ...) filled up to the token budget, in as many micro-batches as the rank that
    needs the most (FSDP gathers weights in every pass: unequal numbers of passes would hang)."""
    if hp.micro_batch_tokens is None:
        size = hp.micro_batch_size
        return [list(range(i, min(i + size, len(lengths)))) for i in range(0, len(lengths), size)][rank::world]
    shares = [list(range(r, len(lengths), world)) for r in range(world)]
    padded = not hp.padding_free
    count = max(len(token_budget_batches([lengths[i] for i in share], hp.micro_batch_tokens, padded))
                for share in shares)
    mine = shares[rank]
    return [[mine[i] for i in batch]
            for batch in token_budget_batches([lengths[i] for i in mine], hp.micro_batch_tokens, padded, count)]


class EpochOrder:
    """The examples of each step: epoch after epoch, every example once in each, in an order drawn from the seed and
    the epoch's number alone (so a resume, mid-epoch too, needs no state). Epoch 0 starts with its longest
    `batch_size` examples (an out-of-memory shows at step one). A batch that reaches an epoch's end goes on with the
    next epoch's first examples, so every step has `batch_size` examples."""

    def __init__(self, data: list, batch_size: int, seed: int, length: Optional[Callable[[dict], int]] = None) -> None:
        """`length`: an example's size (default: its number of tokens)."""
        self.n, self.batch_size, self.seed = len(data), batch_size, seed
        size = [(length or (lambda s: len(s["input_ids"])))(s) for s in data]
        self.longest = sorted(range(self.n), key=lambda i: -size[i])[:batch_size]  # ties: in data order
        self.orders: dict = {}

    def epoch(self, e: int) -> list[int]:
        if e not in self.orders:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + e)).tolist()
            if e == 0:
                first = set(self.longest)
                order = self.longest + [i for i in order if i not in first]
            self.orders = {e: order}  # one epoch at a time is enough: steps only go forward
        return self.orders[e]

    def batch(self, step: int) -> list[int]:
        start = step * self.batch_size
        return [self.epoch(pos // self.n)[pos % self.n] for pos in range(start, start + self.batch_size)]

    def steps(self, epochs: float) -> int:
        """The steps of `epochs` passes over the data."""
        return max(1, math.ceil(epochs * self.n / self.batch_size))


def lr_lambda(hp: TrainArgs, max_iters: int) -> Callable[[int], float]:
    """The learning rate of each step as a fraction of the peak: a linear warmup over the first `warmup_fraction` of
    the steps, then `lr_schedule`: cosine or linear decay to `min_lr_ratio`, or constant."""
    warmup, floor = round(hp.warmup_fraction * max_iters), hp.min_lr_ratio

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, max_iters - warmup))
        if hp.lr_schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if hp.lr_schedule == "linear":
            return floor + (1 - floor) * (1 - progress)
        return 1.0
    return fn


def all_sum(fabric, values: dict) -> dict:
    """Each value summed over all ranks."""
    if fabric.world_size == 1:
        return values
    summed = fabric.all_reduce(torch.tensor(list(values.values()), dtype=torch.float64, device=fabric.device),
                               reduce_op="sum")
    return dict(zip(values, summed.tolist()))


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


def write_metrics(fabric, metrics: list, out_dir: Path) -> None:
    """metrics.csv and loss.png (the loss, train and validation, and each other metric over the steps), both
    written atomically."""
    if fabric.global_rank != 0 or not metrics:
        return
    columns = list(dict.fromkeys(key for row in metrics for key in row))
    with atomic_path(out_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as fp:
        writer = csv.DictWriter(fp, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(metrics)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in columns if k not in ("step", "lr", "tokens_per_sec", "elapsed") and not k.startswith("val_")]
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 3 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        ax.plot([r["step"] for r in metrics], [r[name] for r in metrics], label=f"train {name}", alpha=0.7)
        val = [(r["step"], r[f"val_{name}"]) for r in metrics if r.get(f"val_{name}", "") != ""]
        if val:
            ax.plot(*zip(*val), "o-", label=f"validation {name}")
        ax.set_ylabel(name)
        ax.legend()
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("optimizer step")
    axes[0, 0].set_title(f"finetune: {out_dir}")
    with atomic_path(out_dir / "loss.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def fmt_time(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))

