"""The common command line and the run that every method file, the compare runner and the lessons share.

A method file provides `build(backbone, tokenizer, task, args) -> nn.Module`: a module
whose `forward(batch)` returns logits, whose trainable parameters are the method's own,
and which may set `template` (a text template the batches are built with). `run` does
the rest: load model and task, train, evaluate, save, write results.json and a plot.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from data import Task, load_task
from data.batching import batches
from minitransformer import load_pretrained

from methods.plots import plot_learning_curves
from methods.training import (TrainConfig, TrainResult, count_parameters, evaluate, get_device, peak_memory_mb,
                              set_seed, train)

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def common_parser(description: str, lr: float | None, epochs: int = 3) -> argparse.ArgumentParser:
    """The options every method shares; a method adds its own to the returned parser."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a local Hugging Face directory or a name "
                        "(all-MiniLM-L6-v2 works offline; bert-base-uncased, roberta-base, gpt2 download once)")
    parser.add_argument("--task", default="sst2", help="task name, e.g. sst2, rte, conll2003, builtin_sentiment")
    parser.add_argument("--data-dir", default=None, help="directory laid out like ../shared/data "
                        "(default: $PROMPT_DATA_DIR, then the cache, then download)")
    parser.add_argument("--epochs", type=positive_int, default=epochs, help="passes over the training split")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many steps")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="examples per training step")
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate (default: "
                        + (f"{lr:g}" if lr else "depends on the method's mode") + ")")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and dropout")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--eval-every", type=positive_int, default=None, help="dev evaluation every N steps "
                        "(default: once per epoch)")
    parser.add_argument("--max-length", type=positive_int, default=128, help="longest input in tokens")
    parser.add_argument("--limit-train", type=positive_int, default=None, help="use only the first N training "
                        "examples (quick runs)")
    parser.add_argument("--out", default=None, help="output directory (default: runs/METHOD-TASK)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--skip-test", action="store_true", help="do not score the test split at the end "
                        "(the compare runner reports dev only)")
    return parser


def backbone_signature(model: nn.Module) -> dict:
    """What a saved method depends on: the backbone's shape."""
    c = model.backbone.config
    return {"model_type": c.model_type, "hidden_size": c.hidden_size, "num_layers": c.num_layers,
            "num_heads": c.num_heads, "vocab_size": c.vocab_size}


def save_method(model: nn.Module, directory: str | Path, method: str, options: dict) -> Path:
    """Save only the method's trainable parameters (safetensors) and its options (JSON)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(state, str(directory / "method.safetensors"))
    meta = {"method": method, "options": options, "backbone": backbone_signature(model),
            "contents": getattr(model, "saved_contents", "the trainable parameters (enough to resume training)")}
    (directory / "method.json").write_text(json.dumps(meta, indent=2, default=str))
    return directory / "method.safetensors"


def load_method(model: nn.Module, directory: str | Path) -> dict:
    """Load what `save_method` wrote into a freshly built method; refuse a different backbone."""
    directory = Path(directory)
    meta = json.loads((directory / "method.json").read_text())
    expected = backbone_signature(model)
    if meta["backbone"] != expected:
        raise ValueError(f"{directory} was trained for a backbone {meta['backbone']}, but this model is "
                         f"{expected}. Load it into the same kind of model it was trained with.")
    state = load_file(str(directory / "method.safetensors"))
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != set(own):
        raise KeyError(f"Saved parameters do not match this method: missing {sorted(set(own) - set(state))}, "
                       f"unexpected {sorted(set(state) - set(own))}. Were the method's options the same?")
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise ValueError(f"{directory}: {name} was saved {list(tensor.shape)}, but this method expects "
                             f"{list(own[name].shape)}. Build it with the options it was trained with (saved in "
                             f"method.json: {meta['options']}), e.g. the same prompt length and layers.")
    model.load_state_dict(state, strict=False)
    return meta


def train_on_task(model: nn.Module, tokenizer, task: Task, config: TrainConfig, train_examples: list,
                  dev_examples: list, batch_size: int, max_length: int, template: str | None = None,
                  device: torch.device | None = None) -> TrainResult:
    """`train` on a task's examples: shuffled batches each epoch (seed + epoch), dev batches of 64."""
    make = lambda examples, shuffle, seed=0: batches(examples, tokenizer, batch_size if shuffle else 64,
                                                     shuffle=shuffle, seed=seed, max_length=max_length,
                                                     template=template)
    steps_per_epoch = math.ceil(len(train_examples) / batch_size)
    return train(model, lambda epoch: make(train_examples, True, config.seed + epoch), steps_per_epoch,
                 lambda: make(dev_examples, False), config, task.metric, device)


def run(args: argparse.Namespace, method: str, build: Callable, options: dict | None = None) -> dict:
    """Train and evaluate one method as the command line asked; write results.json, a plot and the weights."""
    set_seed(args.seed)
    device = get_device(args.device)
    backbone, tokenizer = load_pretrained(args.model, device=device)
    task = load_task(args.task, args.data_dir)
    train_examples = task.splits["train"][: args.limit_train]
    model = build(backbone, tokenizer, task, args).to(device)
    template = getattr(model, "template", None)
    trainable, total = count_parameters(model)
    print(f"{method} on {task.name}{' (built-in data, not a benchmark)' if task.is_builtin else ''} with "
          f"{args.model}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)")

    config = TrainConfig(epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, eval_every=args.eval_every,
                         seed=args.seed, progress=not args.no_progress)
    result = train_on_task(model, tokenizer, task, config, train_examples, task.splits["dev"], args.batch_size,
                           args.max_length, template, device)
    make = lambda examples: batches(examples, tokenizer, 64, max_length=args.max_length, template=template)
    scored = "test" in task.splits and not args.skip_test
    test_metric = evaluate(model, make(task.splits["test"]), task.metric, device) if scored else None

    out = Path(args.out or f"runs/{method}-{task.name}")
    weights = save_method(model, out, method, options or {})
    record = {
        "method": method, "model": args.model, "task": task.name, "task_is_builtin": task.is_builtin,
        "options": {**vars(args), **(options or {})}, "trainable_params": trainable, "total_params": total,
        "trainable_percent": 100 * trainable / total, "metric": task.metric, "dev_metric": result.best_metric,
        "best_step": result.best_step, "test_metric": test_metric, "history": result.history,
        "train_seconds": result.train_seconds, "steps": result.steps,
        "seconds_per_step": result.train_seconds / max(1, result.steps),
        "peak_memory_mb": peak_memory_mb(device), "stored_bytes": weights.stat().st_size,
        "stopped": result.stopped, "device": str(device), "machine": platform.processor() or platform.machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    (out / "results.json").write_text(json.dumps(record, indent=2, default=str))
    plot_learning_curves({method: result.history}, task.metric, out / "learning_curve.png",
                         title=f"{method} on {task.name} ({args.model})")
    test_text = f", test {100 * test_metric:.2f}" if test_metric is not None else ""
    print(f"dev {task.metric} {100 * result.best_metric:.2f} (best at step {result.best_step}){test_text}; "
          f"{record['seconds_per_step']:.3f} s/step; wrote {out}/results.json and learning_curve.png")
    return record
