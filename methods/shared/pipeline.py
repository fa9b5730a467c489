"""The one run pipeline: load, build, train (or only evaluate), score, save and record, for every method.

    model, record = run(PromptTuningConfig(num_virtual_tokens=5), RunOptions(task="sst2", max_steps=100))

`run` finds the method of a config in methods/registry.py, loads the backbone and the task,
builds the method for the task (`Model.for_task`), trains its trainable parameters with
methods/shared/training.py (none: evaluation only, e.g. zero-shot prompts), scores dev and test
(generation tasks: BLEU of generated text), and writes OUT/results.json (a RunRecord),
OUT/method.json + OUT/method.safetensors (the method's own parameters) and OUT/learning_curve.png.
Each method file's main() is: parse (`parse_command_line`), build the config, `run`.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import sys
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from data import Task, load_task
from data.batching import batches, causal_lm_batches, seq2seq_batches
from data.metrics import corpus_bleu
from minitransformer import Tokenizer, Transformer, compile_blocks, load_pretrained

from methods import registry
from methods.shared import distributed
from methods.shared.files import atomic_path, write_json
from methods.shared.options import (DEFAULT_MODEL, RunOptions, add_options, from_args,  # noqa: F401 (re-exported)
                                    outputs_fields)
from methods.shared.plots import plot_learning_curves
from methods.shared.prompting import check_position_budget
from methods.shared.training import (TrainConfig, TrainResult, count_parameters, evaluate, get_device, peak_memory_mb,
                                     set_seed, train)

EVAL_BATCH_SIZE = 64


@dataclass
class RunRecord:
    """What a run measured: the same fields for every method and task kind (OUT/results.json)."""
    method: str                  # the registry's name of the method, e.g. "prefix_tuning"
    run_name: str                # what the run is filed under, e.g. "prefix_tuning_flat" (registry.run_name)
    model: str
    task: str
    task_is_builtin: bool
    metric: str                  # accuracy, macro_f1, entity_f1 or bleu
    dev_metric: float | None     # the best dev score (the state the run keeps)
    test_metric: float | None    # of that state; None when not scored
    best_step: int
    history: list[dict]          # {step, loss, dev_metric, seconds} per evaluation
    steps: int                   # training steps taken (0: evaluation only)
    train_seconds: float
    seconds_per_step: float
    trainable_params: int
    total_params: int
    trainable_percent: float
    peak_memory_mb: float
    stored_bytes: int            # size of method.safetensors (0: nothing trained)
    stopped: str | None          # why training stopped early, if it did
    config: dict                 # the method's full config
    options: dict                # RunOptions, with the learning rate used
    outcome: str = "finished"    # finished | interrupted (--resume goes on) | diverged
    run_key: dict = field(default_factory=dict)  # what decides its numbers (run_key): --resume compares it
    details: dict = field(default_factory=dict)  # method-specific: generated samples, per-template scores, ...
    device: str = ""
    machine: str = ""
    date: str = ""


@dataclass
class Loaded:
    """A backbone loaded for runs that share it, and the random state right after loading: each run then
    builds its method from the same state as after a fresh load (same seed, same numbers)."""
    backbone: Transformer
    tokenizer: Tokenizer
    device: torch.device
    rng_state: torch.Tensor


def load_backbone(options: RunOptions) -> Loaded:
    set_seed(options.seed)
    device = get_device(distributed.setup(options.device))  # under torchrun: join the others, this rank's GPU
    backbone, tokenizer = load_pretrained(options.model, device=device)
    backbone.gradient_checkpointing = options.gradient_checkpointing
    if options.compile:
        compile_blocks(backbone, options.compile)
    return Loaded(backbone, tokenizer, device, torch.get_rng_state())


# ---- saving and loading a method's own parameters -------------------------------------------------

def backbone_signature(backbone: Transformer) -> dict:
    """What a saved method depends on: the backbone's shape."""
    c = backbone.config
    return {"model_type": c.model_type, "hidden_size": c.hidden_size, "num_layers": c.num_layers,
            "num_heads": c.num_heads, "vocab_size": c.vocab_size}


