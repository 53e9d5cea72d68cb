"""Sampling loop (greedy == full-forward argmax, seeds, top-k/top-p/repetition penalty vs transformers, stop
sequences, streaming text) and the generate scripts end to end, plus one SmolLM2 check against transformers."""

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from conftest import run_script
from lit_gpt.config import Config
from lit_gpt.generate import Engine, Request, generate, process_logits, stream_text
from lit_gpt.load import load_model
from lit_gpt.lora import LoRAConfig, add_lora, lora_filter, lora_state_dict
from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer

LLAMA = dict(rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm",
             mlp_class_name="LLaMAMLP", intermediate_size=64)
CONFIGS = {
    "llama-gqa": dict(LLAMA, n_head=4, n_query_groups=2),
    "neox-mha": dict(n_head=4, rotary_percentage=0.25, parallel_residual=True, bias=True),
}


def tiny_model(kind: str = "llama-gqa", seed: int = 0, **kwargs) -> GPT:
    torch.manual_seed(seed)
    config = Config(**{**dict(name=kind, n_layer=2, n_embd=32, vocab_size=100, padding_multiple=64, block_size=64),
                       **CONFIGS[kind], **kwargs})
    return GPT(config).eval()


def greedy_without_cache(model: GPT, prompt: torch.Tensor, n: int) -> torch.Tensor:
    ids = prompt
    for _ in range(n):
        with torch.no_grad():
            logits = model(ids[None])[0, -1, :model.config.vocab_size]
        ids = torch.cat([ids, logits.argmax()[None]])
    return ids[len(prompt):]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_greedy_equals_full_forward_argmax(kind):
    model = tiny_model(kind)
    prompt = torch.randint(0, 100, (7,), generator=torch.Generator().manual_seed(1))
    expected = greedy_without_cache(model, prompt, 30)
    out = generate(model, prompt, 30, temperature=0.0)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(generate(model, prompt, 30, temperature=0.0), out, rtol=0, atol=0)
    assert all(block.attn.kv_cache is None for block in model.transformer.h)  # the model is left as it was
    assert len(set(out.tolist())) > 2  # not a degenerate constant output
    # a too-long request is refused with both lengths
    with pytest.raises(ValueError, match=r"prompt \(7 tokens\) \+ max_new_tokens \(58\)"):
        generate(model, prompt, 58)


def test_only_the_real_vocabulary_is_sampled():
    model = tiny_model()  # vocab 100, padded to 128
    with torch.no_grad():
        model.lm_head.weight[100:] = model.lm_head.weight[:100].abs().max() * 50  # padding rows would win
    prompt = torch.tensor([1, 2, 3])
    for kwargs in (dict(temperature=0.0), dict(temperature=1.0, seed=0)):
        assert generate(model, prompt, 20, **kwargs).max() < 100


def test_sampling_seeds():
    model = tiny_model()
    prompt = torch.tensor([5, 6, 7])

    def run(seed, **kwargs):
        return generate(model, prompt, 40, temperature=1.5, seed=seed, **kwargs)

    torch.testing.assert_close(run(1), run(1), rtol=0, atol=0)
    assert not torch.equal(run(1), run(2))
    greedy = generate(model, prompt, 40, temperature=0.0)
    assert not torch.equal(run(1), greedy)
    torch.testing.assert_close(run(3, top_k=1), greedy, rtol=0, atol=0)
    torch.testing.assert_close(run(4, top_p=1e-6), greedy, rtol=0, atol=0)


