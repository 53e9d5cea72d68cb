"""Loading what the scripts write: `load_model` builds a `GPT` from a checkpoint dir (quantized, with LoRA),
`load_lora_run` reads a finetune out dir, and `pick_prompt_style` is the one rule for an adapter's prompt style.

A finetune out dir (finetune/lora.py, scripts/import_peft.py) holds:

- `lit_model_lora_finetuned.pth`: the LoRA parameters by name;
- `prompt_style.json`: the prompt style of the training data;
- `lora_config.json`, the run record: "lora" (the `LoRAConfig`), "model" (the `Config`), "checkpoint_dir" (the
  base), "prompt_style" and the run's other settings; optionally "adapter_sha256", the sha256 of the bytes of the
  adapter file next to it. The trainer writes the adapter first and lora_config.json last (each atomically), so an
  adapter that does not match the recorded sha256 is one whose save was interrupted;
- `checkpoints/step-NNNNNN.pth`: resumable training checkpoints, {"adapter": ..., "optimizer": ..., "run": the run
  record}; checkpoints without "run" (older runs) take the lora_config.json one dir up.
"""

from collections import defaultdict
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Union

import torch
import torch.nn as nn

from lit_gpt.config import Config
from lit_gpt.lora import (
    LoRAConfig,
    LoRALinear,
    add_lora,
    check_base_state_dict,
    check_lora_state_dict,
    load_lora_state_dict,
    lora_filter,
)
from lit_gpt.model import GPT
from lit_gpt.moe import Experts
from lit_gpt.prompts import PromptStyle, has_prompt_style, load_prompt_style, resolve_prompt_style
from lit_gpt.quantize import (
    check_quantize,
    precision_dtype,
    quantizable_weights,
    quantize_experts,
    quantize_weight,
    replace_parameters,
)
from lit_gpt.utils import (
    UserError,
    check_valid_checkpoint_dir,
    dataclass_from_json,
    fail,
    file_sha256,
    lazy_load,
    read_json,
)

ADAPTER_FILE = "lit_model_lora_finetuned.pth"
RUN_FILE = "lora_config.json"


class LoRARun(NamedTuple):
    adapter_file: Path
    adapter: Dict[str, torch.Tensor]  # memory-mapped
    lora: LoRAConfig
    config: Config  # the model the adapter was trained on
    checkpoint_dir: Path  # its base checkpoint, as recorded (it may have moved since)
    prompt_style: Optional[str]  # as recorded (None: not recorded)
    run: dict  # the whole run record
    run_file: Path  # where the run record was read: a lora_config.json, or the training checkpoint holding it
    out_dir: Path  # the finetune out dir (its prompt_style.json; where exports of the adapter go by default)