def save_method(model: nn.Module, directory: str | Path, task=None, model_name: str | None = None,
                task_name: str | None = None) -> Path:
    """Save only the method's trainable parameters (OUT/method.safetensors) and what rebuilds it (OUT/method.json:
    the method's registry name and full config, the task's labels, the backbone's shape).

    `task` is a data.Task, or a data.tasks.TaskSpec with its `task_name`. With several processes only rank 0
    writes (the others hold the same parameters)."""
    directory = Path(directory)
    if not distributed.is_main():
        return directory / "method.safetensors"
    directory.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    with atomic_path(directory / "method.safetensors") as temporary:
        save_file(state, str(temporary))
    method = registry.method_for(model.config)
    meta = {"method": method.name, "run_name": registry.run_name(model.config), "config": asdict(model.config),
            "model": model_name, "backbone": backbone_signature(model.backbone),
            "task": None if task is None else {"name": task_name or task.name, "kind": task.kind,
                                                "label_names": list(task.label_names),
                                                "verbalizer": list(task.verbalizer)},
            "contents": model.saved_contents}
    write_json(directory / "method.json", meta)
    return directory / "method.safetensors"


def load_weights(model: nn.Module, directory: str | Path) -> dict:
    """Load what `save_method` wrote into a freshly built method; refuse a different backbone or layout."""
    directory = Path(directory)
    meta = json.loads((directory / "method.json").read_text())
    expected = backbone_signature(model.backbone)
    if meta["backbone"] != expected:
        raise ValueError(f"{directory} was trained for a backbone {meta['backbone']}, but this model is "
                         f"{expected}. Load it into the same kind of model it was trained with.")
    wanted = outputs_fields(model.config)
    if meta.get("config") is not None and any(meta["config"].get(k) != v for k, v in json_ready(wanted).items()):
        differ = key_difference(meta["config"], json_ready(wanted))
        raise ValueError(f"{directory} was trained with other options ({differ}): build the method with the options "
                         f"saved in its method.json, or load it with load_method({str(directory)!r}).")
    state = load_file(str(directory / "method.safetensors"))
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != set(own):
        raise KeyError(f"Saved parameters do not match this method: missing {sorted(set(own) - set(state))}, "
                       f"unexpected {sorted(set(state) - set(own))}. Were the method's options the same?")
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise ValueError(f"{directory}: {name} was saved {list(tensor.shape)}, but this method expects "
                             f"{list(own[name].shape)}. Build it with the options it was trained with (saved in "
                             f"method.json: {meta.get('config')}), e.g. the same prompt length and layers.")
    model.load_state_dict(state, strict=False)
    return meta


def json_ready(values: dict) -> dict:
    """As the values read back from JSON (tuples become lists), to compare with a saved config."""
    return json.loads(json.dumps(values, default=str))


def config_from_dict(config_class: type, values: dict):
    """A config from its JSON form (lists back to tuples where the field is a tuple)."""
    hints = typing.get_type_hints(config_class)
    fixed = {k: tuple(v) if isinstance(v, list) and typing.get_origin(hints[k]) is tuple else v
             for k, v in values.items()}
    return config_class(**fixed)


def load_method(directory: str | Path, model_name: str | None = None, device=None) -> tuple[nn.Module, Tokenizer]:
    """Rebuild a saved method from OUT/method.json through the registry and load its parameters.

    The backbone is the one it was trained on (or `model_name`). Returns (method in eval mode, tokenizer)."""
    directory = Path(directory)
    if not (directory / "method.json").exists():
        raise FileNotFoundError(f"{directory} has no method.json: pass the --out directory of a method command line.")
    meta = json.loads((directory / "method.json").read_text())
    method, task = registry.get(meta["method"]), meta.get("task")
    name = model_name or meta.get("model")
    if task is None or name is None:
        raise ValueError(f"{directory}/method.json does not say which " + ("task" if task is None else "model") +
                         " the method was trained for (it was saved outside a run); build the method yourself "
                         "and use load_weights.")
    backbone, tokenizer = load_pretrained(name, device=device)
    config = config_from_dict(method.config_class, meta["config"])
    model = method.model_class(backbone, tokenizer, len(task["label_names"]), config, task["kind"],
                               task["verbalizer"] or None)
    load_weights(model, directory)
    return model.eval(), tokenizer


# ---- one run --------------------------------------------------------------------------------------

def train_on_task(model: nn.Module, tokenizer, task: Task, config: TrainConfig, train_examples: list,
                  dev_examples: list, batch_size: int, max_length: int, template: str | None = None,
                  device: torch.device | None = None) -> TrainResult:
    """`train` on a task's examples: shuffled batches each epoch (seed + epoch), dev batches of 64; with several
    processes each encodes its share of every batch (a training rank with no share takes a weightless stand-in)."""
    make = lambda examples, shuffle, seed=0: batches(examples, tokenizer, batch_size if shuffle else EVAL_BATCH_SIZE,
                                                     shuffle=shuffle, seed=seed, max_length=max_length,
                                                     template=template, shard=distributed.batch_sharder(shuffle))
    steps_per_epoch = math.ceil(len(train_examples) / batch_size)
    return train(model, lambda epoch: make(train_examples, True, config.seed + epoch), steps_per_epoch,
                 lambda: make(dev_examples, False), config, task.metric, device)


