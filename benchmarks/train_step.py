"""Training-step speed and memory: our methods against transformers + peft, same work.

For each method the two sides get the same pretrained MiniLM weights, the same batches
(SST-2 training sentences, batch 32, max length 64, identical token ids), the same seed
and the same optimizer (AdamW, no clipping, as in ../shared/tools/anchor_peft.py). Steps
run alternately, ours then theirs, after a warm-up, so both see the same machine load;
we report the median step time, tokens per second and their ratio (ours / theirs).
Memory is what a step needs beyond the frozen weights: the CUDA allocator's peak on a
GPU; on CPU the activations saved for backward plus gradient and Adam state.

    python benchmarks/train_step.py                      # CPU, all four methods
    python benchmarks/train_step.py --device cuda        # bf16 autocast on a GPU
    python benchmarks/train_step.py --methods prompt_tuning --steps 10 --out benchmarks/results.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import nullcontext

import torch

from data import batches, load_task
from methods.shared.training import task_loss

from sides import VIRTUAL_TOKENS, build_ours, build_theirs

METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning_v2", "full_fine_tuning")


def with_loss(model):
    return model.train(), lambda batch: task_loss(model(batch), batch["labels"])


def make_step(model, loss_fn, device, bf16: bool):
    """One optimizer step on a batch, synchronised on CUDA so it can be timed; bf16: autocast on `device`."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step(batch):
        with autocast:
            loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def alternate(ours_step, theirs_step, data: list[dict], warmup: int) -> tuple[list[float], list[float]]:
    """Seconds of each side's steps, ours then theirs on every batch (both see the same machine load), after
    `warmup` batches that are not timed. theirs_step None: ours alone (their times come back empty)."""
    ours_times, theirs_times = [], []
    for i, batch in enumerate(data):
        for step, times in ((ours_step, ours_times), (theirs_step, theirs_times)):
            if step is None:
                continue
            start = time.perf_counter()
            step(batch)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return ours_times, theirs_times


def sst2_batches(tokenizer, count: int, device) -> list[dict]:
    examples = load_task("sst2").splits["train"]
    out = []
    for batch in batches(examples, tokenizer, 32, shuffle=True, seed=0, max_length=64):
        out.append({k: v.to(device) for k, v in batch.items()})
        if len(out) == count:
            return out
    return out


def time_method(name: str, device: torch.device, steps: int, warmup: int, bf16: bool) -> dict:
    bf16 = bf16 and device.type == "cuda"  # bf16 autocast on a GPU only
    torch.manual_seed(0)
    ours, tokenizer = build_ours(name, device)
    ours, ours_loss = with_loss(ours)
    torch.manual_seed(0)
    theirs, theirs_loss = with_loss(build_theirs(name, device))
    data = sst2_batches(tokenizer, steps + warmup, device)
    ours_step, theirs_step = make_step(ours, ours_loss, device, bf16), make_step(theirs, theirs_loss, device, bf16)
    ours_times, theirs_times = alternate(ours_step, theirs_step, data, warmup)
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in data[warmup:])
    ours_memory = training_memory_mb(ours, ours_loss, data[0], device, bf16)
    theirs_memory = training_memory_mb(theirs, theirs_loss, data[0], device, bf16)
    ours_s, theirs_s = statistics.median(ours_times), statistics.median(theirs_times)
    return {"method": name, "ours_step_s": ours_s, "theirs_step_s": theirs_s, "step_time_ratio": ours_s / theirs_s,
            "ours_tokens_per_s": tokens / ours_s, "theirs_tokens_per_s": tokens / theirs_s,
            "tokens_per_s_ratio": theirs_s / ours_s, "steps_timed": len(ours_times),
            "ours_peak_mb": ours_memory, "theirs_peak_mb": theirs_memory}


def training_memory_mb(model, loss_fn, batch: dict, device: torch.device, bf16: bool) -> float:
    """Memory a training step needs beyond the frozen weights.

    On CUDA: the allocator's peak during a step. On CPU, where PyTorch keeps no such counter,
    we count what the step must hold: the activations autograd saves for backward (each
    storage once, weights excluded) plus a gradient and two Adam moments per trainable weight.
    """
    step = make_step(model, loss_fn, device, bf16)
    if device.type == "cuda":
        step(batch)  # the optimizer state exists after one step
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(batch)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return saved_for_backward_mb(model, loss_fn, batch) + 3 * trainable / 2**20


def saved_for_backward_mb(model, loss_fn, batch: dict) -> float:
    """MB of the tensors autograd saves for backward during loss_fn(batch) (each storage once, weights excluded);
    runs the backward too."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in weights:
            saved[pointer] = tensor.untyped_storage().nbytes()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn(batch)
    loss.backward()
    return sum(saved.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-bf16", action="store_true", help="on CUDA, train in float32")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    device, bf16 = torch.device(args.device), not args.no_bf16
    results = []
    for name in args.methods.split(","):
        row = time_method(name, device, args.steps, args.warmup, bf16)
        row["memory_ratio"] = row["ours_peak_mb"] / max(row["theirs_peak_mb"], 1e-9)
        results.append(row)
        print(f"{name:>17}: ours {1e3 * row['ours_step_s']:.0f} ms, theirs {1e3 * row['theirs_step_s']:.0f} ms "
              f"-> ratio {row['step_time_ratio']:.2f}; memory {row['ours_peak_mb']:.0f} vs "
              f"{row['theirs_peak_mb']:.0f} MB", flush=True)
    report = {"device": str(device), "bf16": bf16 and device.type == "cuda", "threads": torch.get_num_threads(),
              "machine": f"{platform.machine()} {platform.processor()}".strip(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "batch_size": 32, "max_length": 64,
              "virtual_tokens": VIRTUAL_TOKENS, "results": results}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    write_report(report, args.out)


def write_report(report: dict, out: str | None) -> None:
    """The benchmark's JSON, printed, and written to `out` if given."""
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