def load_lora_run(lora_path: Union[str, Path]) -> LoRARun:
    """Reads an adapter (a finetune out dir, its adapter file or one of its training checkpoints) and its run record
    (the checkpoint's own, else lora_config.json next to the file or one dir up), checked."""
    lora_path = Path(lora_path)
    adapter_file = lora_path / ADAPTER_FILE if lora_path.is_dir() else lora_path
    if not adapter_file.is_file():
        fail(f"No adapter at {str(adapter_file)!r}: pass the out dir of finetune/lora.py or a .pth file it wrote")
    run_file = next((d / RUN_FILE for d in (adapter_file.parent, adapter_file.parent.parent)
                     if (d / RUN_FILE).is_file()), None)
    fix = "fix it, or finetune again (finetune/lora.py writes it)"
    if run_file is not None and run_file.parent == adapter_file.parent and adapter_file.name == ADAPTER_FILE:
        run = read_json(run_file, fix)  # the run's final adapter: it must be the one its record was written for
        expected = run.get("adapter_sha256")
        if expected is not None and file_sha256(adapter_file) != expected:
            fail(f"{str(adapter_file)!r} does not match {str(run_file)!r} (the run stopped while saving them?): "
                 f"finish the run with finetune/lora.py ... --out_dir {run_file.parent} --resume auto")
        stored = lazy_load(adapter_file)
    else:
        stored = lazy_load(adapter_file)
        if isinstance(stored, dict) and isinstance(stored.get("run"), dict):  # a checkpoint with its own record
            run, run_file = stored["run"], adapter_file
            fix = "pass another checkpoint, or the run's out dir"
        elif run_file is None:
            fail(f"No lora_config.json next to {str(adapter_file)!r} (nor one dir up): the LoRA and model settings "
                 "are read from it. finetune/lora.py and scripts/import_peft.py write it next to the adapter")
        else:
            run = read_json(run_file, fix)
    embedded = run_file == adapter_file
    what, prefix = (f"the 'run' of {str(run_file)!r}", "run.") if embedded else (repr(str(run_file)), "")
    missing = [key for key in ("lora", "model", "checkpoint_dir") if key not in run]
    if missing or not isinstance(run["model"], dict) or not isinstance(run["checkpoint_dir"], str):
        fail(f"{what} is not a {'run record' if embedded else 'lora_config.json'} of finetune/lora.py (missing or "
             f"malformed: {', '.join(missing) or 'model, checkpoint_dir'}); {fix}")
    lora = dataclass_from_json(LoRAConfig, run["lora"], run_file, fix, key=prefix + "lora")
    model = {k: v for k, v in run["model"].items() if k != "rope_n_elem"}
    config = dataclass_from_json(Config, model, run_file, fix, key=prefix + "model")
    prompt_style = run.get("prompt_style")
    if prompt_style is not None and not isinstance(prompt_style, str):
        fail(f"{what}: prompt_style={prompt_style!r} is not a prompt style name; {fix}")
    adapter = stored["adapter"] if isinstance(stored, dict) and isinstance(stored.get("adapter"), dict) else stored
    names = list(adapter) if isinstance(adapter, dict) else []
    if not names or not all(isinstance(k, str) and lora_filter(k) and isinstance(v, torch.Tensor)
                            for k, v in adapter.items()):
        other = [k for k in names if not (isinstance(k, str) and lora_filter(k))][:3]
        hint = " (it looks like a base lit_model.pth)" if "transformer.wte.weight" in names else ""
        fail(f"{str(adapter_file)!r} is not a LoRA adapter{hint}: expected only lora_A*/lora_B* tensors"
             f"{', found ' + ', '.join(map(str, other)) if other else ''}. Pass the out dir of finetune/lora.py")
    if not embedded:
        out_dir = run_file.parent
    else:  # out_dir/checkpoints/step-*.pth
        out_dir = adapter_file.parent.parent if adapter_file.parent.name == "checkpoints" else adapter_file.parent
    return LoRARun(adapter_file, adapter, lora, config, Path(run["checkpoint_dir"]), prompt_style, run, run_file,
                   out_dir)


def pick_prompt_style(name: Optional[str], run: Optional[LoRARun], checkpoint_dir: Union[str, Path]) -> PromptStyle:
    """The prompt style to use: `name` (a --prompt_style flag); else the adapter's run record's; else the
    prompt_style.json of the adapter's out dir; else the checkpoint dir's (its prompt_style.json, else the model's
    default)."""
    if name is None and run is not None:
        if run.prompt_style is not None:
            return PromptStyle.from_name(run.prompt_style)
        if has_prompt_style(run.out_dir):
            return load_prompt_style(run.out_dir)
    return resolve_prompt_style(name, checkpoint_dir)


def check_adapter_fits(run: LoRARun, config: Config, base: Union[str, Path]) -> GPT:
    """The LoRA model of `config` on the meta device, after checking that the adapter's tensors fit it; else fails
    with both shapes and both models (`base`: where `config` comes from)."""
    with torch.device("meta"):
        model = add_lora(GPT(config), run.lora)
    try:
        check_lora_state_dict(model, run.adapter, source=repr(str(run.adapter_file)))
    except UserError as e:
        fail(f"{e}. The base is {str(base)!r} ({config.name}); the adapter was trained on "
             f"{str(run.checkpoint_dir)!r} ({run.config.name})")
    return model


