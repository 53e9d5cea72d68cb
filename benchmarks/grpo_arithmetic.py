"""GRPO on the shipped arithmetic data with SmolLM2-135M-Instruct: from the quickstart-like SFT adapter, and from
the base model; exact match on the 100 held-out problems before and after, with the time each run took.

    python benchmarks/grpo_arithmetic.py                        # SFT (if not there) + both GRPO runs + scores
    python benchmarks/grpo_arithmetic.py --sft_dir out/dpo-arithmetic/sft --parts sft   # reuse an SFT adapter

1. SFT: finetune/lora.py --quantize bnb.nf4 on data/arithmetic/train.jsonl, 60 steps of 8 (as scripts/quickstart.py
   and benchmarks/dpo_arithmetic.py run it; an adapter already in --sft_dir is reused).
2. "sft": finetune/grpo.py --lora_path <the SFT adapter> --reward exact_match on the same 600 problems (GSM8K rows:
   the reward checks the number after ####).
3. "base": finetune/grpo.py from the base model (a new adapter) with --reward exact_match,format --reward_weights
   1,0.2, the prompts carrying a system message that asks for the format (the base model never writes "####"
   unprompted: 0 of 48 samples did, with the system message 2 of 48). Not --mask_truncated_completions: the base
   model's answers run past 64 tokens, all of them at first, which would leave nothing to learn from.
4. Scores, greedy, on data/arithmetic/test.jsonl rendered as each run was trained (the engine, lit_gpt.rewards):
   exact match and the fraction in the "#### N" format; for the SFT line also eval/lm_eval_harness.py's
   lit_arithmetic (the number the quickstart reports).
"""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal, Optional

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lit_gpt.data import load_prompt_rows, prepare_prompts  # noqa: E402
from lit_gpt.generate import Engine, Request  # noqa: E402
from lit_gpt.load import load_model  # noqa: E402
from lit_gpt.prompts import PromptStyle  # noqa: E402
from lit_gpt.rewards import exact_match_reward, format_reward  # noqa: E402
from lit_gpt.tokenizer import Tokenizer  # noqa: E402
from lit_gpt.utils import cli  # noqa: E402

CHECKPOINT = Path("checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct")
SYSTEM = "Solve the problem: one equation per line, then the final answer alone on the last line as #### <number>."


