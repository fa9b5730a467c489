"""Several processes, one run: torchrun starts them, torch.distributed connects them (gloo on CPU, NCCL on GPU).

    torchrun --nproc_per_node 2 -m methods.prompt_tuning --task sst2           # the same command, two processes

Each process (rank) trains on its share of every batch: all ranks cut the global batch the same way and
keep every world-th example, so the global batch, the steps and the learning-rate schedule are those of one
process. The loss is the sum over a rank's examples divided by the global count, so the gradients that DDP
averages are exactly the one-process gradients (up to rounding). Only the trainable parameters are bucketed
and synchronised: the frozen backbone is the same checkpoint on every rank. Evaluation is sharded the same
way and its predictions gathered; only rank 0 prints, draws and writes.
"""
from __future__ import annotations

import datetime
import functools
import os

import torch
import torch.distributed as dist
from torch import nn


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device_name: str | None) -> str | None:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment); the device this rank uses.

    Idempotent: a second call (several runs in one process) keeps the group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device_name
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = (device_name or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    if cuda:
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def shard(items: list, pad_with_first: bool = False) -> tuple[list, list[float]]:
    """This rank's share of `items` (every world-th one) and the weight of each (1; 0 for a stand-in).

    With `pad_with_first`, a rank whose share would be empty gets the first item with weight 0, so that it
    still takes the step (a collective that one rank skips waits forever)."""
    mine = items[rank()::world()]
    if mine or not pad_with_first:
        return mine, [1.0] * len(mine)
    return items[:1], [0.0]


def batch_sharder(training: bool):
    """What `batches(..., shard=)` takes: None with one process; else `shard`, padded for training (every rank must
    take every step), not for evaluation (a rank may skip a last, small batch)."""
    return functools.partial(shard, pad_with_first=training) if active() else None


def sum_across(*numbers: float | torch.Tensor) -> list[float]:
    """Each number summed over the ranks (the numbers themselves when alone)."""
    if not active():
        return [float(n) for n in numbers]
    values = torch.tensor([float(n) for n in numbers], dtype=torch.float64)
    dist.all_reduce(values)
    return values.tolist()


def gather(items: list) -> list:
    """Every rank's `items`, rank 0's first, on every rank."""
    if not active():
        return items
    everyone: list = [None] * world()
    dist.all_gather_object(everyone, items)
    return [item for part in everyone for item in part]


def broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def say(*args, **kwargs) -> None:
    """print, on rank 0 only (one process speaks for all)."""
    if is_main():
        print(*args, **kwargs)


def barrier() -> None:
    if active():
        dist.barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the trainable parameters only: frozen parameters and buffers are neither bucketed nor broadcast."""
    if not active():
        return model
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in model.named_buffers()]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
    # static_graph: every step uses the same parameters, so a trainable one that a method never uses (full
    # fine-tuning leaves a checkpoint's masked-LM head aside) is found once instead of failing the reduction.
    # The buffers, all ignored above, are not synchronised either (no broadcast_buffers=False needed: torch 2.13
    # deprecates it with a warning in every process).
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                               static_graph=True)