@pytest.mark.parametrize("temperature, top_k, top_p, penalty", [
    (1.0, None, None, 1.3), (0.7, 10, None, 1.0), (1.3, None, 0.8, 0.8), (0.9, 50, 0.6, 1.2), (1.0, 3, 0.99, 2.0),
])
def test_logits_processing_matches_transformers(temperature, top_k, top_p, penalty):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    generator = torch.Generator().manual_seed(int(temperature * 100 + penalty * 10))
    for _ in range(5):
        logits = torch.randn(1000, generator=generator) * 3
        seen = torch.randint(0, 1000, (60,), generator=generator)  # with repeats
        processors = [RepetitionPenaltyLogitsProcessor(penalty)] if penalty != 1.0 else []
        processors.append(TemperatureLogitsWarper(temperature)) if temperature != 1.0 else None
        processors.append(TopKLogitsWarper(top_k)) if top_k else None
        processors.append(TopPLogitsWarper(top_p)) if top_p else None
        expected = LogitsProcessorList(processors)(seen[None], logits[None].clone())[0]
        ours = process_logits(logits, seen, temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=penalty)
        assert torch.equal(ours.isinf(), expected.isinf())
        assert (~ours.isinf()).sum() > (1 if top_k or top_p else 100)  # the filters left a choice
        torch.testing.assert_close(ours, expected)
        torch.testing.assert_close(ours.softmax(0), expected.softmax(0))


def test_repetition_penalty_in_the_loop():
    model = tiny_model()
    prompt = torch.tensor([5, 6, 7])
    plain = generate(model, prompt, 40, temperature=0.0).tolist()
    assert len(set(plain)) < 30  # the random model repeats itself ...
    penalized = generate(model, prompt, 40, temperature=0.0, repetition_penalty=100.0).tolist()
    assert len(set(penalized)) == 40 and not set(penalized) & {5, 6, 7}  # ... and stops when penalized


def cut_at(tokens: list, stop: list) -> list:
    """`tokens` up to the first occurrence of `stop`."""
    for i in range(len(tokens) - len(stop) + 1):
        if tokens[i:i + len(stop)] == stop:
            return tokens[:i]
    return tokens


def test_stop_tokens():
    model = tiny_model()
    prompt = torch.tensor([1, 2, 3])

    def run(stop_tokens=()):  # sampled (the same draws every time) for a varied sequence
        return generate(model, prompt, 30, temperature=1.0, seed=0, stop_tokens=stop_tokens).tolist()

    full = run()
    assert len(set(full[:8])) == 8
    assert run([[555], [full[4]]]) == full[:4]
    assert run([full[5:8]]) == full[:5]  # nothing of a multi-token stop sequence is emitted
    assert run([[3, full[0]]]) == cut_at(full, [3, full[0]])  # only generated tokens count, not the prompt's
    # a sequence that starts like the output but then differs is held back, then released
    assert run([[full[5], full[6], 101]]) == full


def test_stream_text_prints_multibyte_characters(smollm2_dir):
    tokenizer = Tokenizer(smollm2_dir)
    text = "Llamas (🦙) eat grass — and 世界 likes ñandú. Ünïcödé!"
    ids = tokenizer.encode(text, bos=False).tolist()
    assert len(ids) > len(text) // 4
    pieces = list(stream_text(tokenizer, iter(ids)))
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert len(pieces) > 5  # it does stream


def test_compiled_decoding_matches_eager():
    """compile=True (inductor, one-row linears as reductions, dynamic shapes) gives the eager tokens, for several
    prompt and cache lengths, without recompiling for new lengths."""
    import torch._dynamo

    torch._dynamo.reset()
    model = tiny_model(n_layer=1)
    counts = []
    for length, new in ((5, 20), (3, 33), (9, 12)):
        prompt = torch.randint(0, 100, (length,), generator=torch.Generator().manual_seed(length))
        eager = generate(model, prompt, new, temperature=0.0)
        compiled = generate(model, prompt, new, temperature=0.0, compile=True)
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
        counts.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        sampled = [generate(model, prompt, new, temperature=1.0, top_k=20, seed=0, compile=c) for c in (False, True)]
        torch.testing.assert_close(sampled[1], sampled[0], rtol=0, atol=0)
    assert counts[0] > 0 and counts[-1] == counts[0]  # the later lengths reused the first compilation
    assert all(block.attn.kv_cache is None for block in model.transformer.h)


