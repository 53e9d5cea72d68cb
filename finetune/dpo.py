"""Preference finetuning of a LoRA / QLoRA adapter: DPO, IPO, hinge, robust, SimPO, ORPO.

    python finetune/dpo.py --checkpoint_dir ... --data_dir DIR_OF_PAIRS [--lora_path SFT_OUT_DIR] [--quantize bnb.nf4]

The data: pairs of a preferred (chosen) and a rejected answer to one prompt, prepared by scripts/prepare_preferences.py.
The usual pipeline is SFT (finetune/lora.py), then this script from its adapter (`--lora_path`); the out dir is an
ordinary adapter dir that merge, generate, chat, eval and the exports read.

The reference model is the model training starts from: the base with the trained adapter switched off or, with
`--lora_path`, the base with a frozen copy of the starting adapter (megabytes; never a second copy of the base).
`--precompute_reference` computes its log-probs once, before training: one forward pass per pair fewer in each step.

Each pair runs as one packed sequence, prompt, chosen, rejected: the prompt once, both answers attending to it and
to themselves only (`GPT.forward`'s shared-prompt `lengths`), the LM head only where a log-prob is needed. With
`--padding_free false`, prompt + chosen and prompt + rejected are two padded rows, as TRL runs them.

The losses, with TRL 1.16's meaning, metrics and defaults (tests/test_dpo.py checks them against TRL's trainers).
Per pair, log pi(y | x) summed over the answer's tokens, y_w chosen, y_l rejected,
Delta = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)]:
    sigmoid (DPO):  -(1 - e) log sigmoid(beta Delta) - e log sigmoid(-beta Delta)  (e = --label_smoothing: cDPO)
    robust:         [-(1 - e) log sigmoid(beta Delta) + e log sigmoid(-beta Delta)] / (1 - 2 e)
    hinge:          relu(1 - beta Delta)
    ipo:            (Delta per token of each answer - 1 / (2 beta))^2
    simpo:          as sigmoid, on z = mean log pi(y_w) - mean log pi(y_l) - gamma / beta, no reference
    orpo:           NLL of prompt + chosen (token mean) - beta log sigmoid(log odds(y_w) - log odds(y_l)), odds of the
                    mean log-probs, no reference (beta is the paper's lambda)
"""

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.config import Config
from lit_gpt.data import load_prepared, prepared_config
from lit_gpt.generate import generate
from lit_gpt.load import load_lora_run
from lit_gpt.lora import reference_model
from lit_gpt.prompts import PromptStyle
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.training import Launch, TrainArgs, Trainer, make_fabric, prepare_run, start_from_adapter
from lit_gpt.utils import check_valid_checkpoint_dir, cli, fail

HYPERPARAMETERS = TrainArgs(
    learning_rate=5e-4,
    lr_schedule="cosine",
    warmup_fraction=0.1,
    min_lr_ratio=0.1,
    batch_size=16,  # pairs per optimizer step (across all devices)
    micro_batch_size=4,  # pairs per forward/backward
    micro_batch_tokens=None,
    max_iters=100,
    epochs=None,
    weight_decay=0.0,
    grad_clip=1.0,
    max_seq_length=None,  # the data's
    eval_interval=25,
    eval_iters=10,
    save_interval=50,
    log_interval=1,
    lora_r=8,  # with --lora_path: the LoRA settings are the starting adapter's
    lora_alpha=16,
    lora_dropout=0.0,  # TRL disables dropout in preference training: the policy and reference log-probs compare
    lora_query=True,
    lora_key=True,
    lora_value=True,
    lora_projection=True,
    lora_mlp=True,
    lora_head=False,  # TRL refuses an adapter on the LM head in DPO
    lora_experts=True,  # mixture-of-experts models: the expert tensors too
    router_aux_loss_coef=None,  # mixture-of-experts models: the load-balancing loss weight (None: the model's)
    padding_free=True,  # the shared-prompt packing; false: two padded rows per pair
    pad_multiple=32,
    activation_checkpointing=False,
    seed=1337,
)


