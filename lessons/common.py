"""What every lesson shares: the fast switch, the lesson's data, one call to train, and exercise reports.

A lesson trains for real. `LESSON_FAST=1` (set by the tests) shrinks every run to a few
steps so the whole notebook executes in seconds; the numbers are then meaningless but
every line runs. Nothing here is a method: the methods live in methods/ and are imported.
"""
from __future__ import annotations

import math
import os
import time
import traceback
from typing import Callable

from torch import nn

from data import Task, load_task
from data import DataNotFoundError, DownloadError
from methods.shared.pipeline import train_on_task
from methods.shared.training import TrainConfig, TrainResult, get_device

FAST = os.environ.get("LESSON_FAST", "0") == "1"
MODEL = os.environ.get("LESSON_MODEL", "all-MiniLM-L6-v2")  # the offline default; any name load_pretrained takes
DEVICE = get_device(os.environ.get("LESSON_DEVICE"))


def budget(full, fast):
    """`full` normally, `fast` under LESSON_FAST=1 (a step count, a list of seeds, a data size...)."""
    return fast if FAST else full


def lesson_task(name: str = "sst2", fallback: str = "builtin_sentiment") -> Task:
    """The lesson's task from the data directory, else the built-in set (and say which one it is)."""
    try:
        task = load_task(name)
    except (DataNotFoundError, DownloadError, OSError) as error:
        print(f"{name} was not found ({error.__class__.__name__}); using the built-in {fallback} set instead. "
              f"Set PROMPT_DATA_DIR to a folder laid out like shared/data for the real numbers.")
        task = load_task(fallback)
    sizes = ", ".join(f"{split} {len(examples)}" for split, examples in task.splits.items())
    print(f"task {task.name}: {sizes} examples; metric {task.metric}")
    return task


def fit(model: nn.Module, tokenizer, task: Task, steps: int, lr: float, batch_size: int = 32,
        max_length: int = 64, eval_every: int | None = None, seed: int = 0, template: str | None = None,
        dev_size: int | None = None, progress: bool = True) -> TrainResult:
    """Train `model` on `task` for `steps` steps with methods.training.train and return its history.

    The same loop as every method's command line (AdamW on the trainable parameters, warm-up
    and decay, best dev state kept). `template` wraps each example (hard prompts); `dev_size`
    evaluates on the first N dev examples only, to keep a lesson quick.
    """
    config = TrainConfig(epochs=max(1, math.ceil(steps * batch_size / len(task.splits["train"]))), max_steps=steps,
                         lr=lr, eval_every=eval_every, seed=seed, progress=progress)
    return train_on_task(model.to(DEVICE), tokenizer, task, config, task.splits["train"], task.splits["dev"][:dev_size],
                         batch_size, max_length, template, DEVICE)


def elapsed(start: float) -> str:
    """Wall time since `start` (a time.perf_counter() reading), as a lesson's last line reports it."""
    seconds = time.perf_counter() - start
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} minutes"


def report(check: Callable, *answer) -> bool:
    """Run an exercise's check on your answer: print ✓ or what is still wrong (never stops the notebook)."""
    try:
        check(*answer)
    except NotImplementedError:
        print("✗ not attempted yet: replace the `raise NotImplementedError` with your code.")
        return False
    except AssertionError as error:
        print(f"✗ not yet: {error}")
        return False
    except Exception:  # a bug in the answer: show where, as the student would see it in a cell
        print("✗ your code raised an error:\n" + traceback.format_exc(limit=-3))
        return False
    print("✓ correct")
    return True
