"""GRPO: reinforcement learning of a LoRA / QLoRA adapter from rewards (GRPO, Dr. GRPO, DAPO, BNPO).

    python finetune/grpo.py --checkpoint_dir ... --data_file PROMPTS.jsonl [--lora_path SFT_OUT_DIR] \
        [--reward exact_match,format --reward_weights 1,0.2] [--quantize bnb.nf4]

No answers to imitate: a reward to maximise. Each step, for each of its prompts the model samples `num_generations`
completions (the generation engine, lit_gpt.generate.Engine: all the step's completions decoded at once, each
prompt prefilled once); reward functions score them; a completion's advantage is its reward minus the mean of its
group (the completions of its prompt), divided by their std; the loss raises the log-probs of the completions
with positive advantages and lowers the others', clipped as in PPO, optionally with a KL penalty to the reference
(the model with the trained adapter off, or the starting adapter with --lora_path). The math is TRL 1.16
GRPOTrainer's (its meaning, defaults and metric names; tests/test_grpo.py checks it against TRL), the layout is ours:
rollouts, rewards, advantages, the loss, the update, in that order, below.

Data (--data_file, JSON or JSON lines): prompts with what the reward checks: Alpaca rows (instruction, input, output:
the answer is what follows "####" in output, else all of it), GSM8K rows (question, answer), or {"prompt": text or
[messages], "answer": ...}; rendered with the prompt style (the chat template of a chat model). Rewards: exact_match
(the number or text after "####", or in \\boxed{}, equals the answer), math (math-verify, for LaTeX), format (the
answer is in that format), or your own, path/to/file.py:function(prompts, completions, answers) -> floats.

Each prompt and its completions train as one packed row (the prompt once; GPT.forward's shared-prompt lengths), so
a micro-batch of prompts costs their tokens only. The out dir is an ordinary adapter dir (merge, generate, chat,
eval and the exports read it).
"""

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.config import Config
from lit_gpt.data import load_prompt_rows, prepare_prompts, split_rows
from lit_gpt.generate import Engine, Request
from lit_gpt.load import load_lora_run, pick_prompt_style
from lit_gpt.lora import reference_model
from lit_gpt.rewards import combine, resolve_rewards, score
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.training import Launch, TrainArgs, Trainer, make_fabric, prepare_run, start_from_adapter
from lit_gpt.utils import check_valid_checkpoint_dir, cli, fail, file_sha256

HYPERPARAMETERS = TrainArgs(
    learning_rate=1e-4,  # LoRA on a small model, few steps (TRL's 1e-6 is for full finetuning)
    lr_schedule="constant",
    warmup_fraction=0.0,
    min_lr_ratio=0.1,
    batch_size=4,  # prompts per optimizer step (across all devices), each with num_generations completions
    micro_batch_size=1,  # prompts per forward/backward (a prompt and its completions are one packed row)
    micro_batch_tokens=None,
    max_iters=100,
    epochs=None,
    weight_decay=0.0,
    grad_clip=1.0,
    max_seq_length=None,  # the longest prompt + max_new_tokens
    eval_interval=25,
    eval_iters=20,  # validation prompts (greedy)
    save_interval=25,
    log_interval=1,
    lora_r=8,  # with --lora_path: the LoRA settings are the starting adapter's
    lora_alpha=16,
    lora_dropout=0.0,
    lora_query=True,
    lora_key=True,
    lora_value=True,
    lora_projection=True,
    lora_mlp=True,
    lora_head=False,
    lora_experts=True,  # mixture-of-experts models: the expert tensors too
    router_aux_loss_coef=None,  # mixture-of-experts models: the load-balancing loss weight (None: the model's)
    padding_free=True,  # the shared-prompt packing (the only layout here)
    pad_multiple=32,
    activation_checkpointing=False,
    seed=1337,
)