def load_model(checkpoint_dir: Union[str, Path], *, precision: str = "bf16-true", quantize: Optional[str] = None,
               device: Union[str, torch.device] = "cpu", lora_config: Optional[LoRAConfig] = None,
               lora_path: Optional[Union[str, Path, LoRARun]] = None, max_seq_length: Optional[int] = None) -> GPT:
    """Builds the `GPT` of a checkpoint dir on `device`, in eval mode, optionally quantized and with LoRA.

    The model is created on the meta device; then `lit_model.pth` is memory-mapped and each tensor is moved to
    `device`, cast to the precision's dtype and, for linear weights and expert tensors (expert by expert), quantized
    before the next one is read, so peak memory stays near the final model's size. New LoRA parameters are
    initialized (A random, B zero) in the same dtype; `lora_path` (what `load_lora_run` reads, or the `LoRARun` it
    returned) then fills them, with the LoRA settings of its run record unless `lora_config` is given. The RoPE cache
    is float32 on `device`. Parameters keep `requires_grad=True` (quantized weights: False); call
    `mark_only_lora_as_trainable`.

    With Fabric: `fabric = L.Fabric(precision=precision)`, then `load_model(..., precision=precision,
    device=fabric.device)` and `fabric.setup_module(model)`: a "-true" precision finds the weights already in its
    dtype (it casts the RoPE cache to it, which is what Hugging Face models do before applying it) and a "-mixed" one
    autocasts the forward (quantized matmuls included). Without Fabric, call the model inside
    `torch.autocast(device_type, dtype)` for "-mixed" precisions.
    """
    check_quantize(quantize, precision, device)
    checkpoint_dir = check_valid_checkpoint_dir(checkpoint_dir)
    device, dtype = torch.device(device), precision_dtype(precision)
    config = Config.from_checkpoint(checkpoint_dir)
    if max_seq_length is not None and not 0 < max_seq_length <= config.block_size:
        fail(f"max_seq_length={max_seq_length} must be between 1 and the model's block_size={config.block_size}")
    run = None
    if lora_path is not None:
        run = lora_path if isinstance(lora_path, LoRARun) else load_lora_run(lora_path)
        lora_config = lora_config or run.lora

    with torch.device("meta"):
        model = GPT(config)
        if lora_config is not None:
            add_lora(model, lora_config)
    to_quantize = quantizable_weights(model) if quantize else {}
    experts = {id(p): m.transposed for m in model.modules() if isinstance(m, Experts) and quantize
               for p in (m.gate_up_proj, m.down_proj)}  # quantized expert by expert; id -> transposed
    state_dict = lazy_load(checkpoint_dir / "lit_model.pth")
    check_base_state_dict(model, state_dict, source=repr(str(checkpoint_dir / "lit_model.pth")))
    if run is not None:
        check_lora_state_dict(model, run.adapter, source=repr(str(run.adapter_file)))

    slots = defaultdict(list)  # id(parameter) -> its names (several when tied)
    for name, param in model.named_parameters(remove_duplicate=False):
        slots[id(param)].append((name, param))
    new = {}
    with torch.no_grad():
        for key, names in slots.items():
            param = names[0][1]
            stored = next((state_dict[name] for name, _ in names if name in state_dict), None)
            if stored is None:  # a LoRA parameter, initialized below
                new[key] = nn.Parameter(torch.empty(param.shape, device=device, dtype=dtype))
            elif key in to_quantize:
                new[key] = quantize_weight(stored, quantize, device=device, dtype=dtype)
            elif key in experts:
                new[key] = quantize_experts(stored, quantize, experts[key], device=device, dtype=dtype)
            else:
                new[key] = nn.Parameter(stored.to(device=device, dtype=dtype, copy=True),
                                        requires_grad=param.requires_grad)
        replace_parameters(model, new)
    del new, slots, state_dict
    for module in model.modules():
        if isinstance(module, (LoRALinear, Experts)):
            module.reset_lora_parameters()
    if run is not None:
        load_lora_state_dict(model, run.adapter, source=repr(str(run.adapter_file)))
    model.max_seq_length = max_seq_length or config.block_size  # rebuilds the RoPE cache on `device`
    return model.eval()
