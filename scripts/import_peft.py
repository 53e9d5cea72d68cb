"""Import a Hugging Face PEFT LoRA adapter as a finetune out dir of ours:
`python scripts/import_peft.py --peft_dir path/to/adapter --checkpoint_dir checkpoints/<org>/<name>`.

The out dir (lit_model_lora_finetuned.pth, lora_config.json, prompt_style.json) is what finetune/lora.py writes, so
generate/lora.py, the eval script and scripts/merge_lora.py take it as --lora_path. What maps, what is zero-filled and
what fails is described in lit_gpt/peft.py.
"""

import json
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.peft import from_peft, read_peft_dir  # noqa: E402
from lit_gpt.prompts import PromptStyleName, resolve_prompt_style, save_prompt_style  # noqa: E402
from lit_gpt.utils import atomic_dir, check_valid_checkpoint_dir, cli, fail, lazy_load  # noqa: E402

PRECISIONS = {torch.float32: "32-true", torch.bfloat16: "bf16-true", torch.float16: "16-true"}


def main(
    *,
    peft_dir: Path,
    checkpoint_dir: Path,
    out_dir: Optional[Path] = None,
    prompt_style: Optional[PromptStyleName] = None,
) -> None:
    """Converts a PEFT LoRA adapter into lit_model_lora_finetuned.pth + lora_config.json + prompt_style.json.

    Args:
        peft_dir: A PEFT LoRA adapter dir (adapter_config.json and adapter_model.safetensors), as written by
            `PeftModel.save_pretrained`.
        checkpoint_dir: Our checkpoint dir of the model the adapter was trained on (e.g. made by
            scripts/download.py and scripts/convert_hf_checkpoint.py).
        out_dir: The finetune out dir to create; it must not exist (or be empty). Default: out/lora/<peft dir name>.
        prompt_style: The prompt style to record for generation and evaluation. Default: the base checkpoint's
            (its prompt_style.json, else the default of its model).
    """
    checkpoint_dir = check_valid_checkpoint_dir(checkpoint_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path("out/lora") / Path(peft_dir).resolve().name
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        fail(f"{str(out_dir)!r} already exists and is not empty: remove it or pass another --out_dir")
    peft_config, tensors = read_peft_dir(peft_dir)
    config = Config.from_checkpoint(checkpoint_dir)
    style = resolve_prompt_style(prompt_style, checkpoint_dir)
    base = lazy_load(checkpoint_dir / "lit_model.pth")
    lora, adapter, notes = from_peft(peft_config, tensors, config, base.get("model", base),
                                     source=repr(str(peft_dir)))
    trained_on = str(peft_config.get("base_model_name_or_path") or "")
    if trained_on and config.hf_config.get("name") and trained_on.rstrip("/").split("/")[-1] != \
            config.hf_config["name"]:
        notes.append(f"the adapter names {trained_on!r} as its base; importing it onto {config.name!r}")

    dtype = next(iter(adapter.values())).dtype
    run = {"lora": lora.to_dict(), "model": config.to_dict(), "checkpoint_dir": str(checkpoint_dir.resolve()),
           "prompt_style": style.name, "data": {}, "train": {}, "precision": PRECISIONS.get(dtype, "32-true"),
           "quantize": None, "peft": {"peft_dir": str(Path(peft_dir).resolve()), "config": peft_config}}
    with atomic_dir(out_dir) as tmp:
        torch.save(adapter, tmp / "lit_model_lora_finetuned.pth")
        (tmp / "lora_config.json").write_text(json.dumps(run, indent=2, default=str) + "\n", encoding="utf-8")
        save_prompt_style(style, tmp)
    for note in notes:
        print(f"note: {note}")
    switches = [k for k in ("query", "key", "value", "projection", "mlp", "head", "experts") if getattr(lora, k)]
    print(f"Imported {str(peft_dir)!r} -> {str(out_dir)!r} (r={lora.r}, alpha={lora.alpha}, on {', '.join(switches)}"
          f"; prompt style {style.name}). Next: python generate/lora.py --lora_path {out_dir} --prompt \"...\"  or  "
          f"python scripts/merge_lora.py --lora_path {out_dir}")


if __name__ == "__main__":
    cli(main)