@dataclass
class PreferenceArgs:
    """The preference loss.

    Args:
        loss_type: sigmoid (DPO), robust (DPO robust to flipped labels), hinge (SLiC), ipo, simpo (reference-free,
            length-normalized, with a margin) or orpo (reference-free: SFT + an odds-ratio term).
        beta: The inverse temperature of the implicit reward (sigmoid, robust, hinge, simpo), IPO's tau, ORPO's lambda
            (the weight of its odds-ratio term).
        label_smoothing: The probability that a pair's preference is flipped: conservative DPO (sigmoid, simpo),
            robust DPO (robust, in [0, 0.5)).
        simpo_gamma: SimPO's target reward margin.
        sft_weight: Add this times the NLL of the chosen answers (their token mean over the batch: TRL's "sft" loss
            in loss_type=[..., "sft"] with this weight; CPO's cpo_alpha for simpo): DPO + NLL, "RPO", which keeps
            the chosen answers likely instead of only pushing the rejected ones down (not with orpo: it has its own).
        precompute_reference: Compute the reference log-probs of every pair once before training instead of in
            every step (one forward pass per pair fewer in each step).
    """

    loss_type: Literal["sigmoid", "robust", "hinge", "ipo", "simpo", "orpo"] = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    sft_weight: float = 0.0
    precompute_reference: bool = False


REFERENCE_FREE = ("simpo", "orpo")


def setup(
    checkpoint_dir: Path = Path("checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct"),
    data_dir: Path = Path("data/prepared/arithmetic-preferences"),
    out_dir: Path = Path("out/dpo/arithmetic"),
    lora_path: Optional[Path] = None,
    launch: Launch = Launch(),
    hp: TrainArgs = HYPERPARAMETERS,
    preference: PreferenceArgs = PreferenceArgs(),
) -> None:
    """Trains a LoRA adapter on preference pairs.

    Args:
        checkpoint_dir: The base model (lit_model.pth, lit_config.json, tokenizer).
        data_dir: A dir written by scripts/prepare_preferences.py.
        out_dir: Where the adapter, lora_config.json, metrics.csv, loss.png and resumable checkpoints go.
        lora_path: Start from this adapter (a finetune/lora.py out dir, e.g. of SFT on the same prompts); it is also
            the reference model. Default: a new adapter, the reference being the base model.
        launch: Precision, quantization, devices, resume (see lit_gpt.training.Launch).
        hp: The hyperparameters (see lit_gpt.training.TrainArgs); batch_size and micro_batch_size count pairs.
        preference: The loss and its settings.
    """
    check_valid_checkpoint_dir(checkpoint_dir)
    data_config = prepared_config(data_dir)
    if data_config.get("format") != "preference":
        fail(f"{str(data_dir)!r} holds {data_config.get('format', 'instruction')} data, which is for "
             f"finetune/lora.py; prepare preference pairs with scripts/prepare_preferences.py")
    p = preference
    if p.beta <= 0:
        fail(f"--beta must be above 0, got {p.beta}")
    limit = 0.5 if p.loss_type == "robust" else 1.0
    if not 0 <= p.label_smoothing < limit or (p.label_smoothing and p.loss_type not in ("sigmoid", "robust", "simpo")):
        fail(f"--label_smoothing {p.label_smoothing}: it must be in [0, {limit}) and applies to the sigmoid, robust "
             f"and simpo losses only (--loss_type {p.loss_type})")
    if p.sft_weight < 0 or (p.sft_weight and p.loss_type == "orpo"):
        fail(f"--sft_weight {p.sft_weight}: it must be at least 0, and orpo has its own NLL term (its weight is 1)")
    if p.precompute_reference and p.loss_type in REFERENCE_FREE:
        fail(f"--precompute_reference: --loss_type {p.loss_type} uses no reference model; drop the flag")
    _, hp, start = start_from_adapter(lora_path, hp, checkpoint_dir)
    extra = {**asdict(p), **start}
    run = prepare_run(checkpoint_dir, data_dir, data_config, out_dir, launch, hp, objective=f"dpo.{p.loss_type}",
                      objective_args=extra)
    fabric = make_fabric(run)
    fabric.launch(main, run=run, data_dir=Path(data_dir), preference=p, lora_path=lora_path)


