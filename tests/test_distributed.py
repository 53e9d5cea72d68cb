"""Several processes on CPU (gloo): FSDP2 (also with a token budget per micro-batch), two torchrun "nodes" and DDP
with a 4-bit base each give the adapter one process gives for the same global batch; FSDP's sharded checkpoints
resume the run exactly."""

import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from test_finetune import FAST, finetune, read_metrics, tiny_checkpoint, tiny_data  # noqa: F401 (fixtures)

from conftest import REPO

ARGS = ["--precision", "32-true", "--max_iters", 6, "--lora_dropout", 0.0, "--eval_interval", 3, "--save_interval", 3,
        "--batch_size", 4, "--micro_batch_size", 2]


def assert_same_run(out, reference, exact: bool = False) -> None:
    """Same losses at every step and the same adapter (a plain file of whole tensors)."""
    losses = [float(r["loss"]) for r in read_metrics(reference)]
    assert [float(r["loss"]) for r in read_metrics(out)] == pytest.approx(losses, rel=0 if exact else 1e-5)
    expected = torch.load(reference / "lit_model_lora_finetuned.pth", weights_only=True)
    actual = torch.load(out / "lit_model_lora_finetuned.pth", weights_only=True)
    assert actual.keys() == expected.keys() and all(type(v) is torch.Tensor for v in actual.values())
    for key in expected:
        if exact:
            assert torch.equal(actual[key], expected[key]), key
        else:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def one_process(tiny_checkpoint, tiny_data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("one") / "out"
    finetune(tiny_checkpoint, tiny_data, out, *ARGS)
    return out


def test_fsdp_matches_one_process_and_resumes(tiny_checkpoint, tiny_data, one_process, tmp_path):  # noqa: F811
    full = tmp_path / "fsdp"
    finetune(tiny_checkpoint, tiny_data, full, *ARGS, "--devices", 2, "--strategy", "fsdp")
    assert_same_run(full, one_process)
    # each step-* checkpoint is a dir: one file of shards per process and the rest in meta.pth
    step_3 = full / "checkpoints" / "step-000003"
    assert len(list(step_3.glob("*.distcp"))) == 2 and (step_3 / "meta.pth").is_file()
    # both processes SIGKILLed as soon as step 5 is printed (during step 6, after the step-3 checkpoint)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(REPO / "finetune/lora.py"), "--checkpoint_dir", str(tiny_checkpoint),
                             "--data_dir", str(tiny_data), "--out_dir", str(killed), *map(str, FAST + ARGS),
                             "--devices", "2", "--strategy", "fsdp"], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:
        if line.startswith("step 5/6"):
            os.killpg(proc.pid, signal.SIGKILL)
            break
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert not (killed / "lit_model_lora_finetuned.pth").exists()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir() if not p.name.endswith(".tmp")) == \
        ["step-000003"]
    proc = finetune(tiny_checkpoint, tiny_data, killed, *ARGS, "--devices", 2, "--strategy", "fsdp", "--resume", "auto")
    assert "Resumed from" in proc.stdout and "step-000003" in proc.stdout
    assert_same_run(killed, full, exact=True)


def test_fsdp_with_a_token_budget_matches_one_process(tiny_checkpoint, tiny_data, one_process, tmp_path):  # noqa: F811
    """--micro_batch_tokens 150 on 2 FSDP processes: at some steps one process's share needs two micro-batches and
    the other's one, which is then split in two (FSDP gathers each block's weights in every forward and backward:
    unequal numbers of passes hang). Same run as one process with micro-batches of 2."""
    out = tmp_path / "fsdp-tokens"
    finetune(tiny_checkpoint, tiny_data, out, *ARGS, "--devices", 2, "--strategy", "fsdp", "--micro_batch_tokens", 150)
    assert_same_run(out, one_process)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_match_one_process(tiny_checkpoint, tiny_data, one_process, tmp_path):  # noqa: F811
    """`torchrun --nnodes 2 --node_rank 0/1` on localhost, one process each, `--num_nodes 2`: the launch of the
    README's multi-node section."""
    out, port = tmp_path / "nodes", free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node",
         "1", "--master_addr", "127.0.0.1", "--master_port", str(port), "finetune/lora.py", "--checkpoint_dir",
         str(tiny_checkpoint), "--data_dir", str(tiny_data), "--out_dir", str(out), *map(str, FAST + ARGS),
         "--num_nodes", "2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert_same_run(out, one_process)


def test_ddp_with_a_4bit_base_matches_one_process(tiny_checkpoint, tiny_data, tmp_path):  # noqa: F811
    """QLoRA on 2 processes: each holds the nf4 base, the adapter is the one of 1 process."""
    args = [*ARGS, "--quantize", "bnb.nf4", "--max_iters", 3]
    finetune(tiny_checkpoint, tiny_data, tmp_path / "one", *args)
    finetune(tiny_checkpoint, tiny_data, tmp_path / "ddp", *args, "--devices", 2)
    assert_same_run(tmp_path / "ddp", tmp_path / "one")
