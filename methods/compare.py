"""Which method, at what cost? Train every method on one task and model with the same budget.

Each method runs as its own command line (`python -m methods.X`), in its own process so
that peak memory is its own and a failure cannot stop the others. Every finished run is
written at once; `--resume` skips the ones already done. The output directory gets:

    results.json        one record per method and seed (the fields of each method's results.json)
    results.md          the table printed at the end
    curves.png          dev metric against training step, all methods on one chart
    metric_vs_params.png  best dev metric (the state each run keeps) against trainable parameters (log scale)
    cost.png            seconds per training step and peak memory per method

    python -m methods.compare --quick          # a first look: five methods, a few minutes on a laptop CPU
    python -m methods.compare                  # the default comparison (26 minutes on 2 CPU cores with SST-2)
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from data import DataNotFoundError, load_task
from minitransformer.model import COMPILERS
from methods.lineup import METHODS, lineup_for
from methods.shared.files import atomic_path, write_json
from methods.shared.options import DEFAULT_MODEL, positive_int
from methods.shared.plots import plot_comparison

# The built-in sentiment set (the offline fallback) has 240 training sentences: one epoch is 8 steps of 32, too
# few to learn anything; 10 epochs (80 steps) let the methods separate (README, "First looks").
BUILTIN_EPOCHS, BUILTIN_EVAL_EVERY = 10, 16
# --quick: a first look in about three minutes on a laptop CPU that still shows learning: four methods (a
# frozen-model baseline, a prompt method, LoRA, full fine-tuning) on the built-in set at that budget. On SST-2
# the default learning rates need a few hundred steps before anything separates from chance.
QUICK_METHODS = ["head_only", "p_tuning_v2", "lora", "full_fine_tuning"]
QUICK_TASK = "builtin_sentiment"


def default_task(data_dir: str | None) -> tuple[str, str]:
    """sst2 when its files can be found, else the built-in sentiment set (and say so)."""
    try:
        load_task("sst2", data_dir, allow_download=False)
        return "sst2", "real SST-2"
    except DataNotFoundError:
        return "builtin_sentiment", ("SST-2 not found (set PROMPT_DATA_DIR or --data-dir): using the BUILT-IN "
                                     "sentiment set, written for this project, not a benchmark")


def child_command(name: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The method command line of one run (without --out): what decides its numbers, and its record's key."""
    module, extra = lineup_for(args.model)[0][name]
    argv = ["-m", module, *extra, "--model", args.model, "--task", args.task, "--seed", str(seed),
            "--max-length", str(args.max_length), "--skip-test", "--epochs", str(args.epochs)]
    argv += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    argv += ["--eval-every", str(args.eval_every)] if args.eval_every else []
    argv += ["--data-dir", args.data_dir] if args.data_dir else []
    argv += ["--compile", args.compile] if args.compile else []
    return argv + (["--device", args.device] if args.device else [])


def run_one(name: str, seed: int, args: argparse.Namespace, out: Path, resume: bool = False) -> dict:
    """Run one method in its own process; its record, filed under the line-up's name, with the command that made it.

    On Ctrl-C the child (which gets it too) finishes its step, saves and exits; SIGTERM is passed on to it."""
    command = child_command(name, seed, args)
    run_dir = out / "runs" / f"{name}-seed{seed}"
    quiet = None if args.verbose else subprocess.PIPE  # a method's own output is shown with --verbose
    child = subprocess.Popen([sys.executable, *command, "--out", str(run_dir)] + (["--resume"] if resume else []),
                             stdout=quiet, stderr=quiet, text=True)
    try:
        _, stderr = child.communicate()
    except KeyboardInterrupt:  # the child got the signal too (SIGTERM: forwarded); wait until it has saved
        if STOPPED["signal"] == "SIGTERM":
            child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate()
        STOPPED["signal"] = STOPPED["signal"] or "SIGINT"
    if child.returncode not in (0, 130) or not (run_dir / "results.json").exists():
        last_lines = (stderr or "").strip().splitlines()[-3:]
        return {"method": name, "seed": seed, "command": command,
                "error": " | ".join(last_lines) or f"exit code {child.returncode}"}
    record = json.loads((run_dir / "results.json").read_text())
    return {**record, "method": name, "seed": seed, "command": command}