def fit(model: nn.Module, tokenizer: Tokenizer, task: Task, options: RunOptions, device: torch.device,
        checkpoint: Path | None = None, resume: bool = False) -> TrainResult:
    """Train on the task's training split: the task's loss (the LM loss on references for generation).

    An interrupted run saves to `checkpoint` what `resume` needs to go on from it."""
    config = TrainConfig(epochs=options.epochs, max_steps=options.max_steps, lr=options.lr,
                         eval_every=options.eval_every, seed=options.seed, progress=options.progress,
                         precision=options.precision, checkpoint=None if checkpoint is None else str(checkpoint),
                         resume=resume)
    examples = task.splits["train"][: options.limit_train]
    if task.kind == "generation":  # one row per reference; no dev metric while training (BLEU needs decoding)
        steps = math.ceil(sum(len(e.references) for e in examples) / options.batch_size)
        lm_batches = seq2seq_batches if getattr(model.backbone.config, "is_encoder_decoder", False) else \
            causal_lm_batches  # T5 / BART: the table to the encoder, the reference to the decoder
        make = lambda epoch: lm_batches(examples, tokenizer, options.batch_size, True, options.seed + epoch,
                                        options.max_length, distributed.batch_sharder(training=True))
        return train(model, make, steps, None, config, device=device)
    return train_on_task(model, tokenizer, task, config, examples, task.splits["dev"][: options.limit_dev],
                         options.batch_size, options.max_length, model.template, device)


def score(model: nn.Module, tokenizer: Tokenizer, task: Task, options: RunOptions, split: str,
          device: torch.device) -> tuple[float, dict]:
    """The task's metric on one split, and what else the split's scoring showed (generated samples)."""
    examples = task.splits[split][: options.limit_dev] if split == "dev" else task.splits[split]
    if task.kind == "generation":  # each process decodes its share; BLEU over all of them
        mine = distributed.shard(examples)[0]
        texts = model.generate_texts(tokenizer, [e.source for e in mine], options.max_new_tokens)
        pairs = distributed.gather(list(zip(texts, [e.references for e in mine])))
        return corpus_bleu([h for h, _ in pairs], [r for _, r in pairs]), {"samples": [h for h, _ in pairs[:5]]}
    made = batches(examples, tokenizer, EVAL_BATCH_SIZE, max_length=options.max_length, template=model.template,
                   shard=distributed.batch_sharder(training=False))
    return evaluate(model, made, task.metric, device), {}


def describe(task: Task, options: RunOptions) -> str:
    """How many examples each split has (and how many of the training split the run uses)."""
    sizes = []
    for split, examples in task.splits.items():
        used = len(examples[: {"train": options.limit_train, "dev": options.limit_dev}.get(split)])
        sizes.append(f"{split} {len(examples):,}" + (f" (using {used:,})" if used != len(examples) else ""))
    return ", ".join(sizes)


BUDGET = ("epochs", "max_steps", "batch_size", "lr", "seed", "eval_every", "max_length", "limit_train", "limit_dev",
          "max_new_tokens", "precision")


def run_key(method: str, config, options: RunOptions, task: Task) -> dict:
    """Everything that decides a run's numbers: a record or a checkpoint with another key is another run."""
    return {"method": method, "config": asdict(config), "model": options.model, "task": task.name,
            "data": task.source, **{name: getattr(options, name) for name in BUDGET}}


def key_difference(saved: dict, wanted: dict) -> str:
    differ = [f"{k} {saved.get(k)!r} there, {wanted.get(k)!r} here" for k in wanted if saved.get(k) != wanted.get(k)]
    return "; ".join(differ)


def previous_run(out: Path, key: dict, resume: bool) -> tuple[RunRecord | None, bool]:
    """With --resume: (the finished record, False) to skip a run done with these settings, (None, True) to go
    on from an interrupted one; a run in OUT with other settings is refused, never relabelled."""
    checkpoint, results = out / "resume.json", out / "results.json"
    if not resume:
        if checkpoint.exists():
            print(f"note: {out} holds an interrupted run; starting over (add --resume to go on from it)")
        return None, False
    for path, what in ((checkpoint, "an interrupted run"), (results, "a finished run")):
        if path.exists():
            saved = json.loads(path.read_text()).get("run_key")
            if saved != key:
                raise ValueError(f"{out} holds {what} with other settings ({key_difference(saved or {}, key)}): "
                                 "give another --out, or leave out --resume to start over there.")
            if path is checkpoint:
                if not (out / "resume.pt").exists():  # stopped before its first checkpoint: nothing to go on from
                    print(f"note: the interrupted run in {out} stopped before its first checkpoint; starting over")
                    return None, False
                print(f"resuming the interrupted run in {out}")
                return None, True
            record = RunRecord(**json.loads(results.read_text()))
            print(f"{out} already holds this run, finished (dev {record.metric} {100 * record.dev_metric:.2f}): "
                  "nothing to do (--resume)")
            return record, False
    print(f"note: nothing to resume in {out}; starting")
    return None, False


