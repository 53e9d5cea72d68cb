"""eval/lm_eval_harness.py and lit_gpt/lm_eval.py: LitLM against lm-eval's `hf` backend (HFLM) on the same weights
(Llama, GPT-NeoX, a Qwen3.5 linear-attention hybrid), rolling log-likelihoods, generation stops, LoRA == merged,
QLoRA == its dequantized weights, the local tasks' scoring, bad inputs."""

import copy
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

import pytest
import torch

from conftest import REPO, run_script
from lit_gpt.config import Config
from lit_gpt.load import load_model
from lit_gpt.lora import LoRAConfig, lora_filter, lora_state_dict
from lit_gpt.prompts import PromptStyle
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import UserError

TASKS_DIR = REPO / "eval" / "tasks"
MAX_LENGTH = 64  # both backends cut inputs to this: few-shot contexts and paragraphs are longer


@pytest.fixture(autouse=True, scope="module")
def offline():
    """No Hugging Face Hub, as in the eval script (lm_eval and datasets are first imported inside the tests)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


@lru_cache
def script():
    """eval/lm_eval_harness.py as a module, to call `setup` in this process (a subprocess costs seconds)."""
    spec = importlib.util.spec_from_file_location("lm_eval_harness", REPO / "eval" / "lm_eval_harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_tokenizer(path: Path, add_bos: bool) -> int:
    """A small byte-level BPE trained on the texts of the local tasks, saved as transformers reads it."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    texts = []
    for file in sorted(TASKS_DIR.glob("*.jsonl")) + [REPO / "data" / "arithmetic" / "train.jsonl"]:
        for line in file.read_text().splitlines():
            texts.extend(v if isinstance(v, str) else " ".join(v) for v in json.loads(line).values()
                         if isinstance(v, (str, list)))
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=384, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if add_bos:  # like Llama tokenizers
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    return tokenizer.get_vocab_size()


def make_hf_checkpoint(path: Path, arch: str) -> Path:
    """A tiny random transformers model (saved) converted into a lit checkpoint in the same dir."""
    import transformers

    from lit_gpt.convert import convert_hf_checkpoint

    path.mkdir(parents=True)
    vocab = train_tokenizer(path, add_bos=arch == "llama")
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=512, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    if arch == "llama":  # grouped-query attention, BOS added
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, num_key_value_heads=2))
    elif arch == "gemma3":  # sliding-window layers (window 4) with their own RoPE base, a global one between them
        model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
            **{**common, "num_hidden_layers": 3}, num_key_value_heads=2, head_dim=16, sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"], query_pre_attn_scalar=24))
    elif arch == "qwen3_5":  # a Gated DeltaNet (linear-attention) layer, then a gated full-attention one
        model = transformers.AutoModelForCausalLM.from_config(transformers.Qwen3_5TextConfig(
            **common, num_key_value_heads=2, head_dim=16, layer_types=["linear_attention", "full_attention"],
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=12,
            tie_word_embeddings=False))
    elif arch == "gemma4":  # per-layer inputs, the last 2 layers reusing keys and values, k = v, window 4, softcapping
        model = transformers.AutoModelForCausalLM.from_config(transformers.Gemma4TextConfig(
            **{**common, "num_hidden_layers": 4}, num_key_value_heads=2, head_dim=16, global_head_dim=32,
            num_global_key_value_heads=1, attention_k_eq_v=True, sliding_window=4, num_kv_shared_layers=2,
            layer_types=["sliding_attention", "full_attention"] * 2, hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=vocab, final_logit_softcapping=30.0, pad_token_id=None))
    else:  # parallel residual, partial rotary, biases, no BOS
        model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**common, rotary_pct=0.25,
                                                                           tie_word_embeddings=False))
    with torch.no_grad():  # larger than the init's weights: peaked distributions, greedy ties are unlikely
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0, 0.2)
            elif arch == "gemma4" and "norm" in name:  # its plain (x * w) norms: around 1, not degenerate
                param.normal_(1, 0.5)
    model.save_pretrained(path)
    convert_hf_checkpoint(path)
    return path


@pytest.fixture(scope="module", params=["llama", "neox", "qwen3_5", "gemma4"])
def hf_dir(request, tmp_path_factory) -> Path:
    return make_hf_checkpoint(tmp_path_factory.mktemp("eval") / request.param, request.param)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return make_hf_checkpoint(tmp_path_factory.mktemp("eval") / "llama", "llama")


