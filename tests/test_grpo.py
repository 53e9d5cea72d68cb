"""finetune/grpo.py's math against TRL 1.16's GRPOTrainer: for each loss type, reward scaling, KL coefficient, one or
two iterations (an old policy that differs, so that ratios clip) and masked truncated completions, on a tiny random
Llama (GQA) with the same nonzero LoRA weights (PEFT's, imported with lit_gpt.peft.from_peft), the same prompts,
completions and rewards: the advantages, the old and reference log-probs, the loss, every logged metric and every LoRA
gradient equal TRL's in float32. TRL runs its own `_generate_and_score_completions` (our completions through its
`rollout_func`, our rewards through reward functions) and `_compute_loss`."""

import copy
import csv
import json
import math
import shutil
import warnings

import pytest
import torch
from test_dpo import PEFT_CONFIG, TARGETS, adapter, ours_from_peft, peft_tensors, randomize_lora
from test_merge import script
from test_model import tiny_hf_model

from conftest import run_script
from lit_gpt.config import Config
from lit_gpt.convert import convert_hf_checkpoint
from lit_gpt.load import ADAPTER_FILE
from lit_gpt.lora import load_lora_state_dict, reference_model
from lit_gpt.peft import from_peft

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

grpo = script("finetune/grpo.py")

EOS = 2  # SmolLM2-Instruct's <|im_end|>: its eos and pad token, and the tiny Llama's eos
G, MAX_COMPLETION = 3, 6
WEIGHTS = [1.0, 0.5]
NAMES = ["correct", "formatted"]
_g = torch.Generator().manual_seed(7)
PROMPTS = [torch.randint(3, 120, (n,), generator=_g) for n in (5, 8, 3)]
# per prompt, G completions: ending with EOS, or cut at MAX_COMPLETION without one (truncated); [EOS] alone; a full
# length one that ends with EOS (not truncated)
COMPLETIONS = [torch.cat([torch.randint(3, 120, (n,), generator=_g), torch.tensor([EOS] if eos else [])]).long()
               for n, eos in ((2, True), (6, False), (0, True), (6, False), (3, True), (1, True), (4, True), (5, True),
                              (1, True))]
N = len(COMPLETIONS)
# (correct, formatted) of each completion, None: no reward. Group 0 has a completion no function scores, group 2
# equal weighted sums (std 0)
REWARDS = [(1.0, 0.5), (0.0, None), (None, None), (0.5, 1.0), (1.0, 0.0), (0.0, 0.25), (0.5, 0.0), (0.0, 1.0),
           (0.25, 0.5)]
REWARD_OF = {tuple(c.tolist()): r for c, r in zip(COMPLETIONS, REWARDS)}


def correct(prompts, completions, completion_ids, **kwargs):
    return [REWARD_OF[tuple(ids)][0] for ids in completion_ids]


def formatted(prompts, completions, completion_ids, **kwargs):
    return [REWARD_OF[tuple(ids)][1] for ids in completion_ids]