def score_run(model: nn.Module, tokenizer: Tokenizer, task: Task, options: RunOptions, result: TrainResult,
              device: torch.device) -> tuple[float, float | None, dict]:
    """(dev, test, details): the best dev score training saw (scored now if it saw none, and for generation),
    the test score of that state; an interrupted or diverged run is not scored further."""
    dev, test, details = result.best_metric, None, {}
    if result.outcome == "interrupted":
        return dev, None, details
    if not result.history or task.kind == "generation" or not math.isfinite(dev):
        dev, details = score(model, tokenizer, task, options, "dev", device)
    # generation: dev only (decoding the test tables too would double the run)
    if "test" in task.splits and not options.skip_test and task.kind != "generation" and result.outcome == "finished":
        test, test_details = score(model, tokenizer, task, options, "test", device)
        details.update(test_details)
    return dev, test, details


def run(config, options: RunOptions, loaded: Loaded | None = None, details: dict | None = None
        ) -> tuple[nn.Module, RunRecord]:
    """Train and evaluate the method of `config` as `options` say; write its results, weights and plot.

    `loaded` shares one loaded backbone between runs (of methods that leave it unchanged); `details`
    are added to the record's (what the caller knows about the run, e.g. why this variant ran)."""
    method = registry.method_for(config)
    loaded = loaded or load_backbone(options)
    set_seed(options.seed)
    torch.set_rng_state(loaded.rng_state)
    device, tokenizer = loaded.device, loaded.tokenizer
    task = load_task(options.task, options.data_dir)
    if task.kind == "generation" and not method.generates:
        raise ValueError(f"{method.name} does not generate text; for {task.name} use prefix_tuning with a decoder "
                         "(--model gpt2).")
    model = method.model_class.for_task(loaded.backbone, tokenizer, task, config).to(device)
    config, name = model.config, registry.run_name(model.config)
    if model.prompt_length:  # input-level prompts take positions: fail now rather than at the longest batch
        check_position_budget(loaded.backbone, model.prompt_length, options.max_length)
    options = dataclasses.replace(options, lr=options.lr or config.default_lr)
    out, key = output_dir(options, config, task.name), run_key(method.name, config, options, task)
    # rank 0 decides (it alone reads and writes OUT), the others follow
    finished, resuming = distributed.broadcast(previous_run(out, key, options.resume) if distributed.is_main() else None)
    if finished is not None:
        load_weights(model, out)
        return model, finished
    trainable, total = count_parameters(model)
    if distributed.is_main():
        print(f"{name} on {task.name}{' (built-in data, not a benchmark)' if task.is_builtin else ''} with "
              f"{options.model}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%); "
              f"{describe(task, options)} examples" + (f"; {distributed.world()} processes" if distributed.active()
                                                       else ""))
        if resuming or trainable:
            write_json(out / "resume.json", {"run_key": key})  # what the checkpoint, if one is written, belongs to
    result = fit(model, tokenizer, task, options, device, out / "resume.pt", resuming) if trainable else TrainResult()
    dev_metric, test_metric, scored = score_run(model, tokenizer, task, options, result, device)
    record = RunRecord(
        method=method.name, run_name=name, model=options.model, task=task.name, task_is_builtin=task.is_builtin,
        metric=task.metric, dev_metric=dev_metric, test_metric=test_metric, best_step=result.best_step,
        history=result.history, steps=result.steps, train_seconds=result.train_seconds,
        seconds_per_step=result.train_seconds / max(1, result.steps), trainable_params=trainable, total_params=total,
        trainable_percent=100 * trainable / total, peak_memory_mb=peak_memory_mb(device), stored_bytes=0,
        stopped=result.stopped, outcome=result.outcome, config=asdict(config), options=asdict(options),
        run_key=key, details={**(details or {}), **scored}, device=str(device),
        machine=platform.processor() or platform.machine(), date=datetime.datetime.now().isoformat(timespec="seconds"))
    if distributed.is_main():  # only rank 0 writes and speaks
        finish(model, record, out, task, method.module)
    distributed.barrier()
    return model, record