def lit_lm(checkpoint_dir: Path, max_length: int = MAX_LENGTH, batch_size: int = 3, **kwargs):
    from lit_gpt.lm_eval import LitLM

    model = load_model(checkpoint_dir, precision="32-true", max_seq_length=max_length)
    return LitLM(model, Tokenizer(checkpoint_dir), batch_size=batch_size, **kwargs)


def hf_lm(checkpoint_dir: Path, max_length: int = MAX_LENGTH, batch_size: int = 3):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(checkpoint_dir), device="cpu", dtype="float32", batch_size=batch_size,
                max_length=max_length)


def run_tasks(lm, names: list, **kwargs) -> dict:
    from lm_eval import simple_evaluate

    from lit_gpt.lm_eval import load_tasks, task_manager

    manager = task_manager(names, [TASKS_DIR])
    return simple_evaluate(model=lm, tasks=load_tasks(manager, names), task_manager=manager, log_samples=True,
                           bootstrap_iters=0, **kwargs)


def instance(request_type: str, args: tuple, idx: int = 0):
    from lm_eval.api.instance import Instance

    return Instance(request_type, {}, args, idx)


def test_loglikelihoods_and_metrics_match_hf(hf_dir):
    """Multiple choice (2-shot: shared prefixes, cut from the left), a cloze task (single requests) and perplexity
    (rolling windows): every request's log-likelihood, is-greedy flag and every metric as lm-eval's hf backend."""
    names = ["lit_commonsense", "lit_cloze", "lit_paragraphs"]
    ours = run_tasks(lit_lm(hf_dir), names, limit=6, num_fewshot=2)
    theirs = run_tasks(hf_lm(hf_dir), names, limit=6, num_fewshot=2)
    for task in names:
        assert len(ours["samples"][task]) == len(theirs["samples"][task]) == 6
        for a, b in zip(ours["samples"][task], theirs["samples"][task]):
            assert a["arguments"] == b["arguments"]
            for ra, rb in zip(a["resps"], b["resps"]):
                if task == "lit_paragraphs":  # a float
                    torch.testing.assert_close(ra[0], rb[0], rtol=1e-5, atol=1e-3)
                else:  # (log-likelihood, is_greedy)
                    torch.testing.assert_close(ra[0][0], rb[0][0], rtol=1e-5, atol=1e-4)
                    assert ra[0][1] == rb[0][1]
        for metric, value in theirs["results"][task].items():
            if "stderr" not in metric and metric.startswith(("acc", "perplexity", "word_", "byte_", "bits_")):
                torch.testing.assert_close(ours["results"][task][metric], value, rtol=1e-4, atol=0)
    # the cases the comparison is about did occur: inputs cut from the left, texts split into several windows
    tokenizer = Tokenizer(hf_dir)
    contexts = [s["arguments"][0][0] for s in ours["samples"]["lit_commonsense"]]
    assert max(len(tokenizer.encode(c)) for c in contexts) > MAX_LENGTH
    texts = [s["arguments"][0][0] for s in ours["samples"]["lit_paragraphs"]]
    assert max(len(tokenizer.encode(t)) for t in texts) > 2 * MAX_LENGTH


def test_rolling_loglikelihood_is_the_sum_of_token_logprobs(llama_dir):
    lm = lit_lm(llama_dir, max_length=128)
    text = "Rain forms when water vapor in the air cools and condenses into tiny droplets."
    tokens = lm.tok_encode(text)
    assert tokens[0] == lm.prefix_token_id == 0  # this tokenizer adds BOS; the window adds the prefix token again
    inputs = torch.tensor([[lm.prefix_token_id] + tokens[:-1]])
    with torch.no_grad():
        logprobs = torch.log_softmax(lm.model(inputs).float(), dim=-1)[0]
    expected = logprobs.gather(1, torch.tensor(tokens)[:, None]).sum().item()
    (got,) = lm.loglikelihood_rolling([instance("loglikelihood_rolling", (text,))], disable_tqdm=True)
    assert got == pytest.approx(expected, rel=1e-5)


