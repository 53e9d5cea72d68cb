"""finetune/dpo.py against TRL 1.16: the loss, every logged metric and every LoRA gradient of each loss type equal
DPOTrainer's (CPOTrainer's for SimPO, ORPOTrainer's for ORPO) on tiny random models of two families with the same
nonzero LoRA weights (PEFT's, imported with lit_gpt.peft.from_peft) and the same pairs, in float32; after 3 optimizer
steps the adapter equals TRL's. Also: a starting adapter as the reference, nf4, padded and shared-prompt batches,
2 micro-batches vs 1 and 2 devices vs 1, the shared-prompt forward, bad inputs, and the out dir read by merge."""

import copy
import csv
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from test_merge import script
from test_model import tiny_hf_model

from conftest import run_script
from lit_gpt.config import Config
from lit_gpt.convert import convert_hf_checkpoint, lit_to_hf
from lit_gpt.data import load_prepared, write_prepared
from lit_gpt.load import ADAPTER_FILE, load_model
from lit_gpt.lora import keep_reference, load_lora_state_dict, lora_filter
from lit_gpt.model import GPT
from lit_gpt.peft import from_peft
from lit_gpt.prompts import PromptStyle
from lit_gpt.quantize import dequantize_weight

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

dpo = script("finetune/dpo.py")
FAMILIES = ["llama-gqa", "gemma3"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEFT_CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": TARGETS, "lora_dropout": 0.0,
               "bias": "none", "task_type": "CAUSAL_LM"}


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory, smollm2_dir):
    """(kind, a tiny random transformers model, our checkpoint dir converted from it, the SmolLM2 tokenizer)."""
    kind = request.param
    hf = tiny_hf_model(kind, 0)
    hf_dir = tmp_path_factory.mktemp(kind) / "hf"
    hf.save_pretrained(hf_dir)
    convert_hf_checkpoint(hf_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(smollm2_dir / name, hf_dir / name)
    return kind, hf, hf_dir, transformers.AutoTokenizer.from_pretrained(hf_dir)


def random_pairs(vocab: int, n: int = 4, seed: int = 3) -> list:
    """Pairs of random token ids: prompts of 3-8 tokens, answers of 1-5."""
    g = torch.Generator().manual_seed(seed)
    sizes = [[int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((3, 9), (1, 6), (1, 6))] for _ in range(n)]
    return [{k: torch.randint(0, vocab, (size,), generator=g) for k, size in zip(("prompt_ids", "chosen_ids",
                                                                                 "rejected_ids"), sizes_i)}
            for sizes_i in sizes]


def randomize_lora(model, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)


def peft_tensors(model, what: str = "weights", adapter: str = "default") -> dict:
    """The PEFT model's LoRA weights (or gradients) of `adapter`, keyed as adapter_model.safetensors keys them."""
    return {name.replace(f".{adapter}", ""): param.detach() if what == "weights" else param.grad
            for name, param in model.named_parameters() if f".lora_A.{adapter}." in name
            or f".lora_B.{adapter}." in name}


def ours_from_peft(hf_dir: Path, weights: dict, quantize: str = None) -> GPT:
    """Our LoRA model of `hf_dir` holding the PEFT adapter `weights`, LoRA trainable, in train mode."""
    config = Config.from_checkpoint(hf_dir)
    lora, adapter, _ = from_peft(PEFT_CONFIG, weights, config)
    model = load_model(hf_dir, precision="32-true", lora_config=lora, quantize=quantize)
    load_lora_state_dict(model, adapter)
    for name, param in model.named_parameters():
        param.requires_grad = lora_filter(name)
    return model.train()


def hp(**changes):
    return dpo.TrainArgs(**{**dpo.HYPERPARAMETERS.__dict__, **changes})


def our_step(model: GPT, pairs: list, loss_type: str, padding_free: bool, **args) -> tuple:
    """(mean loss, mean metrics, {our adapter key: gradient}) of one micro-batch of all `pairs`."""
    objective = dpo.Preference(dpo.PreferenceArgs(loss_type=loss_type, **args), hp(padding_free=padding_free),
                               torch.device("cpu"), None, None, None)
    objective.start_batch(pairs)
    model.zero_grad()
    loss, metrics = objective.loss(model, pairs)
    (loss / len(pairs)).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if lora_filter(name)}
    return loss.item() / len(pairs), {k: v / len(pairs) for k, v in metrics.items()}, grads


