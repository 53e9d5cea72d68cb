"""The generation engine (lit_gpt.generate.Engine): rows at their own positions with their own settings, continuous
batching, n samples sharing a prefill, streaming; each row equals the same request run alone, and greedy decoding
equals transformers' `generate` (two families, one with a sliding window shorter than the sequences)."""

import pytest
import torch
from test_model import lit_model_from_hf, tiny_hf_model

from lit_gpt.generate import Engine, Request

VOCAB = 120  # test_model's tiny vocabulary


def requests(seed: int = 0) -> list:
    """Prompts of different lengths, each with its own sampling settings, stops, budget and seed."""
    gen = torch.Generator().manual_seed(seed)

    def prompt(n: int) -> list:
        return torch.randint(3, VOCAB, (n,), generator=gen).tolist()

    return [
        Request(prompt(7), 20, temperature=1.0, seed=1),
        Request(prompt(3), 9, temperature=0.8, top_k=10, seed=2, n=3),
        Request(prompt(12), 16, temperature=0.0),
        Request(prompt(5), 25, temperature=1.2, top_p=0.7, repetition_penalty=1.3, seed=3, stop_tokens=[[7], [9, 9]]),
        Request(prompt(9), 14, temperature=0.0, repetition_penalty=1.5, n=2),
        Request(prompt(4), 30, temperature=0.9, top_k=40, top_p=0.9, seed=4, n=2, stop_tokens=[[11]]),
    ]


def alone(model, request: Request) -> list:
    """Each sample of `request` run by itself in a one-row engine: sample j as a request seeded seed + j."""
    out = []
    for j in range(request.n):
        seed = None if request.seed is None else request.seed + j
        single = Request(**{**request.__dict__, "n": 1, "seed": seed})
        out.append(Engine(model, rows=1).generate([single])[0][0].tokens)
    return out


@pytest.mark.parametrize("kind", ["llama-gqa", "gemma3", "qwen3_5-hybrid", "gemma4-ple-shared-kv", "qwen3_moe",
                                  "gpt_oss"])
@pytest.mark.parametrize("rows", [3, 16])
def test_batched_rows_equal_each_request_alone(kind, rows):
    """3 rows for 11 samples: rows are refilled as answers end (continuous batching); 16: all at once."""
    model = lit_model_from_hf(tiny_hf_model(kind))
    batch = requests()
    for r in (batch[3], batch[5]):  # stop at ids (one of two) that sample 0 would make
        free = alone(model, Request(**{**r.__dict__, "stop_tokens": ()}))[0]
        r.stop_tokens = [[free[6]], free[3:5]]
    sizes = []
    hook = model.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape)))
    results = Engine(model, rows=rows).generate(batch)
    hook.remove()
    if not model.config.linear_attention:  # which prefills each prompt alone
        assert max(b for b, _ in sizes) == 3 if rows == 3 else sizes[0] == (6, 12)  # 16: one prefill of every prompt
    for request, completions in zip(batch, results):
        assert [c.tokens for c in completions] == alone(model, request)
    greedy = results[4]
    assert greedy[0].tokens == greedy[1].tokens  # greedy samples agree
    sampled = [c.tokens for c in results[1]]
    assert len({tuple(t) for t in sampled}) > 1  # seeds seed + j: the samples differ
    lengths = [len(c.tokens) for r in results for c in r]
    assert len(set(lengths)) > 3  # budgets and stops ended the rows at different steps
    stopped = [c for r in results for c in r if c.stop is not None]
    assert stopped and all(c.stopped for c in stopped)
    assert all(block.attn.kv_cache is None for block in model.transformer.h)


def test_samples_share_one_prefill():
    """n samples of a prompt: the prompt runs once and its cache row is copied; they equal n separate requests."""
    model = lit_model_from_hf(tiny_hf_model("llama-gqa"))
    prompt = torch.randint(3, VOCAB, (10,), generator=torch.Generator().manual_seed(5)).tolist()
    prefills = []
    hook = model.register_forward_pre_hook(lambda module, args: prefills.append(args[0].shape) if args[0].shape[1] > 1
                                           else None)
    shared = Engine(model, rows=8).generate([Request(prompt, 12, temperature=1.0, seed=10, n=6)])[0]
    assert [tuple(s) for s in prefills] == [(1, 10)]
    prefills.clear()
    separate = Engine(model, rows=8).generate([Request(prompt, 12, temperature=1.0, seed=10 + j) for j in range(6)])
    hook.remove()
    assert [tuple(s) for s in prefills] == [(6, 10)]
    assert [c.tokens for c in shared] == [r[0].tokens for r in separate]
    assert len({tuple(c.tokens) for c in shared}) == 6


def test_streaming_gives_the_completions_ids_in_order():
    model = lit_model_from_hf(tiny_hf_model("llama-gqa"))
    batch = requests(1)
    got: dict = {}
    done: dict = {}
    for i, j, new, completion in Engine(model, rows=4).stream(batch):
        assert (i, j) not in done  # nothing after a sample's completion
        got.setdefault((i, j), []).extend(new)
        if completion is not None:
            done[(i, j)] = completion
    assert len(done) == sum(r.n for r in batch)
    assert all(got[key] == c.tokens for key, c in done.items())