def test_generation_matches_hf_and_stops_at_until(hf_dir):
    ours, theirs = lit_lm(hf_dir), hf_lm(hf_dir)
    questions = [json.loads(line)["question"] for line in (REPO / "data/arithmetic/test.jsonl").open()][:5]
    contexts = questions + [q[:20] for q in questions[:2]]  # prompts of many lengths, batches of 3

    def generate(lm, until: list, max_gen_toks: int) -> list:
        kwargs = {"until": until, "max_gen_toks": max_gen_toks, "do_sample": False}
        return lm.generate_until([instance("generate_until", (c, kwargs), i) for i, c in enumerate(contexts)],
                                 disable_tqdm=True)

    full = generate(ours, [], 16)
    assert full == generate(theirs, [], 16)
    assert all(full) and len(set(full)) > 1
    # max_gen_toks: the first 4 tokens of a plain greedy loop without KV cache
    short = generate(ours, [], 4)
    assert short == generate(theirs, [], 4)
    for context, text in zip(contexts, short):
        tokens = ours.tok_encode(context)
        for _ in range(4):
            with torch.no_grad():
                tokens.append(int(ours.model(torch.tensor([tokens]))[0, -1].argmax()))
        assert text == ours.tokenizer.decode(tokens[-4:], skip_special_tokens=True)
    # until: each answer ends where a stop string first appears in the full answer
    def printable_pair(text: str, start: int) -> Optional[str]:  # random weights generate bytes: two ASCII letters
        return next((text[i:i + 2] for i in range(start, len(text) - 1) if text[i:i + 2].isascii()
                     and text[i:i + 2].isalpha()), None)

    # two answers' stops, one from a third of the way in, one near the start
    first = next(k for k, text in enumerate(full) if printable_pair(text, len(text) // 3))
    second = next(k for k, text in enumerate(full) if k != first and printable_pair(text, 1))
    stops = [printable_pair(full[first], len(full[first]) // 3), printable_pair(full[second], 1)]
    stopped = generate(ours, stops, 16)
    assert stopped == generate(theirs, stops, 16)
    for text, long in zip(stopped, full):
        expected = long
        for stop in stops:
            expected = expected.split(stop)[0]
        assert text == expected
    assert len(stopped[first]) < len(full[first]) and len(stopped[second]) < len(full[second])


def test_prompt_style_chat_template(llama_dir):
    lm = lit_lm(llama_dir, prompt_style=PromptStyle.from_name("chatml"))
    style = PromptStyle.from_name("chatml")
    assert lm.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}]) == style.apply("What is 2 + 3?")
    with_system = lm.apply_chat_template([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Q"},
                                          {"role": "assistant", "content": "A:"}], add_generation_prompt=False)
    assert with_system == style.apply("Be brief.\n\nQ") + "A:"
    with pytest.raises(ValueError, match="fewshot_as_multiturn=False"):
        lm.apply_chat_template([{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"},
                                {"role": "user", "content": "3"}])


def test_arithmetic_task_scores_the_number_after_hashes():
    """The headline task's filters and metric on known answers: strict-match reads "#### N", flexible-extract the
    last number; the reference is the number after "####" of the data's answer."""
    from lit_gpt.lm_eval import load_tasks, task_manager

    manager = task_manager(["lit_arithmetic"], [TASKS_DIR])
    (task,) = load_tasks(manager, ["lit_arithmetic"])
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(limit=3)
    docs = [i.doc for i in task.instances]
    numbers = [d["answer"].split("####")[-1].strip() for d in docs]
    answers = [f"{numbers[0]} + 0 = {numbers[0]}\n#### {numbers[0]}",  # strict and flexible
               f"The answer is {numbers[1]}.",  # flexible only
               f"#### {int(numbers[2]) + 1}\nor maybe {numbers[2]}"]  # flexible only (last number)
    for inst, answer in zip(task.instances, answers):
        inst.resps = [answer]
    task.apply_filters()
    scores = {name: [task.process_results(i.doc, [i.filtered_resps[name]])["exact_match"] for i in task.instances]
              for name in ("strict-match", "flexible-extract")}
    assert scores == {"strict-match": [1.0, 0.0, 0.0], "flexible-extract": [1.0, 1.0, 1.0]}


def make_adapter(out: Path, checkpoint_dir: Path, prompt_style: str = "qa") -> Path:
    """A finetune out dir like finetune/lora.py writes, with random (non-zero) LoRA A and B."""
    lora = LoRAConfig(r=4, alpha=8, dropout=0.0)
    model = load_model(checkpoint_dir, precision="32-true", lora_config=lora)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if lora_filter(name):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    out.mkdir(parents=True)
    torch.save(lora_state_dict(model), out / "lit_model_lora_finetuned.pth")
    run = {"lora": lora.to_dict(), "model": model.config.to_dict(), "checkpoint_dir": str(checkpoint_dir.resolve()),
           "prompt_style": prompt_style, "data": {}, "train": {}, "precision": "32-true", "quantize": None}
    (out / "lora_config.json").write_text(json.dumps(run))
    (out / "prompt_style.json").write_text(json.dumps({"name": prompt_style}))
    return out


def test_lora_adapter_equals_merged_checkpoint(llama_dir, tmp_path, capsys):
    adapter = make_adapter(tmp_path / "lora", llama_dir)
    run_script("scripts/merge_lora.py", "--lora_path", adapter, "--out_dir", tmp_path / "merged",
               "--precision", "32-true")
    common = dict(tasks="lit_commonsense,lit_cloze,lit_arithmetic", limit=3, precision="32-true", batch_size=4,
                  bootstrap_iters=0, log_samples=True, max_seq_length=320)
    script().setup(lora_path=adapter, save_filepath=tmp_path / "lora.json", **common)
    script().setup(checkpoint_dir=tmp_path / "merged", save_filepath=tmp_path / "merged.json", **common)
    base_out = capsys.readouterr().out
    lora, merged = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("lora", "merged"))
    assert lora["config"]["prompt_style"] == merged["config"]["prompt_style"] == "qa"
    assert lora["config"]["checkpoint_dir"] == str(llama_dir.resolve())
    assert lora["config"]["lora"]["r"] == 4 and merged["config"]["lora"] is None
    for task in ("lit_commonsense", "lit_cloze"):
        for a, b in zip(lora["samples"][task], merged["samples"][task]):
            for ra, rb in zip(a["resps"], b["resps"]):
                assert ra[0][0] == pytest.approx(rb[0][0], rel=1e-4, abs=1e-4) and ra[0][1] == rb[0][1]
    assert [s["resps"] for s in lora["samples"]["lit_arithmetic"]] == \
        [s["resps"] for s in merged["samples"]["lit_arithmetic"]]
    # the adapter's prompt style (qa) was applied to the generation task only
    sample = lora["samples"]["lit_arithmetic"][0]
    assert sample["arguments"][0][0] == PromptStyle.from_name("qa").apply(sample["doc"]["question"].strip())
    assert lora["config"]["prompt_style_applied"] == {"lit_commonsense": False, "lit_cloze": False,
                                                      "lit_arithmetic": True}
    assert lora["samples"]["lit_commonsense"][0]["arguments"][0][0].startswith("Question: ")
    assert "lit_arithmetic" in base_out and "strict-match" in base_out


def nf4_round_trip_checkpoint(checkpoint_dir: Path, out: Path) -> Path:
    """The checkpoint with every linear weight (2-D, but the embedding) replaced by what bitsandbytes' nf4 stores of its
    bf16 value, dequantized: the weights a QLoRA model computes with, as a plain bf16 checkpoint."""
    import shutil

    import bitsandbytes.functional as bnbf

    shutil.copytree(checkpoint_dir, out, ignore=shutil.ignore_patterns("lit_model.pth"))
    state = torch.load(checkpoint_dir / "lit_model.pth", weights_only=True)
    for name, weight in state.items():
        if weight.dim() == 2 and name != "transformer.wte.weight":
            weight = weight.to(torch.bfloat16)
            state[name] = bnbf.dequantize_4bit(*bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4"))
    torch.save(state, out / "lit_model.pth")
    return out


def test_quantized_adapter_scores_as_on_the_weights_nf4_stores(llama_dir, tmp_path):
    """QLoRA: the adapter on nf4-quantized base weights (as finetune/lora.py --quantize trains it) scores every choice
    as the same adapter does, unquantized, on a bf16 checkpoint of bitsandbytes' dequantized nf4 weights: equal up to
    bf16 rounding (on CPU they are identical). What a broken path would give is far outside that tolerance, and the
    test checks that it is: the weights not quantized (bf16) or the adapter left out (base) move the log-likelihoods
    by more than 1 nat on average."""
    adapter = make_adapter(tmp_path / "lora", llama_dir)
    common = dict(lora_path=adapter, tasks="lit_commonsense", limit=8, precision="bf16-true", device="cpu",
                  bootstrap_iters=0, log_samples=True)
    runs = {"nf4": dict(quantize="bnb.nf4"),
            "reference": dict(checkpoint_dir=nf4_round_trip_checkpoint(llama_dir, tmp_path / "nf4_round_trip")),
            "bf16": {}, "base": dict(lora_path=None, checkpoint_dir=llama_dir)}
    results, loglikelihoods = {}, {}
    for name, kwargs in runs.items():
        script().setup(save_filepath=tmp_path / f"{name}.json", **{**common, **kwargs})
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
        loglikelihoods[name] = torch.tensor([resp[0][0] for sample in results[name]["samples"]["lit_commonsense"]
                                             for resp in sample["resps"]])
    assert results["nf4"]["config"]["quantize"] == "bnb.nf4" and results["nf4"]["config"]["lora"]["r"] == 4
    assert results["reference"]["config"]["quantize"] is None and results["reference"]["config"]["lora"]["r"] == 4
    nf4, reference = loglikelihoods["nf4"], loglikelihoods["reference"]
    assert len(nf4) == len(reference) >= 16  # 8 questions, 2+ choices each
    torch.testing.assert_close(nf4, reference, rtol=1e-2, atol=1e-2)
    assert results["nf4"]["results"]["lit_commonsense"] == results["reference"]["results"]["lit_commonsense"]
    for name in ("bf16", "base"):  # measured: 1.76 and 6.04 nats
        assert (loglikelihoods[name] - reference).abs().mean() > 1, name


def test_script_end_to_end(llama_dir, tmp_path):
    """The CLI from another working directory: lm-eval's table on stdout, the JSON file with results, config and
    versions."""
    import lm_eval

    out = tmp_path / "results" / "r.json"
    proc = run_script("eval/lm_eval_harness.py", "--checkpoint_dir", llama_dir, "--tasks", "lit_commonsense,lit_para*",
                      "--limit", "2", "--precision", "32-true", "--max_seq_length", MAX_LENGTH, "--save_filepath", out,
                      cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert "|lit_commonsense|" in proc.stdout and "|lit_paragraphs |" in proc.stdout and "acc_norm" in proc.stdout
    results = json.loads(out.read_text())
    assert set(results["results"]) == {"lit_commonsense", "lit_paragraphs"}
    assert 0 <= results["results"]["lit_commonsense"]["acc,none"] <= 1
    assert results["results"]["lit_paragraphs"]["word_perplexity,none"] > 1
    assert results["versions"] == {"lit_commonsense": 1.0, "lit_paragraphs": 1.0}
    config = results["config"]
    assert config["checkpoint_dir"] == str(llama_dir.resolve()) and config["max_seq_length"] == MAX_LENGTH
    assert config["tasks"] == ["lit_commonsense", "lit_para*"] and config["limit"] == 2
    assert config["precision"] == "32-true" and config["prompt_style"] == "alpaca"
    # the versions that ran (the lm-eval of requirements.txt's range that is installed), not one pinned here
    assert results["package_versions"]["lm_eval"] == lm_eval.__version__
    assert results["package_versions"]["torch"] == torch.__version__
    assert "samples" not in results and not list(out.parent.glob(".*.tmp"))


def test_help():
    proc = run_script("eval/lm_eval_harness.py", "--help")
    for flag in ("--tasks", "--num_fewshot", "--limit", "--batch_size", "--bootstrap_iters", "--seed",
                 "--include_path", "--save_filepath", "--lora_path", "--precision", "--quantize"):
        assert flag in proc.stdout


def test_bad_inputs_fail_before_the_model_is_loaded(llama_dir, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(script(), "load_model", no_model)
    setup = script().setup
    with pytest.raises(UserError, match="Unknown task 'lit_comonsense'. Close matches: lit_commonsense"):
        setup(checkpoint_dir=llama_dir, tasks="lit_comonsense")
    with pytest.raises(UserError, match="does not exist"):
        setup(checkpoint_dir=tmp_path / "missing", tasks="lit_cloze")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"):
        setup(checkpoint_dir=llama_dir, tasks="lit_cloze", save_filepath=tmp_path / "file" / "results.json")
    with pytest.raises(UserError, match="is a folder"):
        setup(checkpoint_dir=llama_dir, tasks="lit_cloze", save_filepath=tmp_path)
    with pytest.raises(UserError, match="No adapter at"):
        setup(checkpoint_dir=llama_dir, tasks="lit_cloze", lora_path=tmp_path / "no_adapter")
    # a task whose data is on the Hugging Face Hub: a message about it, not a hang
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hub.yaml").write_text("task: hub_task\ndataset_path: EleutherAI/lambada_openai\noutput_type: "
                                    "loglikelihood\ntest_split: test\ndoc_to_text: '{{text}}'\ndoc_to_target: ' x'\n")
    with pytest.raises(UserError, match="Task 'hub_task' could not be loaded.*offline.*`python scripts/download.py "
                                        "--lm_eval_tasks hub_task`"):
        setup(checkpoint_dir=llama_dir, tasks="hub_task", include_path=tasks)
    # the command line prints the message and exits with status 1
    proc = run_script("eval/lm_eval_harness.py", "--checkpoint_dir", llama_dir, "--tasks", "lit_cloze",
                      "--save_filepath", tmp_path / "file" / "r.json", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: Cannot write --save_filepath")
    assert "Traceback" not in proc.stderr


def test_real_model_prompts_and_generation_match_transformers(smollm2_dir, tmp_path):
    """SmolLM2-135M-Instruct: the arithmetic task's prompts are its chat template (as finetuning formats them), and
    greedy answers equal transformers' generate on the same weights."""
    import transformers

    from lit_gpt.convert import export_hf_checkpoint, load_lit_state_dict
    from lit_gpt.lm_eval import load_tasks, task_manager
    from lit_gpt.prompts import load_prompt_style

    lm = lit_lm(smollm2_dir, max_length=2048, batch_size=2, prompt_style=load_prompt_style(smollm2_dir))
    manager = task_manager(["lit_arithmetic"], [TASKS_DIR])
    (task,) = load_tasks(manager, ["lit_arithmetic"])
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(limit=2, apply_chat_template=True, chat_template=lm.apply_chat_template,
                            tokenizer_name=lm.tokenizer_name)
    hf_dir = export_hf_checkpoint(load_lit_state_dict(smollm2_dir), Config.from_checkpoint(smollm2_dir), smollm2_dir,
                                  tmp_path / "hf")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    contexts = [i.args[0] for i in task.instances]
    for inst, context in zip(task.instances, contexts):
        question = inst.doc["question"]
        assert context == PromptStyle.from_name("chatml").apply(question.strip())
        assert context == hf_tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                           add_generation_prompt=True)
    kwargs = {"until": [], "max_gen_toks": 20, "do_sample": False}
    ours = lm.generate_until([instance("generate_until", (c, kwargs), i) for i, c in enumerate(contexts)],
                             disable_tqdm=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    for context, text in zip(contexts, ours):
        ids = hf_tokenizer(context, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=20, do_sample=False)[0, ids.shape[1]:]
        assert text == hf_tokenizer.decode(out, skip_special_tokens=True) and len(text) > 10


def test_generation_in_bf16_runs_and_matches_a_greedy_loop(llama_dir):
    """bf16-true weights: the batched generation keeps one dtype (a float32 buffer once broke this)."""
    from lit_gpt.lm_eval import LitLM

    model = load_model(llama_dir, precision="bf16-true", max_seq_length=MAX_LENGTH)
    lm = LitLM(model, Tokenizer(llama_dir), batch_size=2)
    contexts = ["Tom has 3 apples", "Ann buys 2 pens at $4 each. How much", "Hi"]
    kwargs = {"until": [], "max_gen_toks": 3, "do_sample": False}
    texts = lm.generate_until([instance("generate_until", (c, kwargs), i) for i, c in enumerate(contexts)],
                              disable_tqdm=True)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    for context, text in zip(contexts, texts):
        tokens = lm.tok_encode(context)
        for _ in range(3):
            with torch.no_grad():
                tokens.append(int(lm.model(torch.tensor([tokens]))[0, -1].argmax()))
        assert text == lm.tokenizer.decode(tokens[-3:], skip_special_tokens=True)


def test_shared_prefix_rows_split_at_max_length_and_score_each_choice_alone(llama_dir):
    """Four 4-token choices after a 10-token context do not fit one row of max_length 16 with their prefix: the
    rows are split, and every choice scores as a full forward pass over its own context + choice does."""
    lm = lit_lm(llama_dir, max_length=16, batch_size=2)
    gen = torch.Generator().manual_seed(0)
    context = torch.randint(3, 100, (10,), generator=gen).tolist()
    choices = [torch.randint(3, 100, (4,), generator=gen).tolist() for _ in range(4)] + [[7]]
    got = lm._loglikelihood_tokens([(None, context, choice) for choice in choices], disable_tqdm=True)
    for choice, (logprob, greedy) in zip(choices, got):
        inputs = torch.tensor([context + choice[:-1]])
        with torch.no_grad():
            logprobs = torch.log_softmax(lm.model(inputs).float(), dim=-1)[0, len(context) - 1:]
        targets = torch.tensor(choice)[:, None]
        assert logprob == pytest.approx(logprobs.gather(1, targets).sum().item(), rel=1e-5)
        assert greedy == bool((logprobs.argmax(-1) == targets[:, 0]).all())


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory) -> Path:
    return make_hf_checkpoint(tmp_path_factory.mktemp("eval") / "gemma3", "gemma3")


@pytest.mark.parametrize("checkpoint", ["llama_dir", "gemma_dir"])
def test_inputs_that_share_tokens_run_them_once_and_score_as_if_alone(checkpoint, request):
    """Contexts that start alike (a prompt template), choices that start alike, a request asked twice: one forward
    pass runs each distinct input prefix once (a token trie), and every request scores as a full forward pass over
    its own context + continuation does."""
    from lit_gpt.lm_eval import _TokenTrie

    lm = lit_lm(request.getfixturevalue(checkpoint), max_length=32, batch_size=8)  # gemma: a window of 4 tokens
    gen = torch.Generator().manual_seed(1)
    template = torch.randint(3, 100, (5,), generator=gen).tolist()
    contexts = [template + torch.randint(3, 100, (n,), generator=gen).tolist() for n in (4, 6, 3)]
    requests = []
    for context in contexts:
        shared = torch.randint(3, 100, (2,), generator=gen).tolist()
        choices = [shared + torch.randint(3, 100, (n,), generator=gen).tolist() for n in (1, 3)] + [[5], [9, 4]]
        requests += [(None, context, choice) for choice in choices]
    requests.append(requests[1])
    inputs = [(context + choice)[:-1] for _, context, choice in requests]
    trie = _TokenTrie(inputs)
    assert len(trie.tokens) == len({tuple(s[:n]) for s in inputs for n in range(1, len(s) + 1)}) < 0.6 * sum(
        map(len, inputs))
    got = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    for (_, context, choice), (logprob, greedy) in zip(requests, got):
        with torch.no_grad():
            logits = lm.model(torch.tensor([context + choice[:-1]]))
        logprobs = torch.log_softmax(logits.float(), dim=-1)[0, len(context) - 1:]
        targets = torch.tensor(choice)[:, None]
        assert logprob == pytest.approx(logprobs.gather(1, targets).sum().item(), rel=1e-5)
        assert greedy == bool((logprobs.argmax(-1) == targets[:, 0]).all())


@pytest.fixture(scope="module")
def qwen3_5_dir(tmp_path_factory) -> Path:
    return make_hf_checkpoint(tmp_path_factory.mktemp("eval") / "qwen3_5", "qwen3_5")


def test_linear_attention_model_scores_and_generates_as_each_request_alone(qwen3_5_dir):
    """Qwen3.5 (a Gated DeltaNet layer, a full-attention one): a trie's mask cannot reach the recurrent layers, so a
    row's prefix runs once and each continuation goes on from a copy of its state. Contexts (one cut from the left)
    with more continuations than batch_size (greedy ones, ones sharing first tokens, one-token ones), a rolling text of
    several windows, and batched greedy generation: each equals plain forward passes over its own tokens alone."""
    lm = lit_lm(qwen3_5_dir, max_length=32, batch_size=2)
    model = lm.model
    with pytest.raises(ValueError, match="cannot reach linear-attention"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.arange(3)[None], mask=torch.ones(1, 3, 3, dtype=torch.bool))

    def logprobs(tokens: list) -> torch.Tensor:  # (len(tokens), vocab): a plain causal forward of `tokens` alone
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([tokens])).float(), dim=-1)[0]

    def greedy_loop(tokens: list, n: int) -> list:
        for _ in range(n):
            tokens = tokens + [int(logprobs(tokens)[-1].argmax())]
        return tokens[-n:]

    gen = torch.Generator().manual_seed(2)

    def rand(n: int) -> list:
        return torch.randint(3, 300, (n,), generator=gen).tolist()

    requests = []
    for context in (rand(6), rand(11), rand(40)):
        best = greedy_loop(context[-(lm.max_length - 2):], 3)  # the tokens its input keeps
        shared = rand(2)
        choices = [best, best[:2] + [best[2] % 290 + 3], shared + rand(1), shared + rand(4), [5], rand(6)]
        requests += [(None, context, choice) for choice in choices]
    tokens_run = []
    hook = model.register_forward_pre_hook(lambda module, args: tokens_run.append(args[0].numel()))
    got = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    hook.remove()
    inputs = [(context + choice)[-(lm.max_length + 1):][:-1] for _, context, choice in requests]
    assert sum(tokens_run) < 0.8 * sum(map(len, inputs))  # a shared prefix ran once, not once per continuation
    for (_, context, choice), tokens, (logprob, greedy) in zip(requests, inputs, got):
        expected = logprobs(tokens)[-len(choice):]
        targets = torch.tensor(choice)[:, None]
        assert logprob == pytest.approx(expected.gather(1, targets).sum().item(), rel=1e-5)
        assert greedy == bool((expected.argmax(-1) == targets[:, 0]).all())
    assert [greedy for _, greedy in got].count(True) == 3  # the greedy choice of each context, and no other
    assert all(block.attn.kv_cache is None for block in model.transformer.h)  # the scoring caches are taken out

    # perplexity: lm-eval's disjoint windows of max_length tokens, each a forward pass alone
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    text = json.loads((TASKS_DIR / "paragraphs.jsonl").read_text().splitlines()[0])["text"]
    ids = lm.tok_encode(text)
    assert len(ids) > 3 * lm.max_length
    expected = 0.0
    for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
            ids, lm.prefix_token_id, lm.max_length, 1)):
        window = logprobs((context + continuation)[:-1])[-len(continuation):]
        expected += window.gather(1, torch.tensor(continuation)[:, None]).sum().item()
    (rolling,) = lm.loglikelihood_rolling([instance("loglikelihood_rolling", (text,))], disable_tqdm=True)
    assert rolling == pytest.approx(expected, rel=1e-5)

    # generation: the engine, rows refilled as answers end, each answer the greedy loop of its prompt alone
    contexts = ["Tom has 3 apples and buys 5 more", "Ann buys 2 pens at $4 each. How much", "Hi"]
    kwargs = {"until": [], "max_gen_toks": 5, "do_sample": False}
    texts = lm.generate_until([instance("generate_until", (c, kwargs), i) for i, c in enumerate(contexts)],
                              disable_tqdm=True)
    for context, text in zip(contexts, texts):
        assert text == lm.tokenizer.decode(greedy_loop(lm.tok_encode(context), 5), skip_special_tokens=True)


