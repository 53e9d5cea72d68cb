"""lit_gpt/load.py, the one reader of a finetune out dir: its prompt-style rule as merge, generate, chat and eval
apply it, the adapter checked against the sha256 its lora_config.json records, and a checkpoint's own run record."""

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from test_merge import base_logits, leftovers, make_checkpoint, make_finetune_dir, merge, script, tiny_config, tokens

from conftest import run_script
from lit_gpt.load import load_lora_run, load_model, pick_prompt_style
from lit_gpt.lora import LoRAConfig
from lit_gpt.utils import UserError, file_sha256

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory, smollm2_dir) -> Path:
    """A tiny llama checkpoint whose own prompt style is qa (its prompt_style.json)."""
    path = make_checkpoint(tmp_path_factory.mktemp("load") / "base", tiny_config("llama-gqa"), smollm2_dir)
    (path / "prompt_style.json").write_text(json.dumps({"name": "qa"}))
    return path


def set_run(out: Path, **changes) -> dict:
    """Changes keys of out/lora_config.json (None: removes the key); returns the new record."""
    run = json.loads((out / "lora_config.json").read_text())
    run = {k: v for k, v in {**run, **changes}.items() if v is not None}
    (out / "lora_config.json").write_text(json.dumps(run))
    return run


def styles_used(out: Path, tmp_path: Path, monkeypatch, capsys) -> dict:
    """The prompt style each script applies to the adapter of `out` (merge: what it writes into the merged dir)."""
    merged = tmp_path / "merged"
    merge(lora_path=out, out_dir=merged)
    styles = {"merge": json.loads((merged / "prompt_style.json").read_text())["name"]}

    generate, seen = script("generate/lora.py"), []
    real = generate.prompt_ids

    def prompt_ids(tokenizer, style, *args):
        seen.append(style)
        return real(tokenizer, style, *args)

    monkeypatch.setattr(generate, "prompt_ids", prompt_ids)
    generate.main(lora_path=out, prompt="Hi", max_new_tokens=1, temperature=0.0, precision="32-true", stream=False)
    styles["generate"] = seen[-1]

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # chat: no message, it only says how it will prompt
    capsys.readouterr()
    script("generate/chat.py").main(lora_path=out, max_new_tokens=4, precision="32-true")
    note = capsys.readouterr().err
    styles["chat"] = note.split("32-true, ")[1].split(" prompts)")[0]

    script("eval/lm_eval_harness.py").setup(lora_path=out, tasks="lit_cloze", limit=1, batch_size=1,
                                            precision="32-true", bootstrap_iters=0,
                                            save_filepath=tmp_path / "eval.json")
    styles["eval"] = json.loads((tmp_path / "eval.json").read_text())["config"]["prompt_style"]
    return styles


def test_every_script_applies_the_run_records_prompt_style(base, tmp_path, monkeypatch, capsys):
    """lora_config.json says chatml, a stale prompt_style.json next to it says alpaca, the base says qa: chatml."""
    out = make_finetune_dir(tmp_path / "run", base, LoRAConfig(r=2, alpha=4), prompt_style="chatml")
    (out / "prompt_style.json").write_text(json.dumps({"name": "alpaca"}))
    scripts = ("merge", "generate", "chat", "eval")
    assert styles_used(out, tmp_path, monkeypatch, capsys) == dict.fromkeys(scripts, "chatml")


def test_prompt_style_rule(base, tmp_path):
    """--prompt_style, else the run record's, else the out dir's prompt_style.json, else the base checkpoint's."""
    out = make_finetune_dir(tmp_path / "run", base, LoRAConfig(r=2, alpha=4), prompt_style="chatml")
    (out / "prompt_style.json").write_text(json.dumps({"name": "alpaca"}))

    def rule(name=None, lora_path=out):
        return pick_prompt_style(name, load_lora_run(lora_path), base).name

    assert rule() == "chatml"
    assert rule("llama2-chat") == "llama2-chat"  # the flag wins
    (out / "checkpoints").mkdir()
    adapter = torch.load(out / "lit_model_lora_finetuned.pth", weights_only=True)
    torch.save({"adapter": adapter}, out / "checkpoints" / "step-000001.pth")
    assert rule(lora_path=out / "checkpoints" / "step-000001.pth") == "chatml"  # the record one dir up
    set_run(out, prompt_style=None)  # an older run: no prompt style in its record
    assert rule() == "alpaca"
    assert rule(lora_path=out / "checkpoints" / "step-000001.pth") == "alpaca"  # the out dir's, not checkpoints/
    (out / "prompt_style.json").unlink()
    assert rule() == "qa"  # the base's prompt_style.json
    assert pick_prompt_style(None, None, base).name == "qa"  # no adapter