def close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal up to float32 rounding: relative 1e-4, and absolute 1e-5 of the tensor's largest entry (sums taken in
    another order differ by that much on the small entries)."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()) + 1e-9,
                               msg=lambda m: f"{what}: {m}")


def assert_grads_equal(ours: dict, hf_dir: Path, trl_grads: dict) -> None:
    _, expected, _ = from_peft(PEFT_CONFIG, trl_grads, Config.from_checkpoint(hf_dir))
    assert expected.keys() == ours.keys()
    for name, grad in expected.items():
        close(ours[name], grad, name)


def assert_metrics_equal(ours: dict, expected: dict) -> None:
    """Up to float32 rounding of the summed log-probs (about -20 here: steps of 2e-6)."""
    for name, value in ours.items():
        assert value == pytest.approx(expected[name], rel=1e-4, abs=1e-5), name


def trl_dpo_trainer(hf, tokenizer, tmp_path: Path, peft_model=None, **config):
    """DPOTrainer on a copy of `hf`: with a new adapter (reference: adapters off) or `peft_model` (a PeftModel with
    a pretrained adapter: TRL copies it as the reference adapter "ref")."""
    args = trl.DPOConfig(**{**dict(output_dir=str(tmp_path / "trl"), report_to=[], bf16=False, use_cpu=True,
                                   max_length=None, gradient_checkpointing=False, per_device_train_batch_size=4),
                            **config})
    dataset = datasets.Dataset.from_dict({"prompt": ["a"] * 4, "chosen": [" b"] * 4, "rejected": [" c"] * 4})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if peft_model is not None:
            return trl.DPOTrainer(model=peft_model, args=args, train_dataset=dataset, processing_class=tokenizer)
        return trl.DPOTrainer(model=copy.deepcopy(hf), args=args, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=peft.LoraConfig(**{k: v for k, v in PEFT_CONFIG.items()
                                                             if k in ("r", "lora_alpha", "target_modules",
                                                                      "lora_dropout")}))