def finish(model: nn.Module, record: RunRecord, out: Path, task: Task, module: str) -> None:
    """Write the run's weights, record and plot; say what happened in one line (and how to go on, if it stopped)."""
    weights = save_method(model, out, task, record.model)
    record.stored_bytes = weights.stat().st_size if record.trainable_params else 0
    write_record(out, record)
    if record.history:
        plt.close(plot_learning_curves({record.run_name: record.history}, record.metric, out / "learning_curve.png",
                                       title=f"{record.run_name} on {record.task} ({record.model})"))
    best = f"dev {record.metric} {100 * record.dev_metric:.2f}" if record.dev_metric is not None else "no dev score"
    if record.outcome == "interrupted":
        command = list(record.options["command"] or [])
        again = f"python -m {module} {shlex.join(command + (['--resume'] if '--resume' not in command else []))}" \
            if record.options["command"] is not None else "the same run with RunOptions(resume=True)"
        print(f"Stopped: {record.stopped}. Kept the best state so far ({best} at step {record.best_step}) in {out}; "
              f"go on with: {again}")
        return
    (out / "resume.pt").unlink(missing_ok=True)
    (out / "resume.json").unlink(missing_ok=True)
    test = f", test {100 * record.test_metric:.2f}" if record.test_metric is not None else ""
    print(best + (f" (best at step {record.best_step})" if record.steps else "") +
          f"{test}; {record.seconds_per_step:.3f} s/step; wrote {out}/results.json")


def summary_record(records: list[RunRecord], config, dev_metric: float, test_metric: float | None,
                   details: dict) -> RunRecord:
    """One record for an experiment made of several runs on one backbone (in-context conditions, templates):
    their shared fields, their costs added up, and what the experiment found in `details`."""
    first = records[0]
    steps, seconds = sum(r.steps for r in records), sum(r.train_seconds for r in records)
    return dataclasses.replace(first, run_name=registry.run_name(config), config=asdict(config), dev_metric=dev_metric,
                               test_metric=test_metric, best_step=0, history=[], steps=steps, train_seconds=seconds,
                               seconds_per_step=seconds / max(1, steps),
                               peak_memory_mb=max(r.peak_memory_mb for r in records),
                               stored_bytes=sum(r.stored_bytes for r in records), details=details)


def output_dir(options: RunOptions, config, task_name: str) -> Path:
    """Where a run writes: --out, else runs/RUN_NAME-TASK (the run name from the registry)."""
    return Path(options.out or f"runs/{registry.run_name(config)}-{task_name}")


def write_record(out: str | Path, record: RunRecord) -> Path:
    """OUT/results.json (by rank 0 only, with several processes)."""
    path = Path(out) / "results.json"
    return write_json(path, asdict(record)) if distributed.is_main() else path


def parse_command_line(config_class: type, description: str, argv: list[str] | None = None
                       ) -> tuple[object, RunOptions]:
    """The method's options (from its config dataclass) and the run options, parsed into both dataclasses."""
    method = registry.method_for_class(config_class)
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_options(parser, config_class, f"{method.name} options")
    add_options(parser, RunOptions, "run options (shared by every method)")
    parser.epilog = f"default learning rate: {method.default_lr_text()}"
    args = parser.parse_args(argv)
    words = list(sys.argv[1:] if argv is None else argv)
    return from_args(config_class, args), from_args(RunOptions, args, command=words)


def command_line(main: Callable[[], object]) -> None:
    """Run a method file's main() as a command. A mistake in what was asked (a wrong name, a missing file, an
    option out of range) is one line on stderr and exit status 1, without a traceback (PROMPT_DEBUG=1 shows
    it); an interrupted run exits with 130, a diverged one with 3, both after saying what was kept."""
    try:
        record = main()
    except KeyboardInterrupt:
        print("Interrupted before training began or while scoring: nothing of this run was kept.", file=sys.stderr)
        raise SystemExit(130) from None
    except (ValueError, KeyError, OSError, RuntimeError) as error:
        if os.environ.get("PROMPT_DEBUG") == "1":
            raise
        text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"error: {text}", file=sys.stderr)
        raise SystemExit(1) from None
    if isinstance(record, RunRecord) and record.outcome != "finished":
        raise SystemExit(130 if record.outcome == "interrupted" else 3)


def usage_error(message: str) -> typing.NoReturn:
    """A command-line mistake: the message on stderr, exit status 2 (as argparse does), no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each option's default after its help (once)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if "(default:" in (action.help or "") else super()._get_help_string(action)
