import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from conftest import REPO, run_script
from lit_gpt.data import collate, load_prepared, load_rows, longest_first, prepare_sample, split_rows
from lit_gpt.prompts import PromptStyle
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import UserError

SCRIPTS = ["alpaca", "dolly", "lima", "gsm8k", "json", "csv"]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Tokenizer:
    return Tokenizer(smollm2_dir)


def load_script(name: str) -> ModuleType:
    """scripts/prepare_<name>.py as a module, to call its `setup` in-process (fast, no subprocess)."""
    spec = importlib.util.spec_from_file_location(f"prepare_{name}", REPO / "scripts" / f"prepare_{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def counts_line(stdout: str) -> dict:
    """The numbers of the summary line every prepare script prints last."""
    match = re.search(r"train (\d+), val (\d+), truncated (\d+) .*skipped (\d+)", stdout)
    assert match, stdout
    return dict(zip(("train", "val", "truncated", "skipped"), map(int, match.groups())))


def check_masks(samples: list, tokenizer: Tokenizer, style: PromptStyle, rows_by_prompt: dict) -> None:
    """Every sample is prompt + answer + eos, with -100 exactly on the prompt tokens."""
    for sample in samples:
        ids, labels = sample["input_ids"], sample["labels"]
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
        n_prompt = int((labels == -100).sum())
        assert (labels[:n_prompt] == -100).all() and torch.equal(labels[n_prompt:], ids[n_prompt:])
        prompt = tokenizer.decode(ids[:n_prompt])
        row = rows_by_prompt[prompt]  # the masked part is exactly a prompt of the data
        assert tokenizer.encode(prompt).tolist() == ids[:n_prompt].tolist()
        assert tokenizer.decode(ids[n_prompt:]) == style.response_prefix + row["output"] + "<|im_end|>"
        assert ids[-1] == tokenizer.eos_id


def test_help(capsys: pytest.CaptureFixture) -> None:
    from jsonargparse import CLI

    for name in SCRIPTS:
        with pytest.raises(SystemExit) as e:
            CLI(load_script(name).setup, args=["--help"], as_positional=False)
        assert e.value.code == 0
        out = capsys.readouterr().out
        for flag in ("--checkpoint_dir", "--destination_path", "--data_file", "--val_file", "--val_split_fraction",
                     "--mask_inputs", "--max_seq_length", "--seed", "--prompt_style"):
            assert flag in out, (name, flag)
        assert "chatml" in out and "tinyllama-chat" in out  # the prompt style choices
    # and as a command
    assert "--checkpoint_dir CHECKPOINT_DIR" in run_script("scripts/prepare_gsm8k.py", "--help").stdout


def test_prepare_sample(tokenizer: Tokenizer) -> None:
    style = PromptStyle.from_name("chatml")
    example = {"instruction": "What is 3 + 4?", "output": "3 + 4 = 7\n#### 7"}
    prompt_ids = tokenizer.encode(style.apply(example["instruction"]))
    sample = prepare_sample(example, tokenizer, style, max_seq_length=1000)
    n = len(prompt_ids)
    assert torch.equal(sample["input_ids"][:n], prompt_ids)
    assert (sample["labels"][:n] == -100).all()
    assert torch.equal(sample["labels"][n:], sample["input_ids"][n:])
    assert tokenizer.decode(sample["input_ids"]) == style.apply(example["instruction"]) + example["output"] + \
        "<|im_end|>"
    assert not sample["truncated"]

    unmasked = prepare_sample(example, tokenizer, style, max_seq_length=1000, mask_inputs=False)
    assert torch.equal(unmasked["labels"], unmasked["input_ids"]) and torch.equal(unmasked["input_ids"],
                                                                                   sample["input_ids"])
    cut = prepare_sample(example, tokenizer, style, max_seq_length=n + 2)
    assert cut["truncated"] and len(cut["input_ids"]) == n + 2
    assert torch.equal(cut["input_ids"], sample["input_ids"][:n + 2])
    assert (cut["labels"] != -100).sum() == 2
    # no room for a single answer token: skipped (None), never a sample of prompt only
    assert prepare_sample(example, tokenizer, style, max_seq_length=n) is None
    assert prepare_sample(example, tokenizer, style, max_seq_length=n + 1)["labels"][-1] != -100

    # the input goes into the prompt; a style with a response prefix puts it in front of the answer
    qa = PromptStyle.from_name("qa")
    with_input = prepare_sample({"instruction": "Add.", "input": "2 and 5", "output": "7"}, tokenizer, qa, 100)
    assert tokenizer.decode(with_input["input_ids"]) == "Q: Add.\n2 and 5\nA: 7<|im_end|>"
    assert tokenizer.decode(with_input["input_ids"][with_input["labels"] != -100]) == " 7<|im_end|>"

    # an answer whose first token would merge with the prompt's last one ("\n" + "  ..."): the prompt keeps the ids
    # generation will see, the answer is encoded on its own
    alpaca = PromptStyle.from_name("alpaca")
    prompt_ids = tokenizer.encode(alpaca.apply("Indent it."))
    assert not torch.equal(tokenizer.encode(alpaca.apply("Indent it.") + "  x = 1")[:len(prompt_ids)], prompt_ids)
    merged = prepare_sample({"instruction": "Indent it.", "output": "  x = 1"}, tokenizer, alpaca, 100)
    assert torch.equal(merged["input_ids"][:len(prompt_ids)], prompt_ids)
    assert (merged["labels"] == -100).sum() == len(prompt_ids)
    assert tokenizer.decode(merged["input_ids"]) == alpaca.apply("Indent it.") + "  x = 1<|im_end|>"


def test_collate_and_longest_first() -> None:
    a = {"input_ids": torch.tensor([5, 6, 7, 8, 9]), "labels": torch.tensor([-100, -100, 7, 8, 9])}
    b = {"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([-100, 2, 3])}
    input_ids, targets = collate([a, b])
    assert input_ids.tolist() == [[5, 6, 7, 8], [1, 2, 0, 0]]
    assert targets.tolist() == [[-100, 7, 8, 9], [2, 3, -100, -100]]
    input_ids, targets = collate([a, b], pad_multiple=8)
    assert input_ids.shape == targets.shape == (2, 8) and (targets[:, 4:] == -100).all()
    input_ids, targets = collate([a, b], max_seq_length=3, pad_multiple=8)  # cut to 3 tokens: 2 inputs, 2 targets
    assert input_ids.tolist() == [[5, 6], [1, 2]] and targets.tolist() == [[-100, 7], [2, 3]]
    assert longest_first([b, a, b]) == [1, 0, 2]


def test_split_rows() -> None:
    rows = list(range(100))
    train, val = split_rows(rows, 0.1, seed=3)
    assert len(val) == 10 and sorted(train + val) == rows
    assert split_rows(rows, 0.1, seed=3) == (train, val) and split_rows(rows, 0.1, seed=4) != (train, val)
    assert len(split_rows(rows[:5], 0.01, seed=0)[1]) == 1  # at least one validation row
    with pytest.raises(UserError, match="Cannot split 1 examples"):
        split_rows(rows[:1], 0.5, seed=0)


def test_load_rows_formats_and_errors(tmp_path: Path) -> None:
    rows = [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "output": "d"}]
    (tmp_path / "data.json").write_text(json.dumps(rows))
    assert load_rows(tmp_path / "data.json") == rows
    assert load_rows(write_jsonl(tmp_path / "data.jsonl", rows)) == rows
    (tmp_path / "data.csv").write_text('instruction,input,output\na,,b\n"multi\nline, quoted",x,y\n')
    assert load_rows(tmp_path / "data.csv") == [{"instruction": "a", "input": "", "output": "b"},
                                               {"instruction": "multi\nline, quoted", "input": "x", "output": "y"}]

    def error(path: Path, text, **kwargs) -> str:
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        with pytest.raises(UserError) as e:
            load_rows(path, **kwargs)
        assert repr(str(path)) in str(e.value)
        return str(e.value)

    assert "is empty" in error(tmp_path / "empty.json", "  \n")
    assert "row 2 has no 'output' field" in error(tmp_path / "a.json", json.dumps([rows[0], {"instruction": "x"}]))
    assert "row 2 (line 3) has no 'instruction' field" in error(tmp_path / "b.jsonl", '{"instruction": "a", '
                                                                '"output": "b"}\n\n{"output": "c"}\n')
    assert "row 1 has a non-text 'output'" in error(tmp_path / "c.json", '[{"instruction": "a", "output": 3}]')
    assert "line 2 is not valid JSON" in error(tmp_path / "d.jsonl", '{"instruction": "a", "output": "b"}\n{oops\n')
    assert "row 1 is a list" in error(tmp_path / "e.json", '[["a", "b"]]')
    assert "has no rows" in error(tmp_path / "f.json", "[]")
    assert "not UTF-8 text (byte 0xe9 on line 2)" in error(tmp_path / "g.jsonl",
                                                          b'{"instruction": "a", "output": "b"}\n{"instruction": '
                                                          b'"caf\xe9", "output": "b"}\n')
    assert "has no column 'output'" in error(tmp_path / "h.csv", "instruction,input\na,b\n")
    assert "row 2 (line 3) has no 'output'" in error(tmp_path / "i.csv", "instruction,output\na,b\nc\n")
    with pytest.raises(UserError, match="does not exist"):
        load_rows(tmp_path / "missing.json")


def test_prepare_gsm8k_on_shipped_arithmetic(tmp_path: Path, smollm2_dir: Path, tokenizer: Tokenizer) -> None:
    """The pipeline runs with no download: data/arithmetic/train.jsonl, chatml from the SmolLM2-Instruct checkpoint."""
    out = tmp_path / "arithmetic"
    proc = run_script("scripts/prepare_gsm8k.py", "--checkpoint_dir", smollm2_dir, "--data_file",
                      REPO / "data/arithmetic/train.jsonl", "--destination_path", out, "--val_split_fraction", "0.1")
    assert counts_line(proc.stdout) == {"train": 540, "val": 60, "truncated": 0, "skipped": 0}
    assert sorted(p.name for p in out.iterdir()) == ["prepare_config.json", "prompt_style.json", "train.pt", "val.pt"]
    train, val, config = load_prepared(out)
    assert config == {"checkpoint_dir": str(smollm2_dir), "prompt_style": "chatml", "max_seq_length": 8192,
                      "mask_inputs": True, "seed": 42, "source": str(REPO / "data/arithmetic/train.jsonl"),
                      "counts": {"train": 540, "val": 60, "truncated": 0, "skipped_prompt_too_long": 0,
                                 "skipped_empty_output": 0}}
    assert json.loads((out / "prompt_style.json").read_text()) == {"name": "chatml"}
    style = PromptStyle.from_name("chatml")
    rows = load_rows(REPO / "data/arithmetic/train.jsonl", required=("question", "answer"))
    by_prompt = {style.apply(r["question"]): {"output": r["answer"]} for r in rows}
    check_masks(train + val, tokenizer, style, by_prompt)
    assert all(re.search(r"\n#### \d+<\|im_end\|>$", tokenizer.decode(s["input_ids"])) for s in train)
    prompts = {tokenizer.decode(s["input_ids"][s["labels"] == -100]) for s in train + val}
    assert len(prompts) == 600  # every row once, train and val disjoint


def test_prepare_alpaca_counts_truncation_and_skips(tmp_path: Path, smollm2_dir: Path,
                                                    tokenizer: Tokenizer) -> None:
    style = PromptStyle.from_name("alpaca")
    rows = [{"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."} for i in range(6)]
    rows.append({"instruction": "Repeat the input.", "input": "word " * 60, "output": "word"})  # prompt too long
    rows.append({"instruction": "Write a long answer.", "input": "", "output": "long " * 200})  # gets cut
    rows.append({"instruction": "Say nothing.", "input": "", "output": "  "})  # empty output
    data_file = tmp_path / "alpaca_data.json"
    data_file.write_text(json.dumps(rows))
    max_len = len(tokenizer.encode(style.apply(rows[7]["instruction"]))) + 20
    assert len(tokenizer.encode(style.apply(rows[6]["instruction"], rows[6]["input"]))) > max_len
    out = tmp_path / "out"
    proc = run_script("scripts/prepare_alpaca.py", "--checkpoint_dir", smollm2_dir, "--data_file", data_file,
                      "--destination_path", out, "--max_seq_length", max_len, "--val_split_fraction", "0.25",
                      "--seed", "7")
    assert counts_line(proc.stdout) == {"train": 5, "val": 2, "truncated": 1, "skipped": 2}
    assert "Skipped: row 7 (prompt >= " in proc.stdout and ", row 9 (empty output)" in proc.stdout
    train, val, config = load_prepared(out)
    assert config["counts"] == {"train": 5, "val": 2, "truncated": 1, "skipped_prompt_too_long": 1,
                                "skipped_empty_output": 1}
    assert config["prompt_style"] == "chatml" and config["max_seq_length"] == max_len and config["seed"] == 7
    assert max(len(s["input_ids"]) for s in train + val) == max_len

    # same seed, same split; --prompt_style and --mask_inputs false are honoured
    load_script("alpaca").setup(checkpoint_dir=smollm2_dir, data_file=data_file, destination_path=out,
                                max_seq_length=max_len, val_split_fraction=0.25, seed=7, prompt_style="alpaca",
                                mask_inputs=False)
    train2, val2, config2 = load_prepared(out)
    assert config2["prompt_style"] == "alpaca" and config2["mask_inputs"] is False
    assert all(torch.equal(s["input_ids"], s["labels"]) for s in train2 + val2)

    def val_rows(samples: list) -> set:
        return {i for i, r in enumerate(rows) for s in samples if r["instruction"] in tokenizer.decode(s["input_ids"])}

    assert val_rows(val2) == val_rows(val) and len(val_rows(val)) == 2


def test_prepare_dolly_lima_json_csv(tmp_path: Path, smollm2_dir: Path, tokenizer: Tokenizer,
                                     capsys: pytest.CaptureFixture) -> None:
    """The other scripts, called in-process (the command line is exercised by the tests above)."""
    style = PromptStyle.from_name("alpaca")
    dolly = write_jsonl(tmp_path / "dolly.jsonl", [
        {"instruction": f"Question {i}?", "context": "Some context." if i % 2 else "", "response": f"Answer {i}.",
         "category": "open_qa"} for i in range(4)])
    load_script("dolly").setup(checkpoint_dir=smollm2_dir, data_file=dolly, destination_path=tmp_path / "dolly",
                               prompt_style="alpaca")
    train, val, _ = load_prepared(tmp_path / "dolly")
    check_masks(train + val, tokenizer, style, {
        style.apply(f"Question {i}?", "Some context." if i % 2 else ""): {"output": f"Answer {i}."} for i in range(4)})

    lima = write_jsonl(tmp_path / "lima.jsonl", [
        {"conversations": ["Hello?", "Hi!", "How are you?", "Fine."], "source": "x"},
        {"conversations": ["Name a fruit.", "Apple."], "source": "y"},
        {"conversations": ["Name a color.", "Red."], "source": "y"}])
    load_script("lima").setup(checkpoint_dir=smollm2_dir, data_file=lima, destination_path=tmp_path / "lima",
                              prompt_style="alpaca")
    assert "1 of 3 conversations have more than one exchange" in capsys.readouterr().out
    train, val, _ = load_prepared(tmp_path / "lima")
    check_masks(train + val, tokenizer, style, {style.apply("Hello?"): {"output": "Hi!"},
                                                style.apply("Name a fruit."): {"output": "Apple."},
                                                style.apply("Name a color."): {"output": "Red."}})

    rows = [{"instruction": f"Double {i}.", "input": str(i), "output": str(2 * i)} for i in range(5)]
    (tmp_path / "mine.json").write_text(json.dumps(rows))
    val_file = write_jsonl(tmp_path / "val.jsonl", rows[:2])
    load_script("json").setup(checkpoint_dir=smollm2_dir, data_file=tmp_path / "mine.json", val_file=val_file,
                              destination_path=tmp_path / "json")
    assert counts_line(capsys.readouterr().out) == {"train": 5, "val": 2, "truncated": 0, "skipped": 0}
    chatml = PromptStyle.from_name("chatml")
    by_prompt = {chatml.apply(r["instruction"], r["input"]): r for r in rows}
    train, val, _ = load_prepared(tmp_path / "json")
    check_masks(train + val, tokenizer, chatml, by_prompt)

    csv_file = tmp_path / "mine.csv"
    csv_file.write_text("instruction,input,output\n" + "".join(f'"Double {i}.",{i},{2 * i}\n' for i in range(5)))
    load_script("csv").setup(checkpoint_dir=smollm2_dir, data_file=csv_file, destination_path=tmp_path / "csv",
                             val_split_fraction=0.2)
    assert counts_line(capsys.readouterr().out) == {"train": 4, "val": 1, "truncated": 0, "skipped": 0}
    train_csv, val_csv, _ = load_prepared(tmp_path / "csv")
    check_masks(train_csv + val_csv, tokenizer, chatml, by_prompt)


def test_script_errors(tmp_path: Path, smollm2_dir: Path) -> None:
    """User mistakes end with one clear message naming what to fix, and nothing written."""
    good = write_jsonl(tmp_path / "good.jsonl", [{"question": "1 + 1?", "answer": "1 + 1 = 2\n#### 2"}] * 3)
    out = tmp_path / "out"

    def error(script: str, **kwargs) -> str:
        kwargs = {"checkpoint_dir": smollm2_dir, "destination_path": out, **kwargs}
        with pytest.raises(UserError) as e:
            load_script(script).setup(**kwargs)
        assert not out.exists()
        return str(e.value)

    assert "No tokenizer.json or tokenizer.model in" in error("gsm8k", checkpoint_dir=tmp_path, data_file=good)
    assert "--data_file" in error("json", data_file=tmp_path / "nope.json")
    assert "either --val_file or --val_split_fraction" in error("gsm8k", data_file=good, val_file=good,
                                                                 val_split_fraction=0.1)
    assert "between 0 and 1" in error("gsm8k", data_file=good, val_split_fraction=1.0)
    (tmp_path / "empty.jsonl").write_text("")
    assert "is empty" in error("gsm8k", data_file=tmp_path / "empty.jsonl")
    no_hashes = write_jsonl(tmp_path / "no_hashes.jsonl", [{"question": "q", "answer": "a\n#### 1"},
                                                           {"question": "q", "answer": "2"}])
    assert "row 2 has no final \"#### <number>\" line" in error("gsm8k", data_file=no_hashes)
    no_output = write_jsonl(tmp_path / "no_output.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}])
    message = error("json", data_file=no_output)
    assert str(no_output) in message and "row 2 (line 2) has no 'output' field" in message
    no_response = write_jsonl(tmp_path / "dolly.jsonl", [{"instruction": "a", "context": "", "output": "b"}])
    assert "row 1 (line 1) has no 'response' field" in error("dolly", data_file=no_response)
    (tmp_path / "latin1.csv").write_bytes("instruction,output\ncafé,b\n".encode("latin-1"))
    assert "is not UTF-8 text (byte 0xe9 on line 2)" in error("csv", data_file=tmp_path / "latin1.csv")
    bad_lima = write_jsonl(tmp_path / "lima.jsonl", [{"conversations": ["only one turn"]}])
    assert "row 1 has no \"conversations\" list" in error("lima", data_file=bad_lima)
    assert "No training examples left after skipping 3" in error("gsm8k", data_file=good, max_seq_length=10)
    long_val = write_jsonl(tmp_path / "long.jsonl", [{"question": "1 + 1? " * 30, "answer": "#### 2"}])
    assert "No validation examples left after skipping 1" in error("gsm8k", data_file=good, max_seq_length=60,
                                                                   val_file=long_val)

    # as commands: one `error:` line, exit status 1; without --data_file and nothing downloaded to its default path,
    # the error says how to download it. The download itself fails cleanly without network (a dead proxy makes sure)
    dead_proxy = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    procs = [run_script(*args, cwd=tmp_path, check=False, env=dead_proxy) for args in (
        ["scripts/prepare_json.py", "--checkpoint_dir", smollm2_dir, "--destination_path", out, "--data_file",
         no_output],
        ["scripts/prepare_alpaca.py", "--checkpoint_dir", smollm2_dir, "--destination_path", out],
        ["scripts/download.py", "--dataset", "alpaca"])]
    for proc in procs:
        assert proc.returncode == 1 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc
    assert "row 2 (line 2) has no 'output' field" in procs[0].stderr
    assert ("No alpaca data at 'data/alpaca/alpaca_data.json': download it there with `python scripts/download.py "
            "--dataset alpaca`, or pass --data_file") in procs[1].stderr
    assert "Could not download https://raw.githubusercontent.com/tatsu-lab" in procs[2].stderr
    assert "pass it to the prepare script with --data_file" in procs[2].stderr
    assert not out.exists() and not (tmp_path / "data").exists()


def test_downloaded_dataset_is_what_its_prepare_script_reads(tmp_path: Path, smollm2_dir: Path) -> None:
    """scripts/download.py's file download over real HTTP (a local server): the file arrives whole at the path the
    prepare script reads by default, is reused after; an HTTP error leaves no file behind."""
    import functools
    import http.server
    import threading

    from lit_gpt.data import DATASETS

    spec = importlib.util.spec_from_file_location("download", REPO / "scripts" / "download.py")
    download = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(download)
    served = tmp_path / "served"
    served.mkdir()
    rows = [{"instruction": f"Add {i} and {i}.", "input": "", "output": str(2 * i)} for i in range(40)]
    (served / "alpaca_data.json").write_text(json.dumps(rows))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        path = tmp_path / DATASETS["alpaca"][1]
        download.download_file(f"{url}/alpaca_data.json", path)
        assert path.read_bytes() == (served / "alpaca_data.json").read_bytes()
        (served / "alpaca_data.json").write_text("[]")
        download.download_file(f"{url}/alpaca_data.json", path)  # already there: kept
        assert json.loads(path.read_text()) == rows
        download.download_file(f"{url}/alpaca_data.json", path, force=True)  # --force: replaced
        assert json.loads(path.read_text()) == []
        (served / "alpaca_data.json").write_text(json.dumps(rows))
        download.download_file(f"{url}/alpaca_data.json", path, force=True)
        with pytest.raises(UserError, match="HTTP 404"):
            download.download_file(f"{url}/missing.json", tmp_path / "data" / "missing.json")
        assert sorted(p.name for p in path.parent.parent.rglob("*")) == ["alpaca", "alpaca_data.json"]
    finally:
        server.shutdown()
    proc = run_script("scripts/prepare_alpaca.py", "--checkpoint_dir", smollm2_dir, cwd=tmp_path)
    assert counts_line(proc.stdout)["train"] + counts_line(proc.stdout)["val"] == 40
    assert (tmp_path / "data" / "alpaca" / "train.pt").is_file()


def test_arithmetic_dataset_is_reproducible_and_correct(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "data/arithmetic/make_data.py"), "--out_dir", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_bytes() == (REPO / "data/arithmetic" / name).read_bytes(), name
    train = load_rows(REPO / "data/arithmetic/train.jsonl", required=("question", "answer"))
    test = load_rows(REPO / "data/arithmetic/test.jsonl", required=("question", "answer"))
    assert len(train) == 600 and len(test) == 100
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    n_steps = []
    for row in train + test:
        *lines, final = row["answer"].split("\n")
        n_steps.append(len(lines))
        for line in lines:  # every equation is right and uses the numbers of the question or earlier results
            a, op, b, eq, c = line.split(" ")
            assert eq == "=" and {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b),
                                  "/": int(a) / int(b)}[op] == int(c) >= 0, line
            assert final == f"#### {lines[-1].split(' = ')[1]}"
    assert 1 <= min(n_steps) and max(n_steps) <= 3 and sum(n == 1 for n in n_steps) > len(n_steps) / 3