def test_compiled_decoding_of_a_mixture_of_experts():
    """The experts' data-dependent row counts run eagerly inside the compiled step (no fallback to eager decoding),
    and the tokens are the eager ones."""
    model = tiny_model(n_layer=1, n_expert=4, n_expert_per_token=2, moe_intermediate_size=16)
    prompt = torch.arange(1, 6)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")
        compiled = generate(model, prompt, 8, temperature=0.0, compile=True)
    torch.testing.assert_close(compiled, generate(model, prompt, 8, temperature=0.0), rtol=0, atol=0)


def test_generation_continues_from_the_engines_kept_kv_cache():
    """A single request whose prompt starts with the previous one's prompt and answer (a chat's next turn) runs only
    the rest of it, and gives the tokens a fresh generation over the whole prompt gives."""
    model = tiny_model()
    gen = torch.Generator().manual_seed(2)
    first = torch.randint(0, 100, (9,), generator=gen).tolist()
    engine = Engine(model, rows=1)
    lengths = []
    model.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    answer = engine.generate([Request(first, 8)])[0][0].tokens
    assert answer == generate(model, torch.tensor(first), 8, temperature=0.0).tolist()
    second = first + answer + torch.randint(0, 100, (5,), generator=gen).tolist()
    kept = len(first) + len(answer) - 1  # the last answer token never went through the model
    assert engine.kept == second[:kept]
    lengths.clear()
    again = engine.generate([Request(second, 40)])[0][0].tokens  # 56 positions: the cache of 17 grows
    assert lengths[0] == len(second) - kept
    assert again == generate(model, torch.tensor(second), 40, temperature=0.0).tolist()
    assert again == greedy_without_cache(model, torch.tensor(second), 40).tolist()
    with torch.inference_mode():  # the kept positions are read, not run again: garbage there shows
        for cache in engine.caches:
            cache.k[:, :, :kept].normal_(generator=gen)
    engine.kept = second[:kept]
    assert engine.generate([Request(second, 40)])[0][0].tokens != again
    assert all(block.attn.kv_cache is None for block in model.transformer.h)


def test_kv_cache_overflow_is_an_error():
    model = tiny_model()
    model.set_kv_cache(1, 8)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), torch.arange(3))
        with pytest.raises(ValueError, match="Position 8 is past the KV cache's 8 positions"):
            model(torch.tensor([[4]]), torch.tensor([8]))


def test_prefill_once_then_one_token_per_step():
    """One forward pass over the prompt, then one position per step; a KV cache the model had is put back."""
    model = tiny_model()
    model.set_kv_cache(1, 16)
    caches = [block.attn.kv_cache for block in model.transformer.h]
    lengths = []
    model.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    generate(model, torch.arange(10), 8, temperature=0.0)
    assert lengths == [10] + [1] * 7
    assert [block.attn.kv_cache for block in model.transformer.h] == caches


############
# scripts
############
TINY = dict(name="tiny-llama", n_layer=2, n_head=4, n_query_groups=2, n_embd=32, vocab_size=49152,
            padding_multiple=64, block_size=128, **LLAMA)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, smollm2_dir) -> Path:
    """A random tiny Llama with the SmolLM2 tokenizer."""
    checkpoint_dir = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    checkpoint_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
        shutil.copy(smollm2_dir / name, checkpoint_dir / name)
    config = Config(**TINY)
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # peakier logits: sampled texts stay short-ish and differ from greedy less
    config.save(checkpoint_dir / "lit_config.json")
    torch.save(model.state_dict(), checkpoint_dir / "lit_model.pth")
    return checkpoint_dir


def expected_text(checkpoint_dir: Path, prompt: str, max_new_tokens: int, style: str = None, input: str = "",
                  lora_path: Path = None, quantize: str = None, seed: int = None, num_samples: int = 1,
                  **sampling) -> str:
    """What the scripts should print, computed in-process with the library."""
    from lit_gpt.generate import prompt_ids
    from lit_gpt.lora import merge_lora_weights

    tokenizer = Tokenizer(checkpoint_dir)
    ids, stops = prompt_ids(tokenizer, style, checkpoint_dir, prompt, input)
    lora_config = None
    if lora_path is not None:
        lora_config = LoRAConfig(**json.loads((lora_path / "lora_config.json").read_text())["lora"])
    model = load_model(checkpoint_dir, precision="32-true", quantize=quantize, lora_config=lora_config,
                       lora_path=lora_path)
    if lora_path is not None and quantize is None:
        merge_lora_weights(model)
    # sample j of the script's batch draws from a generator seeded seed + j, as it would alone
    texts = [tokenizer.decode(generate(model, ids, max_new_tokens, stop_tokens=stops,
                                       seed=None if seed is None else seed + j, **sampling))
             for j in range(num_samples)]
    return "".join(text + "\n" for text in texts)


