"""How fast a CPU multiplies a few rows by a model's weights: x @ W.T (F.linear, what nn.Linear and transformers
do), (W @ x.T).T, and what `minitransformer.model.linear` does while generating (`decoding_layout`: oneDNN's kernel
on the weights in its blocked layout, where PyTorch has it; else the second form; F.linear for small weights).

A generation step multiplies one row per sequence by every weight of the model, so its speed is how fast the
weights are read. The weights here are those of a whole GPT-2 stack (all layers, then the 50257-word LM head), far
more than the CPU's caches hold, and each timing reads them all once, as a generation step does; timing one small
matrix would time the cache, not the memory. The forms take turns, so a busy machine slows them alike.
Reports GB/s of weights read and the speed-ups over F.linear.

    python benchmarks/small_matmul.py                      # GPT-2 small and medium shapes, 1 to 64 rows
    python benchmarks/small_matmul.py --hidden 768 --rows 8 --out benchmarks/results_small_matmul_cpu.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent.parent))
from minitransformer.model import FEW_ROWS, decoding_layout, is_large, linear  # noqa: E402

VOCAB = 50257
LAYERS = {768: 12, 1024: 24}  # GPT-2 small and medium; other widths get 12 layers


def stack_weights(hidden: int, layers: int) -> dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """(weight, bias) of every projection of a GPT-2-shaped stack, and the LM head, random (the values do not
    change the speed)."""
    torch.manual_seed(0)
    shapes = [(hidden, hidden)] * 4 + [(4 * hidden, hidden), (hidden, 4 * hidden)]  # q, k, v, out, up, down
    return {"layers": [(torch.randn(n, k) * 0.02, torch.zeros(n)) for _ in range(layers) for n, k in shapes],
            "lm_head": [(torch.randn(VOCAB, hidden) * 0.02, None)]}


def measure(weights: list[tuple[torch.Tensor, torch.Tensor | None]], rows: int, repeats: int) -> dict:
    """Median seconds of each form over `repeats` turns (after one untimed turn), as GB/s and speed-ups."""
    inputs = {k: torch.randn(rows, k) for k in {w.shape[1] for w, _ in weights}}
    forms = {"x @ W.T": lambda x, w, b: F.linear(x, w, b),
             "(W @ x.T).T": lambda x, w, b: (w @ x.T if b is None else torch.addmm(b[:, None], w, x.T)).T.contiguous(),
             "ours generating": linear}
    seconds: dict[str, list[float]] = {name: [] for name in forms}
    with torch.no_grad(), decoding_layout([w for w, _ in weights]):  # as in generate()
        for turn in range(repeats + 1):
            for name, form in forms.items():
                start = time.perf_counter()
                for w, b in weights:
                    form(inputs[w.shape[1]], w, b)
                if turn:
                    seconds[name].append(time.perf_counter() - start)
    gigabytes = sum(w.numel() * w.element_size() for w, _ in weights) / 1e9
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {"rows": rows, **{f"{name} GB/s": gigabytes / s for name, s in median.items()},
            "(W @ x.T).T speed-up": median["x @ W.T"] / median["(W @ x.T).T"],
            "ours speed-up": median["x @ W.T"] / median["ours generating"],
            "ours_uses_own_form": rows <= FEW_ROWS and all(is_large(w) for w, _ in weights)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", default="768,1024",
                        help="model widths, comma-separated (768: GPT-2 small, 1024: medium)")
    parser.add_argument("--layers", type=int, default=None, help="layers of the stack (default: GPT-2's for the width)")
    parser.add_argument("--rows", default="1,4,8,16,32,64",
                        help="rows multiplied at once (in a generation step: the batch)")
    parser.add_argument("--repeats", type=int, default=7, help="timed turns of each form; the median is kept")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    report = {"torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
              "date": date.today().isoformat(), "few_rows": FEW_ROWS, "results": []}
    print(f"GB/s of weights read: x @ W.T | (W @ x.T).T | ours generating ({torch.get_num_threads()} threads; ours "
          f"takes its own form up to {FEW_ROWS} rows of a large weight)")
    for hidden in [int(h) for h in args.hidden.split(",")]:
        layers = args.layers or LAYERS.get(hidden, 12)
        for part, weights in stack_weights(hidden, layers).items():
            for rows in [int(r) for r in args.rows.split(",")]:
                row = {"hidden": hidden, "layers": layers, "part": part, **measure(weights, rows, args.repeats)}
                report["results"].append(row)
                print(f"hidden {hidden:>5} {part:>8} rows {rows:>3}: {row['x @ W.T GB/s']:5.1f} | "
                      f"{row['(W @ x.T).T GB/s']:5.1f} | {row['ours generating GB/s']:5.1f} GB/s   speed-ups "
                      f"{row['(W @ x.T).T speed-up']:.2f} | {row['ours speed-up']:.2f}", flush=True)
    speed_ups = [r["ours speed-up"] for r in report["results"] if r["ours_uses_own_form"]]
    if speed_ups:
        print(f"where ours takes its own form: median speed-up {statistics.median(speed_ups):.2f}, "
              f"lowest {min(speed_ups):.2f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
