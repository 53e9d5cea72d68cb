"""Export one of our checkpoint dirs as a Hugging Face transformers dir (safetensors, config.json, tokenizer)."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.convert import export_hf_checkpoint, load_lit_state_dict  # noqa: E402
from lit_gpt.utils import check_valid_checkpoint_dir, cli  # noqa: E402


def main(*, checkpoint_dir: Path, out_dir: Path, max_shard_size_gb: float = 2.0) -> None:
    """Writes model.safetensors (sharded past `max_shard_size_gb`), config.json, generation_config.json and the
    tokenizer files, loadable by `transformers.AutoModelForCausalLM.from_pretrained(out_dir)`.

    Args:
        checkpoint_dir: Our checkpoint dir (lit_model.pth, lit_config.json, tokenizer files). To export a LoRA
            finetune, merge it into a checkpoint dir first.
        out_dir: The dir to create; it must not exist yet (or be empty). It appears complete or not at all.
        max_shard_size_gb: Largest safetensors file, in GiB.
    """
    start = time.perf_counter()
    check_valid_checkpoint_dir(checkpoint_dir)
    config = Config.from_checkpoint(checkpoint_dir)
    state_dict = load_lit_state_dict(checkpoint_dir)
    export_hf_checkpoint(state_dict, config, checkpoint_dir, out_dir, max_shard_bytes=int(max_shard_size_gb * 2**30))
    print(f"Exported {config.name!r} to {str(out_dir)!r} in {time.perf_counter() - start:.1f}s. Load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out_dir)!r})")


if __name__ == "__main__":
    cli(main)