def main(
    out_dir: Path = Path("out/grpo-arithmetic"),
    sft_dir: Optional[Path] = None,
    parts: str = "sft,base",
    grpo_iters: int = 40,
    learning_rate: float = 3e-4,
    base_learning_rate: float = 5e-4,
    batch_size: int = 4,
    num_generations: int = 8,
    max_new_tokens: int = 64,
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo",
) -> None:
    """Runs the parts and prints the scores.

    Args:
        out_dir: Where the adapters and prompt files go.
        sft_dir: The SFT adapter to start the "sft" part from (default: out_dir/sft, trained if missing).
        parts: sft (GRPO from the SFT adapter), base (GRPO from the base model), comma-separated.
        grpo_iters: GRPO steps of each part.
        learning_rate: finetune/grpo.py --learning_rate from the SFT adapter.
        base_learning_rate: --learning_rate from the base model (a new adapter).
        batch_size: Prompts per step.
        num_generations: Completions per prompt.
        max_new_tokens: The most tokens of a completion.
        loss_type: finetune/grpo.py --loss_type.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    sft_dir = sft_dir or out_dir / "sft"
    rows, timings = [], {}
    if not (REPO / CHECKPOINT / "lit_model.pth").is_file():
        run("scripts/download.py", "--repo_id", "HuggingFaceTB/SmolLM2-135M-Instruct")
    common = ["--checkpoint_dir", CHECKPOINT, "--max_iters", grpo_iters, "--batch_size", batch_size,
              "--num_generations", num_generations, "--max_new_tokens", max_new_tokens, "--loss_type", loss_type,
              "--eval_interval", max(1, grpo_iters // 4), "--save_interval", grpo_iters, "--eval_iters", 20,
              "--precision", "32-true", "--overwrite", "true"]
    if "sft" in parts.split(","):
        if not (sft_dir / "lit_model_lora_finetuned.pth").is_file():
            prepared = out_dir / "prepared"
            run("scripts/prepare_gsm8k.py", "--checkpoint_dir", CHECKPOINT, "--data_file",
                "data/arithmetic/train.jsonl", "--destination_path", prepared, "--max_seq_length", 256)
            t = time.perf_counter()
            run("finetune/lora.py", "--checkpoint_dir", CHECKPOINT, "--data_dir", prepared, "--out_dir", sft_dir,
                "--max_iters", 60, "--batch_size", 8, "--micro_batch_size", 8, "--quantize", "bnb.nf4",
                "--eval_interval", 60, "--save_interval", 60, "--log_interval", 10, "--overwrite", "true")
            timings["SFT"] = time.perf_counter() - t
        grpo_dir = out_dir / f"grpo-from-sft-{loss_type}-lr{learning_rate:g}-{grpo_iters}"
        t = time.perf_counter()
        run("finetune/grpo.py", *common, "--data_file", "data/arithmetic/train.jsonl", "--val_file",
            "data/arithmetic/test.jsonl", "--out_dir", grpo_dir, "--lora_path", sft_dir, "--reward", "exact_match",
            "--learning_rate", learning_rate)
        timings["GRPO from SFT"] = time.perf_counter() - t
        for name, lora_path in (("base", None), ("SFT", sft_dir), (f"SFT + GRPO ({grpo_iters} steps)", grpo_dir)):
            rows.append((name, "question only", *scores(lora_path, "data/arithmetic/test.jsonl"),
                         lm_eval(lora_path, out_dir / f"eval-{'base' if lora_path is None else lora_path.name}.json")))
            print(rows[-1], flush=True)
    if "base" in parts.split(","):
        prompts = {}
        for split in ("train", "test"):
            prompts[split] = out_dir / f"{split}-with-format.jsonl"
            with open(prompts[split], "w") as f:
                for row in map(json.loads, open(REPO / f"data/arithmetic/{split}.jsonl")):
                    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["question"]}]
                    f.write(json.dumps({"prompt": messages, "answer": row["answer"].split("####")[-1].strip()}) + "\n")
        grpo_dir = out_dir / f"grpo-from-base-{loss_type}-lr{base_learning_rate:g}-{grpo_iters}"
        t = time.perf_counter()
        run("finetune/grpo.py", *common, "--data_file", prompts["train"], "--val_file", prompts["test"], "--out_dir",
            grpo_dir, "--reward", "exact_match,format", "--reward_weights", "1,0.2", "--learning_rate",
            base_learning_rate)
        timings["GRPO from base"] = time.perf_counter() - t
        for name, lora_path in (("base", None), (f"base + GRPO ({grpo_iters} steps)", grpo_dir)):
            rows.append((name, "system message asking for ####", *scores(lora_path, prompts["test"]), None))
            print(rows[-1], flush=True)

    print("\n| model | prompt | exact match (100 held-out, greedy) | in the #### format | lm-eval lit_arithmetic |\n"
          "|---|---|---|---|---|")
    for name, prompt, exact, formatted, harness in rows:
        print(f"| {name} | {prompt} | {exact:.0%} | {formatted:.0%} | "
              f"{'' if harness is None else f'{harness:.0%}'} |")
    print("\n" + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in timings.items()))


@torch.no_grad()
def scores(lora_path: Optional[Path], prompts_file) -> tuple:
    """(exact match, fraction in the format) of greedy answers to the prompts, rendered as finetune/grpo.py does."""
    model = load_model(REPO / CHECKPOINT, precision="32-true", lora_path=lora_path)
    tokenizer, style = Tokenizer(REPO / CHECKPOINT), PromptStyle.from_name("chatml")
    samples, _ = prepare_prompts(load_prompt_rows(REPO / prompts_file), tokenizer, style, 1024)
    requests = [Request(s["prompt_ids"].tolist(), 128, stop_tokens=style.stop_tokens(tokenizer)) for s in samples]
    texts = [tokenizer.decode(r[0].tokens) for r in Engine(model, rows=50).generate(requests)]
    answers = [s["answer"] for s in samples]
    return (sum(exact_match_reward(None, texts, answers)) / len(texts),
            sum(format_reward(None, texts, answers)) / len(texts))


def lm_eval(lora_path: Optional[Path], results: Path) -> float:
    args = ["--checkpoint_dir", CHECKPOINT, "--tasks", "lit_arithmetic", "--batch_size", 16, "--save_filepath",
            results] + (["--lora_path", lora_path] if lora_path else [])
    run("eval/lm_eval_harness.py", *args)
    return json.loads(results.read_text())["results"]["lit_arithmetic"]["exact_match,strict-match"]


def run(script: str, *args) -> None:
    command = [sys.executable, str(REPO / script), *map(str, args)]
    print("$ python " + " ".join([script, *map(str, args)]), flush=True)
    if subprocess.run(command, cwd=REPO).returncode != 0:
        sys.exit(f"{script} failed")


if __name__ == "__main__":
    cli(main)