def test_prompt_styles(tiny_checkpoint):
    from lit_gpt.generate import prompt_ids

    tokenizer = Tokenizer(tiny_checkpoint)
    raw, stops = prompt_ids(tokenizer, "raw", tiny_checkpoint, "Hi there", "")
    assert raw.tolist() == tokenizer.encode("Hi there").tolist() and stops == [[tokenizer.eos_id]]
    with_input = prompt_ids(tokenizer, "none", tiny_checkpoint, "Hi", "you")[0]
    assert with_input.tolist() == tokenizer.encode("Hi\n\nyou").tolist()
    chat, stops = prompt_ids(tokenizer, "chatml", tiny_checkpoint, "Hi", "")
    assert tokenizer.decode(chat).startswith("<|im_start|>system") and [tokenizer.eos_id] in stops
    # no prompt_style.json in the tiny checkpoint: the model's default (alpaca for an unknown model)
    assert "### Instruction:" in tokenizer.decode(prompt_ids(tokenizer, None, tiny_checkpoint, "Hi", "")[0])


def test_base_script_greedy_and_sampled(tiny_checkpoint):
    prompt = "What food do llamas eat?"
    proc = run_script("generate/base.py", "--checkpoint_dir", tiny_checkpoint, "--prompt", prompt,
                      "--max_new_tokens", 20, "--temperature", 0, "--precision", "32-true")
    expected = expected_text(tiny_checkpoint, prompt, 20, temperature=0.0)
    assert len(expected) > 10
    assert proc.stdout == expected
    assert "tokens/s" in proc.stderr and "Peak memory" in proc.stderr

    # every sampling flag, two samples, streamed; the input and an explicit prompt style
    flags = dict(num_samples=2, max_new_tokens=15, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.2,
                 seed=7)
    args = [x for key, value in flags.items() for x in (f"--{key}", value)]
    proc = run_script("generate/base.py", "--checkpoint_dir", tiny_checkpoint, "--prompt", prompt, "--input",
                      "Answer briefly.", "--prompt_style", "alpaca", "--precision", "32-true", "--stream", "true",
                      *args)
    expected = expected_text(tiny_checkpoint, prompt, 15, style="alpaca", input="Answer briefly.",
                             **{k: v for k, v in flags.items() if k != "max_new_tokens"})
    assert proc.stdout == expected
    first, second = expected.split("\n")[:2]
    assert first != second  # the two samples differ
    assert proc.stderr.count("tokens/s") == 1 and "2 sample(s) in one batch" in proc.stderr
    # not streamed: the same text
    proc = run_script("generate/base.py", "--checkpoint_dir", tiny_checkpoint, "--prompt", prompt, "--input",
                      "Answer briefly.", "--prompt_style", "alpaca", "--precision", "32-true", "--stream", "false",
                      *args)
    assert proc.stdout == expected


def test_base_script_raw_prompt_quantized_bf16(tiny_checkpoint):
    prompt = "Once upon a time"
    proc = run_script("generate/base.py", "--checkpoint_dir", tiny_checkpoint, "--prompt", prompt,
                      "--prompt_style", "raw", "--max_new_tokens", 12, "--temperature", 0, "--precision", "32-true",
                      "--quantize", "bnb.nf4")
    assert proc.stdout == expected_text(tiny_checkpoint, prompt, 12, style="raw", quantize="bnb.nf4",
                                        temperature=0.0)
    proc = run_script("generate/base.py", "--checkpoint_dir", tiny_checkpoint, "--prompt", prompt,
                      "--prompt_style", "raw", "--max_new_tokens", 12, "--temperature", 0)  # bf16-true
    assert proc.returncode == 0 and proc.stdout.strip() and "tokens/s" in proc.stderr