def test_sliding_window_generation_matches_a_greedy_loop_and_transformers(gemma_dir):
    """Batched generation with prompts and answers longer than the window of 4: the per-row KV cache and masks of
    the sliding layers give what full forwards and transformers' generate give."""
    from transformers import AutoModelForCausalLM

    lm = lit_lm(gemma_dir, batch_size=2)
    contexts = ["Tom has 3 apples and buys 5 more", "Ann buys 2 pens at $4 each. How much", "Hi"]
    kwargs = {"until": [], "max_gen_toks": 6, "do_sample": False}
    texts = lm.generate_until([instance("generate_until", (c, kwargs), i) for i, c in enumerate(contexts)],
                              disable_tqdm=True)
    # the cases the window is about: prompts longer than it, and one shorter ("Hi") that the answer takes past it
    window, lengths = lm.model.config.sliding_window, [len(lm.tok_encode(c)) for c in contexts]
    assert window == 4 and lengths[0] > 2 * window and lengths[1] > 2 * window and lengths[2] < window < lengths[2] + 6
    # and the window changes the answers' logits: without it (a window longer than any input) they differ
    longest = torch.tensor([lm.tok_encode(contexts[0])])
    no_window = copy.deepcopy(lm.model)
    no_window.config.sliding_window = 1000
    with torch.no_grad():
        assert (no_window(longest)[0, -1] - lm.model(longest)[0, -1]).abs().max() > 0.1
    hf_model = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()
    for context, text in zip(contexts, texts):
        tokens = lm.tok_encode(context)
        for _ in range(6):
            with torch.no_grad():
                tokens.append(int(lm.model(torch.tensor([tokens]))[0, -1].argmax()))
        assert text == lm.tokenizer.decode(tokens[-6:], skip_special_tokens=True)
        with torch.no_grad():
            hf_tokens = hf_model.generate(torch.tensor([lm.tok_encode(context)]), max_new_tokens=6, do_sample=False,
                                          min_new_tokens=6)[0].tolist()
        assert hf_tokens == tokens