# ---------------------------------------------------------------------------------------------------------------------
# lora_config.json's adapter_sha256: the adapter next to it must be the one it was written for


def test_adapter_checked_against_the_recorded_sha256(base, tmp_path):
    out = make_finetune_dir(tmp_path / "run", base, LoRAConfig(r=2, alpha=4))
    adapter = out / "lit_model_lora_finetuned.pth"
    set_run(out, adapter_sha256=file_sha256(adapter))
    merge(lora_path=out, out_dir=tmp_path / "merged")  # it matches: merged
    assert load_lora_run(out).run["adapter_sha256"] == file_sha256(adapter)

    # a new adapter, the old lora_config.json: the run stopped between the two writes
    newer = {k: v + 1 for k, v in torch.load(adapter, weights_only=True).items()}
    torch.save(newer, adapter)
    message = (f"{str(adapter)!r} does not match {str(out / 'lora_config.json')!r} (the run stopped while saving "
               f"them?): finish the run with finetune/lora.py ... --out_dir {out} --resume auto")
    with pytest.raises(UserError) as error:
        load_lora_run(out / "lit_model_lora_finetuned.pth")
    assert str(error.value) == message
    with pytest.raises(UserError, match="does not match"):
        load_model(base, precision="32-true", lora_path=out)
    for command in (("scripts/merge_lora.py", "--lora_path", out, "--out_dir", tmp_path / "merged2"),
                    ("generate/lora.py", "--lora_path", out, "--prompt", "Hi", "--precision", "32-true")):
        proc = run_script(*command, check=False)
        assert proc.returncode == 1 and proc.stdout == "", (proc.stdout, proc.stderr)
        assert proc.stderr.strip().splitlines() == [f"error: {message}"], proc.stderr
    assert not (tmp_path / "merged2").exists() and leftovers(tmp_path) == []

    # a training checkpoint is not the adapter the sha256 describes: it is read
    (out / "checkpoints").mkdir()
    torch.save({"adapter": newer}, out / "checkpoints" / "step-000004.pth")
    run = load_lora_run(out / "checkpoints" / "step-000004.pth")
    assert torch.equal(run.adapter["lm_head.lora_A"], newer["lm_head.lora_A"])


# ---------------------------------------------------------------------------------------------------------------------
# a training checkpoint with its own run record ("run"), preferred to the lora_config.json one dir up


def test_checkpoint_run_record_wins_over_the_out_dirs(base, tmp_path, capsys):
    """The out dir's lora_config.json belongs to an older run (r=4, alpaca); the checkpoint holds the adapter and the
    record of the run that wrote it (r=2 without key adapters, chatml)."""
    out = make_finetune_dir(tmp_path / "run", base, LoRAConfig(r=4, alpha=8), prompt_style="alpaca")
    lora = LoRAConfig(r=2, alpha=6, key=False)
    newer = make_finetune_dir(tmp_path / "newer", base, lora, seed=5, prompt_style="chatml")
    record = json.loads((newer / "lora_config.json").read_text())
    adapter = torch.load(newer / "lit_model_lora_finetuned.pth", weights_only=True)
    step = out / "checkpoints" / "step-000006.pth"
    step.parent.mkdir()
    torch.save({"adapter": adapter, "optimizer": {"state": {}}, "step_count": 6, "run": record}, step)

    run = load_lora_run(step)
    assert run.lora == lora and run.prompt_style == "chatml" and run.run == record
    assert run.run_file == step and run.out_dir == out and run.adapter_file == step
    x = tokens()
    expected = load_model(base, precision="32-true", lora_path=newer)(x)
    assert torch.equal(load_model(base, precision="32-true", lora_path=step)(x), expected)
    merge(lora_path=step, out_dir=tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / "prompt_style.json").read_text()) == {"name": "chatml"}
    torch.testing.assert_close(base_logits(tmp_path / "merged", x), expected, rtol=1e-5, atol=1e-5)

    torch.save({"adapter": adapter, "run": {"lora": lora.to_dict()}}, step)  # a malformed record
    with pytest.raises(UserError, match=r"the 'run' of '.*step-000006\.pth' is not a run record of finetune/lora\.py "
                                        r"\(missing or malformed: model, checkpoint_dir\)"):
        load_lora_run(step)
    older = torch.load(out / "lit_model_lora_finetuned.pth", weights_only=True)
    torch.save({"adapter": older, "step_count": 6}, step)  # no record of its own: the out dir's lora_config.json
    run = load_lora_run(step)
    assert run.lora == LoRAConfig(r=4, alpha=8) and run.prompt_style == "alpaca"
    assert run.run_file == out / "lora_config.json" and run.out_dir == out