def main(fabric, run, data_dir: Path, preference: PreferenceArgs, lora_path: Optional[Path]) -> None:
    train_data, val_data, data_config = load_prepared(data_dir)
    config = Config.from_checkpoint(run.checkpoint_dir)
    longest = max(sequence_length(s) for s in train_data + val_data)
    if run.hp.max_seq_length is not None and run.hp.max_seq_length < longest:
        fail(f"--max_seq_length {run.hp.max_seq_length}: the pairs in {str(data_dir)!r} run up to {longest} tokens; "
             f"prepare them again with scripts/prepare_preferences.py --max_seq_length {run.hp.max_seq_length}")
    if longest > config.block_size:
        fail(f"The pairs in {str(data_dir)!r} run up to {longest} tokens, past the model's context of "
             f"{config.block_size}: prepare them again with --max_seq_length {config.block_size}")
    start = load_lora_run(lora_path).adapter if lora_path is not None else None
    trainer = Trainer(fabric, run, longest, start_adapter=start)
    objective = Preference(preference, run.hp, fabric.device, Tokenizer(run.checkpoint_dir),
                           PromptStyle.from_name(data_config["prompt_style"]), val_data[0])
    if preference.precompute_reference:
        objective.precompute(fabric, trainer.model, train_data, "train")
        objective.precompute(fabric, trainer.model, val_data, "validation")
    trainer.fit(train_data, val_data, objective)


def sequence_length(sample: dict) -> int:
    """The longer of prompt + chosen and prompt + rejected."""
    return len(sample["prompt_ids"]) + max(len(sample["chosen_ids"]), len(sample["rejected_ids"]))


