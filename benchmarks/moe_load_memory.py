"""Peak memory of loading a multi-billion-parameter mixture of experts with and without `--quantize`, on this CPU.

python benchmarks/moe_load_memory.py                      # ~4 min on 2 cores, ~8 GB of disk in --cache_dir
python benchmarks/moe_load_memory.py --quantize bnb.nf4 bnb.nf4-dq

A Qwen3-MoE checkpoint of `MOE_BIG` (hidden 2048, 12 layers, each 64 experts of 768 of which 8 per token; 32 query /
4 kv heads of 128; a 32,768-token vocabulary, untied head: 3.99B parameters, 3.62B of them in the experts) with random
bf16 weights (normal, std 0.02, seeded) is written once to `--cache_dir`/qwen3-moe-3.9b-random/lit_model.pth by a
process of its own. Then each load runs in a fresh process: `lit_gpt.load.load_model(..., precision="bf16-true",
quantize=mode, lora_config=LoRAConfig())` as finetune/lora.py calls it (LoRA on the attention, the MLP experts and the
head), and the process reports

- peak anonymous memory while loading: the highest `RssAnon` of /proc/self/status, sampled every ~0.5 ms by a thread,
  above what the process held before (Python, torch and bitsandbytes imported and warmed up). This is what the process
  allocated: it cannot be given back to the system without freeing the model.
- peak RSS (`VmHWM`): the anonymous memory plus the pages of the memory-mapped checkpoint that were read. Those are
  clean file pages the kernel drops first when memory runs short (they are read again from disk if needed), so this
  overstates what loading needs; it is reported for comparison with tools that show RSS.
- the model's bytes in memory (parameters, 4-bit weights packed with their block scales), and the load time.

Loading memory-maps the checkpoint and builds each tensor in place before reading the next (`load_model`): a linear
weight quantized ~1M values at a time, an expert tensor expert by expert (`lit_gpt.quantize.quantize_experts`), so
that the peak is near the quantized model, not the bf16 one. The targets: peak anonymous memory with 4-bit
quantization at most 1.25 x the quantized model's bytes, and below 0.4 x the bf16 checkpoint's.
"""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.model import GPT  # noqa: E402
from lit_gpt.utils import cli, fail, num_parameters  # noqa: E402

MOE_BIG = dict(name="qwen3-moe-3.9b-random", n_layer=12, n_embd=2048, n_head=32, n_query_groups=4, head_size=128,
               vocab_size=32768, padding_multiple=512, block_size=4096, rotary_percentage=1.0, parallel_residual=False,
               bias=False, norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", intermediate_size=6144,
               norm_qk=True, rope_base=1000000, norm_eps=1e-6, n_expert=64, n_expert_per_token=8,
               moe_intermediate_size=768, norm_topk_prob=True, hf_model_type="qwen3_moe")
SEED = 0

WRITE = """
import sys, torch
sys.path.insert(0, {root!r})
from lit_gpt.config import Config
from lit_gpt.model import GPT
from lit_gpt.utils import atomic_save
config = Config(**{config!r})
with torch.device("meta"):
    shapes = {{k: v.shape for k, v in GPT(config).state_dict().items()}}
generator = torch.Generator().manual_seed({seed})
state = {{k: (torch.randn(s, generator=generator) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}}
atomic_save(state, {path!r})
config.save({config_path!r})
"""

LOAD = """
import ctypes, json, sys, threading, time, torch
sys.path.insert(0, {root!r})
ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD: freed blocks of 64 KiB and more go back at once
from lit_gpt.load import load_model
from lit_gpt.lora import LoRAConfig
from lit_gpt.quantize import check_quantize, stored_bytes

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

quantize = {quantize!r}
if quantize:
    check_quantize(quantize, "bf16-true", "cpu")  # bitsandbytes imported and warmed up before measuring
start, peak, stop = status("RssAnon"), [0], threading.Event()

def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], status("RssAnon"))
        time.sleep(0.0005)

thread = threading.Thread(target=sample, daemon=True)
thread.start()
t0 = time.perf_counter()
try:
    model = load_model({checkpoint_dir!r}, precision="bf16-true", quantize=quantize, lora_config=LoRAConfig())
finally:
    stop.set()
    thread.join()
seconds = time.perf_counter() - t0
size = sum(stored_bytes(p) for p in model.parameters())
print(json.dumps(dict(anon=max(peak[0], status("RssAnon")) - start, hwm=status("VmHWM"), size=size,
                      seconds=seconds)))
"""