def rollout(prompts: list, trainer) -> dict:
    """TRL's rollout_func: our prompts ("p0", "p1", "p2", each G times in a row) and completions."""
    assert prompts == [f"p{i}" for i in range(len(PROMPTS)) for _ in range(G)]
    return {"prompt_ids": [PROMPTS[int(p[1:])].tolist() for p in prompts],
            "completion_ids": [c.tolist() for c in COMPLETIONS], "logprobs": None}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir):
    """(a tiny random Llama with grouped queries, our checkpoint dir converted from it, the SmolLM2 tokenizer)."""
    hf = tiny_hf_model("llama-gqa", 0)
    hf_dir = tmp_path_factory.mktemp("grpo") / "hf"
    hf.save_pretrained(hf_dir)
    convert_hf_checkpoint(hf_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(smollm2_dir / name, hf_dir / name)
    return hf, hf_dir, transformers.AutoTokenizer.from_pretrained(hf_dir)


def set_peft(model, weights: dict) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.replace(".default", "") in weights:
                param.copy_(weights[name.replace(".default", "")])


def trl_grpo_trainer(hf, tokenizer, tmp_path, **config):
    """GRPOTrainer on a copy of `hf` with a new adapter, one micro-batch of our N completions per step."""
    lora = peft.LoraConfig(r=PEFT_CONFIG["r"], lora_alpha=PEFT_CONFIG["lora_alpha"], target_modules=TARGETS,
                           lora_dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = trl.GRPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", bf16=False, use_cpu=True,
                              gradient_checkpointing=False, per_device_train_batch_size=N, num_generations=G,
                              max_completion_length=MAX_COMPLETION, reward_weights=WEIGHTS, **config)
        trainer = trl.GRPOTrainer(model=copy.deepcopy(hf), reward_funcs=[correct, formatted], args=args,
                                  train_dataset=datasets.Dataset.from_dict({"prompt": ["p0", "p1", "p2"]}),
                                  processing_class=tokenizer, peft_config=lora, rollout_func=rollout)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(): one micro-batch per step here
    assert trainer.eos_token_ids == [EOS] and tokenizer.pad_token_id == EOS
    return trainer


def trl_step(trainer, current: dict, old: dict) -> tuple:
    """(the inputs of _compute_loss, the loss, the logged metrics, the LoRA gradients) of one step of TRL: the
    completions scored with the adapter `old` (the policy that sampled them), the loss of the adapter `current`."""
    model = trainer.model
    model.train()
    trainer._metrics["train"].clear()
    set_peft(model, old)
    inputs = trainer._generate_and_score_completions([{"prompt": f"p{i}"} for i in range(len(PROMPTS))
                                                      for _ in range(G)])
    set_peft(model, current)
    model.zero_grad()
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()
               if not k.startswith("completions/") and k != "num_tokens"}
    return inputs, loss.item(), metrics, peft_tensors(model, "grads")


def assert_rows_equal(ours: list, padded: torch.Tensor, mask: torch.Tensor, what: str) -> None:
    """Our per-completion values against TRL's (N, C) right-padded ones where `mask`."""
    for i, (row, m) in enumerate(zip(padded, mask.bool())):
        torch.testing.assert_close(ours[i][m[:len(ours[i])]], row[m], msg=lambda msg: f"{what} {i}: {msg}")


