"""GRPO: reinforcement learning of a LoRA / QLoRA adapter from the rewards of sampled completions (TRL 1.16's math)."""

from typing import Literal, Optional

import torch

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
    total = (rewards * weights.to(rewards)).nansum(1)  # (N,)
    total = torch.where(rewards.isnan().all(1), torch.nan, total)
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
