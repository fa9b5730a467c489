#!/usr/bin/env bash
# The GPU benchmark in one command (about 4 minutes on one H200): training steps in bf16 against
# transformers + peft at MiniLM, bert-base, GPT-2 small and medium shapes, and GPT-2 generation with a prefix.
# Results: benchmarks/results_gpu.json (the README's table is made from it).
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/gpu.py --device cuda --out benchmarks/results_gpu.json "$@"
