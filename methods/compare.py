"""Which method, at what cost? Train every method on one task and model with the same budget.

Each method runs as its own command line (`python -m methods.X`), in its own process so
that peak memory is its own and a failure cannot stop the others. Every finished run is
written at once; `--resume` skips the ones already done. The output directory gets:

    results.json        one record per method and seed (the fields of each method's results.json)
    results.md          the table printed at the end
    curves.png          dev metric against training step, all methods on one chart
    metric_vs_params.png  best dev metric (the state each run keeps) against trainable parameters (log scale)
    cost.png            seconds per training step and peak memory per method

    python -m methods.compare --quick          # a minute-scale first look
    python -m methods.compare                  # the default comparison (26 minutes on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from data import DataNotFoundError, load_task
from methods import registry
from methods.shared.options import DEFAULT_MODEL, to_argv
from methods.shared.plots import plot_comparison

# The line-up, in the order of the table: each method with the options that set its variant apart.
LINEUP: list[tuple[str, dict]] = [
    ("fine_tuning", {"mode": "head"}), ("hard_prompt", {"mode": "template-head"}), ("prompt_tuning", {}),
    ("p_tuning", {}), ("prefix_tuning", {}), ("p_tuning_v2", {}), ("bitfit", {}), ("adapters", {}), ("lora", {}),
    ("fine_tuning", {"mode": "full"}),
]


def lineup() -> dict[str, tuple[str, list[str]]]:
    """run name -> (module, its extra command-line words), the names as the registry gives them."""
    entries = {}
    for name, overrides in LINEUP:
        method = registry.get(name)
        config = method.config_class(**overrides)
        entries[registry.run_name(config)] = (method.module, to_argv(method.config_class, overrides))
    return entries


METHODS: dict[str, tuple[str, list[str]]] = lineup()
# Quick mode: exactly 20 steps of 16 examples for every method, however small the training split
# (max-steps decides); a first look at every method in about two minutes on a laptop CPU.
QUICK = ["--max-steps", "20", "--epochs", "1000", "--batch-size", "16", "--limit-train", "320", "--eval-every", "10"]


def default_task(data_dir: str | None) -> tuple[str, str]:
    """sst2 when its files can be found, else the built-in sentiment set (and say so)."""
    try:
        load_task("sst2", data_dir, allow_download=False)
        return "sst2", "real SST-2"
    except DataNotFoundError:
        return "builtin_sentiment", ("SST-2 not found (set PROMPT_DATA_DIR or --data-dir): using the BUILT-IN "
                                     "sentiment set, written for this project, not a benchmark")


def run_one(name: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    module, extra = METHODS[name]
    run_dir = out / "runs" / f"{name}-seed{seed}"
    argv = [sys.executable, "-m", module, *extra, "--model", args.model, "--task", args.task, "--seed", str(seed),
            "--out", str(run_dir), "--max-length", str(args.max_length), "--skip-test"]
    argv += ["--epochs", str(args.epochs)] + (["--max-steps", str(args.max_steps)] if args.max_steps else [])
    argv += ["--eval-every", str(args.eval_every)] if args.eval_every else []
    argv += ["--data-dir", args.data_dir] if args.data_dir else []
    argv += ["--device", args.device] if args.device else []
    argv += QUICK if args.quick else []
    quiet = None if args.verbose else subprocess.PIPE  # a method's own output is shown with --verbose
    completed = subprocess.run(argv, stdout=quiet, stderr=quiet, text=True)
    if completed.returncode != 0:
        last_lines = (completed.stderr or "").strip().splitlines()[-3:]
        return {"method": name, "seed": seed, "error": " | ".join(last_lines) or f"exit code {completed.returncode}"}
    record = json.loads((run_dir / "results.json").read_text())
    return {**record, "method": name, "seed": seed}  # filed under the line-up's name (= the record's run_name)


def summarize(records: list[dict], names: list[str]) -> list[dict]:
    """One row per method: mean and spread over seeds."""
    rows = []
    for name in names:
        runs = [r for r in records if r["method"] == name]
        good = [r for r in runs if "error" not in r]
        if not good:
            if runs:
                rows.append({"method": name, "error": runs[0]["error"]})
            continue
        dev = [100 * r["dev_metric"] for r in good]
        rows.append({"method": name, "dev_mean": statistics.mean(dev), "dev_std": statistics.pstdev(dev),
                     "seeds": len(good), "trainable": good[0]["trainable_params"],
                     "percent": good[0]["trainable_percent"],
                     "step_s": statistics.mean(r["seconds_per_step"] for r in good),
                     "memory_mb": max(r["peak_memory_mb"] for r in good),
                     "stored_kb": good[0]["stored_bytes"] / 1024, "metric": good[0]["metric"],
                     "histories": [r["history"] for r in good]})
    return rows


def markdown_table(rows: list[dict]) -> str:
    metric = next((r["metric"] for r in rows if "metric" in r), "metric")
    lines = [f"| method | best dev {metric} (%) | trainable params | trainable % | s/step | peak memory (MB) | stored (KB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'][:120]} | | | | | |")
            continue
        spread = f" ± {r['dev_std']:.1f}" if r["seeds"] > 1 else ""
        lines.append(f"| {r['method']} | {r['dev_mean']:.1f}{spread} | {r['trainable']:,} | {r['percent']:.3f} | "
                     f"{r['step_s']:.3f} | {r['memory_mb']:.0f} | {r['stored_kb']:,.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path, title: str) -> None:
    rows = [r for r in rows if "error" not in r]
    if rows:
        plot_comparison(rows, out, title)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or local directory")
    parser.add_argument("--task", default=None, help="task name (default: sst2 if found, else builtin_sentiment)")
    parser.add_argument("--data-dir", default=None, help="directory laid out like ../shared/data")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the training split (same for all)")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps per method (overrides epochs)")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between dev evaluations (each one reads "
                        "the whole dev set: on a CPU they are a good part of the run)")
    parser.add_argument("--max-length", type=int, default=64, help="longest input in tokens")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; several give mean and spread")
    parser.add_argument("--quick", action="store_true", help="20 steps of 16 examples: a first look, and CI")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--out", default="runs/compare", help="output directory")
    parser.add_argument("--resume", action="store_true", help="skip method/seed runs already in --out")
    parser.add_argument("--verbose", action="store_true", help="show each method's own output and progress bar")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    note = f"task {args.task}"
    if args.task is None:
        args.task, note = default_task(args.data_dir)
    print(f"Comparing {len(names)} methods on {args.task} ({note}) with {args.model}, seeds {seeds}"
          f"{', quick mode' if args.quick else ''}.", flush=True)

    out = Path(args.out)
    (out / "records").mkdir(parents=True, exist_ok=True)
    records, jobs = [], [(name, seed) for name in names for seed in seeds]
    for done, (name, seed) in enumerate(jobs):
        path = out / "records" / f"{name}-seed{seed}.json"
        if args.resume and path.exists() and "error" not in json.loads(path.read_text()):
            records.append(json.loads(path.read_text()))
            print(f"[{done + 1}/{len(jobs)}] {name} (seed {seed}): already done, skipped (--resume)")
            continue
        print(f"[{done + 1}/{len(jobs)}] {name} (seed {seed}) ...", flush=True)
        start = time.perf_counter()
        record = run_one(name, seed, args, out)
        path.write_text(json.dumps(record, indent=2))  # written at once: never lost
        records.append(record)
        outcome = f"failed: {record['error']}" if "error" in record else \
            f"dev {record['metric']} {100 * record['dev_metric']:.1f}%"
        print(f"    {outcome} ({time.perf_counter() - start:.0f} s)", flush=True)
    # Once, with every record: each run's record is already saved in records/ the moment it ends.
    (out / "results.json").write_text(json.dumps({"task": args.task, "task_note": note, "model": args.model,
                                                  "records": records}, indent=2))

    rows = summarize(records, names)
    table = markdown_table(rows)
    (out / "results.md").write_text(f"Task: {args.task} ({note}); model: {args.model}; seeds: {seeds}\n\n{table}\n")
    plot(rows, out, f"{args.task} · {args.model}")
    print("\n" + table + f"\n\nWrote {out}/results.json, results.md, curves.png, metric_vs_params.png, cost.png")
    return records


if __name__ == "__main__":
    main()
