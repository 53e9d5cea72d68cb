"""Evaluates a checkpoint (optionally with a LoRA adapter) on lm-evaluation-harness 0.4 tasks, offline.

python eval/lm_eval_harness.py --checkpoint_dir checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct \
    --precision bf16-true --tasks lit_arithmetic --save_filepath results.json
python eval/lm_eval_harness.py --lora_path out/lora/arithmetic --tasks lit_arithmetic   # base from lora_config.json

The tasks in eval/tasks/ (always available) read local files; `--include_path` adds a folder of task YAMLs.
A task with `metadata: {apply_prompt_style: true}` (lit_arithmetic) is asked in the prompt style the model or adapter
was finetuned with; the others get lm-eval's plain prompts. Nothing is downloaded: a task whose data is not local
fails with a message.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal, Optional

# before lm_eval/datasets are imported: they read these once
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.load import check_adapter_fits, load_lora_run, load_model, pick_prompt_style  # noqa: E402
from lit_gpt.prompts import PromptStyleName  # noqa: E402
from lit_gpt.quantize import check_quantize  # noqa: E402
from lit_gpt.utils import (  # noqa: E402
    atomic_write_text,
    check_valid_checkpoint_dir,
    cli,
    fail,
    inference_precision,
    peak_memory_gb,
    pick_device,
)

REPO = Path(__file__).resolve().parent.parent
TASKS_DIR = REPO / "eval" / "tasks"
DEFAULT_CHECKPOINT = Path("checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct")


def setup(
    checkpoint_dir: Optional[Path] = None,
    lora_path: Optional[Path] = None,
    tasks: str = "lit_commonsense,lit_cloze,lit_arithmetic",
    num_fewshot: Optional[int] = None,
    limit: Optional[float] = None,
    batch_size: int = 8,
    bootstrap_iters: int = 100000,
    seed: int = 1234,
    include_path: Optional[Path] = None,
    save_filepath: Optional[Path] = None,
    precision: Optional[Literal["bf16-true", "bf16-mixed", "16-true", "16-mixed", "32-true"]] = None,
    quantize: Optional[Literal["bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8"]] = None,
    device: str = "auto",
    max_seq_length: Optional[int] = None,
    prompt_style: Optional[PromptStyleName] = None,
    apply_prompt_style: Optional[bool] = None,
    log_samples: bool = False,
) -> None:
    """Runs lm-eval tasks on a lit_gpt model and prints lm-eval's results table.

    Args:
        checkpoint_dir: The base model (lit_model.pth, lit_config.json, tokenizer). Default: the base named in the
            adapter's lora_config.json, else checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct.
        lora_path: A LoRA adapter to evaluate (not merged): a finetune out dir or an adapter .pth, with
            lora_config.json next to it.
        tasks: Comma-separated lm-eval task, group or tag names (globs allowed), e.g. "lit_arithmetic,lit_cloze".
        num_fewshot: Few-shot examples per prompt (default: each task's own).
        limit: Evaluate only this many documents per task (a fraction if below 1). For quick checks only.
        batch_size: Sequences per forward pass.
        bootstrap_iters: Bootstrap iterations for the standard errors of non-mean metrics (0: none).
        seed: Seed of Python, NumPy and torch (sampling) and of the few-shot example choice.
        include_path: A folder of extra task YAMLs (eval/tasks is always included).
        save_filepath: Write the results, the configuration and the versions to this JSON file (atomically).
        precision: Weights/compute precision; default: the fastest on the device (bf16-true on GPUs with
            bfloat16 and on CPUs whose bf16 matmuls are faster, 32-true on other CPUs, 16-true on older GPUs).
        quantize: Quantize the linear weights with bitsandbytes, like at finetuning (QLoRA).
        device: Where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N.
        max_seq_length: Longest input in tokens (default: the model's block_size); longer contexts are cut from the
            left.
        prompt_style: Prompt style for tasks that apply one (default: the adapter's: its run record, else its
            prompt_style.json; else the checkpoint's prompt_style.json, else the model's default).
        apply_prompt_style: Prompt every task in the prompt style (true) or none (false); default: the tasks whose
            YAML asks for it.
        log_samples: Also save every document's prompt and model output in the JSON file.
    """
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    # every check that can fail happens before the model is loaded
    if not names:
        fail("--tasks is empty: pass task names, e.g. --tasks lit_arithmetic")
    run = load_lora_run(lora_path) if lora_path is not None else None  # the adapter and its lora_config.json
    checkpoint_dir = check_valid_checkpoint_dir(checkpoint_dir or (run.checkpoint_dir if run else DEFAULT_CHECKPOINT))
    if run is not None:
        check_adapter_fits(run, Config.from_checkpoint(checkpoint_dir), checkpoint_dir)
    device = pick_device(device)
    precision = precision or inference_precision(device)
    check_quantize(quantize, precision, device)
    if batch_size < 1:
        fail(f"--batch_size must be at least 1, got {batch_size}")
    if limit is not None and limit <= 0:
        fail(f"--limit must be positive, got {limit}")
    block_size = Config.from_checkpoint(checkpoint_dir).block_size
    if max_seq_length is not None and not 0 < max_seq_length <= block_size:
        fail(f"--max_seq_length must be between 1 and the model's block_size {block_size}, got {max_seq_length}")
    style = pick_prompt_style(prompt_style, run, checkpoint_dir)
    if save_filepath is not None:
        check_writable(save_filepath)
    if include_path is not None and not include_path.is_dir():
        fail(f"--include_path {str(include_path)!r} is not a folder of task YAMLs")

    import datasets
    from lm_eval.utils import handle_non_serializable, make_table

    from lit_gpt.lm_eval import LitLM, evaluate, load_tasks, task_manager
    from lit_gpt.tokenizer import Tokenizer

    datasets.disable_progress_bars()
    manager = task_manager(names, [TASKS_DIR] + ([include_path] if include_path else []))
    task_objects = load_tasks(manager, names)
    tokenizer = Tokenizer(checkpoint_dir)

    t0 = time.perf_counter()
    model = load_model(checkpoint_dir, precision=precision, quantize=quantize, device=device, lora_path=run,
                       max_seq_length=max_seq_length)
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    lm = LitLM(model, tokenizer, prompt_style=style, batch_size=batch_size,
               autocast_dtype=autocast_dtype, name=checkpoint_dir.name)
    print(f"Loaded {checkpoint_dir}{f' + adapter {lora_path}' if lora_path else ''} ({precision}"
          f"{f', {quantize}' if quantize else ''}) in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    t0 = time.perf_counter()
    results = evaluate(lm, task_objects, apply_prompt_style=apply_prompt_style, num_fewshot=num_fewshot,
                       limit=limit, bootstrap_iters=bootstrap_iters, seed=seed, log_samples=log_samples,
                       manager=manager)
    seconds = time.perf_counter() - t0
    print(f"Evaluated in {seconds:.1f}s, peak memory {peak_memory_gb(device):.2f} GB", file=sys.stderr)
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))

    if save_filepath is not None:
        results["config"] = {
            **results.get("config", {}), "model": "lit_gpt", "checkpoint_dir": str(checkpoint_dir.resolve()),
            "lora_path": str(Path(lora_path).resolve()) if lora_path else None,
            "lora": run.lora.to_dict() if run else None, "precision": precision, "quantize": quantize,
            "device": str(device), "tasks": names, "num_fewshot": num_fewshot, "limit": limit, "batch_size": batch_size,
            "bootstrap_iters": bootstrap_iters, "seed": seed, "max_seq_length": lm.max_length,
            "include_path": str(include_path) if include_path else None, "prompt_style": style.name,
            "prompt_style_applied": results.pop("prompt_style_applied"), "evaluation_seconds": round(seconds, 2)}
        results["package_versions"] = package_versions()
        text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
        atomic_write_text(save_filepath, text + "\n")
        print(f"Saved the results to {str(save_filepath)!r}", file=sys.stderr)


def check_writable(path: Path) -> None:
    """Fails unless a file can be created at `path` (its folder may still have to be made)."""
    path = Path(path)
    if path.is_dir():
        fail(f"--save_filepath {str(path)!r} is a folder: pass a file name, e.g. {str(path / 'results.json')!r}")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        fail(f"Cannot write --save_filepath {str(path)!r}: {str(folder)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        fail(f"Cannot write --save_filepath {str(path)!r}: {str(folder)!r} is not writable ({e.strerror})")


def package_versions() -> dict:
    from importlib.metadata import version

    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    versions = {"lit_gpt_commit": commit, "python": platform.python_version()}
    for package in ("torch", "lm_eval", "datasets", "tokenizers", "bitsandbytes"):
        try:
            versions[package] = version(package)
        except Exception:
            versions[package] = None
    return versions


if __name__ == "__main__":
    cli(setup, as_positional=False)
