"""A malformed JSON file (lit_config.json, config.json, lora_config.json, prepare_config.json, a conversation data
file) or a truncated weight file is a one-line `error:` naming the file, from every script that reads it: exit status
1, no traceback, under 300 characters. The scripts run as subprocesses, all at once (each spends seconds importing
torch)."""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_script
from lit_gpt.config import Config
from lit_gpt.lora import LoRAConfig, add_lora, lora_state_dict
from lit_gpt.model import GPT
from lit_gpt.utils import UserError, cli, dataclass_from_json, fail, read_json


def make_dirs(root: Path) -> None:
    """root/base: a checkpoint dir of a random tiny model with a real (word-level) tokenizer; root/out: a finetune
    out dir of an adapter for it; root/data: a prepared-data dir."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    base, out, data = root / "base", root / "out", root / "data"
    for d in (base, out, data):
        d.mkdir(parents=True)
    config = Config(name="tiny", n_layer=1, n_head=2, n_embd=8, vocab_size=4, padding_multiple=4, block_size=64)
    torch.manual_seed(0)
    model = GPT(config)
    torch.save(model.state_dict(), base / "lit_model.pth")
    config.save(base / "lit_config.json")
    tokenizer = Tokenizer(WordLevel({"<unk>": 0, "a": 1, "b": 2, "</s>": 3}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(base / "tokenizer.json"))
    (base / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    lora = LoRAConfig(r=2, alpha=4)
    torch.save(lora_state_dict(add_lora(model, lora)), out / "lit_model_lora_finetuned.pth")
    (out / "lora_config.json").write_text(json.dumps({"lora": lora.to_dict(), "model": config.to_dict(),
                                                      "checkpoint_dir": str(base), "prompt_style": "alpaca"}))
    samples = [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([1, 2, 3])}] * 4
    torch.save(samples, data / "train.pt")
    torch.save(samples, data / "val.pt")
    (data / "prepare_config.json").write_text(json.dumps({"prompt_style": "alpaca", "max_seq_length": 16}))


def not_json(path: Path) -> None:
    path.write_text('{"name": "tiny",\n')


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def edit(key: str, value: object, under: str = None):
    def change(path: Path) -> None:
        data = json.loads(path.read_text())
        (data[under] if under else data)[key] = value
        path.write_text(json.dumps(data))
    return change


def writes(text: str):
    return lambda path: path.write_text(text)


NOT_JSON = "is not valid JSON (line 2 column 1: Expecting property name"
# id: (script, its arguments ({root}: the case's dir), the file broken, how, what the error says besides the path)
CASES = {
    "base-config": ("generate/base.py", "--checkpoint_dir {root}/base", "base/lit_config.json", not_json, NOT_JSON),
    "base-weights": ("generate/base.py", "--checkpoint_dir {root}/base --prompt a --max_new_tokens 2",
                     "base/lit_model.pth", truncated, "corrupt or truncated? download or convert it again"),
    "chat-unknown-field": ("generate/chat.py", "--checkpoint_dir {root}/base", "base/lit_config.json",
                           edit("bogus", 1), "has unknown Config field 'bogus'"),
    "eval-wrong-type": ("eval/lm_eval_harness.py", "--checkpoint_dir {root}/base --tasks lit_arithmetic",
                        "base/lit_config.json", edit("n_layer", "2"), "n_layer='2' is not int"),
    "convert-weights": ("scripts/convert_lit_checkpoint.py", "--checkpoint_dir {root}/base --out_dir {root}/hf",
                        "base/lit_model.pth", truncated, "corrupt or truncated?"),
    "prepare-config": ("scripts/prepare_gsm8k.py", "--checkpoint_dir {root}/base --data_file "
                       f"{REPO}/data/arithmetic/train.jsonl --destination_path {{root}}/prepared",
                       "base/lit_config.json", not_json, NOT_JSON),
    "lora-settings": ("generate/lora.py", "--lora_path {root}/out --prompt a --max_new_tokens 2",
                      "out/lora_config.json", edit("r", "8", under="lora"), "lora.r='8' is not int"),
    "lora-adapter": ("generate/lora.py", "--lora_path {root}/out --prompt a --max_new_tokens 2",
                     "out/lit_model_lora_finetuned.pth", truncated, "corrupt or truncated? write it again"),
    "export-lora-config": ("scripts/export_peft.py", "--lora_path {root}/out", "out/lora_config.json", not_json,
                           NOT_JSON),
    "merge-hf-config": ("scripts/merge_lora.py", "--lora_path {root}/out --out_dir {root}/merged",
                        "base/config.json", not_json, NOT_JSON),
    "prepare-chat-role": ("scripts/prepare_chat.py", "--checkpoint_dir {root}/base --data_file {root}/data/chat.jsonl "
                          "--destination_path {root}/prepared", "data/chat.jsonl",
                          writes('{"messages": [{"role": "user", "content": "a"}]}\n{"messages": [{"role": "tool", '
                                 '"content": "b"}]}\n'), "row 2 messages[0] has the unknown role 'tool'"),
    "prepare-chat-layout": ("scripts/prepare_chat.py", "--checkpoint_dir {root}/base --data_file {root}/data/chat.json "
                            "--destination_path {root}/prepared", "data/chat.json",
                            writes('[{"instruction": "a", "output": "b"}]'), "row 1 has no 'messages' list"),
    "gguf-architecture": ("scripts/export_gguf.py", "--checkpoint_dir {root}/base --out {root}/hf",
                          "base/lit_config.json", edit("hf_model_type", "gpt_neox"),
                          "is a gpt_neox model, which has no llama.cpp architecture we export"),
    "gguf-adapter-architecture": ("scripts/export_gguf.py", "--lora_path {root}/out --out {root}/hf",
                                  "out/lora_config.json", edit("hf_model_type", "falcon", under="model"),
                                  "is a falcon model, which has no llama.cpp architecture we export"),
    "finetune-data": ("finetune/lora.py", "--checkpoint_dir {root}/base --data_dir {root}/data --out_dir "
                      "{root}/ft --max_iters 1", "data/prepare_config.json", not_json, NOT_JSON),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """Each case's (broken file, completed process), the scripts run in parallel."""
    def run(case: str) -> tuple:
        script, args, broken, breaks, _ = CASES[case]
        root = tmp_path_factory.mktemp(case)
        make_dirs(root)
        breaks(root / broken)
        proc = run_script(script, *args.format(root=root).split(), check=False, timeout=300)
        return root / broken, proc

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        return dict(zip(CASES, pool.map(run, CASES)))


