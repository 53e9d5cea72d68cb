"""finetune/lora.py end to end on a tiny random model: precisions, quantization, resume, two devices, bad input; a
tiny Qwen3.5 (linear attention) through finetune -> merge -> generate."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_script
from lit_gpt.config import Config
from lit_gpt.lora import lora_filter
from lit_gpt.model import GPT

FAST = ["--batch_size", 4, "--micro_batch_size", 2, "--eval_interval", 2, "--eval_iters", 2, "--save_interval", 2,
        "--warmup_fraction", 0.2]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, smollm2_dir: Path) -> Path:
    """A 2-layer Llama (GQA, tied embeddings) with random weights and the real SmolLM2 tokenizer."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    path.mkdir()
    config = Config(name="tiny-llama", block_size=256, vocab_size=49152, padding_multiple=64, n_layer=2, n_head=4,
                    n_query_groups=2, n_embd=64, rotary_percentage=1.0, parallel_residual=False, bias=False,
                    norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", intermediate_size=128, tie_embeddings=True)
    torch.manual_seed(0)
    model = GPT(config)
    for param in model.parameters():  # small weights, as in a trained model (nn.Embedding's N(0, 1) is not)
        torch.nn.init.normal_(param, std=0.02) if param.dim() > 1 else None
    torch.save(model.state_dict(), path / "lit_model.pth")
    config.save(path / "lit_config.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "prompt_style.json"):
        shutil.copy(smollm2_dir / name, path / name)
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, tiny_checkpoint: Path) -> Path:
    root = tmp_path_factory.mktemp("data")
    rows = (REPO / "data" / "arithmetic" / "train.jsonl").read_text().splitlines()[:40]
    (root / "train.jsonl").write_text("\n".join(rows) + "\n")
    run_script("scripts/prepare_gsm8k.py", "--checkpoint_dir", tiny_checkpoint, "--data_file", root / "train.jsonl",
               "--destination_path", root / "prepared", "--val_split_fraction", 0.2, "--max_seq_length", 128)
    return root / "prepared"


def finetune(checkpoint: Path, data: Path, out: Path, *args, check: bool = True):
    return run_script("finetune/lora.py", "--checkpoint_dir", checkpoint, "--data_dir", data, "--out_dir", out,
                      *FAST, *args, check=check, env={"OMP_NUM_THREADS": "1"})


def read_metrics(out: Path) -> list:
    with open(out / "metrics.csv", newline="") as fp:
        return list(csv.DictReader(fp))


@pytest.mark.parametrize(("precision", "quantize"), [
    ("32-true", None), ("bf16-true", None), ("bf16-mixed", None),
    ("bf16-true", "bnb.nf4"), ("bf16-true", "bnb.nf4-dq"), ("bf16-true", "bnb.fp4"),
])
def test_finetune_end_to_end(tiny_checkpoint, tiny_data, tmp_path, precision, quantize):
    out = tmp_path / "out"
    args = ["--precision", precision, "--max_iters", 4] + (["--quantize", quantize] if quantize else [])
    proc = finetune(tiny_checkpoint, tiny_data, out, *args)

    assert "trainable params: " in proc.stdout and " || all params: " in proc.stdout
    progress = [line for line in proc.stdout.splitlines() if line.startswith("step ") and "| loss" in line]
    assert [line.split()[1] for line in progress] == ["1/4", "2/4", "3/4", "4/4"]
    for needle in ("tokens/s", "elapsed", "eta", "peak mem", "lr"):
        assert needle in progress[-1]
    assert "val loss" in proc.stdout and "sample: " in proc.stdout

    adapter = torch.load(out / "lit_model_lora_finetuned.pth", weights_only=True)
    assert adapter and all(lora_filter(k) for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # training moved B away from zero
    run = json.loads((out / "lora_config.json").read_text())
    assert run["lora"]["r"] == 8 and run["lora"]["alpha"] == 16
    assert run["checkpoint_dir"] == str(tiny_checkpoint.resolve())
    assert run["prompt_style"] == "chatml" and run["precision"] == precision and run["quantize"] == quantize
    assert run["model"]["n_layer"] == 2 and run["data"]["max_seq_length"] == 128
    assert json.loads((out / "prompt_style.json").read_text()) == {"name": "chatml"}
    rows = read_metrics(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    assert rows[1]["val_loss"] and rows[3]["val_loss"] and not rows[0]["val_loss"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002.pth", "step-000004.pth"]
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("kind", ["qwen3_5-hybrid", "gemma4", "qwen3_moe", "gpt_oss", "qwen3_5_moe", "gemma4-moe"])
def test_new_family_model_finetunes_merges_and_generates(kind, tiny_data, smollm2_dir, tmp_path, capsys):
    """A tiny Qwen3.5 (a Gated DeltaNet layer, a gated full-attention one) and a tiny Gemma 4 (per-layer inputs, layers
    reusing keys and values, k = v), with the SmolLM2 tokenizer the data was prepared with: a few LoRA steps,
    merge_lora.py, then generate/base.py on the merged dir prints what generate/lora.py prints with the adapter, and
    not what the base model prints."""
    from test_merge import make_checkpoint, script, tiny_config

    # gemma4-moe: with seeds 0-2 and 4 its base and its adapter (logits 2.3 apart) both print newlines only
    seed = 3 if kind == "gemma4-moe" else 0
    base = make_checkpoint(tmp_path / "base", tiny_config(kind, block_size=256), smollm2_dir, seed=seed)
    out = tmp_path / "out"
    finetune(base, tiny_data, out, "--precision", "32-true", "--max_iters", 2, "--learning_rate", 0.01,
             "--eval_interval", 2)
    adapter = torch.load(out / "lit_model_lora_finetuned.pth", weights_only=True)
    assert any(".attn.qkv.lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # the linear layer too
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in read_metrics(out))
    script("scripts/merge_lora.py").main(lora_path=out, out_dir=tmp_path / "merged")
    capsys.readouterr()
    greedy = dict(prompt="What is 2 + 3?", max_new_tokens=12, temperature=0.0, precision="32-true", stream=False)
    style = json.loads((out / "prompt_style.json").read_text())["name"]  # the merged dir has it, the base by flag
    texts = {}
    for name, run in [("lora", lambda: script("generate/lora.py").main(lora_path=out, **greedy)),
                      ("merged", lambda: script("generate/base.py").main(checkpoint_dir=tmp_path / "merged", **greedy)),
                      ("base", lambda: script("generate/base.py").main(checkpoint_dir=base, prompt_style=style,
                                                                       **greedy))]:
        run()
        texts[name] = capsys.readouterr().out
    assert texts["merged"] == texts["lora"] != texts["base"], texts
    assert texts["merged"].strip()


@pytest.mark.parametrize(("kind", "quantize", "experts"), [("qwen3_moe", "bnb.nf4", True),
                                                           ("gpt_oss", "bnb.nf4-dq", True),
                                                           ("qwen3_moe", "bnb.nf4", False)])
def test_mixture_of_experts_qlora_finetunes_merges_and_generates(kind, quantize, experts, tiny_data, smollm2_dir,
                                                                 tmp_path, capsys):
    """QLoRA on a tiny MoE: the experts quantized expert by expert, LoRA on them (or not: --lora_experts false);
    merge_lora.py merges into the float base; generate/lora.py on the 4-bit base with the adapter and generate/base.py
    on the merged dir both answer, the merged model unlike the base model."""
    from test_merge import make_checkpoint, script, tiny_config

    base = make_checkpoint(tmp_path / "base", tiny_config(kind, block_size=256), smollm2_dir)
    out = tmp_path / "out"
    finetune(base, tiny_data, out, "--precision", "bf16-true", "--quantize", quantize, "--max_iters", 2,
             "--learning_rate", 0.01, "--eval_interval", 2, "--lora_experts", str(experts).lower())
    run = json.loads((out / "lora_config.json").read_text())
    assert run["quantize"] == quantize and run["lora"]["experts"] is experts
    adapter = torch.load(out / "lit_model_lora_finetuned.pth", weights_only=True)
    trained = {k for k, v in adapter.items() if "lora_B" in k and v.abs().sum() > 0}
    assert any(".attn.qkv." in k for k in trained)
    assert any(".mlp.experts.lora_B_" in k for k in trained) is experts
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in read_metrics(out))
    script("scripts/merge_lora.py").main(lora_path=out, out_dir=tmp_path / "merged")
    capsys.readouterr()
    greedy = dict(prompt="What is 2 + 3?", max_new_tokens=12, temperature=0.0, precision="bf16-true", stream=False)
    style = json.loads((out / "prompt_style.json").read_text())["name"]
    texts = {}
    for name, run in [("lora", lambda: script("generate/lora.py").main(lora_path=out, quantize=quantize, **greedy)),
                      ("merged", lambda: script("generate/base.py").main(checkpoint_dir=tmp_path / "merged", **greedy)),
                      ("base", lambda: script("generate/base.py").main(checkpoint_dir=base, prompt_style=style,
                                                                       **greedy))]:
        run()
        texts[name] = capsys.readouterr().out
    assert texts["merged"] != texts["base"] and texts["lora"].strip() and texts["merged"].strip(), texts


def test_loss_goes_down(tiny_checkpoint, tiny_data, tmp_path):
    out = tmp_path / "out"
    finetune(tiny_checkpoint, tiny_data, out, "--precision", "32-true", "--max_iters", 12, "--learning_rate", 0.01,
             "--eval_interval", 12)
    losses = [float(r["loss"]) for r in read_metrics(out)]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_the_loss_of_a_step_does_not_depend_on_micro_batches_or_devices(tiny_checkpoint, tiny_data, tmp_path):
    """The loss of a step is the token-sum over the global batch / its number of targets: a global batch of 8 as
    1 x 8, 4 x 2 and 8 x 1 micro-batches, by a token budget, on 2 DDP processes (CPU, gloo), padding-free (the
    default) or padded, gives
    the same losses and the same adapter. The responses differ in length, so a mean of per-micro-batch means (the
    old rule) differs: checked against the examples' own losses."""
    from lit_gpt.data import collate, load_prepared
    from lit_gpt.load import load_model
    from lit_gpt.lora import LoRAConfig
    from lit_gpt.utils import response_loss

    args = ["--precision", "32-true", "--max_iters", 3, "--lora_dropout", 0.0, "--eval_interval", 3,
            "--save_interval", 3, "--batch_size", 8]
    runs = {"1x8": ["--micro_batch_size", 8], "4x2": ["--micro_batch_size", 2], "8x1": ["--micro_batch_size", 1],
            "2 devices": ["--micro_batch_size", 2, "--devices", 2],
            "1x8 padded": ["--micro_batch_size", 8, "--padding_free", "false"],
            # micro-batches of up to 150 tokens (one or two examples of 57-92 here: 8, 4 and 5 micro-batches in the
            # three steps), and on 2 processes whose shares need different numbers of them (4 and 2 at step 2: the one
            # needing fewer splits its fullest, both run as many passes)
            "150 tokens": ["--micro_batch_tokens", 150], "150 tokens padded": ["--micro_batch_tokens", 150,
                                                                               "--padding_free", "false"],
            "150 tokens, 2 devices": ["--micro_batch_tokens", 150, "--devices", 2]}
    for name, extra in runs.items():
        finetune(tiny_checkpoint, tiny_data, tmp_path / name, *args, *extra)
    reference = torch.load(tmp_path / "1x8" / "lit_model_lora_finetuned.pth", weights_only=True)
    losses = [float(r["loss"]) for r in read_metrics(tmp_path / "1x8")]
    assert sum("lora_B" in k and bool(v.abs().sum() > 0) for k, v in reference.items())
    for name in list(runs)[1:]:
        assert [float(r["loss"]) for r in read_metrics(tmp_path / name)] == pytest.approx(losses, rel=1e-5), name
        adapter = torch.load(tmp_path / name / "lit_model_lora_finetuned.pth", weights_only=True)
        assert adapter.keys() == reference.keys()
        for key in reference:
            torch.testing.assert_close(adapter[key], reference[key], rtol=1e-4, atol=1e-6)

    # step 1 is the 8 longest examples: its loss is their token losses summed / their targets, not a mean of means
    train = load_prepared(tiny_data)[0]
    longest = sorted(train, key=lambda s: len(s["input_ids"]), reverse=True)[:8]
    model = load_model(tiny_checkpoint, precision="32-true", lora_config=LoRAConfig(r=8, alpha=16, dropout=0.0))
    sums, counts = [], []
    with torch.no_grad():
        for sample in longest:
            x, y = collate([sample], 128)
            sums.append(response_loss(model, x, y, reduction="sum").item())
            counts.append(int((y != -100).sum()))
    assert len(set(counts)) > 1
    assert losses[0] == pytest.approx(sum(sums) / sum(counts), rel=1e-5)
    assert abs(losses[0] - sum(s / c for s, c in zip(sums, counts)) / 8) > 1e-4


def test_nan_loss_stops_and_keeps_last_checkpoint(tiny_checkpoint, tiny_data, tmp_path):
    out = tmp_path / "out"
    proc = finetune(tiny_checkpoint, tiny_data, out, "--precision", "32-true", "--max_iters", 20,
                    "--learning_rate", 1e30, "--warmup_fraction", 0.9, "--grad_clip", 0, "--save_interval", 1,
                    "--eval_interval", 100,
                    check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "--resume auto" in proc.stderr, proc.stderr
    failed_at = int(re.search(r"(?:loss became \S+|LoRA weights became inf/NaN) at step (\d+)",
                              proc.stderr).group(1))
    assert failed_at > 1  # the run trained at least one good step first (lr 5e28 after warmup's first step)
    assert not (out / "lit_model_lora_finetuned.pth").exists()
    # every step before the bad one left its checkpoint, each of finite weights: the last one is the last good step
    kept = sorted((out / "checkpoints").glob("*.pth"))
    good = failed_at - 1
    assert [p.name for p in kept] == [f"step-{i:06d}.pth" for i in range(1, good + 1)], proc.stderr
    for checkpoint in kept:
        state = torch.load(checkpoint, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["adapter"].values()), checkpoint.name
    assert torch.load(kept[-1], weights_only=True)["step_count"] == good


@pytest.mark.parametrize(("args", "message"), [
    (["--data_dir", "does/not/exist"], "No prepared data in 'does/not/exist'"),
    (["--batch_size", 6, "--micro_batch_size", 4], "--batch_size 6 must be a multiple"),
    (["--strategy", "fsdp", "--devices", 2, "--quantize", "bnb.nf4"], "--strategy fsdp does not shard bitsandbytes"),
    (["--accelerator", "cuda"] if not torch.cuda.is_available() else ["--devices", 0], "--accelerator cuda: no CUDA"
     if not torch.cuda.is_available() else "--devices and --num_nodes must be at least 1"),
    (["--batch_size", 4, "--micro_batch_size", 2, "--num_nodes", 4], "multiple of --micro_batch_size x --devices x "
     "--num_nodes = 8"),
    (["--resume", "nope.pth"], "--resume 'nope.pth' is not a checkpoint file"),
    (["--max_iters", 0], "--max_iters must be at least 1"),
    (["--micro_batch_tokens", 0], "--micro_batch_tokens must be at least 1"),
    (["--micro_batch_tokens", 64, "--batch_size", 3, "--devices", 2], "--batch_size 3 must be a multiple of --devices "
     "x --num_nodes = 2"),
    (["--router_aux_loss_coef", 0.01], "'tiny-llama' has no mixture-of-experts layers"),
    (["--router_aux_loss_coef", -1], "--router_aux_loss_coef must be at least 0"),
])
def test_bad_input(tiny_checkpoint, tiny_data, tmp_path, args, message):
    out = tmp_path / "out"
    base = ["--checkpoint_dir", tiny_checkpoint, "--data_dir", tiny_data, "--out_dir", out]
    proc = run_script("finetune/lora.py", *base, *args, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not out.exists()


def test_bad_checkpoint_dir(tiny_data, tmp_path):
    proc = run_script("finetune/lora.py", "--checkpoint_dir", tmp_path / "nothing", "--data_dir", tiny_data,
                      "--out_dir", tmp_path / "out", check=False)
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "download.py" in proc.stderr


def test_help():
    proc = run_script("finetune/lora.py", "--help")
    for flag in ("--quantize", "--precision", "--devices", "--resume", "--lora_r", "--lora_head", "--learning_rate",
                 "--micro_batch_size", "--epochs", "--activation_checkpointing", "--lr_schedule", "--warmup_fraction",
                 "--min_lr_ratio", "--pad_multiple", "--logger", "--overwrite"):
        assert flag in proc.stdout


def test_router_aux_loss_is_transformers(tiny_data, smollm2_dir, tmp_path):
    """--router_aux_loss_coef on a tiny Qwen3-MoE (a dense first layer): the first step's aux_loss is transformers'
    `aux_loss` of Qwen3MoeForCausalLM(output_router_logits=True) on the step's examples (right-padded, attention mask),
    its loss the cross-entropy alone; with 2 micro-batches, the mean of each example's. It reaches the adapter; unset,
    it is the model's; a shared prompt counts as in rows that repeat it; with padding it is refused."""
    import transformers
    from test_merge import make_checkpoint, tiny_config

    from lit_gpt.convert import lit_to_hf
    from lit_gpt.data import collate, load_prepared
    from lit_gpt.moe import load_balancing_loss, router_logits

    base = make_checkpoint(tmp_path / "base", tiny_config("qwen3_moe", block_size=256, router_aux_loss_coef=0.002),
                           smollm2_dir)
    args = ["--precision", "32-true", "--max_iters", 1, "--batch_size", 2, "--lora_dropout", 0.0, "--eval_interval", 1,
            "--save_interval", 1, "--learning_rate", 0.01]
    for name, extra in {"aux": ["--router_aux_loss_coef", 10], "aux 2x1": ["--router_aux_loss_coef", 10,
                        "--micro_batch_size", 1], "none": ["--router_aux_loss_coef", 0], "default": []}.items():
        finetune(base, tiny_data, tmp_path / name, *args, *extra)
    hf = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**json.loads((base / "config.json").read_text())))
    config = Config.from_checkpoint(base)
    hf.load_state_dict(lit_to_hf(torch.load(base / "lit_model.pth", weights_only=True), config))
    train = load_prepared(tiny_data)[0]
    pair = sorted(train, key=lambda s: len(s["input_ids"]), reverse=True)[:2]  # the first batch: the longest
    assert len({len(s["input_ids"]) for s in pair}) == 2  # one of them padded

    def hf_losses(samples: list) -> tuple:
        x, y = collate(samples, 128)
        mask = torch.zeros_like(x)
        for row, s in enumerate(samples):
            mask[row, :min(len(s["input_ids"]), 128) - 1] = 1
        with torch.no_grad():
            out = hf(x, attention_mask=mask, output_router_logits=True)
        ce = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        return ce.item(), out.aux_loss.item()

    row = read_metrics(tmp_path / "aux")[0]
    ce, aux = hf_losses(pair)
    assert float(row["aux_loss"]) == pytest.approx(aux, rel=1e-5)
    assert float(row["loss"]) == pytest.approx(ce, rel=1e-5) == float(read_metrics(tmp_path / "none")[0]["loss"])
    each = [hf_losses([s])[1] for s in pair]
    assert float(read_metrics(tmp_path / "aux 2x1")[0]["aux_loss"]) == pytest.approx(sum(each) / 2, rel=1e-5)
    assert abs(sum(each) / 2 - aux) > 1e-6  # the micro-batches' mean, not the whole batch's aux
    with_aux, without = (torch.load(tmp_path / n / "lit_model_lora_finetuned.pth", weights_only=True)
                         for n in ("aux", "none"))
    assert any(not torch.equal(with_aux[k], without[k]) for k in without)
    assert all(torch.equal(with_aux[k], without[k]) for k in without if k.startswith("lm_head"))  # after the routers

    # unset: the model's coefficient (its config's router_aux_loss_coef), as TRL's
    assert json.loads((tmp_path / "default" / "lora_config.json").read_text())["train"]["router_aux_loss_coef"] == 0.002
    assert float(read_metrics(tmp_path / "default")[0]["aux_loss"]) == pytest.approx(aux, rel=1e-5)
    assert "aux_loss" not in read_metrics(tmp_path / "none")[0]

    # a preference pair as one packed row, its prompt shared (p, c, r): the statistics of TRL's two padded rows
    model = GPT(config)
    model.load_state_dict(torch.load(base / "lit_model.pth", weights_only=True))
    prompt, chosen, rejected = (torch.randint(0, 1000, (n,)) for n in (5, 7, 3))
    model(torch.cat([prompt, chosen, rejected])[None], lengths=[(5, 7, 3)])
    ours = load_balancing_loss(router_logits(model), config.n_expert_per_token, model.router_weights)
    rows = torch.zeros(2, 12, dtype=torch.long)
    rows[0], rows[1, :8] = torch.cat([prompt, chosen]), torch.cat([prompt, rejected])
    with torch.no_grad():
        theirs = hf(rows, attention_mask=(torch.arange(12) < torch.tensor([[12], [8]])).long(),
                    output_router_logits=True).aux_loss
    torch.testing.assert_close(ours.detach(), theirs)
    with torch.no_grad():  # a forward without gradients (a reference model's, a generation's) keeps no statistics
        model(rows)
    assert model.router_weights is not None and router_logits(model)[0].size(0) == 15

    for flags in (["--router_aux_loss_coef", 0.01], []):
        proc = finetune(base, tiny_data, tmp_path / "padded", *args, *flags, "--padding_free", "false", check=False)
        assert proc.returncode == 1 and "would count the padding as tokens" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and not (tmp_path / "padded").exists()
    assert ", the model default)" in proc.stderr
    finetune(base, tiny_data, tmp_path / "padded", *args, "--router_aux_loss_coef", 0, "--padding_free", "false")