@pytest.mark.parametrize("script", ["generate/base.py", "generate/lora.py"])
def test_scripts_help(script):
    out = run_script(script, "--help").stdout
    for flag in ("--prompt", "--max_new_tokens", "--temperature", "--top_k", "--top_p", "--repetition_penalty",
                 "--quantize", "--stream", "--prompt_style", "--precision", "--seed", "--num_samples"):
        assert flag in out


def one_line_error(proc) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_base_script_bad_inputs(tiny_checkpoint, tmp_path):
    base = ["--checkpoint_dir", tiny_checkpoint]
    length = len(Tokenizer(tiny_checkpoint).encode("word " * 120))
    message = one_line_error(run_script("generate/base.py", *base, "--prompt", "word " * 120, "--prompt_style", "raw",
                                        "--max_new_tokens", 20, check=False))
    assert f"{length} tokens" in message and "20" in message and "128" in message  # prompt, new tokens, context
    message = one_line_error(run_script("generate/base.py", *base, "--max_new_tokens", 0, check=False))
    assert "--max_new_tokens 0" in message
    message = one_line_error(run_script("generate/base.py", *base, "--quantize", "bnb.nf5", check=False))
    assert "bnb.nf5" in message and "bnb.nf4" in message
    message = one_line_error(run_script("generate/base.py", *base, "--compile", "true", "--quantize", "bnb.nf4",
                                        check=False))
    assert "--compile" in message and "--quantize" in message
    message = one_line_error(run_script("generate/base.py", *base, "--top_p", 1.5, check=False))
    assert "top_p" in message
    message = one_line_error(run_script("generate/base.py", "--checkpoint_dir", tmp_path / "nothing", check=False))
    assert "nothing" in message
    message = one_line_error(run_script("generate/base.py", *base, "--prompt_style", "nope", check=False))
    assert "nope" in message and "alpaca" in message


@pytest.fixture(scope="module")
def tiny_adapter(tiny_checkpoint, tmp_path_factory) -> Path:
    """A finetune out dir: random (non-zero) LoRA weights for the tiny checkpoint and its lora_config.json."""
    out_dir = tmp_path_factory.mktemp("lora") / "out"
    out_dir.mkdir()
    config = Config.from_checkpoint(tiny_checkpoint)
    lora = LoRAConfig(r=4, alpha=8, dropout=0.0, head=False)
    model = add_lora(GPT(config), lora)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if lora_filter(name):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    torch.save(lora_state_dict(model), out_dir / "lit_model_lora_finetuned.pth")
    run = {"lora": lora.to_dict(), "model": config.to_dict(), "checkpoint_dir": str(tiny_checkpoint.resolve()),
           "prompt_style": "qa", "data": {}, "train": {}, "precision": "32-true", "quantize": None}
    (out_dir / "lora_config.json").write_text(json.dumps(run))
    (out_dir / "prompt_style.json").write_text(json.dumps({"name": "qa"}))
    return out_dir


