#!/usr/bin/env bash
# The GPU benchmark in one command (about 4 minutes on one H200 without the batch of 1024, not yet timed with it):
# training steps in bf16 against transformers + peft at MiniLM, bert-base, GPT-2 small and medium shapes (batches
# of 32 and 256), our step alone at 1024 (how much of the GPU's bf16 peak it reaches when the batch fills the GPU),
# where each method's step at its largest batch spends its time (--profile), and GPT-2 generation with a prefix.
# Results: benchmarks/results_gpu.json (the README's table is made from it).
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/gpu.py --device cuda --ours-alone-batch-sizes 1024 --profile --out benchmarks/results_gpu.json "$@"