def trl_step(trainer, pairs: list) -> tuple:
    """(loss, metrics, LoRA gradients) of DPOTrainer on `pairs` as one batch."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    model = trainer.model
    model.train()
    model.zero_grad()
    batch = DataCollatorForPreference(pad_token_id=0)([{k: v.tolist() for k, v in s.items()} for s in pairs])
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return loss.item(), {k: v[-1] for k, v in trainer._metrics["train"].items()}, peft_tensors(model, "grads")


@pytest.mark.parametrize("loss_type, args", [
    ("sigmoid", {}), ("robust", {"label_smoothing": 0.2}), ("hinge", {"beta": 0.5}), ("ipo", {"beta": 0.3}),
    ("sigmoid", {"sft_weight": 0.6}),  # DPO + NLL: TRL's loss_type=["sigmoid", "sft"], loss_weights=[1, 0.6]
])
def test_dpo_losses_equal_trl(tiny, loss_type, args, tmp_path):
    kind, hf, hf_dir, tokenizer = tiny
    pairs = random_pairs(hf.config.vocab_size)
    trl_args = {k: v for k, v in args.items() if k != "sft_weight"}
    if "sft_weight" in args:
        trl_args.update(loss_type=[loss_type, "sft"], loss_weights=[1.0, args["sft_weight"]])
    trainer = trl_dpo_trainer(hf, tokenizer, tmp_path, **{"loss_type": [loss_type], **trl_args})
    randomize_lora(trainer.model)  # a new adapter with nonzero weights: the reference is the base (adapters off)
    trl_loss, trl_metrics, trl_grads = trl_step(trainer, pairs)
    assert trl_metrics["rewards/chosen"] != 0
    ours = ours_from_peft(hf_dir, peft_tensors(trainer.model))
    for padding_free in (True, False):
        loss, metrics, grads = our_step(ours, pairs, loss_type, padding_free, **args)
        assert loss == pytest.approx(trl_loss, rel=1e-5)
        assert set(metrics) == {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                                "logps/chosen", "logps/rejected"}
        assert_metrics_equal(metrics, trl_metrics)
        assert_grads_equal(grads, hf_dir, trl_grads)


def test_conservative_dpo_equals_trl_on_single_pairs(tiny, tmp_path):
    """TRL 1.16's sigmoid loss has no label smoothing; its "aot" loss applies conservative DPO's formula to sorted
    log-ratios, which for a batch of one pair is cDPO itself: our sigmoid with --label_smoothing, pair by pair."""
    kind, hf, hf_dir, tokenizer = tiny
    pairs = random_pairs(hf.config.vocab_size)
    trainer = trl_dpo_trainer(hf, tokenizer, tmp_path, loss_type=["aot"], label_smoothing=0.25,
                              per_device_train_batch_size=1)
    randomize_lora(trainer.model)
    ours = ours_from_peft(hf_dir, peft_tensors(trainer.model))
    for pair in pairs:
        trl_loss, _, trl_grads = trl_step(trainer, [pair])
        loss, _, grads = our_step(ours, [pair], "sigmoid", True, label_smoothing=0.25)
        assert loss == pytest.approx(trl_loss, rel=1e-5)
        assert_grads_equal(grads, hf_dir, trl_grads)


def cpo_batch(pairs: list) -> dict:
    """The batch layout of TRL's CPOTrainer and ORPOTrainer: prompt + answer rows, labels -100 on the prompt."""
    batch = {}
    for kind in ("chosen", "rejected"):
        rows = [torch.cat([s["prompt_ids"], s[f"{kind}_ids"]]) for s in pairs]
        width = max(map(len, rows))
        ids, mask, labels = (torch.full((len(rows), width), fill) for fill in (0, 0, -100))
        for i, (row, s) in enumerate(zip(rows, pairs)):
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
            labels[i, len(s["prompt_ids"]):len(row)] = row[len(s["prompt_ids"]):]
        batch.update({f"{kind}_input_ids": ids, f"{kind}_attention_mask": mask, f"{kind}_labels": labels})
    return batch


@pytest.mark.parametrize("loss_type, sft_weight", [("simpo", 0.0), ("simpo", 0.4), ("orpo", 0.0)])
def test_reference_free_losses_equal_trl(tiny, loss_type, sft_weight, tmp_path):
    """SimPO = TRL's CPOTrainer with loss_type="simpo" and cpo_alpha=0 (no NLL term), or with cpo_alpha = our
    --sft_weight; ORPO = ORPOTrainer (its NLL is over prompt + chosen, as TRL's)."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    kind, hf, hf_dir, tokenizer = tiny
    pairs = random_pairs(hf.config.vocab_size)
    common = dict(output_dir=str(tmp_path / "trl"), report_to=[], bf16=False, use_cpu=True, beta=0.2,
                  gradient_checkpointing=False)
    dataset = datasets.Dataset.from_dict({"prompt": ["a"] * 4, "chosen": [" b"] * 4, "rejected": [" c"] * 4})
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if loss_type == "simpo":
            trainer = CPOTrainer(model=copy.deepcopy(hf), args=CPOConfig(loss_type="simpo", cpo_alpha=sft_weight,
                                                                         simpo_gamma=0.7, **common),
                                 train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
        else:
            trainer = ORPOTrainer(model=copy.deepcopy(hf), args=ORPOConfig(**common), train_dataset=dataset,
                                  processing_class=tokenizer, peft_config=lora)
    model = trainer.model
    randomize_lora(model)
    model.train()
    loss, metrics = trainer.get_batch_loss_metrics(model, cpo_batch(pairs))
    loss.backward()
    ours = ours_from_peft(hf_dir, peft_tensors(model))
    args = {"beta": 0.2, **({"simpo_gamma": 0.7, "sft_weight": sft_weight} if loss_type == "simpo" else {})}
    for padding_free in (True, False):
        our_loss, our_metrics, grads = our_step(ours, pairs, loss_type, padding_free, **args)
        assert our_loss == pytest.approx(loss.item(), rel=1e-5)
        assert_metrics_equal(our_metrics, metrics)
        assert_grads_equal(grads, hf_dir, peft_tensors(model, "grads"))


def test_starting_adapter_is_the_reference(tiny, tmp_path):
    """TRL, given a PeftModel with a trained adapter, copies it as the reference adapter "ref"; ours keeps a frozen
    copy of the adapter it started from (`keep_reference`). After the policy's adapter moves, both compare to it."""
    kind, hf, hf_dir, tokenizer = tiny
    pairs = random_pairs(hf.config.vocab_size)
    start = peft.get_peft_model(copy.deepcopy(hf), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                                  lora_dropout=0.0))
    randomize_lora(start, seed=5)
    starting = peft_tensors(start)
    trainer = trl_dpo_trainer(hf, tokenizer, tmp_path, peft_model=start)
    assert "ref" in trainer.model.peft_config
    randomize_lora(trainer.model, seed=6)  # moves "default" and "ref" alike ...
    with torch.no_grad():  # ... so put the starting weights back into "ref"
        for name, param in trainer.model.named_parameters():
            if ".ref." in name:
                param.copy_(starting[name.replace(".ref", "")])
    trl_loss, trl_metrics, trl_grads = trl_step(trainer, pairs)
    ours = ours_from_peft(hf_dir, starting)
    keep_reference(ours)
    _, moved, _ = from_peft(PEFT_CONFIG, peft_tensors(trainer.model), Config.from_checkpoint(hf_dir))
    load_lora_state_dict(ours, moved)
    loss, metrics, grads = our_step(ours, pairs, "sigmoid", True)
    assert loss == pytest.approx(trl_loss, rel=1e-5)
    assert_metrics_equal(metrics, trl_metrics)
    assert_grads_equal(grads, hf_dir, trl_grads)