@dataclass
class GRPOArgs:
    """Rollouts, rewards and the loss, with TRL 1.16 GRPOConfig's meaning and defaults.

    Args:
        reward: Comma-separated reward functions: exact_match, math, format, or path/to/file.py:function (called with
            (prompts, completions, answers), returning a float or None per completion).
        reward_weights: Comma-separated weights, one per reward (default: 1 each). A completion's reward is their
            weighted sum.
        num_generations: Completions sampled per prompt (the group its advantage is normalized in).
        max_new_tokens: The most tokens of a completion (TRL's max_completion_length); one that reaches it without
            ending is truncated.
        temperature: Sampling temperature of the rollouts (the log-probs are of the same distribution).
        top_p: Nucleus sampling of the rollouts (1: off).
        top_k: Top-k sampling of the rollouts (None: off).
        scale_rewards: Divide the advantages by the std of each group (group), of the whole batch (batch), or not
            (none: Dr. GRPO).
        loss_type: How the token losses are averaged: dapo (over all the batch's tokens), grpo (each completion's
            mean, then over completions), dr_grpo (sum / (completions x max_new_tokens)), bnpo (over each
            micro-batch's tokens).
        epsilon: The clipping range of the importance ratio: [1 - epsilon, 1 + epsilon_high].
        epsilon_high: Upper clipping (DAPO's clip-higher: e.g. 0.28); default: epsilon.
        num_iterations: Optimizer steps on each batch of completions (the ratio to the policy that sampled them
            matters from the second on).
        beta: Weight of the KL penalty to the reference model (0: none, no reference pass).
        mask_truncated_completions: Leave out of the loss the completions that reached max_new_tokens without
            ending (DAPO).
        generation_rows: Sequences decoded at once on each device (continuous batching refills finished rows).
        val_file: Held-out prompts for validation (the mean greedy reward); default: val_fraction of data_file.
        val_fraction: With no val_file, this fraction of data_file's prompts is held out.
        prompt_style: Render the prompts with this style (default: the --lora_path adapter's, else the checkpoint's).
    """

    reward: str = "exact_match"
    reward_weights: Optional[str] = None
    num_generations: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: Optional[int] = None
    scale_rewards: Literal["group", "batch", "none"] = "group"
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    epsilon: float = 0.2
    epsilon_high: Optional[float] = None
    num_iterations: int = 1
    beta: float = 0.0
    mask_truncated_completions: bool = False
    generation_rows: int = 64
    val_file: Optional[Path] = None
    val_fraction: float = 0.05
    prompt_style: Optional[str] = None


def setup(
    checkpoint_dir: Path = Path("checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct"),
    data_file: Path = Path("data/arithmetic/train.jsonl"),
    out_dir: Path = Path("out/grpo/arithmetic"),
    lora_path: Optional[Path] = None,
    launch: Launch = Launch(),
    hp: TrainArgs = HYPERPARAMETERS,
    grpo: GRPOArgs = GRPOArgs(),
) -> None:
    """Trains a LoRA adapter with GRPO on the rewards of its own completions.

    Args:
        checkpoint_dir: The base model (lit_model.pth, lit_config.json, tokenizer).
        data_file: The prompts (JSON or JSON lines; see the module docstring for the layouts).
        out_dir: Where the adapter, lora_config.json, metrics.csv, loss.png (reward and every metric over the steps)
            and resumable checkpoints go.
        lora_path: Start from this adapter (e.g. SFT by finetune/lora.py); also the reference model with --beta.
        launch: Precision, quantization, devices, resume (see lit_gpt.training.Launch).
        hp: The hyperparameters (see lit_gpt.training.TrainArgs); batch_size and micro_batch_size count prompts.
        grpo: Rollouts, rewards and the loss.
    """
    check_valid_checkpoint_dir(checkpoint_dir)
    g = grpo
    try:
        rewards = resolve_rewards(g.reward, g.reward_weights)
    except ValueError as e:
        fail(str(e))
    if g.num_generations < 2:
        fail(f"--num_generations {g.num_generations}: GRPO compares the completions of a prompt: sample at least 2")
    if g.max_new_tokens < 1 or not g.temperature > 0 or not 0 < g.top_p <= 1 or (g.top_k is not None and g.top_k < 1):
        fail(f"--max_new_tokens {g.max_new_tokens} must be at least 1, --temperature {g.temperature} above 0, "
             f"--top_p {g.top_p} in (0, 1], --top_k {g.top_k} at least 1 (or None)")
    if not g.epsilon > 0 or (g.epsilon_high is not None and g.epsilon_high < g.epsilon):
        fail(f"--epsilon {g.epsilon} must be above 0 and --epsilon_high {g.epsilon_high} at least --epsilon")
    if g.num_iterations < 1 or g.beta < 0 or g.generation_rows < 1:
        fail(f"--num_iterations {g.num_iterations} and --generation_rows {g.generation_rows} must be at least 1, "
             f"--beta {g.beta} at least 0")
    if launch.strategy == "fsdp":
        fail("--strategy fsdp: each device samples its own number of tokens, which FSDP's gathered layers cannot "
             "follow; use --strategy ddp")
    if not hp.padding_free:
        fail("--padding_free false: GRPO runs each prompt and its completions as one packed row; drop the flag")
    start, hp, start_record = start_from_adapter(lora_path, hp, checkpoint_dir)
    style = pick_prompt_style(g.prompt_style, start, checkpoint_dir)
    data_config = {"format": "prompts", "prompt_style": style.name, "data_file": str(Path(data_file).resolve()),
                   "data_sha256": file_sha256(data_file) if Path(data_file).is_file() else None,
                   "val_file": str(Path(g.val_file).resolve()) if g.val_file else None}
    extra = {**asdict(g), "reward_weights": rewards[2], **start_record}
    run = prepare_run(checkpoint_dir, Path(data_file), data_config, out_dir, launch, hp,
                      objective=f"grpo.{g.loss_type}", objective_args=extra)
    fabric = make_fabric(run)
    fabric.launch(main, run=run, data_file=Path(data_file), grpo=g, lora_path=lora_path)