STOPPED: dict = {"signal": None}  # set when compare itself is asked to stop


def stop_on_sigterm(signum, frame):
    STOPPED["signal"] = "SIGTERM"
    raise KeyboardInterrupt


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


def previous(path: Path, command: list[str], resume: bool) -> tuple[dict | None, str]:
    """With --resume: the record to keep, or why the run is made (again); a record is kept only if the command
    that made it is the one this comparison would run (same method, config, model, task, budget and seed)."""
    if not resume or not path.exists():
        return None, ""
    record = json.loads(path.read_text())
    if record.get("command") != command:
        return None, "its record was made with other settings: running it again"
    if "error" in record:
        return None, "it failed last time: running it again"
    if record.get("outcome") == "interrupted":
        return None, "interrupted last time: going on from where it stopped"
    return record, "already done, skipped (--resume)"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = command_line_parser()
    args = parser.parse_args(argv)
    names, seeds, note, budget = settle(args, parser)
    records = run_all(names, seeds, args, argv)
    write_summary(records, names, seeds, note, budget, args)
    return records


def command_line_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=None, help=f"comma-separated, from: {', '.join(METHODS)} (default: all; "
                        f"--quick: {', '.join(QUICK_METHODS)})")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or local directory")
    parser.add_argument("--task", default=None, help="task name (default: sst2 if found, else builtin_sentiment; "
                        "--quick: builtin_sentiment)")
    parser.add_argument("--data-dir", default=None, help="directory laid out like ../shared/data")
    parser.add_argument("--epochs", type=positive_int, default=None, help="passes over the training split, the same "
                        f"for all (default: 1; {BUILTIN_EPOCHS} on the built-in set)")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="training steps per method (overrides "
                        "epochs)")
    parser.add_argument("--eval-every", type=positive_int, default=None, help="steps between dev evaluations (default: "
                        f"100; {BUILTIN_EVAL_EVERY} on the built-in set); each reads the whole dev set")
    parser.add_argument("--max-length", type=positive_int, default=64, help="longest input in tokens")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; several give mean and spread")
    parser.add_argument("--quick", action="store_true", help=f"a first look in about three minutes: {', '.join(QUICK_METHODS)} "
                        f"on the built-in set, {BUILTIN_EPOCHS} epochs each")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--out", default="runs/compare", help="output directory")
    parser.add_argument("--resume", action="store_true", help="keep the runs in --out made with these settings, go on "
                        "from an interrupted one, and run the rest (a record made otherwise is run again)")
    parser.add_argument("--compile", choices=COMPILERS, default=None,
                        help="torch.compile each method's transformer blocks (fused kernels on a GPU; about a minute "
                             "of compiling per method first). Under inductor dropout draws other masks, so runs "
                             "made without it are run again on --resume")
    parser.add_argument("--verbose", action="store_true", help="show each method's own output and progress bar")
    return parser


