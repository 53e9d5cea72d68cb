"""Export to llama.cpp, Ollama, LM Studio: a checkpoint dir or a LoRA adapter as a GGUF file.

    python scripts/export_gguf.py --checkpoint_dir out/merged/arithmetic --out model.gguf --outtype q8_0
    python scripts/export_gguf.py --lora_path out/lora/arithmetic --out adapter.gguf

The model file holds the weights laid out as llama.cpp's own converter lays them out, the architecture's metadata,
the tokenizer and the chat template; run it with `llama-cli -m model.gguf` or import it into Ollama with a Modelfile
(`FROM ./model.gguf`). The adapter file is a llama.cpp LoRA GGUF for the base model's GGUF: `llama-cli -m base.gguf
--lora adapter.gguf`. See lit_gpt/gguf_export.py for what is written.
"""

import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.gguf_export import export_gguf, export_lora_gguf  # noqa: E402
from lit_gpt.load import load_lora_run  # noqa: E402
from lit_gpt.utils import check_valid_checkpoint_dir, cli, fail  # noqa: E402


def main(
    *,
    checkpoint_dir: Optional[Path] = None,
    lora_path: Optional[Path] = None,
    out: Optional[Path] = None,
    outtype: Optional[str] = None,
) -> None:
    """Writes one GGUF file: the model of a checkpoint dir, or the LoRA adapter of a finetune out dir.

    Args:
        checkpoint_dir: A base or merged checkpoint dir (lit_model.pth, lit_config.json, tokenizer.json).
        lora_path: A finetune out dir (lit_model_lora_finetuned.pth + lora_config.json): its adapter as a llama.cpp
            LoRA GGUF, applied on the GGUF of the base model it was trained on.
        out: The GGUF file to write (replaced if it exists; written next to it and renamed at the end). Default:
            out/gguf/<model name>-<OUTTYPE>.gguf, or <finetune out dir>/adapter-<OUTTYPE>.gguf.
        outtype: Type of the 2-D weights: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 (the types the `gguf` package
            can write; 1-D tensors stay f32). Default: f16 for a model, f32 for an adapter (which takes f32 or f16).
    """
    if (checkpoint_dir is None) == (lora_path is None):
        fail("Pass either --checkpoint_dir (a model) or --lora_path (an adapter)")
    start = time.perf_counter()
    if lora_path is not None:
        outtype = outtype or "f32"
        lora_run = load_lora_run(lora_path)
        out = out or lora_run.out_dir / f"adapter-{outtype.upper()}.gguf"
        export_lora_gguf(lora_run, out, outtype)
        run = "llama-cli -m <base model>.gguf --lora " + str(out)
    else:
        from lit_gpt.config import Config

        checkpoint_dir = check_valid_checkpoint_dir(checkpoint_dir)
        outtype = outtype or "f16"
        out = out or Path("out/gguf") / f"{Config.from_checkpoint(checkpoint_dir).name}-{outtype.upper()}.gguf"
        export_gguf(checkpoint_dir, out, outtype)
        run = f"llama-cli -m {out}"
    size = Path(out).stat().st_size / 2**20
    print(f"Wrote {str(out)!r} ({size:,.1f} MiB, {outtype}) in {time.perf_counter() - start:.1f}s. Run it: {run}")


if __name__ == "__main__":
    cli(main)
