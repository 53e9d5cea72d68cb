"""The learning-rate x schedule sweep the finetune defaults were chosen from: `python benchmarks/sweep.py`.

Each point is a real run of the project's scripts on SmolLM2-135M-Instruct: `finetune/lora.py` (QLoRA, `bnb.nf4`,
the quickstart's batch of 8), then `eval/lm_eval_harness.py --lora_path` on the 100 held-out problems of
`data/arithmetic/test.jsonl` (lit_arithmetic: exact match after ####), or, for a conversation dataset, the
validation loss the run printed last. Results are appended to `--results` (JSON lines) as they come, so a sweep that
stops resumes where it was; the table is printed at the end (and with `--table_only`).
"""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.utils import cli, fail

REPO = Path(__file__).resolve().parent.parent
SCHEDULES = {  # name -> finetune flags
    "cosine": ["--lr_schedule", "cosine", "--warmup_fraction", 0.1, "--min_lr_ratio", 0.1],
    "linear": ["--lr_schedule", "linear", "--warmup_fraction", 0.1, "--min_lr_ratio", 0.0],
    "constant": ["--lr_schedule", "constant", "--warmup_fraction", 0.1],
}


def main(
    checkpoint_dir: Path = Path("checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct"),
    data_dir: Path = Path("data/prepared/arithmetic"),
    task: Optional[str] = "lit_arithmetic",
    steps: tuple[int, ...] = (60,),
    learning_rates: tuple[float, ...] = (3e-4, 1e-3, 2e-3, 4e-3),
    schedules: tuple[str, ...] = ("cosine", "linear", "constant"),
    batch_size: int = 8,
    quantize: Optional[str] = "bnb.nf4",
    out_dir: Path = Path("out/sweep"),
    results: Path = Path("out/sweep/results.jsonl"),
    table_only: bool = False,
) -> None:
    """Finetunes and evaluates every (steps, learning rate, schedule) point not yet in `results`.

    Args:
        checkpoint_dir: The base model.
        data_dir: A prepared-data dir (scripts/prepare_gsm8k.py, prepare_chat.py, ...).
        task: The lm-eval task scored on each adapter; none: the run's last validation loss is the score.
        steps: Optimizer steps of each run.
        learning_rates: Peak learning rates.
        schedules: Learning-rate schedules (cosine, linear, constant; each with 10% warmup).
        batch_size: Examples per step (one micro-batch).
        quantize: The base's quantization (QLoRA), as --quantize of finetune/lora.py.
        out_dir: Where the runs go (one dir each, replaced).
        results: JSON lines of the finished points (read first: finished points are not run again).
        table_only: Print the table of `results` and stop.
    """
    unknown = [s for s in schedules if s not in SCHEDULES]
    if unknown:
        fail(f"--schedules: unknown {unknown}; choose from {list(SCHEDULES)}")
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    key = str(data_dir.resolve())
    for n in steps if not table_only else ():
        for lr in learning_rates:
            for schedule in schedules:
                if any((r["data"], r["steps"], r["lr"], r["schedule"]) == (key, n, lr, schedule) for r in done):
                    continue
                row = run_point(checkpoint_dir, data_dir, task, n, lr, schedule, batch_size, quantize, out_dir)
                row["data"] = key
                done.append(row)
                results.parent.mkdir(parents=True, exist_ok=True)
                with open(results, "a") as fp:
                    fp.write(json.dumps(row) + "\n")
                print(f"steps {n} lr {lr:g} {schedule}: {row['metric']} {row['score']:.4f} "
                      f"({row['seconds']:.0f}s)", flush=True)
    table(done)


def run_point(checkpoint_dir: Path, data_dir: Path, task: Optional[str], steps: int, lr: float, schedule: str,
              batch_size: int, quantize: Optional[str], out_dir: Path) -> dict:
    run_dir = out_dir / f"{data_dir.name}-{steps}-{lr:g}-{schedule}"
    start = time.perf_counter()
    log = script("finetune/lora.py", "--checkpoint_dir", checkpoint_dir, "--data_dir", data_dir, "--out_dir", run_dir,
                 "--overwrite", "true", "--max_iters", steps, "--batch_size", batch_size, "--micro_batch_size",
                 batch_size, "--learning_rate", lr, *SCHEDULES[schedule], "--eval_interval", steps,
                 "--save_interval", steps, "--log_interval", 10, *(["--quantize", quantize] if quantize else []))
    val = [float(line.split("val loss ")[1].split(",")[0]) for line in log.splitlines() if " val loss " in line]
    row = {"steps": steps, "lr": lr, "schedule": schedule, "val_loss": val[-1]}
    if task is None:
        row.update(metric="val_loss", score=val[-1])
    else:
        results = run_dir / "eval.json"
        script("eval/lm_eval_harness.py", "--lora_path", run_dir, "--tasks", task, "--batch_size", 16,
               "--save_filepath", results)
        metrics = json.loads(results.read_text())["results"][task]
        name = next(k for k in metrics if k.startswith("exact_match,"))
        row.update(metric=name, score=metrics[name])
    row["seconds"] = time.perf_counter() - start
    return row


def script(path: str, *args) -> str:
    proc = subprocess.run([sys.executable, str(REPO / path), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        fail(f"{path} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return proc.stdout


def table(rows: list) -> None:
    """One markdown table per (data, steps): learning rates down, schedules across."""
    for data, steps in dict.fromkeys((r["data"], r["steps"]) for r in rows):
        part = [r for r in rows if (r["data"], r["steps"]) == (data, steps)]
        schedules = list(dict.fromkeys(r["schedule"] for r in part))
        print(f"\n{Path(data).name}, {steps} steps ({part[0]['metric']}):\n")
        print("| learning rate | " + " | ".join(schedules) + " |")
        print("|---|" + "---|" * len(schedules))
        for lr in sorted(dict.fromkeys(r["lr"] for r in part)):
            cells = []
            for schedule in schedules:
                hit = [r for r in part if r["lr"] == lr and r["schedule"] == schedule]
                score = hit[0]["score"] if hit else None
                cells.append("" if score is None else f"{score:.1%}" if hit[0]["metric"] != "val_loss"
                             else f"{score:.3f}")
            print(f"| {lr:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    cli(main)
