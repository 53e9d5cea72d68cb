"""finetune/lora.py on one GPU (it picks CUDA by itself): bf16-true, bnb.nf4 and bnb.nf4-dq end to end, the first
step's loss equal to the CPU's, resume, and the adapters merged (scripts/merge_lora.py) equal to base + adapter."""

from cuda_suite import peak_memory  # noqa: I001 (first: skips this module without a GPU)

import json
import signal

import pytest
import torch
from test_finetune import FAST, finetune, read_metrics, tiny_checkpoint, tiny_data  # noqa: F401 (fixtures)

from conftest import run_script
from lit_gpt.load import load_model

NATIVE_BF16 = torch.cuda.is_bf16_supported(including_emulation=False)


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tiny_data, tmp_path_factory):  # noqa: F811
    """finetune/lora.py for 4 steps on the GPU, once per (precision, quantize): -> (out dir, stdout)."""
    root, done = tmp_path_factory.mktemp("cuda-runs"), {}

    def train(precision, quantize):
        if (precision, quantize) not in done:
            out = root / f"{precision}-{quantize}"
            args = ["--devices", 1, "--max_iters", 4] + (["--precision", precision] if precision else []) + \
                (["--quantize", quantize] if quantize else [])
            done[precision, quantize] = out, finetune(tiny_checkpoint, tiny_data, out, *args).stdout
        return done[precision, quantize]

    return train


@pytest.mark.parametrize(("precision", "quantize"), [
    (None, None), ("bf16-true", None), ("bf16-true", "bnb.nf4"), ("bf16-true", "bnb.nf4-dq")])
def test_finetune_on_the_gpu(trained, precision, quantize):
    if precision == "bf16-true" and not NATIVE_BF16:
        pytest.skip("this GPU has no native bfloat16")
    out, stdout = trained(precision, quantize)
    run = json.loads((out / "lora_config.json").read_text())
    assert run["precision"] == (precision or ("bf16-true" if NATIVE_BF16 else "16-mixed"))  # the GPU's default
    assert run["quantize"] == quantize
    progress = [line for line in stdout.splitlines() if line.startswith("step ") and "| loss" in line]
    assert [line.split()[1] for line in progress] == ["1/4", "2/4", "3/4", "4/4"]
    # the CUDA allocator's peak: a tiny model takes megabytes (the resident set of a CUDA process is over 1 GB)
    assert 0 < peak_memory(progress[-1]) < 0.5
    losses = [float(row["loss"]) for row in read_metrics(out)]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    adapter = torch.load(out / "lit_model_lora_finetuned.pth", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v.float()).all() for v in adapter.values())
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # training moved B away from zero
    if run["precision"] == "bf16-true":
        assert {v.dtype for v in adapter.values()} == {torch.bfloat16}


def test_first_step_loss_equals_the_cpus(tiny_checkpoint, tiny_data, tmp_path):  # noqa: F811
    """In float32, step 1 (LoRA B is zero: the base model's loss) gives the same loss on the GPU as on the CPU."""
    losses = {}
    for name, env in (("gpu", {}), ("cpu", {"CUDA_VISIBLE_DEVICES": ""})):
        run_script("finetune/lora.py", "--checkpoint_dir", tiny_checkpoint, "--data_dir", tiny_data, "--out_dir",
                   tmp_path / name, "--precision", "32-true", "--max_iters", 1, "--batch_size", 4,
                   "--micro_batch_size", 2, "--eval_interval", 10, "--save_interval", 10, env=env)
        losses[name] = float(read_metrics(tmp_path / name)[0]["loss"])
    assert losses["gpu"] == pytest.approx(losses["cpu"], rel=1e-4)


def test_resume_on_the_gpu(tiny_checkpoint, tiny_data, tmp_path):  # noqa: F811
    """QLoRA (nf4) in float32 for 6 steps; SIGKILLed after step 3 and resumed: the same adapter and losses.
    Not bit for bit as on the CPU: SDPA's backward on CUDA adds with atomics. No dropout, to compare the adapters
    and not the random masks."""
    full = tmp_path / "full"
    args = ["--precision", "32-true", "--quantize", "bnb.nf4", "--max_iters", 6, "--save_interval", 3,
            "--eval_interval", 3, "--lora_dropout", 0]
    finetune(tiny_checkpoint, tiny_data, full, *args)
    killed = tmp_path / "killed"  # SIGKILLed while writing the step-6 checkpoint (its 4th atomic rename)
    proc = run_script("tests/sigkill_at.py", 4, "finetune/lora.py", "--checkpoint_dir", tiny_checkpoint, "--data_dir",
                      tiny_data, "--out_dir", killed, *FAST, *args, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    proc = finetune(tiny_checkpoint, tiny_data, killed, *args, "--resume", "auto")
    assert "Resumed from" in proc.stdout and "step-000003.pth" in proc.stdout
    assert [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("step ") and "| loss" in line] \
        == ["4/6", "5/6", "6/6"]
    expected, actual = (torch.load(out / "lit_model_lora_finetuned.pth", map_location="cpu", weights_only=True)
                        for out in (full, killed))
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-3, atol=1e-5, msg=key)
    assert [float(r["loss"]) for r in read_metrics(killed)] == pytest.approx(
        [float(r["loss"]) for r in read_metrics(full)], rel=1e-4)


@pytest.mark.parametrize("quantize", [None, "bnb.nf4"])
def test_merged_equals_base_plus_adapter_on_the_gpu(trained, tiny_checkpoint, tmp_path, quantize):  # noqa: F811
    """scripts/merge_lora.py on an adapter trained on the GPU (on 4-bit weights too: merged into the float base):
    the merged checkpoint's logits on the GPU are base + adapter's; generate/base.py runs it on the GPU and
    generate/lora.py runs the adapter on the CPU."""
    out, _ = trained("bf16-true" if NATIVE_BF16 else None, quantize)
    merged = tmp_path / "merged"
    proc = run_script("scripts/merge_lora.py", "--lora_path", out, "--out_dir", merged)
    assert "Merged" in proc.stdout
    idx = torch.randint(0, 49152, (2, 48), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        ours = load_model(merged, precision="32-true", device="cuda")(idx)
        reference = load_model(tiny_checkpoint, precision="32-true", device="cuda", lora_path=out)(idx)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    proc = run_script("generate/base.py", "--checkpoint_dir", merged, "--device", "cuda", "--max_new_tokens", 8,
                      "--temperature", 0)
    assert proc.stdout.strip() and 0 < peak_memory(proc.stderr) < 0.5
    proc = run_script("generate/lora.py", "--lora_path", out, "--device", "cpu", "--max_new_tokens", 8,
                      "--temperature", 0, "--precision", "32-true")
    assert proc.stdout.strip()