DEFAULTS = dict(loss_type="dapo", scale_rewards="group", beta=0.0, num_iterations=1, temperature=0.7)
CASES = {
    "dapo": dict(temperature=1.0),
    "grpo": dict(loss_type="grpo"),
    "dr_grpo": dict(loss_type="dr_grpo"),
    "bnpo": dict(loss_type="bnpo"),
    "batch-std": dict(scale_rewards="batch"),
    "no-std": dict(loss_type="grpo", scale_rewards="none"),
    "kl": dict(loss_type="grpo", beta=0.04),
    "kl-without-ratio": dict(beta=0.04, use_bias_correction_kl=False),
    "two-iterations": dict(num_iterations=2, epsilon_high=0.28),
    "two-iterations-kl": dict(loss_type="dr_grpo", num_iterations=2, beta=0.04, scale_rewards="batch"),
    "masked-truncated": dict(mask_truncated_completions=True, num_iterations=2, beta=0.04),
    "masked-truncated-grpo": dict(loss_type="grpo", mask_truncated_completions=True, num_iterations=2),
    "masked-truncated-bnpo": dict(loss_type="bnpo", mask_truncated_completions=True, scale_rewards="none"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_grpo_equals_trl(tiny, case, tmp_path):
    hf, hf_dir, tokenizer = tiny
    args = {**DEFAULTS, **CASES[case]}
    trainer = trl_grpo_trainer(hf, tokenizer, tmp_path, **args)
    randomize_lora(trainer.model)  # a new adapter with nonzero weights: the reference is the base (adapters off)
    current = {k: v.clone() for k, v in peft_tensors(trainer.model).items()}
    g = torch.Generator().manual_seed(11)
    old = current if args["num_iterations"] == 1 else {k: v + 0.05 * torch.randn(v.shape, generator=g)
                                                       for k, v in current.items()}
    inputs, trl_loss, trl_metrics, trl_grads = trl_step(trainer, current, old)

    # ours: the old policy's log-probs, then the current adapter's, the reference's (adapter off), the loss
    config = Config.from_checkpoint(hf_dir)
    ours = ours_from_peft(hf_dir, old)
    groups = [{"prompt_ids": p, "completion_ids": COMPLETIONS[i * G:(i + 1) * G]} for i, p in enumerate(PROMPTS)]
    temperature, beta = args["temperature"], args["beta"]
    old_logps = None
    if args["num_iterations"] > 1:
        with torch.no_grad():
            old_logps = grpo.completion_logps(ours, groups, temperature)
    load_lora_state_dict(ours, from_peft(PEFT_CONFIG, current, config)[1])
    ref_logps = None
    if beta:
        with torch.no_grad(), reference_model(ours):
            ref_logps = grpo.completion_logps(ours, groups, temperature)
    ours.zero_grad()
    logps, entropies = grpo.completion_logps(ours, groups, temperature, entropy=True)
    rewards = torch.tensor([[math.nan if r is None else r for r in row] for row in REWARDS])
    advantages, metrics = grpo.group_advantages(rewards, torch.tensor(WEIGHTS), G, args["scale_rewards"], NAMES)
    truncated = [c[-1].item() != EOS for c in COMPLETIONS] if args.get("mask_truncated_completions") else None
    token_total = sum(len(c) for i, c in enumerate(COMPLETIONS) if not (truncated and truncated[i]))
    n = grpo.loss_normalizer(args["loss_type"], token_total, N, 1)
    loss, sums, extremes = grpo.grpo_loss(
        logps, old_logps, ref_logps, advantages, loss_type=args["loss_type"], epsilon=0.2,
        epsilon_high=args.get("epsilon_high"), beta=beta, max_completion_length=MAX_COMPLETION,
        token_total=token_total, normalizer=n, truncated=truncated, entropies=entropies,
        kl_ratio=args.get("use_bias_correction_kl", True))
    (loss / n).backward()

    torch.testing.assert_close(advantages, inputs["advantages"])
    assert advantages[2] == 0 and (advantages[6:] == 0).all() and int((advantages != 0).sum()) == 5  # group 2: std 0
    mask = inputs["completion_mask"]
    assert int(mask.sum()) == token_total == int(inputs["num_items_in_batch"])
    if old_logps is not None:
        assert_rows_equal(old_logps, inputs["old_per_token_logps"], mask, "old log-probs")
    if ref_logps is not None:
        assert_rows_equal(ref_logps, inputs["ref_per_token_logps"], mask, "reference log-probs")
    torch.testing.assert_close(loss / n, torch.tensor(trl_loss))
    ours_metrics = {**metrics, **{k: v / n for k, v in sums.items()}, **extremes}
    assert ours_metrics.keys() == trl_metrics.keys()
    names = sorted(trl_metrics)
    torch.testing.assert_close(torch.tensor([ours_metrics[k] for k in names]),
                               torch.tensor([trl_metrics[k] for k in names]), msg=lambda m: f"{names}: {m}")
    if args["num_iterations"] > 1:  # the old policy differs enough for some ratios to clip, not all
        assert 0 < ours_metrics["clip_ratio/region_mean"] < 1
    if beta:
        assert ours_metrics["kl"] > 0
    expected = from_peft(PEFT_CONFIG, trl_grads, config)[1]
    assert expected.keys() == {k for k, p in ours.named_parameters() if p.requires_grad}
    for name, p in ours.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, expected[name], msg=lambda m, name=name: f"{name}: {m}")
    assert any(v.abs().sum() > 0 for v in expected.values())


def test_advantages_of_single_completions_and_bad_flags():
    """One completion per prompt (TRL's evaluation with num_generations_eval=1): std 0, advantage 0; bad values."""
    advantages, metrics = grpo.group_advantages(torch.tensor([[1.0], [3.0]]), torch.ones(1), 1, "group")
    assert advantages.tolist() == [0.0, 0.0] and metrics["frac_reward_zero_std"] == 1.0
    assert metrics["reward"] == 2.0 and metrics["reward_std"] == pytest.approx(2 ** 0.5)
    with pytest.raises(ValueError, match="num_generations=2"):
        grpo.group_advantages(torch.ones(3, 1), torch.ones(1), 2)
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo.group_advantages(torch.ones(2, 1), torch.ones(1), 2, "mean")
    with pytest.raises(ValueError, match="loss_type"):
        grpo.loss_normalizer("cispo", 1, 1, 1)


def test_empty_completion_and_micro_batches(tiny):
    """An empty completion scores nothing and changes nothing else; the groups split in two micro-batches give the
    one micro-batch's loss, metrics and gradients once normalized by the whole batch (dapo, grpo)."""
    hf, hf_dir, _ = tiny
    adapter = peft.get_peft_model(copy.deepcopy(hf), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    randomize_lora(adapter, seed=3)
    model = ours_from_peft(hf_dir, peft_tensors(adapter))
    g = torch.Generator().manual_seed(3)
    groups = [{"prompt_ids": p, "completion_ids": COMPLETIONS[i * G:(i + 1) * G]} for i, p in enumerate(PROMPTS)]
    with_empty = [{**groups[0], "completion_ids": [*groups[0]["completion_ids"], torch.zeros(0, dtype=torch.long)]}]
    with torch.no_grad():
        a, b = grpo.completion_logps(model, groups[:1]), grpo.completion_logps(model, with_empty)
    assert len(b) == G + 1 and b[-1].shape == (0,)
    torch.testing.assert_close(b[:G], a)
    advantages = torch.randn(N, generator=g)
    old = [x - 0.3 * torch.randn(x.shape, generator=g) for x in grpo.completion_logps(model, groups)]
    old = [x.detach() for x in old]
    tokens = sum(len(c) for c in COMPLETIONS)
    for loss_type in ("dapo", "grpo"):
        n = grpo.loss_normalizer(loss_type, tokens, N, 2)
        results = []
        for parts in ([groups], [groups[:2], groups[2:]]):
            model.zero_grad()
            total, sums, done = 0.0, {}, 0
            for part in parts:
                logps = grpo.completion_logps(model, part)
                k = len(logps)
                loss, metrics, _ = grpo.grpo_loss(logps, old[done:done + k], None, advantages[done:done + k],
                                                  loss_type=loss_type, max_completion_length=MAX_COMPLETION,
                                                  token_total=tokens, normalizer=n)
                (loss / n).backward()
                total += loss.item() / n
                sums = {key: sums.get(key, 0.0) + v / n for key, v in metrics.items()}
                done += k
            results.append((total, sums, [p.grad.clone() for p in model.parameters() if p.requires_grad]))
        (one_loss, one_sums, one_grads), (two_loss, two_sums, two_grads) = results
        assert two_loss == pytest.approx(one_loss, rel=1e-5) and 0 < one_sums["clip_ratio/region_mean"] < 1
        assert two_sums == pytest.approx(one_sums, rel=1e-6)
        for x, y in zip(two_grads, one_grads):
            torch.testing.assert_close(x, y)


############
# the script
############
LENGTH_REWARD = '''
def length(prompts, completions, answers):
    """A reward that varies between completions of a random model: their length in characters."""
    return [len(c) / 50 for c in completions]


def wrong_count(prompts, completions, answers):
    return [0.0]
'''


@pytest.fixture(scope="module")
def prompts_run(tmp_path_factory, smollm2_dir):
    """(a tiny random Llama with the SmolLM2 tokenizer, 8 GSM8K rows + 2 without an answer, 2 held-out, a reward
    file)."""
    from test_generate import TINY as TINY_LLAMA

    from lit_gpt.model import GPT

    tmp = tmp_path_factory.mktemp("grpo-run")
    checkpoint = tmp / "tiny"
    checkpoint.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
        shutil.copy(smollm2_dir / name, checkpoint / name)
    config = Config(**TINY_LLAMA)
    torch.manual_seed(0)
    GPT(config)  # the same draws as the generate tests' tiny model, then its own
    model = GPT(config)
    config.save(checkpoint / "lit_config.json")
    torch.save(model.state_dict(), checkpoint / "lit_model.pth")
    rows = [json.loads(line) for line in open("data/arithmetic/train.jsonl")][:10]
    rows[3] = {"question": rows[3]["question"], "answer": ""}
    rows[7] = {"question": rows[7]["question"]}
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    held_out = [json.loads(line) for line in open("data/arithmetic/test.jsonl")][:2]
    (tmp / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    (tmp / "rewards.py").write_text(LENGTH_REWARD)
    return checkpoint, tmp


def grpo_flags(run, out, *args) -> list:
    checkpoint, tmp = run
    return ["finetune/grpo.py", "--checkpoint_dir", checkpoint, "--data_file", tmp / "train.jsonl", "--val_file",
            tmp / "val.jsonl", "--out_dir", out, "--precision", "32-true", "--batch_size", 2, "--micro_batch_size", 2,
            "--num_generations", 3, "--max_new_tokens", 8, "--max_iters", 2, "--eval_interval", 2, "--eval_iters", 1,
            "--save_interval", 2, "--learning_rate", 1e-2, "--reward", f"exact_match,{tmp / 'rewards.py'}:length",
            "--reward_weights", "1,0.5", "--temperature", 1.5, "--prompt_style", "chatml", *args]


def grpo_train(run, out, *args, check: bool = True):
    return run_script(*grpo_flags(run, out, *args), check=check, env={"OMP_NUM_THREADS": "1"})


def metric_rows(out) -> list:
    return [{k: float(v) for k, v in row.items() if k not in ("tokens_per_sec", "elapsed") and "_per_sec" not in k
             and k != "generation_sec" and v} for row in csv.DictReader(open(out / "metrics.csv"))]


def test_script_trains_and_its_out_dir_is_an_adapter_dir(prompts_run, tmp_path):
    """Skipped rows listed; TRL's metric names in metrics.csv (the reward functions', validation's); the plot; the
    run record; merge and generate read the out dir."""
    out = tmp_path / "out"
    proc = grpo_train(prompts_run, out)
    assert "train: skipped 2 row(s) without an answer (rows 4, 8)" in proc.stdout
    assert "8 training prompts, 2 validation prompts (chatml style)" in proc.stdout
    assert "sample (reward" in proc.stdout
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("loss", "reward", "reward_std", "frac_reward_zero_std", "rewards/exact_match/mean",
                 "rewards/length/mean", "rewards/length/std", "completions/mean_length", "completions/clipped_ratio",
                 "clip_ratio/region_mean", "clip_ratio/low_min", "clip_ratio/high_max", "entropy",
                 "generation_tokens_per_sec", "train_tokens_per_sec", "val_reward", "val_rewards/length/mean"):
        assert name in header, name
    rows = metric_rows(out)
    assert all(0 < r["rewards/length/mean"] for r in rows) and rows[0]["reward_std"] > 0
    assert (out / "loss.png").stat().st_size > 0
    record = json.loads((out / "lora_config.json").read_text())
    assert record["objective"] == "grpo.dapo" and record["train"]["num_generations"] == 3
    assert record["data"]["format"] == "prompts" and record["prompt_style"] == "chatml"
    weights = adapter(out)
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
    run_script("scripts/merge_lora.py", "--lora_path", out, "--out_dir", tmp_path / "merged")
    proc = run_script("generate/lora.py", "--lora_path", out, "--prompt", "Hi", "--max_new_tokens", 5,
                      "--precision", "32-true")
    assert "tokens/s" in proc.stderr


@pytest.mark.parametrize("args", [[], ["--loss_type", "grpo", "--beta", 0.04, "--num_iterations", 2,
                                       "--scale_rewards", "batch"]])
def test_micro_batches_and_devices_give_the_same_steps(prompts_run, tmp_path, args):
    """Each prompt's completions are drawn from its own seed, the advantages and normalizers are the whole batch's:
    2 steps in 1 micro-batch, in 2, and on 2 devices (DDP) give the same metrics and adapter."""
    runs = {"one": [], "two micro-batches": ["--micro_batch_size", 1],
            "two devices": ["--devices", 2, "--micro_batch_size", 1]}
    adapters, metrics = {}, {}
    for name, extra in runs.items():
        out = tmp_path / name.replace(" ", "-")
        grpo_train(prompts_run, out, *args, *extra)
        adapters[name], metrics[name] = adapter(out), metric_rows(out)
    assert any(abs(r["loss"]) > 0 for r in metrics["one"])
    for name in runs:
        for row, expected in zip(metrics[name], metrics["one"]):
            drop = ("completions/min_length", "completions/max_length")  # of each device's completions
            row, expected = ({k: v for k, v in r.items() if k not in drop} for r in (row, expected))
            assert row.keys() == expected.keys()
            assert row == pytest.approx(expected, rel=1e-4, abs=1e-5, nan_ok=True), name
        for key, value in adapters["one"].items():
            torch.testing.assert_close(adapters[name][key], value, rtol=1e-4,
                                       atol=1e-6 + 1e-3 * float(value.abs().max()),
                                       msg=lambda m, key=key, name=name: f"{name}: {key}: {m}")


def test_a_killed_run_resumes_to_the_same_adapter(prompts_run, tmp_path):
    """SIGKILLed while writing its step-4 checkpoint, then --resume auto from step 2: the completions of steps 3-4
    are drawn from the same seeds, so the adapter is the uninterrupted run's, bit for bit."""
    args = ["--max_iters", 4, "--save_interval", 2, "--eval_interval", 4]
    grpo_train(prompts_run, tmp_path / "full", *args)
    out = tmp_path / "killed"
    proc = run_script("tests/sigkill_at.py", 3, *grpo_flags(prompts_run, out, *args), check=False,
                      env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9 and not (out / ADAPTER_FILE).exists()
    assert "Resumed from" in grpo_train(prompts_run, out, *args, "--resume", "auto").stdout
    expected, actual = adapter(tmp_path / "full"), adapter(out)
    assert all(torch.equal(actual[k], v) for k, v in expected.items())


def test_bad_inputs_are_one_line_errors(prompts_run, tmp_path):
    checkpoint, tmp = prompts_run
    (tmp / "broken.py").write_text("import no_such_module\n")
    (tmp / "none.jsonl").write_text(json.dumps({"question": "2 + 2?"}) + "\n")
    (tmp / "long.jsonl").write_text(json.dumps({"question": "word " * 200, "answer": "#### 1"}) + "\n")
    cases = [
        (["--reward", "exact"], "Unknown reward 'exact'"),
        (["--reward", f"{tmp / 'missing.py'}:f"], "missing.py"),
        (["--reward", f"{tmp / 'broken.py'}:f"], "no_such_module"),
        (["--reward", f"{tmp / 'rewards.py'}:wrong_count"], "wrong_count"),
        (["--reward", "exact_match,format", "--reward_weights", "1"], "weight"),
        (["--data_file", tmp / "none.jsonl"], "no prompt with an answer"),
        (["--data_file", tmp / "long.jsonl", "--max_seq_length", 64], "the prompt has"),
        (["--num_generations", 1], "--num_generations 1"),
        (["--strategy", "fsdp", "--devices", 2], "--strategy fsdp"),
        (["--temperature", 0], "--temperature 0"),
    ]
    for args, message in cases:
        proc = grpo_train(prompts_run, tmp_path / "out", *args, check=False)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr[-2000:])
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "out" / ADAPTER_FILE).exists()


def test_help():
    proc = run_script("finetune/grpo.py", "--help")
    for flag in ("--reward", "--reward_weights", "--num_generations", "--max_new_tokens", "--temperature", "--top_p",
                 "--scale_rewards", "--loss_type", "--epsilon", "--epsilon_high", "--num_iterations", "--beta",
                 "--mask_truncated_completions", "--lora_path", "--quantize", "--devices", "--batch_size"):
        assert flag in proc.stdout
