"""The generation engine: many sequences decoded at once through one KV cache, each with its own prompt, position,
sampling settings, stops and token budget (`Engine`). generate/*.py, chat, the evaluation, finetune's sample
generation and GRPO's rollouts all run it; `generate` is the one-prompt shortcut and `stream_text` turns a stream of ids
into printable text.

Logits go through the same steps, in the same order, as in `transformers.generate`: repetition penalty, temperature,
top-k, top-p (nucleus).
"""

import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from lit_gpt.model import GPT, KVCache
from lit_gpt.prompts import resolve_prompt_style
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import fail, peak_memory_gb


def process_logits(logits: torch.Tensor, seen: Optional[torch.Tensor] = None, *, temperature: float = 1.0,
                   top_k: Optional[int] = None, top_p: Optional[float] = None, repetition_penalty: float = 1.0
                   ) -> torch.Tensor:
    """float32 logits (..., V) ready for a softmax: removed tokens are -inf. `seen` (1-D ids; the logits of one row,
    (V,)) get the repetition penalty: a positive logit is divided by it, a negative one multiplied (CTRL,
    arXiv:1909.05858)."""
    logits = logits.float()
    if repetition_penalty != 1.0 and seen is not None and seen.numel():
        picked = logits.gather(0, seen)
        logits = logits.scatter(0, seen, torch.where(picked > 0, picked / repetition_penalty,
                                                     picked * repetition_penalty))
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # ties with the k-th value stay
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the tokens ranked above each one
        remove = mass_before >= top_p
        remove[..., 0] = False  # the most likely token always stays
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def draw(logits: torch.Tensor, generators: Sequence[Optional[torch.Generator]]) -> List[int]:
    """One id per row of `logits` (N, V), sampled from its softmax with the row's own generator: inverse-CDF, one
    uniform draw per row, one batched cumsum and search (torch.multinomial draws an exponential per vocabulary entry:
    15% of a 32-row decoding step of SmolLM2 here)."""
    cdf = logits.softmax(-1).cumsum(-1)  # (N, V)
    u = torch.cat([torch.rand(1, generator=g, device=cdf.device) for g in generators]) * cdf[:, -1]
    return torch.searchsorted(cdf, u[:, None], right=True).clamp_(max=cdf.size(-1) - 1)[:, 0].tolist()


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


