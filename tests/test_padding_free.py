"""Padding-free training: examples laid end to end in one row (`lit_gpt.data.pack`, `GPT(..., lengths=...)`) give
what each example gives alone, and see nothing of the others."""

import pytest
import torch
from test_model import SIZES, lit_model_from_hf, tiny_hf_model

from lit_gpt.data import collate, pack, token_budget_batches
from lit_gpt.lora import LoRAConfig, add_lora, mark_only_lora_as_trainable
from lit_gpt.utils import response_loss

# a window (5 or 6) shorter than some examples, partial rotary, LongRoPE (original context 12: one example past it,
# the others not: each keeps its own factors), parallel residual, GQA, q/k norms
KINDS = ["llama-gqa", "gemma3", "phi3-partial-sliding", "phi3-longrope", "gpt_neox-parallel", "qwen3-head_dim",
         "qwen3_5-hybrid", "olmo3-yarn-sliding", "gemma4-ple-shared-kv", "gemma4-k_eq_v",
         "qwen3_moe", "gpt_oss", "qwen3_5_moe", "gemma4-moe"]
LENGTHS = [9, 3, 17, 1, 6]  # tokens read by the model (the samples are one longer)


def samples(lengths: list, seed: int = 0) -> list:
    """Samples of `lengths` + 1 random tokens, the first third of each (its "prompt") without a label."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(0, SIZES["vocab_size"], (n + 1,), generator=g)
        labels = ids.clone()
        labels[: (n + 1) // 3] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def lora_model(kind: str) -> torch.nn.Module:
    model = add_lora(lit_model_from_hf(tiny_hf_model(kind, seed=4)), LoRAConfig(r=4, alpha=8, dropout=0.0))
    mark_only_lora_as_trainable(model)
    torch.manual_seed(5)
    with torch.no_grad():  # B is zero at init: random adapters, so that every LoRA weight gets a gradient
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.1)
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_packed_equals_one_at_a_time(kind: str) -> None:
    """Per-example logits, the summed loss and the LoRA gradients of one packed row == the examples run alone."""
    model = lora_model(kind)
    if kind == "qwen3_5_moe":  # in float32 the DeltaNet's rounding, which differs between the row's shapes, grows
        model = model.double()  # through the routers' softmax to 2.7e-5 on logits of up to 9; in float64 to 1.3e-6
        # (its gated norm computes in float32 in any dtype, as transformers')
    batch = samples(LENGTHS)
    with torch.no_grad():
        input_ids, targets, lengths = pack(batch)
        assert lengths == LENGTHS and input_ids.shape == (1, sum(LENGTHS))
        packed = model(input_ids, lengths=lengths)[0].split(lengths)
        for sample, logits in zip(batch, packed):
            alone = model(sample["input_ids"][None, :-1])[0]
            torch.testing.assert_close(logits, alone, rtol=1e-5, atol=1e-5)

    def loss_and_grads(batches: list) -> tuple:
        model.zero_grad(set_to_none=True)
        total = sum(response_loss(model, x, y, reduction="sum", lengths=(lengths or [None])[0])
                    for x, y, *lengths in batches)
        total.backward()
        return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    packed_loss, packed_grads = loss_and_grads([pack(batch)])  # (x, y, lengths); collate: (x, y)
    alone_loss, alone_grads = loss_and_grads([collate([s]) for s in batch])
    torch.testing.assert_close(packed_loss, alone_loss, rtol=1e-5, atol=1e-5)
    assert packed_grads.keys() == alone_grads.keys() and len(packed_grads) > 0
    for name, grad in packed_grads.items():
        assert grad.abs().sum() > 0, name
        # float32 sums in another order: up to ~2e-5 on single entries (measured on Gemma 3's q adapter)
        torch.testing.assert_close(grad, alone_grads[name], rtol=1e-4, atol=5e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("kind", ["llama-gqa", "gemma3", "phi3-longrope", "qwen3_5-hybrid"])
def test_an_example_never_sees_another(kind: str) -> None:
    """Changing one example's tokens (or its length, hence every later example's place in the row) leaves the other
    examples' logits as they were."""
    model = lora_model(kind).eval()
    batch = samples(LENGTHS)
    with torch.no_grad():
        before = model(pack(batch)[0], lengths=LENGTHS)[0].split(LENGTHS)
        changed = list(batch)
        changed[2] = samples([LENGTHS[2]], seed=9)[0]  # the longest one: past the windows and the LongRoPE switch
        after = model(pack(changed)[0], lengths=LENGTHS)[0].split(LENGTHS)
        for i in (0, 1, 3, 4):
            assert torch.equal(before[i], after[i]), i
        assert not torch.equal(before[2], after[2])
        # a longer second example: the later ones move along the row and still give their own logits
        longer = [batch[0], samples([14], seed=7)[0], *batch[2:]]
        lengths = [9, 14, 17, 1, 6]
        moved = model(pack(longer)[0], lengths=lengths)[0].split(lengths)
        for i in (0, 2, 3, 4):
            torch.testing.assert_close(moved[i], before[i], rtol=1e-5, atol=1e-5)


def test_pack_lays_out_the_samples_of_collate() -> None:
    """Same tokens and targets as the padded batch, without the padding; no target crosses into the next sample."""
    batch = samples(LENGTHS)
    input_ids, targets, lengths = pack(batch, max_seq_length=12)
    padded_ids, padded_targets = collate(batch, max_seq_length=12)
    assert lengths == [min(n, 11) for n in LENGTHS]
    keep = torch.arange(padded_ids.size(1))[None] < torch.tensor(lengths)[:, None]
    assert torch.equal(input_ids[0], padded_ids[keep]) and torch.equal(targets[0], padded_targets[keep])
    ends = torch.tensor(lengths).cumsum(0) - 1
    for sample, end, n in zip(batch, ends, lengths):
        assert targets[0, end] == sample["labels"][n]


def test_lengths_must_describe_the_row() -> None:
    model = lit_model_from_hf(tiny_hf_model("llama-gqa"))
    with pytest.raises(ValueError, match="must sum to the 5 tokens"):
        model(torch.zeros(1, 5, dtype=torch.long), lengths=[2, 2])


def test_token_budget_batches() -> None:
    """Every example once, first fit longest first, each micro-batch within the budget (padding-free: summed;
    padded: count x longest) unless one example alone is over it; `count` halves the fullest micro-batches until
    there are that many."""
    lengths = [30, 120, 10, 55, 70, 5, 90, 40]
    for padded in (False, True):
        batches = token_budget_batches(lengths, 100, padded)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)
        assert all(lengths[b[0]] == max(lengths[i] for i in b) for b in batches)
        for b in batches:
            cost = len(b) * max(lengths[i] for i in b) if padded else sum(lengths[i] for i in b)
            assert cost <= 100 or len(b) == 1
    assert token_budget_batches(lengths, 100) == [[1], [6, 2], [4, 0], [3, 7, 5]]  # first fit, fullest
    assert token_budget_batches(lengths, 100, padded=True) == [[1], [6], [4], [3], [7, 0], [2, 5]]
    split = token_budget_batches(lengths, 100, count=6)
    assert len(split) == 6 and sorted(i for b in split for i in b) == list(range(len(lengths)))
    assert len(token_budget_batches([5, 5], 100, count=4)) == 2  # no more micro-batches than examples