def main(fabric, run, data_file: Path, grpo: GRPOArgs, lora_path: Optional[Path]) -> None:
    config = Config.from_checkpoint(run.checkpoint_dir)
    tokenizer = Tokenizer(run.checkpoint_dir)
    style = pick_prompt_style(grpo.prompt_style, load_lora_run(lora_path) if lora_path else None, run.checkpoint_dir)
    context = min(config.block_size, run.hp.max_seq_length or config.block_size)
    if grpo.max_new_tokens >= context:
        fail(f"--max_new_tokens {grpo.max_new_tokens} leaves no room for a prompt in the context of {context} tokens")

    def prompts(path: Path, name: str) -> list[dict]:
        samples, skipped = prepare_prompts(load_prompt_rows(path), tokenizer, style, context - grpo.max_new_tokens,
                                           where=f"{str(path)!r} row")
        if skipped:
            listed = ", ".join(at.rsplit(" ", 1)[-1] for at, _ in skipped[:10])
            fabric.print(f"{name}: skipped {len(skipped)} row(s) without an answer (rows {listed}"
                         f"{', ...' if len(skipped) > 10 else ''})")
        if not samples:
            fail(f"{str(path)!r} has no prompt with an answer to reward")
        return samples

    train_data = prompts(data_file, "train")
    if grpo.val_file is not None:
        val_data = prompts(grpo.val_file, "validation")
    else:
        train_data, val_data = split_rows(train_data, grpo.val_fraction, run.hp.seed)
    for i, sample in enumerate(train_data):  # its completions' seeds: the same whatever the devices and batching
        sample["index"] = i
    fabric.print(f"{len(train_data)} training prompts, {len(val_data)} validation prompts ({style.name} style)")
    longest = max(len(s["prompt_ids"]) for s in train_data + val_data) + grpo.max_new_tokens
    start = load_lora_run(lora_path).adapter if lora_path is not None else None
    trainer = Trainer(fabric, run, longest, start_adapter=start)
    trainer.fit(train_data, val_data, GRPO(grpo, run.hp, tokenizer, style, resolve_rewards(grpo.reward,
                                                                                            grpo.reward_weights)))


