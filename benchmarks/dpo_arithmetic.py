"""SFT -> DPO -> merge -> generate on the shipped arithmetic data, with SmolLM2-135M-Instruct, and what each stage
scores: held-out preference accuracy and exact match.

    python benchmarks/dpo_arithmetic.py                 # ~30 min on 2 CPU cores (SFT 5, DPO 18, scores 7)
    python benchmarks/dpo_arithmetic.py --beta 0.5 --sft_weight 1 --dpo_iters 40   # reuses the SFT adapter

1. SFT: finetune/lora.py --quantize bnb.nf4 on data/arithmetic/train.jsonl (its defaults; `--sft_iters` steps of 8),
   as scripts/quickstart.py runs it (an adapter already in `--out_dir`/sft is reused).
2. DPO: finetune/dpo.py --lora_path <the SFT adapter> --quantize bnb.nf4 on data/arithmetic/preferences.jsonl (600
   pairs, a correct answer against one with a wrong step, made by data/arithmetic/make_preferences.py), prepared by
   scripts/prepare_preferences.py; 30 pairs held out.
3. Scores of the base, the SFT adapter and the DPO adapter:
   - preference accuracy: the fraction of the 30 held-out pairs whose chosen answer the model finds more likely than
     the rejected one (summed log-probs, log p(chosen) > log p(rejected)), and the mean margin between them;
   - exact match after #### on the 100 held-out problems of data/arithmetic/test.jsonl (eval/lm_eval_harness.py,
     task lit_arithmetic, greedy).
4. scripts/merge_lora.py of the DPO adapter, then generate/base.py on the merged model for one held-out problem.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lit_gpt.data import load_prepared  # noqa: E402
from lit_gpt.load import load_model  # noqa: E402
from lit_gpt.utils import cli  # noqa: E402


def main(
    out_dir: Path = Path("out/dpo-arithmetic"),
    sft_iters: int = 60,
    dpo_iters: int = 60,
    loss_type: Literal["sigmoid", "robust", "hinge", "ipo", "simpo", "orpo"] = "sigmoid",
    beta: float = 0.1,
    learning_rate: float = 5e-4,
    sft_weight: float = 0.0,
    limit: int = 100,
) -> None:
    """Runs the pipeline and prints the scores.

    Args:
        out_dir: Where the SFT and DPO adapters, the merged model and the evaluation results go.
        sft_iters: SFT steps (8 examples each).
        dpo_iters: DPO steps (16 pairs each).
        loss_type: finetune/dpo.py --loss_type.
        beta: finetune/dpo.py --beta.
        learning_rate: finetune/dpo.py --learning_rate.
        sft_weight: finetune/dpo.py --sft_weight (DPO + NLL of the chosen answers).
        limit: Held-out problems for exact match (at most 100).
    """
    checkpoint_dir = Path("checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct")
    sft_data, pairs = Path("data/prepared/arithmetic"), Path("data/prepared/arithmetic-preferences")
    sft_dir = out_dir / "sft"
    dpo_dir = out_dir / f"dpo-{loss_type}-beta{beta:g}-lr{learning_rate:g}-sft{sft_weight:g}-{dpo_iters}"
    t0, timings = time.perf_counter(), {}
    run("scripts/download.py", "--repo_id", "HuggingFaceTB/SmolLM2-135M-Instruct")
    if not (sft_data / "prepare_config.json").is_file():
        run("scripts/prepare_gsm8k.py", "--checkpoint_dir", checkpoint_dir, "--data_file",
            "data/arithmetic/train.jsonl", "--destination_path", sft_data, "--max_seq_length", 256)
    if not (sft_dir / "lit_model_lora_finetuned.pth").is_file():
        t = time.perf_counter()
        run("finetune/lora.py", "--checkpoint_dir", checkpoint_dir, "--data_dir", sft_data, "--out_dir", sft_dir,
            "--max_iters", sft_iters, "--batch_size", 8, "--micro_batch_size", 8, "--quantize", "bnb.nf4",
            "--eval_interval", sft_iters, "--save_interval", sft_iters, "--log_interval", 10, "--overwrite", "true")
        timings["sft"] = time.perf_counter() - t
    run("scripts/prepare_preferences.py", "--checkpoint_dir", checkpoint_dir, "--data_file",
        "data/arithmetic/preferences.jsonl", "--destination_path", pairs)
    t = time.perf_counter()
    run("finetune/dpo.py", "--checkpoint_dir", checkpoint_dir, "--data_dir", pairs, "--out_dir", dpo_dir,
        "--lora_path", sft_dir, "--quantize", "bnb.nf4", "--loss_type", loss_type, "--beta", beta,
        "--learning_rate", learning_rate, "--sft_weight", sft_weight, "--max_iters", dpo_iters,
        "--eval_interval", max(1, dpo_iters // 3),
        "--save_interval", dpo_iters, "--log_interval", 10, "--overwrite", "true")
    timings["dpo"] = time.perf_counter() - t

    _, val, _ = load_prepared(pairs)
    scores = {}
    dpo_name = (f"SFT + DPO ({loss_type}, beta {beta:g}, lr {learning_rate:g}, sft_weight {sft_weight:g}, "
                f"{dpo_iters} steps)")
    for name, lora_path in (("base", None), ("SFT", sft_dir), (dpo_name, dpo_dir)):
        accuracy, margin = preference_accuracy(checkpoint_dir, lora_path, val)
        scores[name] = {"preference accuracy": accuracy, "margin": margin,
                        "exact match": exact_match(checkpoint_dir, lora_path, out_dir, name, limit)}
        print(f"{name}: {scores[name]}", flush=True)

    merged = out_dir / "merged"
    shutil.rmtree(merged, ignore_errors=True)
    run("scripts/merge_lora.py", "--lora_path", dpo_dir, "--out_dir", merged)
    question = json.loads((REPO / "data/arithmetic/test.jsonl").read_text().splitlines()[0])
    answer = run("generate/base.py", "--checkpoint_dir", merged, "--prompt", question["question"], "--temperature",
                 0, "--max_new_tokens", 80, "--stream", "false", capture=True)
    print(f"\nmerged DPO model, held-out problem: {question['question']!r}\n-> {answer.strip()!r} (expected "
          f"{question['answer'].splitlines()[-1]!r})")
    print(f"\n| model | held-out preference accuracy ({len(val)} pairs) | mean log p(chosen) - log p(rejected) | "
          f"exact match ({limit} problems) |\n|---|---|---|---|")
    for name, s in scores.items():
        print(f"| {name} | {s['preference accuracy']:.1%} | {s['margin']:+.2f} | {s['exact match']:.1%} |")
    print(f"\nSFT {timings.get('sft', 0):.0f} s (0: reused), DPO {timings['dpo']:.0f} s ({dpo_iters} steps of 16 "
          f"pairs), total {time.perf_counter() - t0:.0f} s")


@torch.no_grad()
def preference_accuracy(checkpoint_dir: Path, lora_path, pairs: list) -> tuple:
    """(fraction of pairs with log p(chosen) > log p(rejected), their mean difference), in float32."""
    spec = importlib.util.spec_from_file_location("dpo", REPO / "finetune/dpo.py")
    dpo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dpo)
    model = load_model(checkpoint_dir, precision="32-true", lora_path=lora_path)
    wins, margins = 0, []
    for i in range(0, len(pairs), 8):
        logps = dpo.answer_logps(model, pairs[i:i + 8], True, torch.device("cpu"))
        margins += (logps["chosen"] - logps["rejected"]).tolist()
    wins = sum(m > 0 for m in margins)
    return wins / len(pairs), sum(margins) / len(margins)


def exact_match(checkpoint_dir: Path, lora_path, out_dir: Path, name: str, limit: int) -> float:
    results = out_dir / f"eval-{'base' if lora_path is None else Path(lora_path).name}.json"
    if lora_path is None or Path(lora_path).name == "sft":  # the same model as in an earlier run: reuse its score
        if results.is_file():
            return json.loads(results.read_text())["results"]["lit_arithmetic"]["exact_match,strict-match"]
    args = ["--checkpoint_dir", checkpoint_dir, "--tasks", "lit_arithmetic", "--batch_size", 16, "--save_filepath",
            results, "--limit", limit] + (["--lora_path", lora_path] if lora_path else [])
    run("eval/lm_eval_harness.py", *args)
    return json.loads(results.read_text())["results"]["lit_arithmetic"]["exact_match,strict-match"]


def run(script: str, *args, capture: bool = False) -> str:
    command = [sys.executable, str(REPO / script), *map(str, args)]
    print("$ python " + " ".join([script, *map(str, args)]), flush=True)
    proc = subprocess.run(command, cwd=REPO, text=True, capture_output=capture)
    if proc.returncode != 0:
        sys.exit(f"{script} failed ({proc.returncode}){': ' + proc.stderr[-2000:] if capture else ''}")
    return proc.stdout if capture else ""


if __name__ == "__main__":
    cli(main)
