"""Accuracy after the same budget: our methods beside transformers + peft, trained by the same loop.

Both sides (benchmarks/sides.py) get the same pretrained MiniLM, the same SST-2 batches (batch 32,
max length 64, shuffled with the same seed each epoch), the same learning rate (our command line's
default for the method) and the same training loop (methods.training.train: AdamW, warm-up then
linear decay, clipping at 1.0). The only difference left is the implementation of the method and
the model. We report the dev accuracy after the last step ("final") and the best of the
evaluations (our command lines keep the best state), trainable parameters and seconds per step.

    python benchmarks/accuracy.py                                    # every method, both sides, 3 epochs
    python benchmarks/accuracy.py --methods lora --sides ours --epochs 1
Each finished (method, side) is written to --out at once; running again skips those already there.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from data import load_task
from methods import fine_tuning, lora, p_tuning, p_tuning_v2, prefix_tuning, prompt_tuning
from methods.shared.pipeline import train_on_task
from methods.shared.training import TrainConfig, count_parameters, set_seed

from sides import METHODS, build_ours, build_theirs

# Our command lines' default learning rates (peft's anchor used the same ones).
LEARNING_RATES = {"prompt_tuning": prompt_tuning.DEFAULT_LR, "p_tuning": p_tuning.DEFAULT_LR,
                  "prefix_tuning": prefix_tuning.DEFAULT_LR["mlp"], "p_tuning_v2": prefix_tuning.DEFAULT_LR["flat"],
                  "lora": 1e-3, "full_fine_tuning": fine_tuning.DEFAULT_LR["full"]}
SIDES = ("ours", "theirs")


def train_side(name: str, side: str, epochs: int, device: torch.device, seed: int, max_steps: int | None = None
               ) -> dict:
    set_seed(seed)
    task = load_task("sst2")
    model, tokenizer = build_ours(name, device)  # our tokenizer gives transformers' ids (tested)
    if side == "theirs":
        set_seed(seed)
        model = build_theirs(name, device)
    trainable, total = count_parameters(model)
    config = TrainConfig(epochs=epochs, max_steps=max_steps, lr=LEARNING_RATES[name], seed=seed)
    result = train_on_task(model, tokenizer, task, config, task.splits["train"], task.splits["dev"], 32, 64,
                           None, device)
    evaluations = [p["dev_metric"] for p in result.history if "dev_metric" in p]
    return {"method": name, "side": side, "final_dev_accuracy": evaluations[-1], "best_dev_accuracy": max(evaluations),
            "evaluations": evaluations, "trainable_params": trainable, "lr": config.lr, "epochs": epochs,
            "steps": result.steps, "max_steps": max_steps, "seconds_per_step": result.train_seconds / max(1, result.steps)}


def markdown(rows: list[dict], methods: list[str]) -> str:
    def cell(row: dict | None, show) -> str:
        return "-" if row is None else show(row)

    lines = ["| method | lr | ours final / best (%) | theirs final / best (%) | trainable ours / theirs | "
             "s/step ours / theirs |", "|---|---:|---:|---:|---:|---:|"]
    for name in methods:
        ours, theirs = ({r["side"]: r for r in rows if r["method"] == name}.get(side) for side in SIDES)
        accuracy = lambda r: f"{100 * r['final_dev_accuracy']:.1f} / {100 * r['best_dev_accuracy']:.1f}"
        params = lambda r: f"{r['trainable_params']:,}"
        seconds = lambda r: f"{r['seconds_per_step']:.2f}"
        lines.append(f"| {name} | {LEARNING_RATES[name]:g} | {cell(ours, accuracy)} | {cell(theirs, accuracy)} | "
                     f"{cell(ours, params)} / {cell(theirs, params)} | {cell(ours, seconds)} / {cell(theirs, seconds)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--sides", default="ours,theirs", help="ours, theirs or both")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=None, help="stop early (a smoke test, not a result)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results_accuracy.json")
    args = parser.parse_args()
    methods, sides = args.methods.split(","), args.sides.split(",")
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {"rows": []}
    for name in methods:
        for side in sides:
            if any(r["method"] == name and r["side"] == side and r["epochs"] == args.epochs
                   and r.get("max_steps") == args.max_steps for r in report["rows"]):
                print(f"{name} ({side}): already in {out}, skipped")
                continue
            print(f"{name} ({side}), {args.epochs} epochs ...", flush=True)
            row = train_side(name, side, args.epochs, torch.device(args.device), args.seed, args.max_steps)
            print(f"    final {100 * row['final_dev_accuracy']:.1f}%, best {100 * row['best_dev_accuracy']:.1f}%, "
                  f"{row['seconds_per_step']:.2f} s/step", flush=True)
            report["rows"].append(row)
            report.update({"date": time.strftime("%Y-%m-%d"), "device": args.device, "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "machine": platform.machine(), "task": "sst2",
                           "batch_size": 32, "max_length": 64})
            out.write_text(json.dumps(report, indent=2))
    print(markdown(report["rows"], [m for m in METHODS if any(r["method"] == m for r in report["rows"])]))


if __name__ == "__main__":
    main()
