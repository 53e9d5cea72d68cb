"""Generate text with a base or merged checkpoint: `python generate/base.py --prompt "What food do llamas eat?"`.

The answer goes to stdout (nothing else, so it can be piped); timings, tokens/s and peak memory go to stderr.
"""

import sys
from pathlib import Path
from typing import Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.config import Config
from lit_gpt.generate import check_generate_flags, check_prompt_length, print_samples, prompt_ids
from lit_gpt.load import load_model
from lit_gpt.quantize import check_quantize
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import check_valid_checkpoint_dir, cli, inference_precision, pick_device


def main(
    checkpoint_dir: Path = Path("checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct"),
    prompt: str = "What food do llamas eat?",
    input: str = "",
    num_samples: int = 1,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: Optional[int] = 50,
    top_p: Optional[float] = None,
    repetition_penalty: float = 1.0,
    seed: int = 1234,
    precision: Optional[Literal["bf16-true", "16-true", "32-true"]] = None,
    quantize: Optional[str] = None,
    device: str = "auto",
    stream: Optional[bool] = None,
    prompt_style: Optional[str] = None,
    compile: bool = False,
) -> None:
    """Samples answers to a prompt from the model of a checkpoint dir.

    Args:
        checkpoint_dir: A checkpoint dir (lit_model.pth, lit_config.json, tokenizer files), base or merged.
        prompt: The instruction (or, with --prompt_style raw, the exact text) to answer.
        input: Optional input/context for the instruction (e.g. the text to summarize).
        num_samples: How many answers to sample.
        max_new_tokens: Most tokens to generate per answer.
        temperature: Softmax temperature; 0 is greedy decoding (always the most likely token).
        top_k: Sample among the k most likely tokens only (null: all).
        top_p: Sample among the most likely tokens holding this much probability (nucleus sampling; null: all).
        repetition_penalty: Penalty > 1 on tokens already in the prompt or the answer (1.0: none).
        seed: Random seed of the sampling.
        precision: Weights and compute dtype; default: the fastest on the device (bf16-true on GPUs with
            bfloat16 and on CPUs whose bf16 matmuls are faster, 16-true on older GPUs, else 32-true).
        quantize: Quantize the linear weights with bitsandbytes: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or
            bnb.int8 (null: no quantization).
        device: Where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N.
        stream: Print the answer as it is generated (default: when stdout is a terminal).
        prompt_style: How the prompt is formatted (alpaca, chatml, ...; raw or none: as is). Default: the checkpoint's
            prompt_style.json, else the model's own chat template or alpaca.
        compile: Compile the decoding step with torch.compile: faster tokens (1.8x for SmolLM2-135M in bf16 on CPU)
            after a warm-up that takes about a minute the first time (then cached on disk). Float weights only.
    """
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    check_generate_flags(num_samples, max_new_tokens, quantize, compile, **sampling)
    device = pick_device(device)
    precision = precision or inference_precision(device)
    check_quantize(quantize, precision, device)
    check_valid_checkpoint_dir(checkpoint_dir)

    config = Config.from_checkpoint(checkpoint_dir)
    tokenizer = Tokenizer(checkpoint_dir)
    prompt_tokens, stop_tokens = prompt_ids(tokenizer, prompt_style, checkpoint_dir, prompt, input)
    check_prompt_length(len(prompt_tokens), max_new_tokens, config.block_size)

    model = load_model(checkpoint_dir, precision=precision, quantize=quantize, device=device,
                       max_seq_length=len(prompt_tokens) + max_new_tokens)
    print_samples(model, tokenizer, prompt_tokens.to(device), num_samples=num_samples, max_new_tokens=max_new_tokens,
                  stop_tokens=stop_tokens, stream=stream, seed=seed, compile=compile, **sampling)


if __name__ == "__main__":
    cli(main)
