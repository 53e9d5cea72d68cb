"""Merge a LoRA adapter into its base model: `python scripts/merge_lora.py --lora_path out/lora/arithmetic`.

The LoRA settings, the model and the base checkpoint come from the lora_config.json saved with the adapter. The
result is a standalone checkpoint dir (weights, lit_config.json, tokenizer, config.json, generation_config.json,
prompt_style.json) for generate/base.py, the eval script and scripts/convert_lit_checkpoint.py.

Memory: the base checkpoint is memory-mapped and merged one linear layer at a time, in float32, into the output
dtype; the only full-size allocation is the merged weights themselves (unchanged tensors stay mapped from disk).
"""

import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, Literal, Optional

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.convert import TOKENIZER_FILES, hf_config_from_lit  # noqa: E402
from lit_gpt.gguf_export import check_outtype, export_gguf, gguf_architecture, tokenizer_metadata  # noqa: E402
from lit_gpt.load import LoRARun, check_adapter_fits, load_lora_run, pick_prompt_style  # noqa: E402
from lit_gpt.lora import LoRALinear, check_base_state_dict, lora_filter, suffix  # noqa: E402
from lit_gpt.model import GPT  # noqa: E402
from lit_gpt.moe import Experts, expert_delta  # noqa: E402
from lit_gpt.prompts import save_prompt_style  # noqa: E402
from lit_gpt.quantize import precision_dtype  # noqa: E402
from lit_gpt.utils import (  # noqa: E402
    atomic_dir,
    check_valid_checkpoint_dir,
    cli,
    fail,
    lazy_load,
    peak_memory_gb,
    read_json,
)

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def main(
    *,
    lora_path: Path,
    checkpoint_dir: Optional[Path] = None,
    out_dir: Optional[Path] = None,
    precision: Optional[Literal["bf16-true", "16-true", "32-true"]] = None,
    gguf: Optional[Path] = None,
    gguf_outtype: str = "f16",
) -> None:
    """Merges a LoRA adapter into its base weights and writes a complete checkpoint dir.

    Args:
        lora_path: A finetune out dir (with lit_model_lora_finetuned.pth and lora_config.json), the adapter file in
            it, or one of its training checkpoints (checkpoints/step-*.pth).
        checkpoint_dir: The base checkpoint dir. Default: the one recorded in lora_config.json.
        out_dir: The checkpoint dir to create; it must not exist (or be empty). Default: out/merged/<name of the
            finetune out dir>. It appears complete or not at all.
        precision: The dtype of the merged weights. Default: the base checkpoint's.
        gguf: Also write the merged model as this GGUF file, for llama.cpp, Ollama and LM Studio (as
            scripts/export_gguf.py does).
        gguf_outtype: The type of the GGUF's weights: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1.
    """
    start = time.perf_counter()
    run = load_lora_run(lora_path)
    checkpoint_dir = check_valid_checkpoint_dir(checkpoint_dir or run.checkpoint_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path("out/merged") / run_name(run)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        fail(f"{str(out_dir)!r} already exists and is not empty: remove it or pass another --out_dir")
    style = pick_prompt_style(None, run, checkpoint_dir)
    config = Config.from_checkpoint(checkpoint_dir)
    hf_config = None
    if (checkpoint_dir / "config.json").is_file():
        hf_config = read_json(checkpoint_dir / "config.json", "fix it, or delete it (a new one is written then)")
    base = lazy_load(checkpoint_dir / "lit_model.pth")
    base = base.get("model", base)
    model = check_adapter_fits(run, config, checkpoint_dir)  # the LoRA model, on the meta device
    check_base_state_dict(model, base, source=repr(str(checkpoint_dir / "lit_model.pth")))
    if config.to_dict() != run.config.to_dict():
        print(f"note: the adapter was trained on {run.config.name!r} ({str(run.checkpoint_dir)!r}); merging it into "
              f"{config.name!r} ({str(checkpoint_dir)!r}), which has the same shapes")
    if run.run.get("quantize"):
        print(f"note: the adapter was trained on a {run.run['quantize']} quantized base; it is merged into the "
              "unquantized base weights")
    dtype = precision_dtype(precision) if precision else next(t.dtype for t in base.values() if t.is_floating_point())
    if gguf is not None:  # fail before merging
        check_outtype(gguf_outtype)
        gguf_architecture(config, repr(str(checkpoint_dir)))
        tokenizer_metadata(checkpoint_dir, config)

    state_dict, config = merge(model, base, run.adapter, dtype)
    with atomic_dir(out_dir) as tmp:
        torch.save(state_dict, tmp / "lit_model.pth")
        config.save(tmp / "lit_config.json")
        copy_checkpoint_files(checkpoint_dir, tmp, config, dtype, hf_config)
        save_prompt_style(style, tmp)
        merge_info = {"base": str(checkpoint_dir.resolve()), "adapter": str(run.adapter_file.resolve()),
                      "lora": run.lora.to_dict(), "dtype": DTYPE_NAMES[dtype]}
        (tmp / "merge_config.json").write_text(json.dumps(merge_info, indent=2) + "\n", encoding="utf-8")
    if gguf is not None:
        export_gguf(out_dir, gguf, gguf_outtype)
        print(f"Wrote the merged model as {str(gguf)!r} ({gguf_outtype}). Run it: llama-cli -m {gguf}")
    print(f"Merged {str(run.adapter_file)!r} into {str(checkpoint_dir)!r} ({DTYPE_NAMES[dtype]}) -> {str(out_dir)!r} "
          f"in {time.perf_counter() - start:.1f}s, peak memory (RSS) {peak_memory_gb('cpu'):.2f} GB. Next: python "
          f"generate/base.py --checkpoint_dir {out_dir}  or  python scripts/convert_lit_checkpoint.py --checkpoint_dir "
          f"{out_dir} --out_dir <hf dir>")


def run_name(run: LoRARun) -> str:
    """The finetune out dir's name, plus the step for a training checkpoint (out/lora/x/checkpoints/step-*.pth)."""
    if run.adapter_file.parent.name == "checkpoints":
        return f"{run.out_dir.name}-{run.adapter_file.stem}"
    return run.out_dir.name


@torch.no_grad()
def merge(model: GPT, base: Dict[str, torch.Tensor], adapter: Dict[str, torch.Tensor], dtype: torch.dtype
          ) -> tuple:
    """(merged state dict in `dtype`, its config). `model` is the LoRA model on the meta device: it names the layers
    and their LoRA parts. Each layer's base weight is read from the memory-mapped `base`, merged by a `LoRALinear`
    in float32 and cast to `dtype`; other tensors keep their storage (no copy) when already in `dtype`."""
    merged = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, LoRALinear):
            continue
        weight = nn.Parameter(base[f"{name}.weight"].float(), requires_grad=False)
        real = LoRALinear(weight, None, layer.r, layer.alpha, 0.0, layer.parts, layer.adapted)
        for part, (A, B) in real.lora_pairs().items():
            A.copy_(adapter[f"{name}.lora_A{suffix(part)}"])
            B.copy_(adapter[f"{name}.lora_B{suffix(part)}"])
        real.merge()
        merged[f"{name}.weight"] = real.weight.to(dtype)
        del real, weight
    for name, layer in model.named_modules():  # mixture-of-experts layers: their expert tensors' adapters
        if isinstance(layer, Experts) and layer.r:
            for part in ("gate_up", "down"):
                if f"{name}.lora_A_{part}" in adapter:
                    delta = expert_delta(adapter[f"{name}.lora_A_{part}"], adapter[f"{name}.lora_B_{part}"],
                                         layer.gate_up_proj.size(0), layer.scaling, layer.transposed)
                    merged[f"{name}.{part}_proj"] = (base[f"{name}.{part}_proj"].float() + delta).to(dtype)
    config = model.config
    if config.tie_embeddings and "lm_head.weight" in merged:  # the merged head is no longer the embedding
        config = replace(config, tie_embeddings=False)

    cast: Dict[tuple, torch.Tensor] = {}  # one output tensor per input storage: tied weights stay shared

    def converted(t: torch.Tensor) -> torch.Tensor:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key not in cast:
            cast[key] = t.to(dtype)
        return cast[key]

    state_dict = {}
    for name in model.state_dict():
        if lora_filter(name):
            continue
        if name in merged:
            state_dict[name] = merged[name]
        elif name in base:
            state_dict[name] = converted(base[name])
        else:  # lm_head.weight of a tied model saved without it
            state_dict[name] = converted(base["transformer.wte.weight"])
    return state_dict, config


def copy_checkpoint_files(checkpoint_dir: Path, out_dir: Path, config: Config, dtype: torch.dtype,
                          hf_config: Optional[dict]) -> None:
    """Tokenizer files and generation_config.json as they are; `hf_config` (the base's config.json) updated for the
    merged weights, or made from `config`."""
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (checkpoint_dir / name).is_file():
            shutil.copyfile(checkpoint_dir / name, out_dir / name)
    if hf_config is not None:
        hf_config["tie_word_embeddings"] = config.tie_embeddings
        for key in ("torch_dtype", "dtype"):
            if key in hf_config:
                hf_config[key] = DTYPE_NAMES[dtype]
    else:
        try:
            hf_config = hf_config_from_lit(config, dtype)
        except ValueError:
            return  # no transformers counterpart: nothing to describe
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    cli(main)