def test_nf4_equals_trl_on_the_dequantized_weights(tmp_path, smollm2_dir):
    """Our QLoRA model (nf4 base) against TRL on a transformers model holding the dequantized nf4 weights."""
    kind = "llama-gqa"
    hf = tiny_hf_model(kind, 0)
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir)
    convert_hf_checkpoint(hf_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(smollm2_dir / name, hf_dir / name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    quantized = load_model(hf_dir, precision="32-true", quantize="bnb.nf4")
    dequantized = {name: dequantize_weight(param).float() for name, param in quantized.named_parameters()}
    hf.load_state_dict(lit_to_hf(dequantized, quantized.config), strict=False)
    pairs = random_pairs(hf.config.vocab_size)
    trainer = trl_dpo_trainer(hf, tokenizer, tmp_path)
    randomize_lora(trainer.model)
    trl_loss, trl_metrics, trl_grads = trl_step(trainer, pairs)
    ours = ours_from_peft(hf_dir, peft_tensors(trainer.model), quantize="bnb.nf4")
    assert any(getattr(p, "quant_state", None) is not None for p in ours.parameters())
    loss, metrics, grads = our_step(ours, pairs, "sigmoid", True)
    assert loss == pytest.approx(trl_loss, rel=1e-4)
    assert_metrics_equal(metrics, trl_metrics)
    assert_grads_equal(grads, hf_dir, trl_grads)


@torch.no_grad()
def test_shared_prompt_forward_equals_separate_runs(tiny):
    """Prompt, chosen, rejected in one packed row (the answers sharing the prompt) gives the logits of running
    prompt + chosen and prompt + rejected each alone; and a plain example packed next to them is unaffected."""
    kind, hf, hf_dir, _ = tiny
    model = load_model(hf_dir, precision="32-true")
    g = torch.Generator().manual_seed(0)
    prompt, chosen, rejected, other = (torch.randint(0, hf.config.vocab_size, (n,), generator=g) for n in (9, 6, 4, 5))
    packed = model(torch.cat([prompt, chosen, rejected, other])[None], lengths=[(9, 6, 4), 5])[0]
    alone = [model(torch.cat(x)[None])[0] for x in ((prompt, chosen), (prompt, rejected), (other,))]
    torch.testing.assert_close(packed[:15], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[15:19], alone[1][9:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[19:], alone[2], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# the script: a prepared dir of pairs, 3 steps against TRL's, micro-batches and devices, the out dir, bad inputs


def write_pairs(path: Path, pairs: list, val: list = None) -> Path:
    write_prepared(path, pairs, val or pairs[:2], PromptStyle.from_name("alpaca"),
                   {"format": "preference", "prompt_style": "alpaca", "max_seq_length": None, "seed": 0})
    return path


def flags(hf_dir: Path, data: Path, out: Path, *args) -> list:
    return ["finetune/dpo.py", "--checkpoint_dir", hf_dir, "--data_dir", data, "--out_dir", out, "--precision",
            "32-true", "--batch_size", 4, "--micro_batch_size", 4, "--max_iters", 3, "--lr_schedule", "constant",
            "--warmup_fraction", 0, "--learning_rate", 1e-2, "--eval_interval", 3, "--eval_iters", 1,
            "--save_interval", 3, *args]


def train(hf_dir: Path, data: Path, out: Path, *args, check: bool = True):
    return run_script(*flags(hf_dir, data, out, *args), check=check, env={"OMP_NUM_THREADS": "1"})


def adapter(out: Path) -> dict:
    return torch.load(out / ADAPTER_FILE, weights_only=True)


def test_three_steps_from_an_sft_adapter_equal_trl(tmp_path, smollm2_dir):
    """finetune/dpo.py --lora_path (an adapter imported from PEFT) for 3 AdamW steps of the same 4 pairs, constant
    learning rate, clipping at 1.0, equals DPOTrainer.train() from the same PeftModel: the adapter, the losses."""
    hf = tiny_hf_model("llama-gqa", 0)
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir)
    convert_hf_checkpoint(hf_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(smollm2_dir / name, hf_dir / name)
    pairs = random_pairs(hf.config.vocab_size)
    start = peft.get_peft_model(copy.deepcopy(hf), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                                  lora_dropout=0.0))
    randomize_lora(start, seed=5)
    start.save_pretrained(tmp_path / "peft")
    run_script("scripts/import_peft.py", "--peft_dir", tmp_path / "peft", "--checkpoint_dir", hf_dir,
               "--out_dir", tmp_path / "sft")
    out = tmp_path / "dpo"
    proc = train(hf_dir, write_pairs(tmp_path / "pairs", pairs), out, "--lora_path", tmp_path / "sft")
    assert "rewards/accuracies" in proc.stdout

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    trainer = trl_dpo_trainer(hf, tokenizer, tmp_path, peft_model=start, learning_rate=1e-2, max_steps=3,
                              lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, max_grad_norm=1.0)
    trainer.train_dataset = datasets.Dataset.from_dict({k: [s[k].tolist() for s in pairs] for k in pairs[0]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    _, expected, _ = from_peft(PEFT_CONFIG, peft_tensors(trainer.model), Config.from_checkpoint(hf_dir))
    ours = adapter(out)
    assert ours.keys() == expected.keys()
    for name, value in expected.items():
        close(ours[name], value, name)
    trl_losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    our_losses = [float(row.split(",")[2]) for row in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert our_losses == pytest.approx(trl_losses, rel=1e-4)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, smollm2_dir):
    """(our checkpoint dir of a tiny random Llama, a prepared dir of 8 random pairs)."""
    tmp = tmp_path_factory.mktemp("run")
    hf = tiny_hf_model("llama-gqa", 0)
    hf.save_pretrained(tmp / "hf")
    convert_hf_checkpoint(tmp / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(smollm2_dir / name, tmp / "hf" / name)
    return tmp / "hf", write_pairs(tmp / "pairs", random_pairs(hf.config.vocab_size, n=8))


@pytest.mark.parametrize("loss_type", ["sigmoid", "orpo"])
def test_micro_batches_and_devices_give_the_same_step(tiny_run, tmp_path, loss_type):
    """Two steps of 4 pairs: in 1 micro-batch, in 2 (ORPO's token-mean NLL normalized over the whole batch), on 2
    devices (DDP, 2 each), padded; with precomputed reference log-probs and under FSDP (sigmoid): the same losses,
    metrics and adapter."""
    hf_dir, data = tiny_run
    flags = ["--loss_type", loss_type, "--max_iters", 2]
    runs = {"one": [], "two micro-batches": ["--micro_batch_size", 2], "padded": ["--padding_free", "false"],
            "two devices": ["--devices", 2, "--micro_batch_size", 2]}
    if loss_type == "sigmoid":
        runs["precomputed"] = ["--precompute_reference", "true"]
        runs["fsdp"] = ["--devices", 2, "--strategy", "fsdp", "--micro_batch_size", 2]
    adapters, metrics = {}, {}
    for name, args in runs.items():
        out = tmp_path / name.replace(" ", "-")
        train(hf_dir, data, out, *flags, *args)
        adapters[name] = adapter(out)
        metrics[name] = [{k: float(v) for k, v in row.items() if k not in ("tokens_per_sec", "elapsed") and v}
                         for row in csv.DictReader(open(out / "metrics.csv"))]
    assert any(v.abs().sum() > 0 for k, v in adapters["one"].items() if "lora_B" in k)
    for name in runs:
        # the losses and metrics of each step (normalized over the whole batch: AdamW's update alone would hardly
        # show a wrong scale) ...
        assert metrics[name][0].keys() == metrics["one"][0].keys()
        for step, (row, expected) in enumerate(zip(metrics[name], metrics["one"])):
            if step == 0:  # policy = reference: rewards 0 up to rounding, which decides chosen > rejected
                row, expected = ({k: v for k, v in r.items() if k != "rewards/accuracies"} for r in (row, expected))
            assert row == pytest.approx(expected, rel=1e-4, abs=1e-5), name
        # ... and the adapter (AdamW divides each entry's step by its gradient's size: noise-sized gradients of
        # entries near zero move by up to 1e-4 of the learning rate)
        for key, value in adapters["one"].items():
            torch.testing.assert_close(adapters[name][key], value, rtol=1e-4,
                                       atol=1e-6 + 1e-3 * float(value.abs().max()),
                                       msg=lambda m, key=key, name=name: f"{name}: {key}: {m}")


def test_a_killed_run_resumes_to_the_same_adapter(tiny_run, tmp_path):
    """SIGKILLed while writing its step-4 checkpoint (tests/sigkill_at.py: the 4th atomic rename), then --resume
    auto from step 2 (the reference log-probs precomputed again): the uninterrupted run's adapter, bit for bit."""
    hf_dir, data = tiny_run
    args = ["--max_iters", 4, "--save_interval", 2, "--eval_interval", 2, "--precompute_reference", "true"]
    train(hf_dir, data, tmp_path / "full", *args)
    out = tmp_path / "killed"
    proc = run_script("tests/sigkill_at.py", 4, *flags(hf_dir, data, out, *args), check=False,
                      env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9 and not (out / ADAPTER_FILE).exists()
    assert "Resumed from" in train(hf_dir, data, out, *args, "--resume", "auto").stdout
    expected, actual = adapter(tmp_path / "full"), adapter(out)
    assert all(torch.equal(actual[k], v) for k, v in expected.items())
    rows = [[{k: v for k, v in row.items() if k not in ("tokens_per_sec", "elapsed")}
             for row in csv.DictReader(open(path / "metrics.csv"))] for path in (out, tmp_path / "full")]
    assert rows[0] == rows[1]


def test_out_dir_is_an_adapter_dir(tiny_run, tmp_path):
    """The run record, metrics.csv with TRL's names (train and validation) and the plot; merge reads the out dir."""
    hf_dir, data = tiny_run
    out = tmp_path / "out"
    train(hf_dir, data, out, "--loss_type", "ipo")
    record = json.loads((out / "lora_config.json").read_text())
    assert record["objective"] == "dpo.ipo" and record["train"]["loss_type"] == "ipo"
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                 "logps/rejected"):
        assert name in header and f"val_{name}" in header
    assert (out / "loss.png").stat().st_size > 0
    run_script("scripts/merge_lora.py", "--lora_path", out, "--out_dir", tmp_path / "merged")
    merged = load_model(tmp_path / "merged", precision="32-true")
    unmerged = load_model(hf_dir, precision="32-true", lora_path=out)
    x = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(merged(x), unmerged(x), rtol=1e-4, atol=1e-4)


def test_bad_inputs_are_one_line_errors(tiny_run, tmp_path, smollm2_dir):
    hf_dir, data = tiny_run
    cases = [
        (["--loss_type", "orpo", "--precompute_reference", "true"], "uses no reference model"),
        (["--loss_type", "hinge", "--label_smoothing", "0.1"], "--label_smoothing 0.1"),
        (["--loss_type", "robust", "--label_smoothing", "0.5"], "in [0, 0.5)"),
        (["--beta", "0"], "--beta must be above 0"),
        (["--max_seq_length", "4"], "prepare them again"),
    ]
    for args, message in cases:
        proc = train(hf_dir, data, tmp_path / "out", *args, check=False)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr[-2000:])
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "out" / ADAPTER_FILE).exists()
    sft = tmp_path / "sft"
    write_prepared(sft, [{"input_ids": torch.arange(5), "labels": torch.arange(5)}] * 2,
                   [{"input_ids": torch.arange(5), "labels": torch.arange(5)}], PromptStyle.from_name("alpaca"),
                   {"prompt_style": "alpaca", "max_seq_length": None})
    proc = train(hf_dir, sft, tmp_path / "out", check=False)
    assert proc.returncode == 1 and "for finetune/lora.py" in proc.stderr and "prepare_preferences.py" in proc.stderr
    proc = run_script("finetune/lora.py", "--checkpoint_dir", hf_dir, "--data_dir", data, "--out_dir",
                      tmp_path / "out", check=False)
    assert proc.returncode == 1 and "finetune/dpo.py" in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1


def test_help():
    proc = run_script("finetune/dpo.py", "--help")
    for flag in ("--loss_type", "--beta", "--label_smoothing", "--simpo_gamma", "--precompute_reference",
                 "--lora_path", "--quantize", "--devices", "--resume", "--micro_batch_size"):
        assert flag in proc.stdout


def test_smollm2_end_to_end(tmp_path, smollm2_dir):
    """SmolLM2-135M-Instruct: prepare the shipped arithmetic pairs, DPO for a few steps, then the held-out
    pairs' margin log p(chosen) - log p(rejected) has grown, on average and for most pairs; merge + generate of the
    DPO adapter answer a held-out problem."""
    data, out = tmp_path / "pairs", tmp_path / "dpo"
    proc = run_script("scripts/prepare_preferences.py", "--checkpoint_dir", smollm2_dir, "--data_file",
                      Path(__file__).parent.parent / "data/arithmetic/preferences.jsonl", "--destination_path", data)
    assert "train 570, val 30" in proc.stdout
    run_script("finetune/dpo.py", "--checkpoint_dir", smollm2_dir, "--data_dir", data, "--out_dir", out,
               "--precision", "32-true", "--max_iters", 6, "--batch_size", 8,
               "--micro_batch_size", 8, "--learning_rate", 5e-4, "--eval_interval", 6, "--eval_iters", 1,
               "--save_interval", 100, env={"OMP_NUM_THREADS": "2"})
    _, val, _ = load_prepared(data)

    @torch.no_grad()
    def margins(lora_path) -> torch.Tensor:
        model = load_model(smollm2_dir, precision="32-true", lora_path=lora_path)
        logps = [dpo.answer_logps(model, val[i:i + 10], True, torch.device("cpu")) for i in range(0, len(val), 10)]
        return torch.cat([x["chosen"] - x["rejected"] for x in logps])

    before, after = margins(None), margins(out)
    assert after.mean() > before.mean() + 0.5, (before.mean(), after.mean())
    # the base already prefers the chosen answer of 29 of the 30 pairs; DPO may flip one or two (README: measured)
    assert (after > 0).sum() >= 27 and (after > before).float().mean() > 0.6
    run_script("scripts/merge_lora.py", "--lora_path", out, "--out_dir", tmp_path / "merged")
    proc = run_script("generate/base.py", "--checkpoint_dir", tmp_path / "merged", "--prompt",
                      "Lily has 9 apples and eats 4. How many apples does Lily have left?", "--temperature", 0,
                      "--max_new_tokens", 40, "--stream", "false")
    assert proc.stdout.strip()
