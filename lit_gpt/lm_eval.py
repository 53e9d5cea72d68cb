"""lm-evaluation-harness 0.4 for lit_gpt: an `LM` that scores and generates with a `GPT`, and task loading.

`LitLM` tokenizes like lm-eval's `hf` backend (HFLM) on the same checkpoint: `TemplateLM` splits context and
continuation, BOS is added as the tokenizer adds it, inputs are cut from the left to the model's length, rolling
windows are lm-eval's. On the same weights it returns the same log-likelihoods and generations. It does less work:
- the inputs of a forward pass run as a token trie: tokens that several inputs start with (the context of a
  multiple-choice question's choices, a prompt template, a few-shot prefix) run once; every token is at its own
  position and attends to the tokens before it in its own inputs only (a tree-shaped attention mask);
- a model with linear-attention layers (Qwen3.5's Gated DeltaNet), whose recurrent states a mask cannot split into
  branches, runs the common prefix of a row once instead and continues each continuation from a copy of every layer's
  state after it (keys and values, or conv and recurrent state);
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
from typing import Any, Iterator, Optional, Sequence

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from lit_gpt.generate import Engine, Request
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
        sequence, where every token that inputs have in common runs once (`_score_tries`). A model with
        linear-attention layers runs each row's prefix once and its continuations from copies of the prefix's state
        (`_score_from_state`).
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
        linear = self.model.config.linear_attention
        with self._inference(), self._caches(max(map(len, inputs))) if linear else nullcontext():
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start:start + self.batch_size]
                if linear:  # no trie: each row's prefix runs once, its continuations go on from copies of its state
                    sequences = [ids for _, ids in batch]
                    scores = [score for ids in sequences
                              for score in self._score_from_state([(inputs[i], requests[i][2]) for i in ids])]
                else:  # `batch_size` rows per forward pass; short rows share a sequence instead of being padded
                    sequences, sizes = [], []
                    capacity = max(batch[0][0], PACKED_LENGTH)
                    for size, ids in batch:
                        if sequences and sizes[-1] + size <= capacity:
                            sequences[-1] += ids
                            sizes[-1] += size
                        else:
                            sequences.append(list(ids))
                            sizes.append(size)
                    scores = self._score_tries([[(inputs[i], requests[i][2]) for i in ids] for ids in sequences])
                for i, score in zip([i for ids in sequences for i in ids], scores):
                    results[i] = score
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], score)
                pbar.update(sum(map(len, sequences)))
        pbar.close()
        return results

    def _score_tries(self, sequences: list[list[tuple[list[int], list[int]]]]) -> list[tuple]:
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
        # an input of n tokens with a continuation of c: its nodes n - c, ..., n - 1 predict the continuation
        scored = [b * L + node for b, (trie, sequence) in enumerate(zip(tries, sequences))
                  for path, (tokens, cont) in zip(trie.paths, sequence) for node in path[len(tokens) - len(cont):]]
        at = torch.zeros(B * L, dtype=torch.bool)
        at[scored] = True  # the LM head runs on these positions only (once each, in row-major order)
        where = at.cumsum(0) - 1
        logits = self.model(idx.to(self._device), pos.to(self._device), logits_at=at.view(B, L).to(self._device),
                            mask=mask.to(self._device))
        return self._score(logits[where[scored].to(self._device)], [cont for sequence in sequences
                                                                     for _, cont in sequence])

    def _score_from_state(self, row: list[tuple[list[int], list[int]]]) -> list[tuple]:
        """The (input, continuation) pairs of one row, for a model with linear-attention layers: the inputs' common
        prefix (up to the first scored position) runs once into cache row 0; then, at most `batch_size` at a time, each
        input's rest continues from a copy of row 0 (every layer's keys and values, or conv and recurrent state) in
        rows 1, 2, ..., right-padded: the padding comes after a row's tokens, so it changes none of their outputs.
        Every input scores as if it ran alone."""
        model, device = self.model, self._device
        caches = [block.attn.kv_cache for block in model.transformer.h if block.attn.kv_cache is not None]
        n = len(row[0][0]) - len(row[0][1]) + 1  # the prefix: the same length for every input of the row
        prefix = torch.tensor([row[0][0][:n]], device=device)
        at = torch.zeros(1, n, dtype=torch.bool, device=device)
        at[0, -1] = True
        first = model(prefix, torch.arange(n, device=device), logits_at=at)  # (1, vocab): predicts each cont[0]
        logits = [[first] for _ in row]
        rest = [k for k, (tokens, _) in enumerate(row) if len(tokens) > n]
        for start in range(0, len(rest), self.batch_size):
            chunk = rest[start:start + self.batch_size]
            T = max(len(row[k][0]) - n for k in chunk)
            idx = torch.zeros(len(chunk), T, dtype=torch.long)
            at = torch.zeros(len(chunk), T, dtype=torch.bool)
            for r, k in enumerate(chunk):
                tail = row[k][0][n:]
                idx[r, :len(tail)] = torch.tensor(tail)
                at[r, :len(tail)] = True
            for cache in caches:
                cache.copy_rows(torch.zeros(1, dtype=torch.long, device=device),
                                torch.arange(1, len(chunk) + 1, device=device))
                cache.first_row = 1
            try:
                out = model(idx.to(device), n + torch.arange(T, device=device), logits_at=at.to(device))
            finally:
                for cache in caches:
                    cache.first_row = 0
            for k, part in zip(chunk, out.split(at.sum(1).tolist())):  # (N, vocab) in row-major order
                logits[k].append(part)
        return self._score(torch.cat([x for parts in logits for x in parts]), [cont for _, cont in row])

    def _score(self, logits: torch.Tensor, continuations: list[list[int]]) -> list[tuple]:
        """logits: (sum of continuation lengths, vocab), those that predict the continuation tokens."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (N, vocab)
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
        with self._inference():
            for ids in by_kwargs.values():
                kwargs = dict(normalize_gen_kwargs(requests[ids[0]].args[1], self.max_gen_toks))
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
                max_new = kwargs.pop("max_gen_toks")
                settings = sampling_settings(kwargs)
                max_context = self.max_length - max_new
                if max_context <= 0:
                    raise ValueError(f"max_gen_toks={max_new} leaves no room for a context in max_length "
                                     f"{self.max_length}")
                # an empty context (HFLM cannot generate from one) starts from the prefix token; longest first
                order = sorted(ids, key=lambda i: -len(requests[i].args[0]))
                batch = [Request(self._encode_prompt(requests[i].args[0])[-max_context:] or [self.prefix_token_id],
                                 max_new, stop_tokens=[[t] for t in self.tokenizer.stop_ids], stop_texts=until,
                                 **settings) for i in order]
                engine = Engine(self.model, rows=self.batch_size, tokenizer=self.tokenizer)
                for k, _, _, done in engine.stream(batch):
                    if done is None:
                        continue
                    text = self.tokenizer.decode(done.tokens, skip_special_tokens=True)
                    results[order[k]] = postprocess_generated_text(text, until, None)
                    self.cache_hook.add_partial("generate_until", requests[order[k]].args, results[order[k]])
                    pbar.update(1)
        pbar.close()
        return results

    def _encode_prompt(self, text: str) -> list[int]:
        """HFLM's batch encoding: no BOS added to a text that starts with the BOS text."""
        no_bos = bool(self._bos_text) and text.startswith(self._bos_text)
        return self.tokenizer.encode(text, bos=False if no_bos else None).tolist()

    @contextmanager
    def _caches(self, slots: int) -> Iterator[None]:
        """Decoding caches of `batch_size` + 1 rows of `slots` positions in the model while it scores
        (`_score_from_state`), the ones it had put back after."""
        blocks = self.model.transformer.h
        previous = [block.attn.kv_cache for block in blocks]
        self.model.set_kv_cache(self.batch_size + 1, slots)
        try:
            yield
        finally:
            for block, cache in zip(blocks, previous):
                block.attn.kv_cache = cache

    @contextmanager
    def _inference(self) -> Iterator[None]:
        """No autograd and the precision's autocast."""
        autocast = (torch.autocast(self._device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else nullcontext())
        with torch.inference_mode(), autocast:
            yield


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


def sampling_settings(kwargs: dict) -> dict:
    """The engine's `Request` settings for lm-eval's generation arguments: greedy unless `do_sample`, then
    `temperature`, `top_k` and `top_p` (transformers' order of the filters)."""
    do_sample = kwargs.pop("do_sample", False)
    temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
    top_k, top_p = kwargs.pop("top_k", None), kwargs.pop("top_p", None)
    if kwargs:
        log.warning(f"Ignoring generation arguments lit_gpt does not implement: {kwargs}")
    if not do_sample or temperature <= 0:
        return {"temperature": 0.0}
    return {"temperature": temperature, "top_k": int(top_k) if top_k else None,
            "top_p": float(top_p) if top_p is not None else None}


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