@dataclass
class Request:
    """What to generate after one prompt: `n` samples (sharing the prompt's prefill), each at most `max_new_tokens`
    ids, ending early at the first of `stop_tokens` (id sequences; not part of the answer) or once the decoded answer
    contains one of `stop_texts` (needs the engine's tokenizer; the answer keeps all its ids). temperature 0: greedy.
    Sample j draws from a `torch.Generator` seeded `seed + j` (None: a seed drawn from torch's global generator), so
    a sample is the same whatever else is generated with it."""
    prompt: Sequence[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    repetition_penalty: float = 1.0
    stop_tokens: Sequence[Sequence[int]] = ()
    stop_texts: Sequence[str] = ()
    n: int = 1
    seed: Optional[int] = None


@dataclass
class Completion:
    """One sample's answer: its ids and the stop sequence that ended it (None: a stop text, or the budget ran out:
    then `stopped` says which)."""
    tokens: List[int]
    stop: Optional[Tuple[int, ...]] = None
    stopped: bool = False


@dataclass
class _Row:
    """A sample being decoded: its request and sample index, the ids it has made, how many of them are out, the
    positions its cache row holds, its generator and (repetition penalty) the ids it has seen."""
    request: int
    sample: int
    length: int
    generator: Optional[torch.Generator] = None
    seen: Optional[torch.Tensor] = None
    out: List[int] = field(default_factory=list)
    emitted: int = 0


class Engine:
    """Decodes many samples at once: up to `rows` sequences share one forward pass per token, each at its own
    position in its own KV-cache row. A row whose answer ends is refilled from the queue at once (continuous
    batching); the n samples of a request prefill its prompt once and copy its cache row n times.

    The cache is kept between calls: a single request whose prompt starts with what the previous single request
    read and wrote (a chat's next turn) only runs the rest of its prompt. `compile`: the one-token steps through
    `torch.compile` (float weights only). The model may be LoRA (unmerged or merged) or 4-bit; it runs in eval mode
    and is left as it was.
    """

    def __init__(self, model: GPT, rows: int = 8, tokenizer: Optional[Tokenizer] = None, compile: bool = False) -> None:
        if rows < 1:
            raise ValueError(f"rows={rows}: the engine needs at least one row")
        if compile and is_quantized(model):
            raise ValueError("compile=True needs float weights: bitsandbytes layers do not compile")
        self.model, self.rows, self.tokenizer, self.compile = model, rows, tokenizer, compile
        self.caches: Optional[List[KVCache]] = None  # the layers' caches (a layer reusing another's keys has none)
        self._per_block: list = []  # each block's cache or None
        self.kept: List[int] = []  # the ids whose keys and values row 0 of the cache holds

    def generate(self, requests: Sequence[Request]) -> List[List[Completion]]:
        """Every request's n completions, in order."""
        results: List[List[Optional[Completion]]] = [[None] * r.n for r in requests]
        for i, j, _, done in self.stream(requests):
            if done is not None:
                results[i][j] = done
        return results  # type: ignore[return-value]

    def stream(self, requests: Sequence[Request]) -> Iterator[Tuple[int, int, List[int], Optional[Completion]]]:
        """Yields (request index, sample index, new ids, the completion once it is done) as ids are made. Ids that
        could begin a stop sequence are held back until it is clear that they do not."""
        model = self.model
        for r in requests:
            self.check(r)
        blocks = model.transformer.h
        previous = [block.attn.kv_cache for block in blocks]
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                yield from self._run(list(requests))
        finally:
            model.train(was_training)
            for block, cache in zip(blocks, previous):
                block.attn.kv_cache = cache

    def check(self, r: Request) -> None:
        """Raises ValueError on a request the engine cannot run."""
        check_sampling_args(r.max_new_tokens, r.temperature, r.top_k, r.top_p, r.repetition_penalty)
        if not len(r.prompt):
            raise ValueError("The prompt is empty: give at least one id")
        if r.n < 1:
            raise ValueError(f"n={r.n}: ask for at least one sample")
        if len(r.prompt) + r.max_new_tokens > self.model.max_seq_length:
            raise ValueError(f"The prompt ({len(r.prompt)} tokens) + max_new_tokens ({r.max_new_tokens}) = "
                             f"{len(r.prompt) + r.max_new_tokens} is longer than the model's max_seq_length "
                             f"({self.model.max_seq_length})")
        if r.stop_texts and self.tokenizer is None:
            raise ValueError("stop_texts need the engine's tokenizer: Engine(model, tokenizer=...)")

    def _run(self, requests: List[Request]) -> Iterator[Tuple[int, int, List[int], Optional[Completion]]]:
        model, vocab_size = self.model, self.model.config.vocab_size
        device = model.transformer.wte.weight.device
        # (request, its samples) in chunks of at most `rows` samples; each chunk prefills its prompt once
        queue = [(i, list(range(j, min(j + self.rows, r.n)))) for i, r in enumerate(requests)
                 for j in range(0, r.n, self.rows) if r.max_new_tokens > 0]
        for i, r in enumerate(requests):
            if r.max_new_tokens == 0:
                for j in range(r.n):
                    yield i, j, [], Completion([])
        if not queue:
            return
        stops = [[tuple(int(t) for t in seq) for seq in r.stop_tokens if len(seq)] for r in requests]
        single = len(requests) == 1 and requests[0].n == 1
        reuse = common_prefix_length(self.kept, requests[0].prompt) if single else 0
        if model.config.linear_attention and not (reuse == len(self.kept) < len(requests[0].prompt)):
            reuse = 0  # a recurrent state holds the whole kept sequence, not a prefix of it
        self._allocate(min(self.rows, sum(len(s) for _, s in queue)),
                       max(len(r.prompt) + r.max_new_tokens for r in requests), keep=reuse)
        self.kept = []
        step_fn = compiled_decode_step() if self.compile else _forward_step
        active: List[_Row] = []
        logits = torch.empty(0, vocab_size, device=device)
        while queue or active:
            if queue and len(queue[0][1]) <= self.rows - len(active):
                new = []
                while queue and len(queue[0][1]) <= self.rows - len(active) - sum(len(s) for _, s in new):
                    new.append(queue.pop(0))
                rows, first = self._prefill(requests, new, len(active), min(reuse, len(requests[0].prompt) - 1))
                active += rows
                logits = torch.cat([logits, first])
            tokens = self._pick(logits, active, requests)
            finished = []
            for r, (row, token) in enumerate(zip(active, tokens)):
                request = requests[row.request]
                row.out.append(token)
                if row.seen is not None:
                    row.seen[row.length] = token
                stop = next((seq for seq in stops[row.request] if tuple(row.out[-len(seq):]) == seq), None)
                if stop is not None:
                    new_ids = row.out[row.emitted:len(row.out) - len(stop)]
                    yield row.request, row.sample, new_ids, Completion(row.out[:len(row.out) - len(stop)], stop, True)
                    finished.append(r)
                    continue
                text_stop = bool(request.stop_texts) and any(
                    s and s in self.tokenizer.decode(row.out) for s in request.stop_texts)
                if text_stop or len(row.out) == request.max_new_tokens:
                    yield row.request, row.sample, row.out[row.emitted:], Completion(row.out, None, text_stop)
                    finished.append(r)
                    continue
                ready = len(row.out) - _held_back(row.out, stops[row.request])
                if ready > row.emitted:
                    yield row.request, row.sample, row.out[row.emitted:ready], None
                    row.emitted = ready
            if single and finished:
                self.kept = list(requests[0].prompt) + active[0].out[:-1]
            if finished:
                active, tokens = self._compact(active, tokens, finished)
            if not active:
                logits = logits[:0]
                continue
            idx = torch.tensor(tokens, device=device)[:, None]  # (rows, 1)
            pos = torch.tensor([row.length for row in active], device=device)[:, None]
            try:
                logits = step_fn(model, idx, pos)[:, -1, :vocab_size]
            except Exception as e:  # compiling failed (e.g. no C++ compiler): carry on without; eager errors raise
                if step_fn is _forward_step:
                    raise
                warnings.warn(f"torch.compile failed, decoding without it: {type(e).__name__}: {str(e)[:300]}")
                step_fn = _forward_step
                logits = step_fn(model, idx, pos)[:, -1, :vocab_size]
            for row in active:
                row.length += 1

    def _allocate(self, rows: int, slots: int, keep: int) -> None:
        """Puts a cache of at least `rows` x `slots` into the model, keeping the first `keep` slots of row 0."""
        model, caches = self.model, self.caches
        kv = next((c for c in caches if isinstance(c, KVCache)), None) if caches is not None else None
        if kv is None or kv.k.size(0) < rows or kv.k.size(2) < slots:
            if kv is not None:  # grow (a chat's cache doubles, so that later turns fit)
                old_rows, old_slots = kv.k.size(0), kv.k.size(2)
                rows, slots = max(rows, old_rows), min(model.max_seq_length, max(slots, 2 * old_slots))
            dtype = model.transformer.wte.weight.dtype
            device = model.transformer.wte.weight.device
            new = [block.build_cache(rows, slots, device, dtype) for block in model.transformer.h]
            if caches is not None and keep:
                for old, cache in zip(self._per_block, new):
                    if isinstance(cache, KVCache):
                        cache.k[0, :, :keep], cache.v[0, :, :keep] = old.k[0, :, :keep], old.v[0, :, :keep]
                    elif cache is not None:  # a linear-attention layer's state after the kept tokens
                        cache.conv[0], cache.recurrent[0] = old.conv[0], old.recurrent[0]
            self._per_block, self.caches = new, [c for c in new if c is not None]
        for block, cache in zip(model.transformer.h, self._per_block):
            block.attn.kv_cache = cache

    def _prefill(self, requests: List[Request], chunks: list, first_row: int, start: int
                 ) -> Tuple[List[_Row], torch.Tensor]:
        """Runs the chunks' prompts (from position `start`: what the cache already holds) into cache rows
        first_row, first_row + 1, ..., copies each prompt's row to its other samples' rows; returns the rows and
        the logits (rows, vocab) their first ids are picked from."""
        model, device = self.model, self.model.transformer.wte.weight.device
        prompts = [list(requests[i].prompt)[start:] for i, _ in chunks]
        L = max(map(len, prompts))
        idx = torch.zeros(len(prompts), L, dtype=torch.long)
        last = torch.zeros(len(prompts), L, dtype=torch.bool)
        for j, p in enumerate(prompts):
            idx[j, :len(p)] = torch.tensor(p)
            last[j, len(p) - 1] = True
        pos = (start + torch.arange(L, device=device)).expand(len(prompts), L)
        for cache in self.caches:
            cache.first_row = first_row
        try:
            if model.config.linear_attention:  # each prompt alone: padding would run through the recurrent states
                logits = []
                for j, p in enumerate(prompts):
                    for cache in self.caches:
                        cache.first_row = first_row + j
                    logits.append(model(idx[j:j + 1, :len(p)].to(device), pos[j:j + 1, :len(p)])[0, -1:])
                logits = torch.cat(logits)[:, :model.config.vocab_size]
            else:
                logits = model(idx.to(device), pos, logits_at=last.to(device))[:, :model.config.vocab_size]
        finally:
            for cache in self.caches:
                cache.first_row = 0
        sources = [j for j, (_, samples) in enumerate(chunks) for _ in samples[1:]]
        if sources:  # the other samples of each prompt: copies of its cache row
            src = torch.tensor(sources, device=device) + first_row
            dst = torch.arange(len(sources), device=device) + first_row + len(chunks)
            for cache in self.caches:
                cache.copy_rows(src, dst)
        rows = [self._row(requests, i, samples[0]) for i, samples in chunks]
        rows += [self._row(requests, i, j) for i, samples in chunks for j in samples[1:]]
        return rows, torch.cat([logits, logits[torch.tensor(sources, dtype=torch.long, device=device)]])

    def _row(self, requests: List[Request], i: int, j: int) -> _Row:
        r, device = requests[i], self.model.transformer.wte.weight.device
        generator = None
        if r.temperature > 0 and r.top_k != 1:
            seed = r.seed if r.seed is not None else int(torch.randint(2 ** 62, ()))
            generator = torch.Generator(device).manual_seed(seed + j)
        seen = None
        if r.repetition_penalty != 1.0:  # the prompt and the generated ids, as transformers' processor sees them
            seen = torch.empty(len(r.prompt) + r.max_new_tokens, dtype=torch.long, device=device)
            seen[:len(r.prompt)] = torch.tensor(list(r.prompt), device=device)
        return _Row(i, j, len(r.prompt), generator, seen)

    def _pick(self, logits: torch.Tensor, rows: List[_Row], requests: List[Request]) -> List[int]:
        """Each row's next id: rows of the same sampling settings processed together, each sampled with its own
        generator."""
        groups: dict = {}
        for r, row in enumerate(rows):
            q = requests[row.request]
            key = (q.temperature, q.top_k, q.top_p) if q.repetition_penalty == 1.0 else r  # penalized: alone
            groups.setdefault(key, []).append(r)
        tokens = [0] * len(rows)
        for members in groups.values():
            q, lg = requests[rows[members[0]].request], logits[members]
            seen = rows[members[0]].seen
            if seen is not None:  # the prompt and the ids generated so far
                seen = seen[:len(q.prompt) + len(rows[members[0]].out)]
            if q.temperature == 0 or q.top_k == 1:
                if q.repetition_penalty != 1.0:
                    lg = process_logits(lg[0], seen, repetition_penalty=q.repetition_penalty)[None]
                picked = lg.argmax(-1).tolist()
            else:
                processed = (process_logits(lg[0], seen, temperature=q.temperature, top_k=q.top_k, top_p=q.top_p,
                                            repetition_penalty=q.repetition_penalty)[None] if seen is not None else
                             process_logits(lg, temperature=q.temperature, top_k=q.top_k, top_p=q.top_p))
                picked = draw(processed, [rows[r].generator for r in members])
            for r, token in zip(members, picked):
                tokens[r] = token
        return tokens

    def _compact(self, active: List[_Row], tokens: List[int], finished: List[int]) -> Tuple[List[_Row], List[int]]:
        """Removes the finished rows: the last live rows move into the holes (their cache rows copied)."""
        done = set(finished)
        count = len(active) - len(done)
        holes = [r for r in finished if r < count]
        movers = [r for r in range(count, len(active)) if r not in done]
        if holes:
            device = self.model.transformer.wte.weight.device
            src, dst = torch.tensor(movers, device=device), torch.tensor(holes, device=device)
            for cache in self.caches:
                cache.copy_rows(src, dst)
        order = list(range(count))
        for hole, mover in zip(holes, movers):
            order[hole] = mover
        return [active[r] for r in order], [tokens[r] for r in order]


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


def generate(model: GPT, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.8,
             compile: bool = False, **settings) -> torch.Tensor:
    """The new ids (1-D LongTensor on the prompt's device) of one sample after `prompt` (1-D ids); `settings` are
    `Request`'s (top_k, top_p, repetition_penalty, stop_tokens, seed)."""
    request = Request(prompt.tolist(), max_new_tokens, temperature=temperature, **settings)
    completion = Engine(model, rows=1, compile=compile).generate([request])[0][0]
    return torch.tensor(completion.tokens, dtype=torch.long, device=prompt.device)


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
    """Generates `num_samples` answers to `prompt` in one batch (the prompt prefilled once) and prints each (only the
    text) to stdout, the first streamed as it is produced when `stream` (None: when stdout is a terminal), the others
    after it. Timings, tokens/s and peak memory go to stderr."""
    stream = sys.stdout.isatty() if stream is None else stream
    if compile and max_new_tokens > 1:  # compile before timing (a minute the first time, then from the disk cache)
        start = time.perf_counter()
        generate(model, prompt, 2, temperature=0.0, compile=True)
        print(f"Compiled the decoding step in {time.perf_counter() - start:.2f} s", file=sys.stderr, flush=True)
    engine = Engine(model, rows=num_samples, compile=compile)
    request = Request(prompt.tolist(), max_new_tokens, stop_tokens=stop_tokens, n=num_samples, seed=seed, **sampling)
    answers: dict = {}
    events = engine.stream([request])

    def first_sample() -> Iterator[int]:  # sample 1's ids as they come; the others' answers are kept meanwhile
        for _, j, new, done in events:
            if j == 0:
                yield from new
            if done is not None:
                answers[j] = done.tokens
                if j == 0:
                    return

    def header(j: int) -> None:
        if num_samples > 1:
            print(f"--- sample {j + 1}/{num_samples}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    if stream:
        header(0)
        for piece in stream_text(tokenizer, first_sample()):
            print(piece, end="", flush=True)
        print(flush=True)
    for _, j, _, done in events:
        if done is not None:
            answers[j] = done.tokens
    elapsed = time.perf_counter() - start
    for j in range(1 if stream else 0, num_samples):
        header(j)
        print(tokenizer.decode(answers[j]), flush=True)
    count = sum(map(len, answers.values()))
    print(f"Time for inference: {elapsed:.2f} s for {count} tokens ({num_samples} sample(s) in one batch), "
          f"{count / elapsed:.2f} tokens/s", file=sys.stderr, flush=True)
    print(f"Peak memory: {peak_memory_gb(prompt.device):.2f} GB", file=sys.stderr)
