"""Generate text with a LoRA adapter: `python generate/lora.py --lora_path out/lora/arithmetic --prompt "..."`.

Everything needed besides the prompt comes from the `lora_config.json` that finetune/lora.py wrote next to the
adapter: the LoRA settings, the base checkpoint dir and the prompt style the adapter was trained with.
The answer goes to stdout (nothing else, so it can be piped); timings, tokens/s and peak memory go to stderr.
"""

import sys
from pathlib import Path
from typing import Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.config import Config
from lit_gpt.generate import check_generate_flags, check_prompt_length, print_samples, prompt_ids
from lit_gpt.load import check_adapter_fits, load_lora_run, load_model, pick_prompt_style
from lit_gpt.lora import merge_lora_weights
from lit_gpt.quantize import check_quantize
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import check_valid_checkpoint_dir, cli, inference_precision, pick_device


def main(
    lora_path: Path = Path("out/lora/arithmetic"),
    prompt: str = "What is 12 plus 30? Give the answer after ####.",
    input: str = "",
    checkpoint_dir: Optional[Path] = None,
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
    """Samples answers to a prompt from a base model with a finetuned LoRA adapter.

    Args:
        lora_path: The out dir of finetune/lora.py, or an adapter file in it (lit_model_lora_finetuned.pth or
            checkpoints/step-*.pth). Its run record (lora_config.json, or the checkpoint's own) gives the LoRA
            settings, the base checkpoint and the prompt style.
        prompt: The instruction (or, with --prompt_style raw, the exact text) to answer.
        input: Optional input/context for the instruction.
        checkpoint_dir: Use this base checkpoint dir instead of the one in lora_config.json.
        num_samples: How many answers to sample.
        max_new_tokens: Most tokens to generate per answer.
        temperature: Softmax temperature; 0 is greedy decoding (always the most likely token).
        top_k: Sample among the k most likely tokens only (null: all).
        top_p: Sample among the most likely tokens holding this much probability (nucleus sampling; null: all).
        repetition_penalty: Penalty > 1 on tokens already in the prompt or the answer (1.0: none).
        seed: Random seed of the sampling.
        precision: Weights and compute dtype; default: the fastest on the device (bf16-true on GPUs with
            bfloat16 and on CPUs whose bf16 matmuls are faster, 16-true on older GPUs, else 32-true).
        quantize: Quantize the base model's linear weights with bitsandbytes: bnb.nf4, bnb.nf4-dq, bnb.fp4,
            bnb.fp4-dq or bnb.int8 (null: no quantization; the adapter is then merged into the weights).
        device: Where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N.
        stream: Print the answer as it is generated (default: when stdout is a terminal).
        prompt_style: How the prompt is formatted (alpaca, chatml, ...; raw or none: as is). Default: the style the
            adapter was trained with (its run record, else its prompt_style.json), else the base checkpoint's.
        compile: Compile the decoding step with torch.compile: faster tokens (1.8x for SmolLM2-135M in bf16 on CPU)
            after a warm-up that takes about a minute the first time (then cached on disk). Float weights only.
    """
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    check_generate_flags(num_samples, max_new_tokens, quantize, compile, **sampling)
    device = pick_device(device)
    precision = precision or inference_precision(device)
    check_quantize(quantize, precision, device)
    run = load_lora_run(lora_path)
    checkpoint_dir = check_valid_checkpoint_dir(checkpoint_dir or run.checkpoint_dir)
    config = Config.from_checkpoint(checkpoint_dir)
    check_adapter_fits(run, config, checkpoint_dir)
    if prompt_style not in ("raw", "none"):
        prompt_style = pick_prompt_style(prompt_style, run, checkpoint_dir).name

    tokenizer = Tokenizer(checkpoint_dir)
    prompt_tokens, stop_tokens = prompt_ids(tokenizer, prompt_style, checkpoint_dir, prompt, input)
    check_prompt_length(len(prompt_tokens), max_new_tokens, config.block_size)

    model = load_model(checkpoint_dir, precision=precision, quantize=quantize, device=device, lora_path=run,
                       max_seq_length=len(prompt_tokens) + max_new_tokens)
    if quantize is None:  # one matmul per layer instead of three; 4-bit weights would be re-quantized
        merge_lora_weights(model)
    print_samples(model, tokenizer, prompt_tokens.to(device), num_samples=num_samples, max_new_tokens=max_new_tokens,
                  stop_tokens=stop_tokens, stream=stream, seed=seed, compile=compile, **sampling)


if __name__ == "__main__":
    cli(main)
