"""lm-evaluation-harness 0.4 for lit_gpt: an `LM` that scores and generates with a `GPT`, and task loading.

`LitLM` tokenizes like lm-eval's `hf` backend (HFLM) on the same checkpoint: `TemplateLM` splits context and
continuation, BOS is added as the tokenizer adds it, inputs are cut from the left to the model's length, rolling
windows are lm-eval's. On the same weights it returns the same log-likelihoods and generations. It does less work:
- the inputs of a forward pass run as a token trie: tokens that several inputs start with (the context of a
  multiple-choice question's choices, a prompt template, a few-shot prefix) run once; every token is at its own
  position and attends to the tokens before it in its own inputs only (a tree-shaped attention mask);
- the LM head and the log-softmax run on the scored positions only;
- generation keeps `batch_size` rows busy: a row whose answer ended takes the next prompt at once (decoding one or
  eight rows costs about the same on a CPU); every row is at its own position, no padding is attended to.

Prompt styles: `apply_chat_template` renders lm-eval's chat messages with a `lit_gpt.prompts` style, so a task can
be prompted the way the model was finetuned (lm-eval's `apply_chat_template=True`, `fewshot_as_multiturn=False`).
A task asks for it with `metadata: {apply_prompt_style: true}` in its YAML (see `evaluate`).
"""

import json
import logging
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from lit_gpt.model import GPT
from lit_gpt.prompts import PromptStyle
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import fail, num_parameters

log = logging.getLogger(__name__)
# rows shorter than this share a sequence of up to this many tokens (no padding between them); longer rows get their own
PACKED_LENGTH = 256


