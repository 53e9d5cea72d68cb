"""Every script that runs a model chooses its device one way (`lit_gpt.utils.pick_device`): `--device cpu` runs it on
the CPU, `--device cuda` where there is no GPU is a one-line error and exit status 1. tests/cuda/ runs them on a GPU."""

import json

import pytest
import torch
from test_generate import expected_text, tiny_adapter, tiny_checkpoint  # noqa: F401 (fixtures)

from conftest import run_script
from lit_gpt.utils import UserError, fastest_precision, inference_precision, pick_device

NO_CUDA = "error: --device cuda: no CUDA device is available here; use --device cpu"


def test_pick_device_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None) == pick_device("auto") == pick_device("cpu") == torch.device("cpu")
    for device in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(UserError, match=f"^--device {device}: no CUDA device is available here; use --device "
                                            "cpu$"):
            pick_device(device)
    for device in ("mps", "gpu", "", "cuda:x"):
        with pytest.raises(UserError, match="use auto, cpu, cuda or cuda:N$"):
            pick_device(device)


def test_pick_device_with_two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert pick_device(None) == pick_device("auto") == pick_device("cuda") == torch.device("cuda", 1)
    assert pick_device("cuda:0") == torch.device("cuda", 0) and pick_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match=r"^--device cuda:2: this machine has 2 CUDA devices \(cuda:0 \.\.\. cuda:1\); "
                                        "use one of them or --device cpu$"):
        pick_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"has 1 CUDA device \(cuda:0\)"):
        pick_device("cuda:1")


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16-true"), (False, "16-true")])
def test_precision_defaults_per_device(monkeypatch, native_bf16, expected):
    """GPUs: bf16 where it is native (Ampere and later), else float16 (a T4/V100 only emulates bf16); training
    autocasts on those (16-mixed), scripts that only run a model keep half weights. CPUs: their own rule."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16 or
                        including_emulation)
    assert inference_precision("cuda:0") == expected
    assert fastest_precision("cuda") == ("bf16-true" if native_bf16 else "16-mixed")
    assert inference_precision("cpu") == fastest_precision("cpu") in ("bf16-true", "32-true")


def test_generate_scripts_on_cpu(tiny_checkpoint, tiny_adapter):  # noqa: F811
    prompt = "What is 12 plus 30?"
    proc = run_script("generate/base.py", "--checkpoint_dir", tiny_checkpoint, "--prompt", prompt, "--device", "cpu",
                      "--max_new_tokens", 12, "--temperature", 0, "--precision", "32-true")
    assert proc.stdout == expected_text(tiny_checkpoint, prompt, 12, temperature=0.0) and "Peak memory" in proc.stderr
    proc = run_script("generate/lora.py", "--lora_path", tiny_adapter, "--prompt", prompt, "--device", "cpu",
                      "--max_new_tokens", 12, "--temperature", 0, "--precision", "32-true", "--quantize", "bnb.nf4")
    assert proc.stdout == expected_text(tiny_checkpoint, prompt, 12, style="qa", lora_path=tiny_adapter,
                                        quantize="bnb.nf4", temperature=0.0)
    proc = run_script("generate/chat.py", "--lora_path", tiny_adapter, "--device", "cpu", "--max_new_tokens", 12,
                      "--temperature", 0, "--precision", "32-true", stdin=f"{prompt}\n")
    assert proc.stdout == expected_text(tiny_checkpoint, prompt, 12, style="qa", lora_path=tiny_adapter,
                                        temperature=0.0)
    assert " on cpu (32-true, qa prompts)" in proc.stderr and "peak memory" in proc.stderr


def test_eval_script_on_cpu(tiny_checkpoint, tmp_path):  # noqa: F811
    out = tmp_path / "r.json"
    run_script("eval/lm_eval_harness.py", "--checkpoint_dir", tiny_checkpoint, "--tasks", "lit_commonsense",
               "--limit", 2, "--bootstrap_iters", 0, "--device", "cpu", "--save_filepath", out)
    config = json.loads(out.read_text())["config"]
    assert config["device"] == "cpu" and config["precision"] == fastest_precision("cpu")


def test_eval_benchmark_on_cpu(smollm2_gguf, smollm2_dir, tmp_path):
    (tmp_path / "SmolLM2-135M-Instruct").symlink_to(smollm2_dir)  # converted already: only the export is made
    proc = run_script("benchmarks/eval.py", "--gguf_path", smollm2_gguf, "--cache_dir", tmp_path, "--device", "cpu",
                      "--task", "lit_commonsense", "--num_fewshot", 0, "--limit", 2, "--batch_size", 2,
                      "--precision", "32-true")
    assert "SmolLM2-135M-Instruct on cpu:" in proc.stdout and "is_greedy equal 8/8" in proc.stdout  # 2 x 4 choices



def markdown_rows(text: str, first: str) -> dict:
    """The cells of the markdown table rows of `text` whose first cell starts with `first`, by that cell."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first}")]
    return {row[0]: row[1:] for row in rows}


