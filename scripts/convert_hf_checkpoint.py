"""Convert a Hugging Face transformers checkpoint dir into ours: writes lit_model.pth and lit_config.json into it."""

import sys
import time
from pathlib import Path
from typing import Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lit_gpt.convert import convert_hf_checkpoint  # noqa: E402
from lit_gpt.utils import cli  # noqa: E402


def main(*, checkpoint_dir: Path, model_name: Optional[str] = None,
         dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None) -> None:
    """Converts the HF weights of `checkpoint_dir` (safetensors or .bin, sharded or not), one tensor at a time.

    The config is the preset named like the dir (checked against its config.json), else built from config.json
    (e.g. your own finetune of a supported family: Llama, Mistral, GPT-NeoX, Falcon-7b).

    Args:
        checkpoint_dir: A dir holding an HF checkpoint (config.json, weights, tokenizer files), e.g. the one
            scripts/download.py fills: checkpoints/<org>/<name>.
        model_name: Use this preset instead (python scripts/download.py --repo_id list shows them).
        dtype: Cast the weights to this dtype. Default: keep the checkpoint's dtype.
    """
    start = time.perf_counter()
    config = convert_hf_checkpoint(checkpoint_dir, model_name, getattr(torch, dtype) if dtype else None)
    print(f"Converted {config.name!r} into {str(checkpoint_dir / 'lit_model.pth')!r} and lit_config.json in "
          f"{time.perf_counter() - start:.1f}s. Try it: python generate/base.py --checkpoint_dir {checkpoint_dir}")


if __name__ == "__main__":
    cli(main)
