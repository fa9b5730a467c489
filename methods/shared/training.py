"""The one training loop every method, the compare runner and the lessons use.

AdamW over the trainable parameters only (the backbone is frozen by the method),
linear warm-up then linear decay, gradient clipping, evaluation on the dev split
every `eval_every` steps and at the end, and the best trainable state kept.

It stops early, keeping the last evaluated state, when the loss stops being finite or
runs far above where it started (divergence), and at the end of the current step on
Ctrl-C (SIGINT) or SIGTERM: then it saves what `resume` needs to go on exactly as an
uninterrupted run would (parameters, optimizer and schedule, step, history, every
random generator's state).
"""
from __future__ import annotations

import itertools
import math
import random
import resource
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from data.batching import IGNORE_INDEX
from data.metrics import METRICS
from data.readers import NER_TAGS

from methods.shared import distributed
from methods.shared.files import atomic_path
from minitransformer.model import cast_frozen_weights_once

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DIVERGED = 10.0  # a loss above DIVERGED x (first loss + 1) has left the region where training makes progress


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch: the same seed gives the same numbers on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_device(name: str | None = None) -> torch.device:
    """The named device, else the best available: cuda, then mps, then cpu."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"Unknown device {name!r}: use cpu, cuda (or cuda:N) or mps.") from None
        mps = getattr(torch.backends, "mps", None)
        if (device.type == "cuda" and not torch.cuda.is_available()) or (
                device.type == "mps" and not (mps is not None and mps.is_available())):
            raise ValueError(f"--device {name}: this torch ({torch.__version__}) sees no {device.type.upper()} "
                             "device here; use --device cpu (or leave --device out: the best available is used).")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    params = list(model.parameters())  # nn.Module.parameters() already skips duplicates
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this run on CUDA; on CPU the process's peak resident size (all runs so far)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


@dataclass
class TrainConfig:
    epochs: int = 3
    max_steps: int | None = None     # stop after this many steps (overrides epochs when smaller)
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06       # fraction of steps with a linearly rising learning rate
    grad_clip: float = 1.0
    eval_every: int | None = None    # steps between dev evaluations; None: once per epoch
    seed: int = 0
    precision: str = "auto"          # auto (bf16 autocast on CUDA, fp32 elsewhere) | fp32 | bf16 | fp16
    progress: bool = True
    checkpoint: str | None = None    # where an interrupted run saves what resuming needs (None: nowhere)
    resume: bool = False             # go on from `checkpoint` (it must hold this run's state)

    def __post_init__(self):
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive number of steps, got {self.max_steps}.")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}.")


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # {step, loss, dev_metric, seconds of training so far}
    best_metric: float = float("nan")
    best_step: int = 0
    steps: int = 0
    train_seconds: float = 0.0
    stopped: str | None = None       # why training stopped early (e.g. a NaN loss)
    outcome: str = "finished"        # finished | interrupted (Ctrl-C, SIGTERM) | diverged
    total_steps: int = 0             # the steps the budget asked for


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for [B, C] (sentence) or [B, T, C] (token) logits; -100 labels are ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def summed_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(sum of the cross-entropy over the labelled items, their count), each example weighted by `weights` [B]:
    a process's part of the loss of a batch that several processes share."""
    per_item = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="none")
    counted = (labels != IGNORE_INDEX).float() * (weights[:, None] if labels.dim() > 1 else weights)
    return (per_item * counted.reshape(-1)).sum(), counted.sum().item()


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def mixed_precision(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype of the matrix products, bf16 or fp16, or None for fp32; "auto" is bf16 on CUDA, where it is
    fast, and fp32 elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision: matrix products in bf16 or fp16 (the parameters and optimizer state stay fp32)."""
    dtype = mixed_precision(device, precision)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict], metric: str = "accuracy",
             device: torch.device | None = None, tag_names: list[str] = NER_TAGS) -> float:
    """Score the model's argmax predictions with the task's metric (data.METRICS: accuracy, macro_f1, entity_f1)."""
    if metric not in METRICS or metric == "bleu":
        raise ValueError(f"Cannot score argmax predictions with {metric!r}: expected accuracy, macro_f1 or "
                         "entity_f1 (a generation task is scored on generated text).")
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    predictions, targets = [], []  # this process's share of the batches; gathered from all below
    for batch in batches:
        batch = to_device(batch, device)
        with autocast(device):
            predicted = model(batch).argmax(-1).cpu()
        labels = batch["labels"].cpu()
        if labels.dim() == 1:
            predictions += predicted.tolist()
            targets += labels.tolist()
        else:  # token labels: read the predicted tag at each word's first subword
            for row_pred, row_gold in zip(predicted, labels):
                keep = row_gold != IGNORE_INDEX
                predictions.append([tag_names[i] for i in row_pred[keep].tolist()])
                targets.append([tag_names[i] for i in row_gold[keep].tolist()])
    model.train(was_training)
    return METRICS[metric](distributed.gather(predictions), distributed.gather(targets))


def make_optimizer(params: list[nn.Parameter], config: TrainConfig, total_steps: int, device: torch.device):
    """AdamW and its schedule: linear warm-up to lr, then linear decay to 0 (BERT's, and the P-tuning v2 code's)."""
    # fused: one kernel for all tensors instead of a loop over them (most of the optimizer step on CPU).
    fused = device.type in ("cpu", "cuda") and all(p.dtype in (torch.float32, torch.bfloat16) for p in params)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
    warmup = int(config.warmup_ratio * total_steps)
    rate = lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, rate)


def every_epoch(train_batches: Callable[[int], Iterable[dict]], epochs: int, steps_per_epoch: int,
                done: int = 0) -> Iterator[dict]:
    """The training batches of epoch 0, then of epoch 1, ... (each epoch's order is its own), after the
    first `done` (a resumed run skips the ones it has trained on)."""
    for epoch in range(done // steps_per_epoch, epochs):
        skip = done - epoch * steps_per_epoch if epoch == done // steps_per_epoch else 0
        yield from itertools.islice(train_batches(epoch), skip, None)


def backward(model: nn.Module, batch: dict, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, config: TrainConfig, device: torch.device) -> tuple[float, str | None]:
    """The batch's loss and its gradients (clipped); the reason to stop instead, if either is not finite.

    With several processes, each holds part of the batch: its loss is its share of the batch's sum, and
    DDP's average of the gradients is then the one-process gradient; the loss returned is the batch's."""
    with autocast(device, config.precision):
        logits = model(batch)
        if distributed.active():
            local, count = summed_loss(logits, batch["labels"], batch["weights"])
            total, count = distributed.sum_across(local.detach(), count)
            loss, value = local / count * distributed.world(), total / count
        else:
            loss = task_loss(logits, batch["labels"])
            value = loss.item()
    grad_norm = torch.zeros(())
    if math.isfinite(value):
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # fp16: the clipping sees the true gradients
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    # An infinite gradient with a finite loss would turn the weights into NaN at this update: stop before
    # it, so that the state the model keeps is the last good one (fp16's scaler skips such steps itself).
    if math.isfinite(value) and (torch.isfinite(grad_norm) or scaler.is_enabled()):
        return value, None
    return value, (f"Loss became {value}" if not math.isfinite(value) else
                   f"The gradient norm became {grad_norm.item()} (loss {value:.4g})")


@contextmanager
def stop_on_signals() -> Iterator[dict]:
    """While inside, Ctrl-C (SIGINT) and SIGTERM only ask the loop to stop after the current step
    (`asked["signal"]` names the signal); a second Ctrl-C stops at once, as usual."""
    asked: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield asked
        return

    def ask(signum, frame):
        if asked["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        asked["signal"] = signal.Signals(signum).name
        print(f"\n{asked['signal']}: stopping after this step (Ctrl-C again to stop at once, keeping nothing)",
              file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def random_states() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        if name in state:
            param.copy_(state[name])


def train(model: nn.Module, train_batches: Callable[[int], Iterable[dict]], steps_per_epoch: int,
          dev_batches: Callable[[], Iterable[dict]] | None, config: TrainConfig, metric: str = "accuracy",
          device: torch.device | None = None) -> TrainResult:
    """Train `model` (its parameters with requires_grad) and return the history.

    `model(batch)` returns logits; `train_batches(epoch)` yields that epoch's batches (each
    with `labels`); `dev_batches()` yields the dev batches. At the end the model holds the
    trainable state that scored best on dev (the last one without a dev set).
    """
    set_seed(config.seed)
    device = device or next(model.parameters()).device
    params = trainable_parameters(model)
    if not params:
        raise ValueError("The model has no trainable parameters: the method must leave some requires_grad=True.")
    result = TrainResult(total_steps=min(config.epochs * steps_per_epoch, config.max_steps or math.inf))
    optimizer, schedule = make_optimizer(params, config, result.total_steps, device)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")  # fp16's small range
    forward = distributed.wrap(model, device)  # DDP with several processes, the model itself with one
    eval_every = config.eval_every or steps_per_epoch
    # What is kept if training goes wrong before any evaluation: the state it started from.
    loop = {"best": None, "start": snapshot(model), "losses": [], "first_loss": None, "seconds": 0.0}
    if config.resume:
        resume_training(model, optimizer, schedule, result, loop, config.checkpoint)
    bar = tqdm(total=result.total_steps, initial=result.steps, desc="training",
               disable=not (config.progress and distributed.is_main()), leave=False)
    start, eval_seconds = time.perf_counter() - loop["seconds"], 0.0
    model.train()
    # Under mixed precision the frozen weights are cast once for the run, not at every step (fewer GPU kernels).
    with stop_on_signals() as asked, cast_frozen_weights_once(model, mixed_precision(device, config.precision)):
        for batch in every_epoch(train_batches, config.epochs, steps_per_epoch, result.steps):
            optimizer.zero_grad(set_to_none=True)
            loss, problem = backward(forward, to_device(batch, device), params, optimizer, scaler, config, device)
            loop["first_loss"] = loop["first_loss"] if loop["first_loss"] is not None else loss
            if problem is None and loss > DIVERGED * (loop["first_loss"] + 1):
                problem = f"Loss rose to {loss:.4g} from {loop['first_loss']:.4g} at the start"
            if problem:
                result.outcome, result.stopped = "diverged", (
                    f"{problem} at step {result.steps + 1}: training diverged and stopped before that update; "
                    f"the last evaluated state (step {result.best_step}) was kept. Try a smaller learning rate (--lr).")
                if distributed.is_main():
                    print(result.stopped, file=sys.stderr)
                break
            scaler.step(optimizer)  # optimizer.step(), unless fp16's gradients overflowed
            scaler.update()
            schedule.step()
            result.steps += 1
            loop["losses"].append(loss)
            bar.update(1)
            if result.steps % eval_every == 0 or result.steps == result.total_steps:
                eval_start = time.perf_counter()
                record_evaluation(model, dev_batches, metric, device, result, loop, start + eval_seconds)
                eval_seconds += time.perf_counter() - eval_start
                bar.set_postfix(loss=f"{result.history[-1]['loss']:.3f}", **(
                    {metric: f"{result.history[-1]['dev_metric']:.3f}"} if "dev_metric" in result.history[-1] else {}))
            # with several processes every one stops at the same step (each asks the others once per step)
            asked_anywhere = distributed.sum_across(1.0 if asked["signal"] else 0.0)[0] > 0
            stop = asked["signal"] or ("a signal to another process" if asked_anywhere else None)
            if stop and result.steps < result.total_steps:
                result.outcome = "interrupted"
                result.stopped = f"interrupted by {stop} at step {result.steps} of {result.total_steps}"
                loop["seconds"] = time.perf_counter() - start - eval_seconds
                save_checkpoint(model, optimizer, schedule, result, loop, config.checkpoint)
                break
            if result.steps >= result.total_steps:
                break
    bar.close()
    result.train_seconds = time.perf_counter() - start - eval_seconds  # training only
    # keep the best dev state, not merely the last (after a divergence: the last evaluated, else the start)
    restore(model, loop["best"] if loop["best"] is not None else loop["start"] if result.outcome == "diverged"
            else {})
    return result


def record_evaluation(model: nn.Module, dev_batches, metric: str, device: torch.device, result: TrainResult,
                      loop: dict, start: float) -> None:
    """One point of the history: the mean loss since the last one and, with a dev set, the dev metric; the
    state is kept if it is the best so far."""
    record = {"step": result.steps, "loss": float(np.mean(loop["losses"])), "seconds": time.perf_counter() - start}
    loop["losses"] = []
    if dev_batches is not None:
        record["dev_metric"] = evaluate(model, dev_batches(), metric, device)
        if loop["best"] is None or record["dev_metric"] > result.best_metric:
            result.best_metric, result.best_step, loop["best"] = record["dev_metric"], result.steps, snapshot(model)
    else:  # without a dev set the last state is the one kept
        result.best_step, loop["best"] = result.steps, snapshot(model)
    result.history.append(record)


def save_checkpoint(model, optimizer, schedule, result: TrainResult, loop: dict, path: str | None) -> None:
    """Everything an interrupted run needs to go on as if it never stopped (atomically: all or nothing);
    with several processes, rank 0 writes it, with every rank's random generators."""
    randoms = distributed.gather([random_states()])
    if path is None or not distributed.is_main():
        return
    state = {"trainable": snapshot(model), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
             "result": {k: getattr(result, k) for k in ("history", "best_metric", "best_step", "steps")},
             "loop": loop, "random": randoms}
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def resume_training(model, optimizer, schedule, result: TrainResult, loop: dict, path: str | None) -> None:
    """Put the model, optimizer, schedule, history and random generators back where `save_checkpoint` left them
    (rank 0 reads the checkpoint and hands it to the others: a second machine need not see the file)."""
    state = None
    if distributed.is_main():
        if path is None or not Path(path).exists():
            raise FileNotFoundError(f"Nothing to resume: no checkpoint at {path}.")
        state = torch.load(path, map_location="cpu", weights_only=False)
    state = distributed.broadcast(state)
    if len(state["random"]) != distributed.world():
        raise ValueError(f"The checkpoint was written by {len(state['random'])} processes; resume it with as many "
                         f"(this run has {distributed.world()}).")
    restore(model, state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    for key, value in state["result"].items():
        setattr(result, key, value)
    loop.update(state["loop"])
    set_random_states(state["random"][distributed.rank()])