def settle(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[list[str], list[int], str, str]:
    """The methods, seeds, task (with a note on where it came from) and budget of this comparison; says them."""
    methods, left_out = lineup_for(args.model)
    if args.quick and methods is not METHODS:
        parser.error("--quick is the first look on the default encoder; on an encoder-decoder give --methods and a "
                     "--task (and a budget) yourself")
    names = [n.strip() for n in (args.methods or ",".join(QUICK_METHODS if args.quick else methods)).split(",")
             if n.strip()]
    unknown = [n for n in names if n not in methods]
    if unknown:
        parser.error(f"unknown method(s) {unknown} for {args.model}; choose from {', '.join(methods)}"
                     + (f" ({left_out})" if left_out else ""))
    if left_out and not args.methods:
        print(f"note: {left_out}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes whole numbers separated by commas, e.g. 0,1,2; got {args.seeds!r}")
    note = f"task {args.task}"
    if args.task is None and args.quick:
        args.task, note = QUICK_TASK, "--quick: the BUILT-IN sentiment set, written for this project, not a benchmark"
    elif args.task is None:
        args.task, note = default_task(args.data_dir)
    builtin = args.task.startswith("builtin_")
    budget = budget_note(args, builtin)
    print(f"Comparing {len(names)} methods on {args.task} ({note}) with {args.model}, seeds {seeds}: {budget}.",
          flush=True)
    return names, seeds, note, budget


def run_all(names: list[str], seeds: list[int], args: argparse.Namespace, argv: list[str] | None) -> list[dict]:
    """Each method at each seed in its own process, its record kept in OUT/records as soon as it ends."""
    out = Path(args.out)
    records, jobs = [], [(name, seed) for name in names for seed in seeds]
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    # Ctrl-C as KeyboardInterrupt even where a shell started us with SIGINT ignored (`cmd &`): the method runs
    # install their own handler, and compare must stop with them rather than carry on without its record
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for done, (name, seed) in enumerate(jobs):
        path = out / "records" / f"{name}-seed{seed}.json"
        kept, why = previous(path, child_command(name, seed, args), args.resume)
        print(f"[{done + 1}/{len(jobs)}] {name} (seed {seed})" + (f": {why}" if why else " ..."), flush=True)
        if kept is not None:
            records.append(kept)
            continue
        start = time.perf_counter()
        record = run_one(name, seed, args, out, resume="going on" in why)
        write_json(path, record)  # written at once, atomically: never lost, never half written
        records.append(record)
        outcome = f"failed: {record['error']}" if "error" in record else \
            f"dev {record['metric']} {100 * record['dev_metric']:.1f}%" + (
                " (interrupted)" if record.get("outcome") == "interrupted" else "")
        print(f"    {outcome} ({time.perf_counter() - start:.0f} s)", flush=True)
        if STOPPED["signal"]:
            again = shlex.join([Path(sys.executable).name, "-m", "methods.compare", *(argv if argv is not None else
                                                                                       sys.argv[1:])])
            print(f"Stopped by {STOPPED['signal']}: {done} of {len(jobs)} runs finished, {name} kept its best "
                  f"state so far; go on with: {again}{'' if args.resume else ' --resume'}")
            raise SystemExit(130)
    return records


def write_summary(records: list[dict], names: list[str], seeds: list[int], note: str, budget: str,
                  args: argparse.Namespace) -> None:
    out = Path(args.out)
    summary = {"task": args.task, "task_note": note, "model": args.model, "budget": budget, "records": records}
    write_json(out / "results.json", summary)  # once, with every record (each is in records/ already)
    rows = summarize(records, names)
    table = markdown_table(rows)
    with atomic_path(out / "results.md") as temporary:
        temporary.write_text(f"Task: {args.task} ({note}); model: {args.model}; seeds: {seeds}; {budget}\n\n{table}\n")
    plot(rows, out, f"{args.task} · {args.model}")
    print("\n" + table + f"\n\nWrote {out}/results.json, results.md, curves.png, metric_vs_params.png, cost.png")


def budget_note(args: argparse.Namespace, builtin: bool) -> str:
    """Fill in the budget's defaults (more epochs on the small built-in set) and say what it is."""
    if args.epochs is None:
        args.epochs = BUILTIN_EPOCHS if builtin and args.max_steps is None else 1
    if args.eval_every is None:
        args.eval_every = BUILTIN_EVAL_EVERY if builtin else 100
    steps = f"{args.max_steps} steps" if args.max_steps else f"{args.epochs} epoch{'s' if args.epochs > 1 else ''}"
    return f"{steps} of 32 per method, dev every {args.eval_every} steps" + (
        " (more epochs than on SST-2: the built-in set is small)" if builtin and args.max_steps is None else "")


if __name__ == "__main__":
    main()