def test_lora_script(tiny_adapter, tiny_checkpoint, tmp_path):
    prompt = "What is 12 plus 30?"
    proc = run_script("generate/lora.py", "--lora_path", tiny_adapter, "--prompt", prompt, "--max_new_tokens", 16,
                      "--temperature", 0, "--precision", "32-true")
    expected = expected_text(tiny_checkpoint, prompt, 16, style="qa", lora_path=tiny_adapter, temperature=0.0)
    assert proc.stdout == expected and "tokens/s" in proc.stderr
    assert expected != expected_text(tiny_checkpoint, prompt, 16, style="qa", temperature=0.0)  # LoRA matters

    # the adapter file itself; the base checkpoint moved (lora_config.json points nowhere): --checkpoint_dir
    moved = tmp_path / "moved"
    shutil.copytree(tiny_checkpoint, moved)
    out_dir = tmp_path / "out"
    shutil.copytree(tiny_adapter, out_dir)
    run = json.loads((out_dir / "lora_config.json").read_text())
    (out_dir / "lora_config.json").write_text(json.dumps({**run, "checkpoint_dir": str(tmp_path / "gone")}))
    adapter = out_dir / "lit_model_lora_finetuned.pth"
    message = one_line_error(run_script("generate/lora.py", "--lora_path", adapter, "--prompt", prompt,
                                        check=False))
    assert "gone" in message
    flags = dict(num_samples=2, max_new_tokens=10, temperature=0.8, top_k=30, top_p=0.95, repetition_penalty=1.1,
                 seed=11)
    args = [x for key, value in flags.items() for x in (f"--{key}", value)]
    proc = run_script("generate/lora.py", "--lora_path", adapter, "--checkpoint_dir", moved, "--prompt", prompt,
                      "--input", "Think.", "--prompt_style", "alpaca", "--precision", "32-true", "--stream", "true",
                      *args)
    assert proc.stdout == expected_text(moved, prompt, 10, style="alpaca", input="Think.", lora_path=out_dir,
                                        **{k: v for k, v in flags.items() if k != "max_new_tokens"})
    # 4-bit base + adapter (unmerged)
    proc = run_script("generate/lora.py", "--lora_path", tiny_adapter, "--prompt", prompt, "--max_new_tokens", 8,
                      "--temperature", 0, "--precision", "32-true", "--quantize", "bnb.nf4")
    assert proc.stdout == expected_text(tiny_checkpoint, prompt, 8, style="qa", lora_path=tiny_adapter,
                                        quantize="bnb.nf4", temperature=0.0)


def test_lora_script_bad_inputs(tiny_adapter, tiny_checkpoint, tmp_path):
    assert "--max_new_tokens -3" in one_line_error(
        run_script("generate/lora.py", "--lora_path", tiny_adapter, "--max_new_tokens", -3, check=False))
    assert "bnb.q8" in one_line_error(
        run_script("generate/lora.py", "--lora_path", tiny_adapter, "--quantize", "bnb.q8", check=False))
    assert "missing" in one_line_error(
        run_script("generate/lora.py", "--lora_path", tmp_path / "missing", check=False))
    message = one_line_error(run_script("generate/lora.py", "--lora_path", tiny_adapter, "--prompt", "word " * 100,
                                        "--max_new_tokens", 50, check=False))
    assert "50" in message and "128" in message and "tokens" in message