class GRPO:
    """The objective: `rollout` samples and scores the step's completions, `loss` is GRPO's on them."""

    progress = ["reward", "reward_std", "frac_reward_zero_std", "kl", "clip_ratio/region_mean",
                "completions/mean_length", "completions/clipped_ratio", "generation_tokens_per_sec",
                "train_tokens_per_sec"]

    def __init__(self, args: GRPOArgs, hp: TrainArgs, tokenizer: Tokenizer, style, rewards: tuple) -> None:
        self.args, self.hp, self.tokenizer, self.style = args, hp, tokenizer, style
        self.names, self.functions, self.weights = rewards
        self.stop_tokens = style.stop_tokens(tokenizer)
        self.repeat_batches = args.num_iterations
        self.cache: Optional[tuple] = None  # the last rollout: (step, micro-batches, normalizer, metrics)
        self.metrics: dict = {}
        self.extremes: list = []
        self.samples: list = []  # a few validation prompts, their greedy completions and rewards

    def length(self, sample: dict) -> int:
        return len(sample["prompt_ids"]) + sum(len(c) for c in sample.get("completion_ids", ()))

    def count(self, sample: dict) -> int:
        return 1  # the normalizer is the rollout's (`loss_normalizer`)

    # ---- rollouts and rewards
    @torch.no_grad()
    def rollout(self, fabric, model, micro_batches: list, step: int) -> tuple[list, float]:
        """This device's prompts -> their groups of completions, scored, with advantages (and the old policy's and
        the reference's log-probs where the loss needs them); reused for num_iterations steps."""
        a = self.args
        first = step - step % a.num_iterations
        if self.cache is not None and self.cache[0] == first:
            _, groups, n, self.metrics = self.cache
            self.start_training(groups)
            return groups, n
        prompts = [s for batch in micro_batches for s in batch]
        t0 = time.perf_counter()
        requests = [Request(s["prompt_ids"].tolist(), a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                            top_p=a.top_p, stop_tokens=self.stop_tokens, n=a.num_generations,
                            seed=hash((self.hp.seed, first, s["index"])) % 2 ** 62)  # the prompt's own draws
                   for s in prompts]
        with fabric.autocast():
            results = Engine(model, rows=a.generation_rows).generate(requests)
        gen_time = time.perf_counter() - t0
        # a completion is its ids and the stop sequence that ended it (TRL's completions keep the EOS)
        completions = [[torch.tensor(c.tokens + list(c.stop or ()), dtype=torch.long) for c in r] for r in results]
        truncated = [c.stop is None for r in results for c in r]
        texts = [self.tokenizer.decode(c.tokens) for r in results for c in r]
        try:
            rewards = score(self.names, self.functions, self.weights,
                            [s["prompt_text"] for s in prompts for _ in range(a.num_generations)], texts,
                            [s["answer"] for s in prompts for _ in range(a.num_generations)])
        except ValueError as e:
            fail(str(e))
        # advantages over the whole batch (every device's groups: TRL gathers the rewards before normalizing)
        all_rewards = fabric.all_gather(rewards.to(fabric.device)).reshape(-1, rewards.size(1)).cpu()
        advantages, metrics = group_advantages(all_rewards, torch.tensor(self.weights), a.num_generations,
                                               a.scale_rewards, self.names)
        mine = advantages.view(fabric.world_size, -1)[fabric.global_rank]
        lengths = torch.tensor([len(c) for group in completions for c in group], dtype=torch.float)
        cut = torch.tensor(truncated, dtype=torch.float)
        kept = 1 - cut if a.mask_truncated_completions else torch.ones_like(cut)  # the tokens the loss counts
        totals = torch.stack([(lengths * kept).sum(), torch.tensor(float(len(lengths))), lengths.sum(),
                              cut.sum()]).to(fabric.device)
        if fabric.world_size > 1:
            totals = fabric.all_reduce(totals, reduce_op="sum")
        token_total, sequences, generated, clipped = totals.tolist()
        n = loss_normalizer(a.loss_type, int(token_total), int(sequences), len(micro_batches) * fabric.world_size)
        groups, g = [], 0
        for batch in micro_batches:
            items = []
            for s in batch:
                items.append({"prompt_ids": s["prompt_ids"], "completion_ids": completions[g],
                              "advantages": mine[g * a.num_generations:(g + 1) * a.num_generations],
                              "truncated": truncated[g * a.num_generations:(g + 1) * a.num_generations]})
                g += 1
            if a.num_iterations > 1:  # the policy that sampled them, for the importance ratio of later steps
                for item, logps in zip(items, self._grouped(completion_logps(model, items, a.temperature), items)):
                    item["old"] = logps
            if a.beta != 0.0:
                with reference_model(model):
                    ref = completion_logps(model, items, a.temperature)
                for item, logps in zip(items, self._grouped(ref, items)):
                    item["ref"] = logps
            groups.append(items)
        metrics.update({"completions/mean_length": generated / sequences,
                        "completions/min_length": lengths.min().item(),  # of this device's completions
                        "completions/max_length": lengths.max().item(),
                        "completions/clipped_ratio": clipped / sequences,
                        "generation_tokens_per_sec": lengths.sum().item() / gen_time, "generation_sec": gen_time})
        self.token_total, self.n, self.metrics = int(token_total), n, metrics
        self.cache = (first, groups, n, metrics)
        self.start_training(groups)
        return groups, n

    def start_training(self, groups: list) -> None:
        self.extremes, self.train_start = [], time.perf_counter()
        self.train_tokens = sum(self.length(item) for items in groups for item in items)

    @staticmethod
    def _grouped(flat: list, items: list) -> list:
        """A flat list of per-completion tensors, back into one list per item."""
        out, i = [], 0
        for item in items:
            out.append(flat[i:i + len(item["completion_ids"])])
            i += len(item["completion_ids"])
        return out

    # ---- the loss
    def loss(self, model, items: list) -> tuple:
        a = self.args
        logps, entropies = completion_logps(model, items, a.temperature, entropy=True)
        loss, sums, extremes = grpo_loss(
            logps, [x for item in items for x in item["old"]] if a.num_iterations > 1 else None,
            [x for item in items for x in item["ref"]] if a.beta != 0.0 else None,
            torch.cat([item["advantages"] for item in items]), loss_type=a.loss_type, epsilon=a.epsilon,
            epsilon_high=a.epsilon_high, beta=a.beta, max_completion_length=a.max_new_tokens,
            token_total=self.token_total, normalizer=self.n, entropies=entropies,
            truncated=[t for item in items for t in item["truncated"]] if a.mask_truncated_completions else None)
        self.extremes.append(extremes)
        return loss, sums

    def step_metrics(self, fabric) -> dict:
        """The rollout's metrics and the clip extremes (min / max over micro-batches and devices)."""
        low = torch.tensor([e["clip_ratio/low_min"] for e in self.extremes] or [float("nan")])
        high = torch.tensor([e["clip_ratio/high_max"] for e in self.extremes] or [float("nan")])
        both = fabric.all_gather(torch.stack([low.nan_to_num(2.0).min(), high.nan_to_num(-1.0).max()])
                                 .to(fabric.device)).reshape(-1, 2).cpu()
        low_min, high_max = both[:, 0].min().item(), both[:, 1].max().item()
        train_time = time.perf_counter() - self.train_start
        return {**self.metrics, "train_tokens_per_sec": self.train_tokens * fabric.world_size / train_time,
                "clip_ratio/low_min": low_min if low_min <= 1 else float("nan"),
                "clip_ratio/high_max": high_max if high_max >= 0 else float("nan")}

    # ---- validation
    @torch.no_grad()
    def validate(self, fabric, model, val_data: list) -> dict:
        """The mean greedy reward on the first eval_iters validation prompts (each device runs them all), per
        function too."""
        a, val_data = self.args, val_data[:self.hp.eval_iters]
        requests = [Request(s["prompt_ids"].tolist(), a.max_new_tokens, stop_tokens=self.stop_tokens)
                    for s in val_data]
        with fabric.autocast():
            results = Engine(model, rows=a.generation_rows).generate(requests)
        texts = [self.tokenizer.decode(r[0].tokens) for r in results]
        try:
            rewards = score(self.names, self.functions, self.weights, [s["prompt_text"] for s in val_data], texts,
                            [s["answer"] for s in val_data])
        except ValueError as e:
            fail(str(e))
        total = combine(rewards, self.weights)
        self.samples = [(s["prompt_text"], t, r) for s, t, r in zip(val_data[:3], texts, total.tolist())]
        return {"reward": total.nanmean().item(),
                **{f"rewards/{name}/mean": rewards[:, i].nanmean().item() for i, name in enumerate(self.names)}}

    def evaluate(self, fabric, model) -> None:
        """A few validation completions with their rewards, to watch the model learn."""
        for prompt, text, reward in self.samples:
            fabric.print(f"sample (reward {reward:.2f}): {prompt[-80:]!r} -> {text!r}", flush=True)


