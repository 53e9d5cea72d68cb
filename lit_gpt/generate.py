"""Autoregressive sampling with a KV cache: the loop behind generate/*.py and finetune's sample generation.

`generate_tokens` yields token ids as they are produced (for streaming), `generate` collects them into a tensor and
`stream_text` turns a stream of ids into printable text. Logits go through the same steps, in the same order, as in
`transformers.generate`: repetition penalty, temperature, top-k, top-p (nucleus).
"""

import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from lit_gpt.model import GPT
from lit_gpt.prompts import resolve_prompt_style
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import fail, peak_memory_gb


def process_logits(logits: torch.Tensor, seen: Optional[torch.Tensor] = None, *, temperature: float = 1.0,
                   top_k: Optional[int] = None, top_p: Optional[float] = None, repetition_penalty: float = 1.0
                   ) -> torch.Tensor:
    """float32 logits (V,) ready for a softmax: removed tokens are -inf. `seen` (1-D ids) get the repetition
    penalty: a positive logit is divided by it, a negative one multiplied (CTRL, arXiv:1909.05858)."""
    logits = logits.float()
    if repetition_penalty != 1.0 and seen is not None and seen.numel():
        picked = logits.gather(0, seen)
        logits = logits.scatter(0, seen, torch.where(picked > 0, picked / repetition_penalty,
                                                     picked * repetition_penalty))
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.size(0):
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # ties with the k-th value stay
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(0)
        mass_before = probs.cumsum(0) - probs  # probability of the tokens ranked above each one
        remove = mass_before >= top_p
        remove[0] = False  # the most likely token always stays
        logits = logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    return logits


def sample(logits: torch.Tensor, seen: Optional[torch.Tensor] = None, *, temperature: float = 0.8,
           top_k: Optional[int] = None, top_p: Optional[float] = None, repetition_penalty: float = 1.0,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The next token (0-dim LongTensor) from the logits (V,) of the last position. temperature=0: greedy."""
    if temperature == 0 or top_k == 1:
        if repetition_penalty != 1.0:
            logits = process_logits(logits, seen, repetition_penalty=repetition_penalty)
        return logits.argmax()
    logits = process_logits(logits, seen, temperature=temperature, top_k=top_k, top_p=top_p,
                            repetition_penalty=repetition_penalty)
    return torch.multinomial(logits.softmax(0), 1, generator=generator)[0]


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: Optional[int], top_p: Optional[float],
                        repetition_penalty: float) -> None:
    """Raises ValueError on arguments the sampler cannot use (scripts turn these into one-line errors)."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be positive")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 is greedy decoding)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 (or None: no top-k filtering)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (or None: no nucleus filtering)")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty={repetition_penalty} must be > 0 (1.0: no penalty)")


def _linear_as_reduction(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
                         ) -> torch.Tensor:
    """`F.linear` of a single row as a multiply-and-sum over the weight's rows, accumulated in float32.

    Only for code compiled by inductor, which fuses it into one loop that streams the weight once: on CPU the bf16
    matmul kernels reach about half the memory bandwidth for one row, this loop most of it. (Run eagerly, it would
    materialize the product.)
    """
    if input.shape[:-1].numel() != 1 or not weight.is_floating_point():
        return _linear(input, weight, bias)
    y = (input.unsqueeze(-2).float() * weight.float()).sum(-1).to(input.dtype)
    return y if bias is None else y + bias


_linear = F.linear
_compiled_decode_step: Optional[Callable] = None


