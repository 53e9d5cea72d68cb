"""generate/base.py, generate/lora.py, generate/chat.py and eval/lm_eval_harness.py on the GPU: the same greedy
answers and scores as on the CPU in float32, bitsandbytes 4-bit and int8 on CUDA, CUDA peak memory in the reports,
the GPU chosen when no --device is given."""

from cuda_suite import peak_memory  # noqa: I001 (first: skips this module without a GPU)

import json

import pytest
from test_generate import expected_text, tiny_adapter, tiny_checkpoint  # noqa: F401 (fixtures)

from conftest import run_script

PROMPT = "What is 12 plus 30?"
GREEDY = ["--max_new_tokens", 12, "--temperature", 0]


def test_base_on_the_gpu_equals_the_cpu(tiny_checkpoint):  # noqa: F811
    proc = run_script("generate/base.py", "--checkpoint_dir", tiny_checkpoint, "--prompt", PROMPT, "--device", "cuda",
                      "--precision", "32-true", *GREEDY)
    assert proc.stdout == expected_text(tiny_checkpoint, PROMPT, 12, temperature=0.0)
    assert 0 < peak_memory(proc.stderr) < 0.5  # the CUDA allocator's peak, not the process's resident set
    # sampling on the GPU: the seed decides
    sampled = [run_script("generate/base.py", "--checkpoint_dir", tiny_checkpoint, "--prompt", PROMPT, "--seed", seed,
                          "--max_new_tokens", 16, "--temperature", 1.0).stdout for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]


@pytest.mark.parametrize(("precision", "quantize"), [("bf16-true", "bnb.nf4"), ("bf16-true", "bnb.nf4-dq"),
                                                     ("16-true", "bnb.int8"), ("32-true", "bnb.fp4")])
def test_quantized_on_the_gpu(tiny_checkpoint, precision, quantize):  # noqa: F811
    proc = run_script("generate/base.py", "--checkpoint_dir", tiny_checkpoint, "--prompt", PROMPT, "--device", "cuda",
                      "--precision", precision, "--quantize", quantize, *GREEDY)
    assert proc.stdout.strip() and "tokens/s" in proc.stderr and 0 < peak_memory(proc.stderr) < 0.5


def test_lora_on_the_gpu_equals_the_cpu(tiny_checkpoint, tiny_adapter):  # noqa: F811
    proc = run_script("generate/lora.py", "--lora_path", tiny_adapter, "--prompt", PROMPT, "--device", "cuda",
                      "--precision", "32-true", *GREEDY)
    assert proc.stdout == expected_text(tiny_checkpoint, PROMPT, 12, style="qa", lora_path=tiny_adapter,
                                        temperature=0.0)
    proc = run_script("generate/lora.py", "--lora_path", tiny_adapter, "--prompt", PROMPT, "--device", "cuda:0",
                      "--quantize", "bnb.nf4", *GREEDY)  # the GPU's default precision, the adapter unmerged
    assert proc.stdout.strip() and 0 < peak_memory(proc.stderr) < 0.5


def test_chat_picks_the_gpu(tiny_checkpoint, tiny_adapter):  # noqa: F811
    proc = run_script("generate/chat.py", "--lora_path", tiny_adapter, "--precision", "32-true", *GREEDY,
                      stdin=f"{PROMPT}\n/quit\n")  # no --device: auto
    assert proc.stdout == expected_text(tiny_checkpoint, PROMPT, 12, style="qa", lora_path=tiny_adapter,
                                        temperature=0.0)
    assert " on cuda:0 (32-true, qa prompts)" in proc.stderr and 0 < peak_memory(proc.stderr) < 0.5
    proc = run_script("generate/chat.py", "--checkpoint_dir", tiny_checkpoint, "--prompt_style", "chatml",
                      "--quantize", "bnb.nf4", *GREEDY, stdin="Hi\nWhat is 2 + 2?\n")  # two turns, KV cache kept
    assert proc.stderr.count("tokens/s") == 2 and " on cuda:0 (" in proc.stderr


def test_eval_on_the_gpu_equals_the_cpu(tiny_checkpoint, tmp_path):  # noqa: F811
    results = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / f"{device}.json"
        run_script("eval/lm_eval_harness.py", "--checkpoint_dir", tiny_checkpoint, "--tasks", "lit_commonsense",
                   "--limit", 8, "--bootstrap_iters", 0, "--precision", "32-true", "--device", device,
                   "--save_filepath", out)
        results[device] = json.loads(out.read_text())
    assert results["cuda"]["config"]["device"] == "cuda:0"
    assert results["cuda"]["results"]["lit_commonsense"] == results["cpu"]["results"]["lit_commonsense"]
    out = tmp_path / "nf4.json"
    proc = run_script("eval/lm_eval_harness.py", "--checkpoint_dir", tiny_checkpoint, "--tasks", "lit_commonsense",
                      "--limit", 4, "--bootstrap_iters", 0, "--quantize", "bnb.nf4", "--save_filepath", out)
    assert json.loads(out.read_text())["config"]["device"] == "cuda:0" and 0 < peak_memory(proc.stderr) < 0.5
