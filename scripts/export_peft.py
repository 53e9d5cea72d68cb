"""Export a LoRA adapter as a Hugging Face PEFT adapter dir: `python scripts/export_peft.py --lora_path out/lora/x`.

The dir (adapter_config.json + adapter_model.safetensors) loads with `peft.PeftModel.from_pretrained(model, dir)` onto
the transformers model of the base checkpoint and gives the logits of our LoRA model. How our adapters map onto
PEFT's modules (q/k/v onto GPT-NeoX's and Falcon's fused query_key_value included, expert tensors as target_parameters)
is described in lit_gpt/peft.py.
"""

import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.load import check_adapter_fits, load_lora_run  # noqa: E402
from lit_gpt.peft import PEFT_CONFIG, PEFT_WEIGHTS, to_peft, write_peft_dir  # noqa: E402
from lit_gpt.utils import check_valid_checkpoint_dir, cli, fail, read_json  # noqa: E402


def main(
    *,
    lora_path: Path,
    out_dir: Optional[Path] = None,
    checkpoint_dir: Optional[Path] = None,
    base_model_name_or_path: Optional[str] = None,
) -> None:
    """Writes a PEFT LoRA adapter dir of our adapter.

    Args:
        lora_path: A finetune out dir (with lit_model_lora_finetuned.pth and lora_config.json), the adapter file in
            it, or one of its training checkpoints (checkpoints/step-*.pth).
        out_dir: The PEFT adapter dir to create; it must not exist (or be empty). Default: <finetune out dir>/peft.
        checkpoint_dir: The base checkpoint dir (its config.json tells the transformers model's vocabulary size).
            Default: the one recorded in lora_config.json; without it, the model recorded there is used.
        base_model_name_or_path: Written into adapter_config.json (AutoPeftModelForCausalLM loads it). Default: the
            Hugging Face repo the base model mirrors (lit_config.json's hf_config), else the base checkpoint dir.
    """
    run = load_lora_run(lora_path)
    config = run.config
    if checkpoint_dir is not None or run.checkpoint_dir.is_dir():
        checkpoint_dir = check_valid_checkpoint_dir(checkpoint_dir or run.checkpoint_dir)
        config = Config.from_checkpoint(checkpoint_dir)
    check_adapter_fits(run, config, checkpoint_dir or run.checkpoint_dir)
    out_dir = out_dir or run.out_dir / "peft"
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        fail(f"{str(out_dir)!r} already exists and is not empty: remove it or pass another --out_dir")

    vocab_size = None
    if checkpoint_dir is not None and (checkpoint_dir / "config.json").is_file():
        vocab_size = read_json(checkpoint_dir / "config.json", "fix it, or download it again (scripts/download.py "
                               "--force)").get("vocab_size")
    if base_model_name_or_path is None:
        hf = config.hf_config
        base_model_name_or_path = (f"{hf['org']}/{hf['name']}" if hf.get("org") and hf.get("name")
                                   else str(Path(checkpoint_dir or run.checkpoint_dir).resolve()))

    peft_config, tensors, notes = to_peft(run.adapter, run.lora, config, vocab_size)
    peft_config["base_model_name_or_path"] = base_model_name_or_path
    write_peft_dir(out_dir, peft_config, tensors)
    for note in notes:
        print(f"note: {note}")
    targets = peft_config["target_modules"] + (peft_config["target_parameters"] or [])
    print(f"Wrote {str(out_dir / PEFT_CONFIG)!r} and {PEFT_WEIGHTS} (targets {', '.join(targets)}"
          f", r={peft_config['r']}, lora_alpha={peft_config['lora_alpha']}). Load it with: "
          f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base_model_name_or_path!r}), "
          f"{str(out_dir)!r})")


if __name__ == "__main__":
    cli(main)
