"""Gradient checkpointing: the activation memory a training step keeps, and its time, with and without.

MiniLM, one SST-2 batch of 32 sentences (max length 64), dropout on; the memory is what autograd saves for
backward (each storage once, the weights left out), measured with saved-tensor hooks, the same count on any
machine; the time is the median of 5 steps after a warm-up.

    python benchmarks/checkpointing.py --out benchmarks/results_checkpointing.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))

from gpu import build_ours, checkpoint, sst2_batches  # noqa: E402
from methods.shared.training import task_loss  # noqa: E402
from train_step import saved_for_backward_mb  # noqa: E402

METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning_v2", "full_fine_tuning")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device, rows = torch.device("cpu"), []
    directory = checkpoint("minilm", Path("."))
    for name in args.methods.split(","):
        row = {"method": name}
        for on in (False, True):
            torch.manual_seed(0)
            model, tokenizer = build_ours(name, directory, device)
            model.backbone.gradient_checkpointing = on
            data = sst2_batches(tokenizer, 6, device, False)
            row[f"saved_mb_{'with' if on else 'without'}"] = saved_for_backward_mb(model, lambda b: task_loss(model(b), b["labels"]), data[0])
            times = []
            for batch in data:
                start = time.perf_counter()
                task_loss(model(batch), batch["labels"]).backward()
                times.append(time.perf_counter() - start)
            row[f"step_s_{'with' if on else 'without'}"] = statistics.median(times[1:])
        row["memory_ratio"] = row["saved_mb_with"] / row["saved_mb_without"]
        row["time_ratio"] = row["step_s_with"] / row["step_s_without"]
        rows.append(row)
        print(f"{name:>17}: {row['saved_mb_without']:.0f} -> {row['saved_mb_with']:.0f} MB kept for backward "
              f"(x{row['memory_ratio']:.2f}); forward+backward {row['step_s_without']:.2f} -> {row['step_s_with']:.2f} s",
              flush=True)
    report = {"machine": f"{platform.machine()} {platform.processor()}".strip(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "batch_size": 32,
              "max_length": 64, "results": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