class LitLM(TemplateLM):
    def __init__(self, model: GPT, tokenizer: Tokenizer, *, prompt_style: Optional[PromptStyle] = None,
                 batch_size: int = 8, max_gen_toks: int = 256, autocast_dtype: Optional[torch.dtype] = None,
                 name: str = "lit_gpt") -> None:
        """model: in eval mode, on its device (see `lit_gpt.load.load_model`); its `max_seq_length` is the
        longest input. batch_size: rows per forward pass (a row: the requests that share a context, like the choices of
        a question) and prompts generated at once. autocast_dtype: for "-mixed" precisions."""
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.prompt_style = prompt_style
        self.batch_size = batch_size
        self._max_gen_toks = max_gen_toks
        self.autocast_dtype = autocast_dtype
        self.name = name
        self._device = model.transformer.wte.weight.device
        # HFLM does not add BOS to a text that already starts with it (e.g. rendered by a chat template)
        self._prefix_text = tokenizer.decode([self.prefix_token_id]) if self.prefix_token_id is not None else ""
        self._bos_text = tokenizer.decode([tokenizer.bos_id]) if tokenizer.bos_id is not None else ""

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        """Conditions the first token of a text without context: BOS, or EOS when there is none (like HFLM)."""
        return self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self.model.max_seq_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return f"{self.name}-{self.prompt_style.name if self.prompt_style else 'none'}"

    def chat_template(self, chat_template: Any = False) -> Optional[str]:
        return f"lit_gpt prompt style {self.prompt_style.name!r}" if self.prompt_style else None

    def get_model_info(self) -> dict:
        dtype = self.autocast_dtype or self.model.transformer.wte.weight.dtype
        return {"model_num_parameters": num_parameters(self.model), "model_dtype": str(dtype),
                "prompt_style": self.prompt_style.name if self.prompt_style else None}

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        """The tokenizer's own BOS rule (bos=None), no BOS when told so or when the text starts with it."""
        no_bos = add_special_tokens is False or (
            add_special_tokens is None and bool(self._prefix_text) and string.startswith(self._prefix_text))
        return self.tokenizer.encode(string, bos=False if no_bos else None).tolist()

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        """Renders [system?, user, assistant?] with the prompt style: system text and user text joined by a blank
        line become the instruction; an assistant message (a task's `gen_prefix`) is appended after the prompt."""
        if self.prompt_style is None:
            raise ValueError("This LitLM has no prompt style to apply")
        system = [m["content"] for m in chat_history if m["role"] == "system"]
        turns = [m for m in chat_history if m["role"] != "system"]
        answer = turns.pop()["content"] if turns and turns[-1]["role"] == "assistant" else None
        if len(turns) != 1 or turns[0]["role"] != "user":
            raise ValueError("A prompt style renders one user turn: evaluate with fewshot_as_multiturn=False")
        prompt = self.prompt_style.apply("\n\n".join(system + [turns[0]["content"]]))
        if answer is not None:
            prompt += self.prompt_style.response_prefix + answer
        return prompt

    # ----------------------------------------------------------------------------------------- log-likelihoods
    def _loglikelihood_tokens(self, requests: Sequence[tuple], disable_tqdm: bool = False) -> list[tuple]:
        """(log P(continuation | context), whether greedy decoding gives the continuation) per (key, ctx, cont).

        As in HFLM, the model input is `(context + continuation)[-(max_length + 1):][:-1]` and its last
        len(continuation) positions are scored. Requests whose inputs agree up to the first scored position (the
        choices of a multiple-choice question) form a row, split where the row's prefix and the rest of its
        continuations would pass max_length. `batch_size` rows per forward pass, longest first; short rows share a
        sequence, where every token that inputs have in common runs once (`_score_tries`).
        """
        inputs, groups = [], defaultdict(list)
        for i, (_, context, continuation) in enumerate(requests):
            if not context or not continuation:
                raise ValueError(f"Request {i} has an empty context or continuation")
            if len(continuation) > self.max_length:
                raise ValueError(f"A continuation of {len(continuation)} tokens does not fit max_length "
                                 f"{self.max_length}")
            inputs.append((context + continuation)[-(self.max_length + 1):][:-1])
            groups[tuple(inputs[i][:len(inputs[i]) - len(continuation) + 1])].append(i)
        # rows: size = prefix + the rest of each continuation, an upper bound of the row's tokens.
        # Longest first: time estimates are upper bounds and an out-of-memory error shows up at once
        rows: list[list] = []  # [size, request ids]
        for prefix, ids in groups.items():
            rows.append([len(prefix), []])
            for i in ids:
                tail = len(requests[i][2]) - 1
                if rows[-1][1] and rows[-1][0] + tail > self.max_length:
                    rows.append([len(prefix), []])
                rows[-1][0] += tail
                rows[-1][1].append(i)
        rows.sort(key=lambda row: -row[0])

        results: list = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running loglikelihood requests")
        with self._inference() as head:
            for start in range(0, len(rows), self.batch_size):
                # `batch_size` rows per forward pass; short rows share a sequence instead of being padded
                batch, sequences, sizes = rows[start:start + self.batch_size], [], []
                capacity = max(batch[0][0], PACKED_LENGTH)
                for size, ids in batch:
                    if sequences and sizes[-1] + size <= capacity:
                        sequences[-1] += ids
                        sizes[-1] += size
                    else:
                        sequences.append(list(ids))
                        sizes.append(size)
                scores = self._score_tries([[(inputs[i], requests[i][2]) for i in ids] for ids in sequences], head)
                for i, score in zip([i for ids in sequences for i in ids], scores):
                    results[i] = score
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], score)
                pbar.update(sum(map(len, sequences)))
        pbar.close()
        return results

    def _score_tries(self, sequences: list[list[tuple[list[int], list[int]]]], head: nn.Module) -> list[tuple]:
        """One forward pass over right-padded sequences, each holding the (input, continuation) pairs of several
        requests as a token trie; returns the scores in order.

        An input's tokens that an earlier input of the sequence starts with too (a shared context, a prompt
        template, the first tokens of two continuations) are one trie node, run once. A node sits at its depth's
        position and attends to its ancestors and itself only, so every input is scored as if it ran alone. Nodes
        are laid out depth first: a node's descendants follow it, and node i is an ancestor of node j iff
        i <= j <= last(i), the last of i's descendants.
        """
        tries = [_TokenTrie([tokens for tokens, _ in sequence]) for sequence in sequences]
        B, L = len(tries), max(len(trie.tokens) for trie in tries)
        idx, pos = torch.zeros(B, L, dtype=torch.long), torch.zeros(B, L, dtype=torch.long)
        last = torch.arange(L).repeat(B, 1)  # padding attends to itself only
        for b, trie in enumerate(tries):
            n = len(trie.tokens)
            idx[b, :n], pos[b, :n], last[b, :n] = (torch.tensor(x) for x in (trie.tokens, trie.depths, trie.last))
        at = torch.arange(L)
        mask = (at[None, None, :] <= at[None, :, None]) & (at[None, :, None] <= last[:, None, :])  # (B, L, L)
        slots = torch.arange(L, device=self._device).expand(B, L)
        with self._kv_caches(B, L):
            hidden = self._forward(idx.to(self._device), pos.to(self._device), slots, mask=mask.to(self._device),
                                   key_positions=pos.to(self._device))
        # an input of n tokens with a continuation of c: its nodes n - c, ..., n - 1 predict the continuation
        scored = [b * L + node for b, (trie, sequence) in enumerate(zip(tries, sequences))
                  for path, (tokens, cont) in zip(trie.paths, sequence) for node in path[len(tokens) - len(cont):]]
        selected = hidden.flatten(0, 1)[torch.tensor(scored, device=self._device)]
        return self._score(selected, [cont for sequence in sequences for _, cont in sequence], head)

    def _score(self, hidden: torch.Tensor, continuations: list[list[int]], head: nn.Module) -> list[tuple]:
        """hidden: (sum of continuation lengths, n_embd), the states that predict the continuation tokens."""
        logprobs = torch.log_softmax(head(hidden).float(), dim=-1)  # (N, vocab)
        targets = torch.tensor([t for cont in continuations for t in cont], device=logprobs.device)
        token_logprobs = logprobs.gather(1, targets[:, None]).squeeze(1)
        greedy = logprobs.argmax(dim=-1) == targets
        out, start = [], 0
        for cont in continuations:
            end = start + len(cont)
            out.append((float(token_logprobs[start:end].sum()), bool(greedy[start:end].all())))
            start = end
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts (perplexity): lm-eval's disjoint windows of up to max_length tokens, the
        first conditioned on `prefix_token_id`, summed per text."""
        windows, owners = [], []
        for i, request in enumerate(requests):
            tokens = self.tok_encode(request.args[0])
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append((None, context, continuation))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[i] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ------------------------------------------------------------------------------------------------ generation
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, if a task asks) continuations, cut at the first of the task's `until` strings or the
        EOS text; at most `max_gen_toks` tokens; the context is cut from the left to leave room for them."""
        results: list = [None] * len(requests)
        by_kwargs: dict[str, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            by_kwargs[json.dumps(request.args[1], sort_keys=True, default=str)].append(i)
        eos_text = self.tokenizer.decode([self.eot_token_id]) if self.eot_token_id is not None else None
        pbar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running generate_until requests")
        with self._inference() as head:
            for ids in by_kwargs.values():
                kwargs = dict(normalize_gen_kwargs(requests[ids[0]].args[1], self.max_gen_toks))
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
                max_new = kwargs.pop("max_gen_toks")
                pick = _token_picker(kwargs)
                max_context = self.max_length - max_new
                if max_context <= 0:
                    raise ValueError(f"max_gen_toks={max_new} leaves no room for a context in max_length "
                                     f"{self.max_length}")
                # an empty context (HFLM cannot generate from one) starts from the prefix token
                prompts = {i: self._encode_prompt(requests[i].args[0])[-max_context:] or [self.prefix_token_id]
                           for i in ids}
                order = sorted(ids, key=lambda i: -len(prompts[i]))

                def done(k: int, text: str) -> None:
                    results[order[k]] = text
                    self.cache_hook.add_partial("generate_until", requests[order[k]].args, text)
                    pbar.update(1)

                self._generate([prompts[i] for i in order], max_new, until, pick, head, done)
        pbar.close()
        return results

    def _encode_prompt(self, text: str) -> list[int]:
        """HFLM's batch encoding: no BOS added to a text that starts with the BOS text."""
        no_bos = bool(self._bos_text) and text.startswith(self._bos_text)
        return self.tokenizer.encode(text, bos=False if no_bos else None).tolist()

    def _generate(self, prompts: list[list[int]], max_new: int, until: list[str],
                  pick: Callable[[torch.Tensor], torch.Tensor], head: nn.Module,
                  done: Callable[[int, str], None]) -> None:
        """Generates for all prompts with `batch_size` rows, refilled as soon as a row's answer ends (continuous
        batching): decoding costs about the same for 1 or 8 rows, so the rows are kept busy. Every row is at its own
        position; its prompt and answer fill its own KV-cache slots 0, 1, ... `done(k, text)` receives answers."""
        stop_ids = set(self.tokenizer.stop_ids)
        queue = list(range(len(prompts)))
        active: list[int] = []  # the prompt in each cache row
        positions: list[int] = []  # each row's next position (= slot)
        generated: dict[int, list[int]] = {}
        hidden = torch.empty(0, self.model.config.n_embd, device=self._device,  # each row's last state
                             dtype=self.model.transformer.wte.weight.dtype)
        with self._kv_caches(min(self.batch_size, len(prompts)), max(map(len, prompts)) + max_new) as caches:
            while queue or active:
                if queue and len(active) < self.batch_size:  # prefill new prompts into the free rows
                    new, queue = queue[:self.batch_size - len(active)], queue[self.batch_size - len(active):]
                    L = max(len(prompts[k]) for k in new)
                    idx = torch.zeros(len(new), L, dtype=torch.long)
                    for j, k in enumerate(new):
                        idx[j, :len(prompts[k])] = torch.tensor(prompts[k])
                    slots = torch.arange(L, device=self._device).expand(len(new), L)
                    out = self._forward(idx.to(self._device), slots, slots, first_row=len(active))
                    last = torch.stack([out[j, len(prompts[k]) - 1] for j, k in enumerate(new)])
                    hidden = torch.cat([hidden, last])
                    active, positions = active + new, positions + [len(prompts[k]) for k in new]
                    generated.update((k, []) for k in new)
                tokens = pick(head(hidden).float()).tolist()
                keep = []
                for r, (k, token) in enumerate(zip(active, tokens)):
                    if token not in stop_ids:
                        generated[k].append(token)
                        # a character whose bytes are not all generated yet decodes as U+FFFD: not text yet
                        text = self.tokenizer.decode(generated[k]).rstrip("\ufffd")
                        if len(generated[k]) < max_new and not any(s and s in text for s in until):
                            keep.append(r)
                            continue
                    text = self.tokenizer.decode(generated.pop(k), skip_special_tokens=True)
                    done(k, postprocess_generated_text(text, until, None))
                if len(keep) < len(active):  # finished rows leave; the others move up
                    rows = torch.tensor(keep, dtype=torch.long, device=self._device)
                    for cache in caches:
                        cache.k[:len(keep)], cache.v[:len(keep)] = cache.k[rows], cache.v[rows]
                    active, positions = [active[r] for r in keep], [positions[r] for r in keep]
                    tokens = [tokens[r] for r in keep]
                if not active:
                    hidden = hidden[:0]
                    continue
                pos = torch.tensor(positions, device=self._device)[:, None]  # (rows, 1)
                mask = torch.arange(max(positions) + 1, device=self._device) <= pos[..., None]  # (rows, 1, length)
                hidden = self._forward(torch.tensor(tokens, device=self._device)[:, None], pos, pos, mask=mask)[:, -1]
                positions = [p + 1 for p in positions]

    # ---------------------------------------------------------------------------------------------------- utils
    def _forward(self, idx: torch.Tensor, positions: torch.Tensor, slots: Optional[torch.Tensor] = None,
                 first_row: int = 0, mask: Optional[torch.Tensor] = None,
                 key_positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The model's final hidden states (B, T, n_embd), before the LM head (applied to scored positions only).

        Row b's tokens are at RoPE positions `positions[b]` (B or 1, T). With `slots` (B, T) they are written to
        those slots of KV-cache row first_row + b and attend to the row's slots up to the largest one: as `mask`
        (B, T, length) allows, or causally if it is None (a prefill from slot 0). `key_positions` (B, length): the
        positions of the tokens in those slots (default: slot i holds position i), for sliding-window layers.
        `GPT.forward` gives all rows the same positions and slots, so this runs its blocks with the per-row RoPE
        cos/sin and masks of `GPT.layer_inputs`, and the row-wise `_KVCache`s of `_kv_caches`.
        """
        model = self.model
        length = int(slots.max()) + 1 if slots is not None else idx.size(1)
        cache_input = None if slots is None else ((first_row, slots), length)
        if key_positions is None:
            key_positions = torch.arange(length, device=idx.device)
        inputs = model.layer_inputs(positions.unsqueeze(1), key_positions.unsqueeze(-2) if key_positions.dim() > 1
                                    else key_positions, None if mask is None else mask.unsqueeze(1))
        x = model.embed(idx)
        for block in model.transformer.h:
            x = block(x, *inputs[block.sliding], cache_input)
        return model.transformer.ln_f(x)

    @contextmanager
    def _kv_caches(self, rows: int, slots: int) -> Iterator[list["_KVCache"]]:
        blocks = self.model.transformer.h
        dtype = self.model.transformer.wte.weight.dtype
        caches = [_KVCache(rows, slots, self.model.config, self._device, dtype) for _ in blocks]
        for block, cache in zip(blocks, caches):
            block.attn.kv_cache = cache
        try:
            yield caches
        finally:
            for block in blocks:
                block.attn.kv_cache = None

    @contextmanager
    def _inference(self) -> Iterator[nn.Module]:
        """No autograd and the precision's autocast; yields the LM head."""
        autocast = (torch.autocast(self._device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else nullcontext())
        with torch.inference_mode(), autocast:
            yield self.model.lm_head


class _TokenTrie:
    """The token sequences as a trie, nodes in depth-first order: `tokens`, `depths` (= positions) and `last` (the
    index of the node's last descendant, or its own) per node; `paths[k]`: the nodes of sequence k, one per token."""

    def __init__(self, sequences: list[list[int]]) -> None:
        children: list[dict[int, int]] = [{}]  # node 0: the root, no token
        token, depth, paths = [-1], [-1], []
        for sequence in sequences:
            node, path = 0, []
            for t in sequence:
                if t not in children[node]:
                    children[node][t] = len(token)
                    children.append({})
                    token.append(t)
                    depth.append(depth[node] + 1)
                node = children[node][t]
                path.append(node)
            paths.append(path)
        order, stack = [], list(reversed(children[0].values()))
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(reversed(children[node].values()))
        index = {node: i for i, node in enumerate(order)}
        size = [1] * len(token)
        for node in reversed(order):
            size[node] += sum(size[child] for child in children[node].values())
        self.tokens = [token[node] for node in order]
        self.depths = [depth[node] for node in order]
        self.last = [i + size[node] - 1 for i, node in enumerate(order)]
        self.paths = [[index[node] for node in path] for path in paths]


class _KVCache(nn.Module):
    """A KV cache whose rows fill independently, for `LitLM._forward`: `CausalSelfAttention` calls it with
    `(first_row, slots)`; the batch is rows first_row, first_row + 1, ... and row b writes its keys and values at
    `slots[b]` (T,). Returns the batch's rows (all their slots; the attention reads the first `length`)."""

    def __init__(self, rows: int, slots: int, config: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        shape = (rows, config.n_query_groups, slots, config.head_size)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def forward(self, where: tuple, k: torch.Tensor, v: torch.Tensor) -> tuple:
        first_row, slots = where  # k, v: (B, n_query_groups, T, head_size); slots: (B, T)
        B = k.size(0)
        rows = torch.arange(first_row, first_row + B, device=k.device)[:, None]  # (B, 1)
        self.k[rows, :, slots] = k.transpose(1, 2).to(self.k.dtype)  # indexes (B, T, n_query_groups, head_size)
        self.v[rows, :, slots] = v.transpose(1, 2).to(self.v.dtype)
        return self.k[first_row:first_row + B], self.v[first_row:first_row + B]


def _token_picker(kwargs: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """Greedy (argmax) unless `do_sample`: then softmax sampling with `temperature`, `top_k` and `top_p`."""
    do_sample = kwargs.pop("do_sample", False)
    temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
    top_k, top_p = kwargs.pop("top_k", None), kwargs.pop("top_p", None)
    if kwargs:
        log.warning(f"Ignoring generation arguments lit_gpt does not implement: {kwargs}")
    if not do_sample or temperature <= 0:
        return lambda logits: logits.argmax(dim=-1)

    def sample(logits: torch.Tensor) -> torch.Tensor:
        logits = logits / temperature
        if top_k:
            kth = torch.topk(logits, min(int(top_k), logits.size(-1))).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and float(top_p) < 1.0:
            sorted_logits, indices = logits.sort(dim=-1, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop = cumulative - sorted_logits.softmax(-1) > float(top_p)  # keep the first token past top_p
            logits = logits.scatter(-1, indices, sorted_logits.masked_fill(drop, float("-inf")))
        return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)

    return sample


# -------------------------------------------------------------------------------------------------------- tasks
def task_manager(names: list[str], include_paths: list[Path]) -> Any:
    """A `TaskManager` over the folders of task YAMLs; lm-eval's own ~15k task definitions are indexed (~10-20 s)
    only when a name is not found in them. Fails on an unknown name, with close matches."""
    import difflib

    from lm_eval.tasks import TaskManager

    paths = [str(Path(p).resolve()) for p in include_paths]
    manager = TaskManager(include_path=paths, include_defaults=False)
    if all(manager.match_tasks([name]) for name in names):
        return manager
    manager = TaskManager(include_path=paths, include_defaults=True)
    for name in names:
        if not manager.match_tasks([name]):
            close = difflib.get_close_matches(name, manager.all_tasks, n=5)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            fail(f"Unknown task {name!r}.{hint} The local tasks are in {', '.join(map(repr, paths))}; "
                 "`lm-eval ls tasks` lists lm-eval's own")
    return manager


def load_tasks(manager: Any, names: list[str]) -> list:
    """The lm-eval Task/Group objects for task, group, tag names or glob patterns. Their data is read here, so a
    task whose data is not available fails now, before a model is loaded."""
    # lm-eval warns about every task with a `custom_dataset` (ours read local files that way)
    logging.getLogger("lm_eval.api.task").addFilter(
        lambda record: "Custom kwargs can be passed" not in record.getMessage())
    objects = []
    for name in manager.match_tasks(names) if any("*" in n or "?" in n for n in names) else names:
        try:
            loaded = manager.load(name)
        except Exception as e:
            message = " ".join(str(e).split())[:400] or type(e).__name__
            fail(f"Task {name!r} could not be loaded: {type(e).__name__}: {message}. Evaluation runs offline "
                 "(HF_DATASETS_OFFLINE=1, no Hugging Face Hub): download the task's data first with `python "
                 f"scripts/download.py --lm_eval_tasks {name}`, or use tasks whose data are local files, like the "
                 "ones in eval/tasks")
        group = loaded.get("groups", {}).get(name)
        objects.extend([group] if group is not None else loaded["tasks"].values())
    return objects


def wants_prompt_style(task: Any) -> bool:
    """Whether a task (or every task of a group) has `metadata: {apply_prompt_style: true}` in its YAML."""
    from lm_eval.api.group import Group

    tasks = task.get_all_tasks() if isinstance(task, Group) else [task]
    return all(bool((t.config.metadata or {}).get("apply_prompt_style")) for t in tasks)


def task_name(task: Any) -> str:
    from lm_eval.api.group import Group

    return task.name if isinstance(task, Group) else task.task_name


def evaluate(lm: LitLM, tasks: list, *, apply_prompt_style: Optional[bool] = None, num_fewshot: Optional[int] = None,
             limit: Optional[float] = None, bootstrap_iters: int = 100000, seed: int = 1234, log_samples: bool = False,
             manager: Any = None) -> dict:
    """Runs `lm_eval.simple_evaluate` on loaded tasks; the ones that get the prompt style (all if
    `apply_prompt_style` is True, none if False, else those that ask for it) run in a second call with lm-eval's
    chat-template path. Returns one merged lm-eval results dict."""
    from lm_eval import simple_evaluate

    styled = {task_name(t): (wants_prompt_style(t) if apply_prompt_style is None else apply_prompt_style)
              for t in tasks}
    if limit is not None and float(limit).is_integer():
        limit = int(limit)
    merged: dict = {}
    for use_style in (False, True):
        selected = [t for t in tasks if styled[task_name(t)] == use_style]
        if not selected:
            continue
        if use_style and lm.prompt_style is None:
            fail("A task asks for the prompt style but the model has none: pass --prompt_style")
        out = simple_evaluate(model=lm, tasks=selected, num_fewshot=num_fewshot, limit=limit,
                              bootstrap_iters=bootstrap_iters, log_samples=log_samples, apply_chat_template=use_style,
                              fewshot_as_multiturn=False, task_manager=manager, random_seed=seed,
                              numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
        for key, value in out.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            elif key not in merged:
                merged[key] = value
    merged["prompt_style_applied"] = styled
    return merged