def compiled_decode_step() -> Callable:
    """`model(token, input_pos)` for one token, compiled with inductor, with `F.linear` as `_linear_as_reduction`
    (swapped in around the call: `nn.Linear` looks `F.linear` up when it runs).

    All sizes are symbolic, buffers and weights included (dynamo otherwise fixes the size of module buffers, and the
    KV cache and RoPE buffers change with every prompt length): one compilation serves every call, and later
    processes find it in inductor's on-disk cache. Static weight shapes would be ~7% faster per token but compile
    again for each new prompt length.
    """
    global _compiled_decode_step
    if _compiled_decode_step is None:
        compiled = torch.compile(_forward_step, dynamic=True)
        config = dict(force_nn_module_property_static_shapes=False, force_parameter_static_shapes=False,
                      capture_scalar_outputs=True,  # `int(input_pos[-1])` in the graph: no graph break
                      specialize_float=True)  # float constants (eps) as constants: no restarted trace

        def step(model: GPT, token: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
            previous, F.linear = F.linear, _linear_as_reduction
            try:
                with torch._dynamo.config.patch(**config):
                    return compiled(model, token, input_pos)
            finally:
                F.linear = previous

        _compiled_decode_step = step
    return _compiled_decode_step


def is_quantized(model: torch.nn.Module) -> bool:
    return any(not p.is_floating_point() or hasattr(p, "quant_state") for p in model.parameters())


@torch.no_grad()
def generate_tokens(model: GPT, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.8,
                    top_k: Optional[int] = None, top_p: Optional[float] = None, repetition_penalty: float = 1.0,
                    stop_tokens: Iterable[Sequence[int]] = (), generator: Optional[torch.Generator] = None,
                    compile: bool = False, cached: Optional[int] = None) -> Iterator[int]:
    """Yields up to `max_new_tokens` new token ids after `prompt` (1-D ids, on the model's device).

    The prompt is processed in one forward pass, then one token per step through a KV cache of prompt +
    max_new_tokens positions (any cache the model had is put back afterwards). Generation ends when the generated
    tokens end with one of `stop_tokens` (sequences of ids); the stop sequence itself is not yielded, so a token
    that could begin one is held back until it is clear that it does not. Only the first `config.vocab_size`
    logits are sampled from (the rest is embedding-table padding).

    compile: run the one-token steps through `torch.compile` (float weights only). The first compilation takes a
    minute or so on a small CPU; it is cached on disk, after which decoding is about 1.8x faster on CPU
    (SmolLM2-135M, bf16).
    cached: use the model's own KV cache (`model.set_kv_cache`, room for prompt + max_new_tokens), whose first
    `cached` positions hold `prompt[:cached]` already: only the rest of the prompt is run (a chat's next turn after
    the earlier ones). The cache keeps the prompt and the generated tokens (all but the last) afterwards.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    if compile and is_quantized(model):
        raise ValueError("compile=True needs float weights: bitsandbytes layers do not compile")
    if prompt.dim() != 1 or not prompt.numel():
        raise ValueError(f"prompt must be a non-empty 1-D tensor of ids, got shape {tuple(prompt.shape)}")
    T, device = prompt.numel(), prompt.device
    if T + max_new_tokens > model.max_seq_length:
        raise ValueError(f"The prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) = {T + max_new_tokens} is "
                         f"longer than the model's max_seq_length ({model.max_seq_length})")
    if max_new_tokens == 0:
        return
    stops = [tuple(int(t) for t in seq) for seq in stop_tokens]
    stops = [seq for seq in stops if seq]
    vocab_size = model.config.vocab_size
    seen = None
    if repetition_penalty != 1.0:  # the prompt and the generated ids, as transformers' processor sees them
        seen = torch.empty(T + max_new_tokens, dtype=torch.long, device=device)
        seen[:T] = prompt
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                    generator=generator)

    previous_caches = [block.attn.kv_cache for block in model.transformer.h]
    if cached is None:
        model.set_kv_cache(1, T + max_new_tokens, device=device)
        start = 0
    else:
        room = min((block.attn.kv_cache.k.size(2) if block.attn.kv_cache is not None else 0)
                   for block in model.transformer.h)
        if room < T + max_new_tokens:
            raise ValueError(f"cached={cached} needs the model's KV cache to hold the prompt + max_new_tokens "
                             f"({T + max_new_tokens} positions); it holds {room}")
        start = min(max(cached, 0), T - 1)  # the last prompt token runs again: its logits start the answer
    try:
        # only the last position's logits are needed: lm_head (vocab x n_embd) on one row instead of T
        last = torch.arange(T - start, device=device).view(1, -1) == T - start - 1
        logits = model(prompt[start:].view(1, -1), torch.arange(start, T, device=device),
                       logits_at=last)[0, :vocab_size]
        input_pos = torch.tensor([T], device=device)
        step_fn = compiled_decode_step() if compile else _forward_step
        out: List[int] = []
        emitted = 0
        for step in range(max_new_tokens):
            token = sample(logits, None if seen is None else seen[:T + step], **sampling)
            out.append(int(token))
            stop = next((seq for seq in stops if tuple(out[-len(seq):]) == seq), None)
            if stop is not None:
                yield from out[emitted:len(out) - len(stop)]
                return
            ready = len(out) - _held_back(out, stops)
            yield from out[emitted:ready]
            emitted = ready
            if step + 1 == max_new_tokens:
                break
            if seen is not None:
                seen[T + step] = token
            try:
                logits = step_fn(model, token.view(1, 1), input_pos)[0, -1, :vocab_size]
            except torch._dynamo.exc.TorchDynamoException as e:  # e.g. no C++ compiler: carry on without
                if step_fn is _forward_step:
                    raise
                warnings.warn(f"torch.compile failed, decoding without it: {type(e).__name__}: {str(e)[:300]}")
                step_fn = _forward_step
                logits = step_fn(model, token.view(1, 1), input_pos)[0, -1, :vocab_size]
            input_pos.add_(1)
        yield from out[emitted:]
    finally:
        if cached is None:
            for block, cache in zip(model.transformer.h, previous_caches):
                block.attn.kv_cache = cache


def _forward_step(model: GPT, token: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    return model(token, input_pos)


def _held_back(out: List[int], stops: List[tuple]) -> int:
    """How many of the last tokens could be the start of a stop sequence (and must not be shown yet)."""
    longest = 0
    for seq in stops:
        for k in range(min(len(seq) - 1, len(out)), longest, -1):
            if tuple(out[-k:]) == seq[:k]:
                longest = k
                break
    return longest


def generate(model: GPT, prompt: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """The new tokens (1-D LongTensor on the prompt's device) of `generate_tokens(model, prompt, ...)`."""
    tokens = list(generate_tokens(model, prompt, max_new_tokens, **kwargs))
    return torch.tensor(tokens, dtype=torch.long, device=prompt.device)


def stream_text(tokenizer: Tokenizer, tokens: Iterable[int]) -> Iterator[str]:
    """Printable pieces of the text of a token stream, in order; joined, they are `tokenizer.decode(all ids)`.

    A token may hold part of a character (byte-level BPE) or change how the text before it decodes, so the whole
    sequence is decoded each time and only a new, complete suffix is given out.
    """
    ids: List[int] = []
    shown = ""
    for token in tokens:
        ids.append(token)
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd") or not text.startswith(shown):  # an incomplete character: wait for more
            continue
        if len(text) > len(shown):
            yield text[len(shown):]
            shown = text
    text = tokenizer.decode(ids) if ids else ""
    common = len(shown) if text.startswith(shown) else common_prefix_length(text, shown)
    if len(text) > common:  # what is left; if decoding changed text already shown, the differing rest
        yield text[common:]


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    """How many leading items (characters, token ids) `a` and `b` share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def prompt_ids(tokenizer: Tokenizer, style_name: Optional[str], checkpoint_dir: Union[str, Path], prompt: str,
               input: str = "") -> Tuple[torch.Tensor, List[List[int]]]:
    """(prompt ids, stop sequences) for a user prompt rendered with a prompt style.

    style_name: a `lit_gpt.prompts` style; None: the checkpoint dir's `prompt_style.json`, else the model's default;
    "raw" (or "none"): the prompt as is (then the input, if any, after a blank line), stopping at the tokenizer's
    stop ids.
    """
    if style_name in ("raw", "none"):
        text = f"{prompt}\n\n{input}" if input else prompt
        stop_tokens = [[i] for i in (tokenizer.stop_ids or [tokenizer.eos_id]) if i is not None]
    else:
        style = resolve_prompt_style(style_name, checkpoint_dir)
        text, stop_tokens = style.apply(prompt, input), style.stop_tokens(tokenizer)
    return tokenizer.encode(text), stop_tokens


def check_generate_flags(num_samples: int, max_new_tokens: int, quantize: Optional[str], compile: bool,
                         **sampling) -> None:
    """The generate scripts' checks of their flags, before anything is loaded (one-line errors)."""
    if compile and quantize:
        fail(f"--compile works with float weights only: drop --quantize {quantize} or --compile")
    if max_new_tokens < 1:
        fail(f"--max_new_tokens {max_new_tokens}: ask for at least 1 new token")
    if num_samples < 1:
        fail(f"--num_samples {num_samples}: ask for at least 1 sample")
    try:
        check_sampling_args(max_new_tokens, **sampling)
    except ValueError as e:
        fail(f"{e} (set the flag of that name)")


def check_prompt_length(prompt_length: int, max_new_tokens: int, block_size: int) -> None:
    if prompt_length >= block_size:
        fail(f"The prompt has {prompt_length} tokens, which leaves no room for an answer in the model's context of "
             f"{block_size} tokens: shorten the prompt")
    if prompt_length + max_new_tokens > block_size:
        fail(f"The prompt has {prompt_length} tokens and --max_new_tokens is {max_new_tokens}: {prompt_length} + "
             f"{max_new_tokens} is longer than the model's context of {block_size} tokens. Shorten the prompt or "
             f"lower --max_new_tokens to at most {block_size - prompt_length}")


def print_samples(model: GPT, tokenizer: Tokenizer, prompt: torch.Tensor, *, num_samples: int, max_new_tokens: int,
                  stop_tokens: List[List[int]], stream: Optional[bool], seed: int, compile: bool = False,
                  **sampling) -> None:
    """Generates `num_samples` answers to `prompt` and prints each (only the text) to stdout, streamed as it is
    produced when `stream` (None: when stdout is a terminal). Timings, tokens/s and peak memory go to stderr."""
    stream = sys.stdout.isatty() if stream is None else stream
    if compile and max_new_tokens > 1:  # compile before timing (a minute the first time, then from the disk cache)
        start = time.perf_counter()
        generate(model, prompt, 2, temperature=0.0, compile=True)
        print(f"Compiled the decoding step in {time.perf_counter() - start:.2f} s", file=sys.stderr, flush=True)
    generator = torch.Generator(prompt.device).manual_seed(seed)
    for i in range(num_samples):
        if num_samples > 1:
            print(f"--- sample {i + 1}/{num_samples}", file=sys.stderr, flush=True)
        count = 0

        def counted() -> Iterator[int]:
            nonlocal count
            for token in generate_tokens(model, prompt, max_new_tokens, stop_tokens=stop_tokens,
                                         generator=generator, compile=compile, **sampling):
                count += 1
                yield token

        start = time.perf_counter()
        if stream:
            for piece in stream_text(tokenizer, counted()):
                print(piece, end="", flush=True)
            print(flush=True)
        else:
            print(tokenizer.decode(list(counted())), flush=True)
        elapsed = time.perf_counter() - start
        print(f"Time for inference {i + 1}: {elapsed:.2f} s for {count} tokens, {count / elapsed:.2f} tokens/s",
              file=sys.stderr, flush=True)
    print(f"Peak memory: {peak_memory_gb(prompt.device):.2f} GB", file=sys.stderr)