def main(quantize: List[str] = ["bnb.nf4"], cache_dir: Path = Path.home() / ".cache" / "lit-gpt-bench") -> None:
    """Writes the random checkpoint (once), then loads it in bf16 and with each `quantize` mode, each in a fresh
    process, and prints the peak memory of each load.

    Args:
        quantize: The 4-bit (or int8) modes to load with, besides plain bf16.
        cache_dir: Where the random checkpoint is kept (~8 GB).
    """
    root = str(Path(__file__).resolve().parent.parent)
    config = Config(**MOE_BIG)
    checkpoint_dir = Path(cache_dir) / config.name
    path = checkpoint_dir / "lit_model.pth"
    with torch.device("meta"):
        total = num_parameters(GPT(config))
    if not path.is_file():
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        print(f"Writing a random {config.name} to {str(path)!r} ...", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", WRITE.format(root=root, config=MOE_BIG, seed=SEED, path=str(path),
                                                           config_path=str(checkpoint_dir / "lit_config.json"))],
                       check=True)
        print(f"  written in {time.perf_counter() - t0:.0f}s", flush=True)
    if not (checkpoint_dir / "tokenizer.json").is_file():  # load_model wants one; not used here
        from tokenizers import Tokenizer
        from tokenizers.models import WordLevel

        Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")).save(str(checkpoint_dir / "tokenizer.json"))
    file_bytes = path.stat().st_size
    print(f"{config.name}: {file_bytes / 1e9:.2f} GB bf16 checkpoint; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    rows = {}
    for mode in [None, *quantize]:
        proc = subprocess.run([sys.executable, "-c", LOAD.format(root=root, quantize=mode,
                                                                 checkpoint_dir=str(checkpoint_dir))],
                              capture_output=True, text=True)
        if proc.returncode:
            fail(f"loading with quantize={mode} failed: {proc.stderr.strip().splitlines()[-1:]}")
        rows[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = rows[mode]
        print(f"  {mode or 'bf16'}: peak anonymous {r['anon'] / 1e9:.2f} GB, peak RSS {r['hwm'] / 1e9:.2f} GB, "
              f"model {r['size'] / 1e9:.2f} GB, {r['seconds']:.0f}s", flush=True)
    print(f"\n| Load ({config.name}, {file_bytes / 1e9:.2f} GB bf16 on disk) | Peak anonymous memory | Peak RSS "
          "(with the mapped checkpoint pages) | Model in memory | Time |")
    print("|---|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {'--quantize ' + mode if mode else 'bf16 (no --quantize)'} | {r['anon'] / 1e9:.2f} GB | "
              f"{r['hwm'] / 1e9:.2f} GB | {r['size'] / 1e9:.2f} GB | {r['seconds']:.0f} s |")
    print(f"\n{total / 1e9:.2f}B parameters")
    print("\nTargets:")
    for mode in quantize:
        r = rows[mode]
        print(f"  {mode}: peak anonymous / model in memory: {r['anon'] / r['size']:.2f}x (target <= 1.25x) "
              f"{'PASS' if r['anon'] <= 1.25 * r['size'] else 'FAIL'}; / bf16 checkpoint: "
              f"{r['anon'] / file_bytes:.2f}x (target < 0.4x) {'PASS' if r['anon'] < 0.4 * file_bytes else 'FAIL'}")


if __name__ == "__main__":
    cli(main)