@pytest.mark.parametrize("case", list(CASES))
def test_script_error_is_one_line_naming_the_file(case, results):
    path, proc = results[case]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and len(line) < 300, line
    assert repr(str(path)) in line and CASES[case][4] in line, line
    assert not any((path.parent.parent / name).exists() for name in ("hf", "prepared", "merged", "ft"))


def test_read_json_and_dataclass_from_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match=r"'.*x\.json' holds a JSON array, not an object; do this"):
        read_json(path, "do this")
    path.write_bytes(b"\xff{}")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        read_json(path, "do this")
    with pytest.raises(UserError, match=r"Cannot read '.*missing\.json' \(No such file"):
        read_json(tmp_path / "missing.json", "do this")
    path.write_text('{"r": 4, "dropout": 0}')
    assert dataclass_from_json(LoRAConfig, read_json(path, ""), path, "") == LoRAConfig(r=4, dropout=0.0)
    for data, message in [({"r": True}, "r=True is not int"), ({"dropout": "0.1"}, "dropout='0.1' is not float"),
                          ({"r": 0}, r"not a valid LoRAConfig \(UserError: LoRA rank r=0"),
                          ({"rank": 4, "lr": 1}, "unknown LoRAConfig fields 'rank', 'lr'"),
                          ([4], "not a JSON object of LoRAConfig fields")]:
        with pytest.raises(UserError, match=message):
            dataclass_from_json(LoRAConfig, data, path, "fix it")
    for data, message in [({"norm_class_name": "Norm"}, "norm_class_name='Norm' is not one of 'LayerNorm', 'RMSNorm'"),
                          ({"n_query_groups": "2"}, "n_query_groups='2' is not int or null"),
                          ({"n_embd": 10, "n_head": 4}, r"AssertionError: n_embd=10 is not divisible by n_head=4")]:
        with pytest.raises(UserError, match=message):
            dataclass_from_json(Config, data, path, "fix it")
    assert dataclass_from_json(Config, {"rope_base": 500000, "n_query_groups": None}, path, "").rope_base == 500000


def test_cli_prints_one_capped_line(monkeypatch, capsys):
    def main() -> None:
        fail("first line\nsecond line " + "x" * 1000)

    monkeypatch.setattr(sys, "argv", ["script.py"])
    with pytest.raises(SystemExit) as exit_info:
        cli(main)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: first line second line xxx") and err.endswith("...\n")
    assert err.count("\n") == 1 and len(err) < 700


def test_truncated_weights_in_process(tmp_path):
    from lit_gpt.utils import lazy_load

    path = tmp_path / "lit_model.pth"
    torch.save({"w": torch.zeros(1000)}, path)
    good = path.read_bytes()
    assert torch.equal(lazy_load(path)["w"], torch.zeros(1000))
    for size in (0, 1000, len(good) // 3, len(good) - 10):  # torch raises RuntimeError or OSError by where it ends
        path.write_bytes(good[:size])
        with pytest.raises(UserError) as e:
            lazy_load(path)
        message = str(e.value)
        assert "\n" not in message and len(message) < 300 and repr(str(path)) in message, message
        assert "corrupt or truncated? download or convert it again" in message, message


def test_benchmark_counts_must_be_positive():
    """benchmarks/finetune.py refuses a count below 1 (here the processes per path of the data part) in one line,
    before it converts or loads anything."""
    proc = run_script("benchmarks/finetune.py", "--parts", "data", "--data_repeats", "0", check=False, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "--data_repeats" in line and len(line) < 300, line
