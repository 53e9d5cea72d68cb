"""Chat with a model in the terminal: `python generate/chat.py` (a base or merged checkpoint) or
`python generate/chat.py --lora_path out/lora/arithmetic` (a finetuned adapter, no merge needed).

Type a message and press Enter; the answer streams back. Every prompt holds the conversation so far, written in the
prompt style's multi-turn form (a chat model's own template); when it no longer fits the context, the oldest turns
are left out. `/reset` starts a new conversation; `/quit` or Ctrl-D ends; Ctrl-C stops an answer. Answers go to
stdout; the prompt marker, notes and tokens/s go to stderr, so `python generate/chat.py < questions.txt >
answers.txt` works too.
"""

import sys
import time
from pathlib import Path
from typing import Iterator, List, Literal, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.generate import (  # noqa: E402
    Engine,
    Request,
    check_generate_flags,
    common_prefix_length,
    generate,
    stream_text,
)
from lit_gpt.load import check_adapter_fits, load_lora_run, load_model, pick_prompt_style  # noqa: E402
from lit_gpt.lora import merge_lora_weights  # noqa: E402
from lit_gpt.prompts import PromptStyle  # noqa: E402
from lit_gpt.quantize import check_quantize  # noqa: E402
from lit_gpt.tokenizer import Tokenizer  # noqa: E402
from lit_gpt.utils import (  # noqa: E402
    check_valid_checkpoint_dir,
    cli,
    fail,
    inference_precision,
    peak_memory_gb,
    pick_device,
)

DEFAULT_CHECKPOINT = Path("checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct")