@pytest.mark.parametrize("kind", ["llama-gqa", "gemma3", "qwen3_5-hybrid", "gemma4-ple-shared-kv", "qwen3_moe",
                                  "gpt_oss"])
def test_greedy_equals_transformers_generate(kind):
    """Rows of different prompt lengths, budgets and stop ids, decoded together, each equal to transformers'
    greedy `generate` of that prompt alone (gemma3: windows of 5 on two of its layers, sequences up to 30)."""
    hf_model = tiny_hf_model(kind)
    model = lit_model_from_hf(hf_model)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in (4, 11, 7, 2)]
    budgets = [20, 12, 18, 25]
    free = [Engine(model, rows=1).generate([Request(p, b)])[0][0].tokens for p, b in zip(prompts, budgets)]
    stops = [None, free[1][5], None, free[3][9]]  # two rows stop at an id they would generate
    batch = [Request(p, b, stop_tokens=[[s]] if s is not None else ()) for p, b, s in zip(prompts, budgets, stops)]
    results = Engine(model, rows=3).generate(batch)
    for p, b, s, r in zip(prompts, budgets, stops, results):
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                    max_new_tokens=b, do_sample=False, eos_token_id=s, pad_token_id=0)[0, len(p):]
        ours = r[0].tokens + list(r[0].stop or ())  # transformers keeps the EOS it stopped at
        assert ours == out.tolist()
    assert results[1][0].stop == (free[1][5],) and len(results[1][0].tokens) <= 5


def test_lora_merged_and_unmerged_and_4bit_rows_equal_alone():
    """An unmerged LoRA model decodes in batch as alone and as merged; 4-bit (nf4) weights batched as alone."""
    pytest.importorskip("bitsandbytes")
    import copy

    from test_quantize import quantize_model

    from lit_gpt.lora import LoRAConfig, add_lora, merge_lora_weights

    hf_model = tiny_hf_model("llama-gqa")
    model = add_lora(lit_model_from_hf(hf_model), LoRAConfig(r=4, alpha=8, mlp=True, head=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    batch = requests(2)
    unmerged = Engine(model, rows=4).generate(batch)
    assert [[c.tokens for c in r] for r in unmerged] == [alone(model, q) for q in batch]
    quantized = quantize_model(copy.deepcopy(model), "bnb.nf4")
    assert [[c.tokens for c in r] for r in Engine(quantized, rows=4).generate(batch)] == [alone(quantized, q)
                                                                                          for q in batch]
    merge_lora_weights(model)
    greedy = [i for i, q in enumerate(batch) if q.temperature == 0]
    merged = Engine(model, rows=4).generate([batch[i] for i in greedy])
    assert [[c.tokens for c in r] for r in merged] == [[c.tokens for c in unmerged[i]] for i in greedy]


def test_draw_samples_the_softmax():
    """The engine's sampler: each row's ids follow its softmax (filtered tokens never drawn), and a row's draws
    depend on its own generator only."""
    from lit_gpt.generate import draw

    logits = torch.tensor([[0.0, 1.0, 2.0, float("-inf"), -1.0], [3.0, float("-inf"), 0.0, 0.5, 0.0]])
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    counts = torch.zeros(2, 5)
    for _ in range(20000):
        for row, token in enumerate(draw(logits, gens)):
            counts[row, token] += 1
    assert counts[0, 3] == 0 and counts[1, 1] == 0
    torch.testing.assert_close(counts / 20000, logits.softmax(-1), atol=0.012, rtol=0)
    alone = draw(logits[1:], [torch.Generator().manual_seed(5)])
    assert draw(logits, [torch.Generator().manual_seed(9), torch.Generator().manual_seed(5)])[1:] == alone


def test_linear_attention_chat_continues_from_the_kept_state():
    """Qwen3.5: a next turn that extends the kept sequence runs only its new tokens from the recurrent states and
    gives what a fresh engine gives; one that diverges inside the kept sequence runs again from position 0."""
    model = lit_model_from_hf(tiny_hf_model("qwen3_5-hybrid"))
    gen = torch.Generator().manual_seed(2)
    first = torch.randint(3, VOCAB, (9,), generator=gen).tolist()
    engine = Engine(model, rows=2)
    answer = engine.generate([Request(first, 8)])[0][0].tokens
    second = first + answer + torch.randint(3, VOCAB, (5,), generator=gen).tolist()
    lengths = []
    hook = model.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    again = engine.generate([Request(second, 30)])[0][0].tokens
    assert lengths[0] == len(second) - (len(first) + len(answer) - 1)
    assert again == Engine(model, rows=1).generate([Request(second, 30)])[0][0].tokens
    lengths.clear()
    other = second[:4] + [second[4] % (VOCAB - 3) + 3] + second[5:]  # differs inside the kept tokens
    tokens = engine.generate([Request(other, 10)])[0][0].tokens
    assert lengths[0] == len(other)
    assert tokens == Engine(model).generate([Request(other, 10)])[0][0].tokens
    hook.remove()