############
# the real model
############
def test_smollm2_greedy_matches_transformers(smollm2_gguf, smollm2_dir):
    """generate/base.py on SmolLM2-135M-Instruct (chat template, float32) prints what transformers generates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    prompt, n = "What is the capital of France? Answer in one sentence.", 40
    proc = run_script("generate/base.py", "--checkpoint_dir", smollm2_dir, "--prompt", prompt, "--max_new_tokens", n,
                      "--temperature", 0, "--precision", "32-true")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                 dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True)).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=n, do_sample=False)[0, ids.shape[1]:].tolist()
    if out[-1] == tokenizer.eos_token_id:
        out = out[:-1]
    expected = tokenizer.decode(out)
    assert "Paris" in expected
    assert proc.stdout == expected + "\n"


def test_chat_script(tiny_checkpoint, tiny_adapter):
    """Messages from stdin: every answer is greedy generation on the conversation so far (the prompt style's
    multi-turn form); /reset forgets it; when the conversation outgrows the context the oldest turns are left out,
    as many as needed and no more; a message that cannot fit is refused and the chat goes on."""
    from lit_gpt.prompts import PromptStyle

    tokenizer = Tokenizer(tiny_checkpoint)
    model = load_model(tiny_checkpoint, precision="32-true")
    style = PromptStyle.from_name("chatml")
    max_new, room = 6, model.max_seq_length - 6
    messages = ["Hi, who are you?", "What is 2 + 2?", "/reset", "Hi, who are you?",
                "Tell me more about the weather in the mountains in winter, and in summer too, please.",
                "And about the weather at the sea in the spring and in the autumn, if you know it.",
                "word " * 200, "Thanks!"]
    answers, turns, dropped = [], [], 0
    for message in messages:
        if message == "/reset":
            turns = []
            continue
        candidates = [tokenizer.encode(style.apply_conversation(turns[k:], message)) for k in range(len(turns) + 1)]
        fitting = [k for k, ids in enumerate(candidates) if len(ids) <= room]
        if not fitting:  # refused
            continue
        dropped += fitting[0] > 0
        turns = turns[fitting[0]:]
        answer = tokenizer.decode(generate(model, candidates[fitting[0]], max_new, temperature=0.0,
                                           stop_tokens=style.stop_tokens(tokenizer)))
        answers.append(answer)
        turns.append((message, answer))
    assert dropped and answers[0] == answers[2] and answers[1] != answers[0]
    proc = run_script("generate/chat.py", "--checkpoint_dir", tiny_checkpoint, "--prompt_style", "chatml",
                      "--max_new_tokens", max_new, "--temperature", 0, "--precision", "32-true",
                      stdin="\n".join(messages) + "\n")
    assert proc.stdout == "".join(answer + "\n" for answer in answers)
    # the KV cache keeps the conversation: a next turn runs only its new tokens
    runs = [(int(a), int(b)) for a, b in re.findall(r"prompt (\d+) tokens, (\d+) of them run", proc.stderr)]
    assert len(runs) == len(answers) and runs[0][0] == runs[0][1] and runs[1][1] < runs[1][0] // 2
    assert "oldest turn(s) no longer fit the context: left out" in proc.stderr
    assert "This message does not fit the context of 128 tokens" in proc.stderr
    assert proc.stderr.count("tokens/s") == len(answers)

    # an adapter (its prompt style, qa): the first answer is generate/lora.py's; then /quit ends the chat
    proc = run_script("generate/chat.py", "--lora_path", tiny_adapter, "--max_new_tokens", 16, "--temperature", 0,
                      "--precision", "32-true", stdin="What is 12 plus 30?\n/quit\nnot read\n")
    assert proc.stdout == expected_text(tiny_checkpoint, "What is 12 plus 30?", 16, style="qa", lora_path=tiny_adapter,
                                        temperature=0.0)
    assert "qa prompts" in proc.stderr and proc.stderr.count("tokens/s") == 1
    assert "--max_new_tokens 128 leaves no room" in one_line_error(
        run_script("generate/chat.py", "--checkpoint_dir", tiny_checkpoint, "--max_new_tokens", 128, check=False))


def test_chat_uses_the_system_prompt_the_adapter_was_trained_with(tiny_adapter, tmp_path):
    """An adapter prepared with `prepare_chat.py --system_prompt` chats with that system message (as `--system_prompt`
    does), not the style's default."""
    def adapter(system_prompt) -> Path:
        out = tmp_path / f"adapter-{system_prompt is not None}"
        shutil.copytree(tiny_adapter, out, dirs_exist_ok=True)
        run = json.loads((out / "lora_config.json").read_text())
        run["prompt_style"], run["data"] = "chatml", {"format": "chat", "system_prompt": system_prompt}
        (out / "lora_config.json").write_text(json.dumps(run))
        return out

    def chat(lora_path: Path, *args) -> str:
        return run_script("generate/chat.py", "--lora_path", lora_path, "--max_new_tokens", 12, "--temperature", 0,
                          "--precision", "32-true", *args, stdin="What is 12 plus 30?\n").stdout

    system = "You are a calculator. Answer with digits only."
    trained = chat(adapter(system))
    assert trained == chat(adapter(None), "--system_prompt", system)
    assert trained != chat(adapter(None))


def test_a_prompt_as_long_as_the_context_is_a_clear_error():
    from lit_gpt.generate import check_prompt_length
    from lit_gpt.utils import UserError

    with pytest.raises(UserError, match="leaves no room for an answer in the model's context of 8 tokens"):
        check_prompt_length(10, 5, 8)
    with pytest.raises(UserError, match="lower --max_new_tokens to at most 2"):
        check_prompt_length(6, 5, 8)
    check_prompt_length(6, 2, 8)