def main(
    checkpoint_dir: Optional[Path] = None,
    lora_path: Optional[Path] = None,
    max_new_tokens: int = 512,
    temperature: float = 0.8,
    top_k: Optional[int] = 50,
    top_p: Optional[float] = None,
    repetition_penalty: float = 1.0,
    seed: int = 1234,
    precision: Optional[Literal["bf16-true", "16-true", "32-true"]] = None,
    quantize: Optional[str] = None,
    device: str = "auto",
    prompt_style: Optional[str] = None,
    system_prompt: Optional[str] = None,
    compile: bool = False,
) -> None:
    """Chats with the model of a checkpoint dir, optionally with a LoRA adapter.

    Args:
        checkpoint_dir: A checkpoint dir, base or merged. Default: the adapter's base (its lora_config.json), else
            checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct.
        lora_path: A LoRA adapter: the out dir of finetune/lora.py or an adapter .pth with lora_config.json next to it.
        max_new_tokens: Most tokens per answer.
        temperature: Softmax temperature; 0 is greedy decoding (always the most likely token).
        top_k: Sample among the k most likely tokens only (null: all).
        top_p: Sample among the most likely tokens holding this much probability (nucleus sampling; null: all).
        repetition_penalty: Penalty > 1 on tokens already in the prompt or the answer (1.0: none).
        seed: Random seed of the sampling (one generator for the whole conversation).
        precision: Weights and compute dtype; default: the fastest on the device (bf16-true on GPUs with
            bfloat16 and on CPUs whose bf16 matmuls are faster, 16-true on older GPUs, else 32-true).
        quantize: Quantize the linear weights with bitsandbytes: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or
            bnb.int8 (null: no quantization).
        device: Where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N.
        prompt_style: How the conversation is written (alpaca, chatml, ...). Default: the style the adapter was
            trained with (its run record, else its prompt_style.json), else the checkpoint's prompt_style.json, else
            the model's own chat template or alpaca.
        system_prompt: The system message. Default: the one the adapter was trained with (prepare_chat.py
            --system_prompt), else the prompt style's own.
        compile: Compile the decoding step with torch.compile (float weights only; see generate/base.py).
    """
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    check_generate_flags(1, max_new_tokens, quantize, compile, **sampling)
    device = pick_device(device)
    precision = precision or inference_precision(device)
    check_quantize(quantize, precision, device)
    run = load_lora_run(lora_path) if lora_path is not None else None
    checkpoint_dir = check_valid_checkpoint_dir(checkpoint_dir or (run.checkpoint_dir if run else DEFAULT_CHECKPOINT))
    config = Config.from_checkpoint(checkpoint_dir)
    if max_new_tokens >= config.block_size:
        fail(f"--max_new_tokens {max_new_tokens} leaves no room for a message in the model's context of "
             f"{config.block_size} tokens: lower it")
    if run is not None:
        check_adapter_fits(run, config, checkpoint_dir)
    style = pick_prompt_style(prompt_style, run, checkpoint_dir)
    if system_prompt is None and run is not None:
        system_prompt = (run.run.get("data") or {}).get("system_prompt")
    tokenizer = Tokenizer(checkpoint_dir)

    model = load_model(checkpoint_dir, precision=precision, quantize=quantize, device=device, lora_path=run)
    if lora_path is not None and quantize is None:  # one matmul per layer; 4-bit weights would be re-quantized
        merge_lora_weights(model)
    if compile:  # before the first message (a minute the first time, then from the disk cache)
        start = time.perf_counter()
        generate(model, tokenizer.encode(style.apply("Hi")).to(device), 2, temperature=0.0, compile=True)
        note(f"Compiled the decoding step in {time.perf_counter() - start:.2f} s")
    engine = Engine(model, rows=1, compile=compile)  # keeps the conversation's KV cache from turn to turn
    stop_tokens = style.stop_tokens(tokenizer)
    adapter = f" + adapter {lora_path}" if lora_path else ""
    note(f"Chatting with {checkpoint_dir}{adapter} on {device} ({precision}{f', {quantize}' if quantize else ''}, "
         f"{style.name} prompts). /reset starts over, /quit or Ctrl-D ends, Ctrl-C stops an answer.")
    turns: List[Tuple[str, str]] = []
    while (message := read_message()) is not None:
        if message == "/quit":
            break
        if message == "/reset":
            turns = []
            note("(new conversation)")
            continue
        if not message:
            continue
        prompt, kept = fit_conversation(tokenizer, style, turns, message, system_prompt,
                                        model.max_seq_length - max_new_tokens)
        if prompt is None:
            note(f"This message does not fit the context of {model.max_seq_length} tokens with --max_new_tokens "
                 f"{max_new_tokens}: send a shorter one or lower --max_new_tokens")
            continue
        if kept < len(turns):
            note(f"(the {len(turns) - kept} oldest turn(s) no longer fit the context: left out)")
            turns = turns[len(turns) - kept:]
        # the conversation so far is in the engine's KV cache: only what follows the unchanged part runs again
        ids = prompt.tolist()
        same = common_prefix_length(engine.kept, ids)
        request = Request(ids, max_new_tokens, stop_tokens=stop_tokens, seed=seed + len(turns), **sampling)
        answer: List[int] = []
        start = first = time.perf_counter()

        def collect() -> Iterator[int]:
            nonlocal first
            for _, _, new, _ in engine.stream([request]):
                first = first if answer or not new else time.perf_counter()
                answer.extend(new)
                yield from new

        try:
            for piece in stream_text(tokenizer, collect()):
                print(piece, end="", flush=True)
        except KeyboardInterrupt:  # Ctrl-C stops the answer; what came so far stays in the conversation
            note(" (stopped)")
        print(flush=True)
        elapsed = time.perf_counter() - start
        note(f"({len(answer)} tokens in {elapsed:.2f} s, {len(answer) / elapsed:.2f} tokens/s, the first after "
             f"{first - start:.2f} s; prompt {len(ids)} tokens, {len(ids) - min(same, len(ids) - 1)} of them run; "
             f"peak memory {peak_memory_gb(device):.2f} GB)")
        turns.append((message, tokenizer.decode(answer)))


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def read_message() -> Optional[str]:
    """The next line typed (stripped), or None at the end of the input or on Ctrl-C."""
    try:
        if sys.stdin.isatty() and sys.stdout.isatty():
            import readline  # noqa: F401  (line editing and history for input())

            return input(">> ").strip()
        print(">> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
    except (EOFError, KeyboardInterrupt):
        line = ""
    if not line:
        note("")
        return None
    return line.strip()


def fit_conversation(tokenizer: Tokenizer, style: PromptStyle, turns: List[Tuple[str, str]], message: str,
                     system: Optional[str], max_tokens: int) -> Tuple[Optional[torch.Tensor], int]:
    """(prompt ids, how many of the latest turns it keeps): as many turns as fit in `max_tokens` with the message,
    or (None, 0) when the message alone does not fit."""
    for kept in range(len(turns), -1, -1):
        ids = tokenizer.encode(style.apply_conversation(turns[len(turns) - kept:], message, system))
        if len(ids) <= max_tokens:
            return ids, kept
    return None, 0


if __name__ == "__main__":
    cli(main)
