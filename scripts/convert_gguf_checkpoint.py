"""Convert a llama.cpp GGUF file (llama, qwen2, qwen3, gemma3 or phi3) into a checkpoint dir: weights, configs and
tokenizer."""

import sys
import time
from pathlib import Path
from typing import Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lit_gpt.gguf import convert_gguf  # noqa: E402
from lit_gpt.utils import cli  # noqa: E402


def main(*, gguf_path: Path, checkpoint_dir: Optional[Path] = None,
         dtype: Literal["float32", "bfloat16", "float16"] = "float32") -> None:
    """Converts a GGUF file into a checkpoint dir (weights dequantized, configs, tokenizer rebuilt from the file).

    Writes lit_model.pth, lit_config.json, config.json, tokenizer.json, tokenizer_config.json,
    generation_config.json and (for chat models) prompt_style.json.

    Args:
        gguf_path: The .gguf file (tensor types F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K ... Q6_K).
        checkpoint_dir: Where to write the checkpoint; must not exist yet (or be empty).
            Default: checkpoints/<org>/<name>, named after the model the file holds.
        dtype: The dtype of the saved weights. float32 keeps the dequantized values exactly.
    """
    start = time.perf_counter()
    out = convert_gguf(gguf_path, checkpoint_dir, dtype=getattr(torch, dtype))
    print(f"Wrote {str(out)!r} in {time.perf_counter() - start:.1f}s. "
          f"Try it: python generate/base.py --checkpoint_dir {out}")


if __name__ == "__main__":
    cli(main)