class Preference:
    """The preference loss of `PreferenceArgs`; every pair counts 1 (a step's loss is the mean over its pairs)."""

    def __init__(self, args: PreferenceArgs, hp: TrainArgs, device: torch.device, tokenizer: Tokenizer,
                 prompt_style: PromptStyle, sample_pair: dict) -> None:
        self.args, self.hp, self.device = args, hp, device
        self.tokenizer, self.prompt_style, self.sample_pair = tokenizer, prompt_style, sample_pair
        self.nll_weight = self.sft_norm = 0.0  # pairs / NLL tokens of the batch (`start_batch`): ORPO, --sft_weight

    def length(self, sample: dict) -> int:
        p, c, r = (len(sample[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
        return p + c + r if self.hp.padding_free else 2 * p + c + r

    def count(self, sample: dict) -> int:
        return 1

    def start_batch(self, samples: list) -> None:
        """ORPO's NLL is the mean over the batch's tokens of prompt + chosen (but the first), --sft_weight's over
        those of the chosen answers, as TRL's: each pair's NLL sum is weighted by pairs / tokens of the whole batch,
        which the step then divides by its pairs."""
        tokens = sum(len(s["prompt_ids"]) + len(s["chosen_ids"]) - 1 for s in samples)
        self.nll_weight = len(samples) / max(1, tokens)
        self.sft_norm = len(samples) / max(1, sum(len(s["chosen_ids"]) for s in samples))

    def loss(self, model, samples: list) -> tuple:
        a, beta = self.args, self.args.beta
        logps = answer_logps(model, samples, self.hp.padding_free, self.device, nll=a.loss_type == "orpo")
        chosen, rejected = logps["chosen"], logps["rejected"]
        sft = -chosen * self.sft_norm  # the chosen answers' NLL, for --sft_weight
        if a.loss_type in REFERENCE_FREE:  # length-normalized log-probs; rewards are beta times them
            chosen, rejected = chosen / logps["chosen_tokens"], rejected / logps["rejected_tokens"]
            reward_chosen, reward_rejected = beta * chosen.detach(), beta * rejected.detach()
        else:
            ref_chosen, ref_rejected = self.reference(model, samples)
            chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
            reward_chosen, reward_rejected = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
            delta = chosen_ratio - rejected_ratio
        e, metrics = a.label_smoothing, {}
        if a.loss_type == "sigmoid":
            losses = -(1 - e) * F.logsigmoid(beta * delta) - e * F.logsigmoid(-beta * delta)
        elif a.loss_type == "robust":
            losses = (-(1 - e) * F.logsigmoid(beta * delta) + e * F.logsigmoid(-beta * delta)) / (1 - 2 * e)
        elif a.loss_type == "hinge":
            losses = torch.relu(1 - beta * delta)
        elif a.loss_type == "ipo":
            delta = chosen_ratio / logps["chosen_tokens"] - rejected_ratio / logps["rejected_tokens"]
            losses = (delta - 1 / (2 * beta)) ** 2
        elif a.loss_type == "simpo":
            z = chosen - rejected - a.simpo_gamma / beta
            losses = -(1 - e) * F.logsigmoid(beta * z) - e * F.logsigmoid(-beta * z)
        else:  # orpo
            log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
            ratio = F.logsigmoid(log_odds)
            nll = logps["nll"] * self.nll_weight
            losses = nll - beta * ratio
            metrics = {"nll_loss": nll.sum().item(), "log_odds_ratio": ratio.sum().item(),
                       "log_odds_chosen": log_odds.sum().item()}
        if a.sft_weight:
            losses = losses + a.sft_weight * sft
        return losses.sum(), {
            "rewards/chosen": reward_chosen.sum().item(), "rewards/rejected": reward_rejected.sum().item(),
            "rewards/accuracies": (reward_chosen > reward_rejected).sum().item(),
            "rewards/margins": (reward_chosen - reward_rejected).sum().item(),
            "logps/chosen": chosen.detach().sum().item(), "logps/rejected": rejected.detach().sum().item(), **metrics}

    def reference(self, model, samples: list) -> tuple:
        """The reference model's summed log-probs of each pair's answers: precomputed, or run now."""
        if "ref_chosen" in samples[0]:
            return tuple(torch.tensor([s[k] for s in samples], device=self.device)
                         for k in ("ref_chosen", "ref_rejected"))
        with torch.no_grad(), reference_model(model):
            logps = answer_logps(model, samples, self.hp.padding_free, self.device)
        return logps["chosen"], logps["rejected"]

    @torch.no_grad()
    def precompute(self, fabric, model, data: list, name: str) -> None:
        """Stores the reference log-probs in each pair ("ref_chosen", "ref_rejected"): each device runs its share
        of the pairs, in micro-batches, then all of them are summed over the devices."""
        fabric.print(f"Computing the reference log-probs of the {len(data)} {name} pairs")
        values = torch.zeros(len(data), 2, dtype=torch.float64, device=fabric.device)
        mine = list(range(fabric.global_rank, len(data), fabric.world_size))
        model.eval()
        for i in range(0, len(mine), self.hp.micro_batch_size):
            idx = mine[i:i + self.hp.micro_batch_size]
            with reference_model(model):
                logps = answer_logps(model, [data[j] for j in idx], self.hp.padding_free, self.device)
            values[idx] = torch.stack([logps["chosen"], logps["rejected"]], 1).double()
        model.train()
        if fabric.world_size > 1:
            values = fabric.all_reduce(values, reduce_op="sum")
        for sample, (chosen, rejected) in zip(data, values.tolist()):
            sample["ref_chosen"], sample["ref_rejected"] = chosen, rejected

    @torch.no_grad()
    def evaluate(self, fabric, model) -> None:
        """The answer to the first validation prompt (greedy), to watch the model learn."""
        prompt = self.sample_pair["prompt_ids"].to(fabric.device)
        max_new = min(64, model.max_seq_length - len(prompt))
        out = generate(model, prompt, max_new, temperature=0.0,
                       stop_tokens=self.prompt_style.stop_tokens(self.tokenizer)) if max_new > 0 else prompt[:0]
        fabric.print(f"sample: {self.tokenizer.decode(prompt)!r} -> {self.tokenizer.decode(out)!r}", flush=True)


def answer_logps(model, samples: list, padding_free: bool, device: torch.device, nll: bool = False) -> dict:
    """The log-probs of each pair's answers given its prompt, summed over their tokens: {"chosen": (B,),
    "rejected": (B,), "chosen_tokens": (B,), "rejected_tokens": (B,)} and, with `nll`, "nll": (B,), the summed
    cross-entropy of prompt + chosen after its first token (ORPO). In float32.

    Padding-free: one row of prompt, chosen, rejected per pair, laid end to end, the answers sharing their prompt
    (`GPT.forward` lengths (p, c, r)); the prompt's last position predicts the first token of both answers. Padded:
    prompt + chosen and prompt + rejected as two right-padded rows.
    """
    where, targets, owner = [], [], []  # per scored token: its position in the rows, its id, (pair, 0 | 1 | 2)
    if padding_free:
        rows, lengths, start = [], [], 0
        for b, s in enumerate(samples):
            prompt, chosen, rejected = s["prompt_ids"], s["chosen_ids"], s["rejected_ids"]
            p, c, r = len(prompt), len(chosen), len(rejected)
            rows.append(torch.cat([prompt, chosen, rejected]))
            lengths.append((p, c, r))
            last = start + p - 1  # the prompt's last position predicts the first token of both answers
            where += [last, *range(start + p, start + p + c - 1), last, *range(start + p + c, start + p + c + r - 1)]
            targets += [*chosen.tolist(), *rejected.tolist()]
            owner += [(b, 0)] * c + [(b, 1)] * r
            if nll:  # the prompt's tokens after its first
                where += list(range(start, last))
                targets += prompt[1:].tolist()
                owner += [(b, 2)] * (p - 1)
            start += p + c + r
        input_ids = torch.cat(rows)[None]
    else:
        B, lengths = len(samples), None
        sequences = [torch.cat([s["prompt_ids"], s[k]]) for k in ("chosen_ids", "rejected_ids") for s in samples]
        width = max(len(x) for x in sequences)
        input_ids = torch.zeros(len(sequences), width, dtype=torch.long)
        for row, x in enumerate(sequences):
            b, kind, p, n = row % B, row // B, len(samples[row % B]["prompt_ids"]), len(x)
            input_ids[row, :n] = x
            scored = range(1 if nll and kind == 0 else p, n)  # position t - 1 predicts token t
            where += [row * width + t - 1 for t in scored]
            targets += x[scored.start:].tolist()
            owner += [(b, kind if t >= p else 2) for t in scored]
    at = torch.zeros(input_ids.numel(), dtype=torch.bool)
    where = torch.tensor(where)
    at[where] = True
    index = (at.cumsum(0) - 1)[where].to(device)  # each scored token's row among the positions with logits
    logits = model(input_ids.to(device), logits_at=at.view(input_ids.shape).to(device), lengths=lengths)  # (N, V)
    logits = logits.float()
    token_logps = logits[index, torch.tensor(targets, device=device)] - torch.logsumexp(logits, -1)[index]
    pair, kind = (torch.tensor(x, device=device) for x in zip(*owner))
    sums = torch.zeros(len(samples) * 3, device=device).index_add(0, pair * 3 + kind, token_logps).view(-1, 3)
    counts = torch.zeros(len(samples) * 3, device=device).index_add(0, pair * 3 + kind, torch.ones_like(token_logps))
    counts = counts.view(-1, 3)
    out = {"chosen": sums[:, 0], "rejected": sums[:, 1], "chosen_tokens": counts[:, 0], "rejected_tokens": counts[:, 1]}
    if nll:
        out["nll"] = -(sums[:, 2] + sums[:, 0])
    return out


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(setup)
