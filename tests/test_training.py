"""The shared training loop (lit_gpt/training.py) through finetune/lora.py: a real SIGKILL at any moment, mid-step or
mid-save, then --resume auto gives the uninterrupted run's adapter bit for bit; a checkpoint of another run is
refused; epochs visit every example once; the learning-rate schedules; experiment trackers."""

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_finetune import finetune, read_metrics, tiny_checkpoint, tiny_data  # noqa: F401 (fixtures)

from conftest import REPO, run_script
from lit_gpt.training import EpochOrder, TrainArgs, lr_lambda, rank_micro_batches
from lit_gpt.utils import file_sha256

ARGS = ["--precision", "32-true", "--max_iters", 6, "--save_interval", 2, "--eval_interval", 3, "--eval_iters", 2,
        "--batch_size", 4, "--micro_batch_size", 2, "--warmup_fraction", 0.2]


def base_args(checkpoint: Path, data: Path, out: Path) -> list:
    return ["--checkpoint_dir", checkpoint, "--data_dir", data, "--out_dir", out, *ARGS]


def killed_at_rename(n: int, *args) -> subprocess.CompletedProcess:
    """finetune/lora.py SIGKILLed at its n-th atomic rename (n = 0: not killed): tests/sigkill_at.py."""
    return run_script("tests/sigkill_at.py", n, "finetune/lora.py", *args, check=False, env={"OMP_NUM_THREADS": "1"})


def assert_same_run(out: Path, reference: Path) -> None:
    """The adapter bit for bit, and the same loss, validation loss and learning rate at every step."""
    expected = torch.load(reference / "lit_model_lora_finetuned.pth", weights_only=True)
    actual = torch.load(out / "lit_model_lora_finetuned.pth", weights_only=True)
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key

    def curve(path: Path) -> list:
        return [(r["step"], r["epoch"], r["loss"], r["val_loss"], r["lr"]) for r in read_metrics(path)]
    assert curve(out) == curve(reference)
    run, reference_run = (json.loads((p / "lora_config.json").read_text()) for p in (out, reference))
    assert run.pop("adapter_sha256") == file_sha256(out / "lit_model_lora_finetuned.pth")
    assert run == {k: v for k, v in reference_run.items() if k != "adapter_sha256"}