def test_finetune_benchmark_grpo_on_cpu(smollm2_gguf, smollm2_dir, tmp_path):
    """--parts grpo at tiny settings: both sides train 2 steps of 1 prompt x 2 completions of at most 4 tokens on the
    same prompts, and the table compares them."""
    pytest.importorskip("trl")
    (tmp_path / "SmolLM2-135M-Instruct").symlink_to(smollm2_dir)  # converted already: only the export is made
    proc = run_script("benchmarks/finetune.py", "--parts", "grpo", "--precisions", "32-true", "--gguf_path",
                      smollm2_gguf, "--cache_dir", tmp_path, "--device", "cpu", "--threads", 1, "--grpo_steps", 2,
                      "--grpo_batch_size", 1, "--grpo_generations", 2, "--grpo_max_new_tokens", 4, "--grpo_repeats", 1)
    assert "2 of the 2 prompts TRL generated from were token-identical to ours" in proc.stdout, proc.stdout
    ours = markdown_rows(proc.stdout, "lit_gpt finetune/grpo.py")["lit_gpt finetune/grpo.py"]
    trl = next(cells for side, cells in markdown_rows(proc.stdout, "TRL ").items() if "GRPOTrainer" in side)
    for cells in (ours, trl):
        speed, tokens, memory = float(cells[1].split()[0]), float(cells[6]), float(cells[9].split()[0])
        assert speed > 0 and 2 <= tokens <= 8 and 0.3 < memory < 20, cells  # 2 completions of 1 to 4 ids each
    ratio = float(ours[10].split("x")[0])
    assert abs(ratio - float(ours[1].split()[0]) / float(trl[1].split()[0])) < 0.02 + 0.01 * ratio, (ours, trl)
    assert "steps/s, finetune/grpo.py / TRL GRPOTrainer, all steps but the first" in proc.stdout


def test_generate_benchmark_batched_on_cpu(smollm2_gguf, smollm2_dir, tmp_path):
    """The batched table at tiny settings: the Engine and llama.cpp (f16) decode 4 tokens in 1 and in 3 rows."""
    pytest.importorskip("xllamacpp")
    (tmp_path / "SmolLM2-135M-Instruct").symlink_to(smollm2_dir)  # converted already: only the GGUF export is made
    proc = run_script("benchmarks/generate.py", "--gguf_path", smollm2_gguf, "--cache_dir", tmp_path, "--device",
                      "cpu", "--threads", 1, "--modes", "[]", "--transformers", "false", "--llama_cpp", "[]",
                      "--batch_rows", "[3]", "--batch_llama_cpp", "[f16]", "--max_new_tokens", 4, "--repeats", 1,
                      "--batch_precision", "32-true")
    assert "4 new tokens in every row" in proc.stdout and "ours in 32-true" in proc.stdout, proc.stdout
    rows = markdown_rows(proc.stdout, "")
    assert list(rows)[1:] == ["1", "3"], rows  # after the header
    for count in ("1", "3"):
        ours, ours_x, theirs, theirs_x, ratio = rows[count]
        assert float(ours) > 0 and float(theirs) > 0, rows[count]
        assert abs(float(ratio[:-1]) - float(ours) / float(theirs)) < 0.01 + 0.01 * float(ratio[:-1]), rows[count]
    assert rows["1"][1] == rows["1"][3] == "1.00x"

@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: tests/cuda runs the scripts on it")
@pytest.mark.parametrize("script, args", [
    ("generate/base.py", ["--checkpoint_dir", "{checkpoint}"]),
    ("generate/lora.py", ["--lora_path", "{adapter}"]),
    ("generate/chat.py", ["--checkpoint_dir", "{checkpoint}"]),
    ("eval/lm_eval_harness.py", ["--checkpoint_dir", "{checkpoint}", "--tasks", "lit_commonsense"]),
    ("benchmarks/eval.py", []),
])
def test_asking_for_cuda_without_a_gpu_is_a_one_line_error(script, args, tiny_checkpoint, tiny_adapter):  # noqa: F811
    args = [arg.format(checkpoint=tiny_checkpoint, adapter=tiny_adapter) for arg in args]
    proc = run_script(script, *args, "--device", "cuda", check=False, stdin="Hi\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", NO_CUDA + "\n")