# ---- the GRPO math (checked against TRL 1.16 in tests/test_grpo.py)

SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")


def nanstd(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The standard deviation over `dim` ignoring NaNs, unbiased (divided by count - 1, as TRL's `nanstd`); NaN where
    fewer than 2 values are not NaN."""
    mean = x.nanmean(dim, keepdim=True)
    count = (~x.isnan()).sum(dim)
    var = ((x - mean) ** 2).nansum(dim) / (count - 1)
    return torch.where(count > 1, var, torch.nan).sqrt()


def group_advantages(rewards: torch.Tensor, weights: torch.Tensor, num_generations: int,
                     scale_rewards: Literal["group", "batch", "none"] = "group",
                     names: Optional[list] = None) -> tuple[torch.Tensor, dict]:
    """The advantage of each completion from its rewards, and TRL's reward metrics.

    rewards: (N, F), the F reward functions' rewards of ALL the step's completions (every device's: TRL gathers them
    before normalizing), N = prompts * num_generations, each prompt's completions consecutive; NaN where a function
    gave no reward (None). weights: (F,). names: the F functions' names for the metrics.

    A completion's reward is the weighted sum of its rewards skipping NaNs; one with no reward at all is left out of
    its group's mean and std and gets advantage 0. advantage = reward - its group's mean, divided by std + 1e-4 where
    std is the unbiased std of its group ("group") or of the whole batch ("batch": the mean stays the group's);
    "none" does not divide (Dr. GRPO). A group whose std cannot be computed (one reward) gets advantage 0.

    Returns (advantages (N,), metrics): `reward`, `reward_std` (the nanmean and unbiased nanstd of the summed rewards
    over the whole batch, not per group), `frac_reward_zero_std` (the fraction of completions whose std, of their
    group or with "batch" of the batch, is 0 up to 1e-8), `rewards/<name>/mean` and `rewards/<name>/std` (each
    function's own nanmean and nanstd over the batch, unweighted).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    n, f = rewards.shape
    if n % num_generations:
        raise ValueError(f"{n} completions do not make groups of num_generations={num_generations}")
    names = names if names is not None else [f"reward_{i}" for i in range(f)]
    rewards = rewards.float()
    total = combine(rewards, weights.to(rewards))  # (N,)
    grouped = total.view(-1, num_generations)  # (prompts, G)
    mean = grouped.nanmean(1).repeat_interleave(num_generations)
    if scale_rewards == "batch":
        std = (nanstd(total) if n > 1 else total.new_zeros(())).expand(n)
    else:  # "none" keeps the group std for frac_reward_zero_std
        std = (nanstd(grouped) if num_generations > 1 else grouped.new_zeros(len(grouped)))
        std = std.repeat_interleave(num_generations)
    advantages = total - mean
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    metrics = {}
    for i, name in enumerate(names):
        metrics[f"rewards/{name}/mean"] = rewards[:, i].nanmean().item()
        metrics[f"rewards/{name}/std"] = nanstd(rewards[:, i]).item()
    metrics["reward"] = total.nanmean().item()
    metrics["reward_std"] = nanstd(total).item()
    metrics["frac_reward_zero_std"] = torch.isclose(std, torch.zeros_like(std)).float().mean().item()
    return advantages.nan_to_num(nan=0.0), metrics


def completion_logps(model, groups: list, temperature: float = 1.0, device: Optional[torch.device] = None,
                     entropy: bool = False) -> list | tuple[list, list]:
    """The log-prob of every completion token given its prompt and the completion's earlier tokens, under the
    policy's distribution at `temperature` (the logits times 1 / temperature, as TRL scores them), in float32.

    groups: [{"prompt_ids": (P,), "completion_ids": [(C_1,), ..., (C_G,)]}, ...], P >= 1, C_i >= 0. All of them run as
    ONE packed row: each group's prompt once, its completions attending to it and to themselves only (`GPT.forward`'s
    lengths (P, C_1, ..., C_G)); the LM head runs only at the positions that predict a completion token (the prompt's
    last position predicts the first token of each). Gradients flow (the policy); run it under torch.no_grad() for
    the old policy's or the reference's log-probs.

    Returns [(C,) per completion], group by group, completion by completion; with `entropy`, also the entropy of the
    distribution each of those tokens was drawn from (TRL's `entropy` metric), likewise, without gradient. `device`:
    where the model is (default: where its first parameter is).
    """
    device = next(model.parameters()).device if device is None else device
    where, targets, sizes, lengths, rows, start = [], [], [], [], [], 0
    for group in groups:
        prompt, completions = group["prompt_ids"], group["completion_ids"]
        p = len(prompt)
        if p == 0 or not completions:
            raise ValueError(f"a group needs a prompt of at least one token and a completion, got {p} prompt tokens "
                             f"and {len(completions)} completions")
        rows += [prompt, *completions]
        lengths.append((p, *(len(c) for c in completions)))
        last, offset = start + p - 1, start + p  # the prompt's last position predicts each completion's first token
        for c in completions:
            n = len(c)
            where += [last, *range(offset, offset + n - 1)] if n else []
            targets += c.tolist()
            sizes.append(n)
            offset += n
        start = offset
    where = torch.tensor(where, dtype=torch.long)
    at = torch.zeros(start, dtype=torch.bool)
    at[where] = True
    index = (at.cumsum(0) - 1)[where].to(device)  # each scored token's row among the positions with logits
    logits = model(torch.cat(rows)[None].to(device), logits_at=at[None].to(device), lengths=lengths)  # (N, V)
    z = logits.float() if temperature == 1.0 else logits.float() * (1 / temperature)
    lse = torch.logsumexp(z, -1)  # (N,)
    logps = (z[index, torch.tensor(targets, dtype=torch.long, device=device)] - lse[index]).split(sizes)
    if not entropy:
        return list(logps)
    with torch.no_grad():
        entropies = (lse - (torch.softmax(z, -1) * z).sum(-1))[index].split(sizes)
    return list(logps), list(entropies)


def loss_normalizer(loss_type: str, token_total: int, sequence_total: int, micro_batches: int) -> float:
    """n, what the training loop divides the step's summed `grpo_loss` by (it backpropagates loss_sum * world_size / n):
    dapo: the completion tokens of the global batch (TRL's num_items_in_batch: without those of truncated completions
    under mask_truncated_completions), at least 1; grpo and dr_grpo: its completions (truncated ones included);
    bnpo: its micro-batches on all devices (each micro-batch's loss is its own token mean)."""
    if loss_type == "dapo":
        return float(max(token_total, 1))
    if loss_type in ("grpo", "dr_grpo"):
        return float(sequence_total)
    if loss_type == "bnpo":
        return float(micro_batches)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def grpo_loss(logps: list, old_logps: Optional[list], ref_logps: Optional[list], advantages: torch.Tensor, *,
              loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo", epsilon: float = 0.2,
              epsilon_high: Optional[float] = None, beta: float = 0.0, max_completion_length: int,
              token_total: int, normalizer: float, truncated: Optional[list] = None, entropies: Optional[list] = None,
              kl_ratio: bool = True) -> tuple[torch.Tensor, dict, dict]:
    """The clipped policy loss of a micro-batch of B completions, in sum form: the step's loss is these sums over its
    micro-batches (and devices) divided by `normalizer` (`loss_normalizer`), which then equals TRL's loss.

    logps, old_logps, ref_logps: [(C_i,) per completion] (`completion_logps`): the policy's (with gradients), the
    policy's that sampled them (None: the policy's own, detached: TRL with num_iterations=1), the reference's (None
    with beta 0). advantages: (B,) (`group_advantages`). truncated: per completion, True to leave it out of the loss
    (TRL's mask_truncated_completions: the completions that did not end with an EOS or pad token); it still counts
    in grpo's and dr_grpo's number of completions, not in dapo's or bnpo's tokens. token_total: the non-truncated
    completion tokens of the global batch. entropies: `completion_logps(..., entropy=True)`'s, for the metric.

    Per token, with ratio = exp(logp - old) and A its completion's advantage:
        -min(ratio A, clip(ratio, 1 - epsilon, 1 + epsilon_high) A) + beta KL,
        KL = exp(ref - logp) - (ref - logp) - 1 (k3), times ratio with `kl_ratio` (TRL's use_bias_correction_kl,
        default True: the value is the same on-policy, the gradient is not).
    The sum form of each loss_type (TRL's normalization):
        dapo: the tokens' sum                                  (n: the global batch's tokens)
        grpo: each completion's token mean, summed             (n: its completions)
        dr_grpo: the tokens' sum / max_completion_length       (n: its completions)
        bnpo: the tokens' sum / this micro-batch's tokens      (n: the micro-batches: TRL's per-micro-batch token mean,
              which depends on how the batch is cut into micro-batches)

    Returns (loss_sum, sums, extremes). sums: `kl` (with beta), `entropy` (with entropies), `clip_ratio/low_mean`,
    `clip_ratio/high_mean`, `clip_ratio/region_mean`, each a token mean over the global batch once divided by
    `normalizer` (here: the sum over this micro-batch's tokens * normalizer / token_total). extremes:
    `clip_ratio/low_min` and `clip_ratio/high_max`, the min (max) over this micro-batch's completions of their own
    fraction of low- (high-) clipped tokens, NaN without a completion with tokens: reduce them over micro-batches and
    devices by min (max), which is TRL's value for one micro-batch.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    logp = torch.cat(logps)  # (T,) every token of the micro-batch
    device, b = logp.device, len(logps)
    owner = torch.repeat_interleave(torch.arange(b, device=device), torch.tensor([len(x) for x in logps],
                                                                                   device=device))
    if truncated is not None:  # their tokens leave the loss and the metrics
        keep = ~torch.tensor(truncated, dtype=torch.bool, device=device)[owner]
        logp, owner = logp[keep], owner[keep]
    else:
        keep = slice(None)
    old = logp.detach() if old_logps is None else torch.cat(old_logps).to(device)[keep]
    a = advantages.to(logp)[owner]
    ratio = torch.exp(logp - old)
    per_token = -torch.min(ratio * a, ratio.clamp(1 - epsilon, 1 + epsilon_high) * a)
    if beta != 0.0:
        d = torch.cat(ref_logps).to(device)[keep] - logp
        kl = torch.exp(d) - d - 1
        if kl_ratio:
            kl = kl * ratio
        per_token = per_token + beta * kl
    tokens = torch.zeros(b, device=device).index_add(0, owner, torch.ones_like(logp))  # (B,) each one's tokens
    if loss_type == "grpo":
        loss = (torch.zeros(b, device=device).index_add(0, owner, per_token) / tokens.clamp(min=1)).sum()
    elif loss_type == "dr_grpo":
        loss = per_token.sum() / max_completion_length
    elif loss_type == "dapo":
        loss = per_token.sum()
    else:  # bnpo
        loss = per_token.sum() / max(1, len(logp))

    scale = normalizer / max(token_total, 1)
    ratio = ratio.detach()
    low, high = (ratio < 1 - epsilon) & (a < 0), (ratio > 1 + epsilon_high) & (a > 0)
    sums = {"clip_ratio/low_mean": low.sum().item() * scale, "clip_ratio/high_mean": high.sum().item() * scale,
            "clip_ratio/region_mean": (low | high).sum().item() * scale}
    if beta != 0.0:
        sums["kl"] = kl.detach().sum().item() * scale
    if entropies is not None:
        sums["entropy"] = torch.cat(entropies).to(device)[keep].sum().item() * scale
    has = tokens > 0
    low_frac = torch.zeros(b, device=device).index_add(0, owner, low.float())[has] / tokens[has]
    high_frac = torch.zeros(b, device=device).index_add(0, owner, high.float())[has] / tokens[has]
    extremes = {"clip_ratio/low_min": low_frac.min().item() if has.any() else float("nan"),
                "clip_ratio/high_max": high_frac.max().item() if has.any() else float("nan")}
    return loss, sums, extremes


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(setup)