@pytest.fixture(scope="module")
def uninterrupted(tiny_checkpoint, tiny_data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("full") / "out"
    proc = killed_at_rename(0, *base_args(tiny_checkpoint, tiny_data, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 3 checkpoints (steps 2, 4, 6), each with metrics.csv and loss.png, then the adapter, prompt_style.json and
    # lora_config.json
    assert re.search(r"renames: (\d+)", proc.stderr).group(1) == "12"
    return out


@pytest.mark.parametrize(("rename", "left"), [
    (4, ["checkpoints/step-000002.pth"]),  # writing the step-4 checkpoint
    (10, ["checkpoints/step-000006.pth"]),  # writing the adapter
    (11, ["checkpoints/step-000006.pth", "lit_model_lora_finetuned.pth"]),  # writing prompt_style.json
    (12, ["checkpoints/step-000006.pth", "lit_model_lora_finetuned.pth", "prompt_style.json"]),  # lora_config.json
])
def test_sigkill_mid_save_then_resume(tiny_checkpoint, tiny_data, uninterrupted, tmp_path, rename, left):  # noqa: F811
    out = tmp_path / "out"
    proc = killed_at_rename(rename, *base_args(tiny_checkpoint, tiny_data, out))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert [f for f in files if f not in ("metrics.csv", "loss.png")][-len(left):] == left
    assert list(out.rglob(".*.tmp"))  # the file being written when the kill came, never renamed into place
    if (out / "lit_model_lora_finetuned.pth").exists():  # an adapter without its lora_config.json is refused
        merge = run_script("scripts/merge_lora.py", "--lora_path", out, "--out_dir", tmp_path / "merged", check=False)
        assert merge.returncode == 1 and merge.stderr.count("\n") == 1, merge.stderr
        assert not (tmp_path / "merged").exists()
    proc = finetune(tiny_checkpoint, tiny_data, out, *ARGS, "--resume", "auto")
    assert "Resumed from" in proc.stdout
    assert_same_run(out, uninterrupted)
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("after", ["step 3/6", "step 5/6"])
def test_sigkill_mid_step_then_resume(tiny_checkpoint, tiny_data, uninterrupted, tmp_path, after):  # noqa: F811
    """SIGKILL from outside as soon as the run prints `after` (in the next step's forward/backward pass)."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(REPO / "finetune/lora.py"),
                             *map(str, base_args(tiny_checkpoint, tiny_data, out))], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:
        if line.startswith(after):
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "lit_model_lora_finetuned.pth").exists()
    resumed = finetune(tiny_checkpoint, tiny_data, out, *ARGS, "--resume", "auto")
    step = {"step 3/6": 2, "step 5/6": 4}[after]
    assert f"Resumed from {str(out / 'checkpoints' / f'step-{step:06d}.pth')!r} at step {step}" in resumed.stdout
    assert_same_run(out, uninterrupted)


def test_a_checkpoint_of_another_run_is_refused(tiny_checkpoint, tiny_data, tmp_path):  # noqa: F811
    """What a new user does: a 9-step run into out/x; a new run with other settings into out/x (refused unless
    --overwrite), killed after its first checkpoint; --resume auto with the first run's settings is refused, with the
    new ones it resumes and ends with the adapter the new settings give uninterrupted."""
    out, args = tmp_path / "x", ["--checkpoint_dir", tiny_checkpoint, "--data_dir", tiny_data, *ARGS]
    first = [*args, "--max_iters", 9, "--save_interval", 3, "--learning_rate", 3e-4]
    finetune(tiny_checkpoint, tiny_data, out, *first[4:])
    second = [*args, "--learning_rate", 1e-3, "--lora_r", 4, "--lora_dropout", 0.0]

    proc = run_script("finetune/lora.py", *second, "--out_dir", out, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "holds another run" in proc.stderr and "--resume auto" in proc.stderr and "--overwrite true" in proc.stderr
    # killed at its first checkpoint's metrics.csv: checkpoints/step-000002.pth is in place
    assert killed_at_rename(2, *second, "--out_dir", out, "--overwrite", "true").returncode == -signal.SIGKILL
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")) == \
        ["step-000002.pth"]
    assert not (out / "lit_model_lora_finetuned.pth").exists()  # the first run's adapter went with --overwrite

    proc = run_script("finetune/lora.py", *first, "--out_dir", out, "--resume", "auto", check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    for difference in ("checkpoint of another run", "learning_rate 0.001 -> 0.0003", "lora.r 4 -> 8",
                       "max_iters 6 -> 9"):
        assert difference in proc.stderr, proc.stderr
    assert not (out / "lit_model_lora_finetuned.pth").exists()

    # settings that do not change what a run computes may change on resume (micro-batches, intervals)
    finetune(tiny_checkpoint, tiny_data, out, *second[4:], "--resume", "auto", "--micro_batch_size", 1,
             "--eval_interval", 2)
    finetune(tiny_checkpoint, tiny_data, tmp_path / "reference", *second[4:])
    expected = torch.load(tmp_path / "reference" / "lit_model_lora_finetuned.pth", weights_only=True)
    actual = torch.load(out / "lit_model_lora_finetuned.pth", weights_only=True)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-7)
    assert json.loads((out / "lora_config.json").read_text())["lora"]["r"] == 4

    proc = run_script("finetune/lora.py", *second, "--out_dir", out, "--resume", "auto", "--overwrite", "true",
                      check=False)
    assert proc.returncode == 1 and "cannot go with --resume" in proc.stderr


def test_epochs_visit_every_example_once(tiny_data):  # noqa: F811
    """--epochs: each epoch is every example once (also when batches run across an epoch's end), in a new order per
    epoch, the first batch the longest examples; the order of any step is the same after a resume (computed from the
    step alone) and split over 2 devices without overlap."""
    from lit_gpt.data import load_prepared

    train = load_prepared(tiny_data)[0]
    n, batch = len(train), 6  # 32 examples: batches cross the epochs' ends
    order = EpochOrder(train, batch, seed=1337)
    steps = order.steps(3)
    assert steps == math.ceil(3 * n / batch) == 16
    stream = [i for step in range(steps) for i in order.batch(step)]
    epochs = [stream[e * n:(e + 1) * n] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(n))
    assert epochs[0] != epochs[1] != epochs[2]
    lengths = [len(s["input_ids"]) for s in train]
    assert sorted(lengths[i] for i in stream[:batch]) == sorted(lengths)[-batch:]
    resumed = EpochOrder(train, batch, seed=1337)  # a fresh process at step 9 (mid-epoch)
    assert [resumed.batch(step) for step in range(9, steps)] == [order.batch(step) for step in range(9, steps)]
    assert EpochOrder(train, batch, seed=1).batch(3) != order.batch(3)

    hp = replace(HP, batch_size=8, micro_batch_size=2)
    for tokens in (None, 150):
        hp = replace(hp, micro_batch_tokens=tokens)
        for step in range(4):
            global_idx = EpochOrder(train, 8, 1337).batch(step)
            lens = [len(train[j]["input_ids"]) - 1 for j in global_idx]
            ranks = [rank_micro_batches(lens, hp, 2, r) for r in (0, 1)]
            assert len(ranks[0]) == len(ranks[1]) or tokens is None
            assert sorted(p for rank in ranks for batch in rank for p in batch) == list(range(8))


HP = TrainArgs(learning_rate=1e-3, lr_schedule="cosine", warmup_fraction=0.1, min_lr_ratio=0.1, batch_size=4,
               micro_batch_size=2, micro_batch_tokens=None, max_iters=100, epochs=None, weight_decay=0.0,
               grad_clip=1.0, max_seq_length=None, eval_interval=10, eval_iters=1, save_interval=10, log_interval=1,
               lora_r=8, lora_alpha=16, lora_dropout=0.0, lora_query=True, lora_key=True, lora_value=True,
               lora_projection=True, lora_mlp=True, lora_head=True, lora_experts=True, router_aux_loss_coef=0.0,
               padding_free=True, pad_multiple=32, activation_checkpointing=False, seed=1)


def test_learning_rate_schedules(tiny_checkpoint, tiny_data, tmp_path):  # noqa: F811
    cosine = lr_lambda(HP, 100)
    assert [cosine(s) for s in range(10)] == pytest.approx([(s + 1) / 11 for s in range(10)])  # 10% warmup
    assert cosine(10) == 1.0 and cosine(55) == pytest.approx(0.55) and cosine(100) == pytest.approx(0.1)
    linear = lr_lambda(replace(HP, lr_schedule="linear", min_lr_ratio=0.0), 100)
    assert linear(10) == 1.0 and linear(55) == pytest.approx(0.5) and linear(99) == pytest.approx(1 / 90)
    constant = lr_lambda(replace(HP, lr_schedule="constant", warmup_fraction=0.0), 100)
    assert {constant(s) for s in range(100)} == {1.0}
    # the run's learning rates are the schedule's: 10 steps of linear decay after 2 warmup steps
    out = tmp_path / "out"
    finetune(tiny_checkpoint, tiny_data, out, "--precision", "32-true", "--max_iters", 10, "--learning_rate", 0.01,
             "--lr_schedule", "linear", "--warmup_fraction", 0.2, "--min_lr_ratio", 0.0, "--eval_interval", 10,
             "--save_interval", 10)
    expected = [0.01 * lr_lambda(replace(HP, lr_schedule="linear", warmup_fraction=0.2, min_lr_ratio=0.0), 10)(s)
                for s in range(10)]
    assert [float(r["lr"]) for r in read_metrics(out)] == pytest.approx(expected)
    assert expected[:3] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01])


def test_tensorboard_logger_and_bad_flags(tiny_checkpoint, tiny_data, tmp_path):  # noqa: F811
    pytest.importorskip("tensorboardX")
    out = tmp_path / "out"
    finetune(tiny_checkpoint, tiny_data, out, "--precision", "32-true", "--max_iters", 2, "--logger", "tensorboard")
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert (out / "metrics.csv").is_file()  # always written
    with open(out / "metrics.csv", newline="") as fp:
        assert [row["step"] for row in csv.DictReader(fp)] == ["1", "2"]
    import importlib.util

    bad = [(["--warmup_fraction", 1.0], "--warmup_fraction must be in [0, 1)"),
           (["--epochs", 0], "--epochs must be above 0")]
    if importlib.util.find_spec("wandb") is None:
        bad.append((["--logger", "wandb"], "--logger wandb needs the wandb package: pip install wandb"))
    for flags, message in bad:
        proc = run_script("finetune/lora.py", "--checkpoint_dir", tiny_checkpoint, "--data_dir", tiny_data,
                          "--out_dir", tmp_path / "bad", *flags, check=False)
        assert proc.returncode == 1 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert not (tmp_path / "bad").exists()
