"""Command-line options derived from config dataclasses: each option is written once, as a field.

A config field declared with `option(default, help)` becomes `--field-name` on the command line,
with that default and help; its type hint picks the argparse type (bool: --x / --no-x; tuple:
several values). So a method's defaults live in its config dataclass and nowhere else.

    @dataclass
    class PromptTuningConfig:
        num_virtual_tokens: int = option(20, "length n of the soft prompt", type=positive_int)

    add_options(parser, PromptTuningConfig)             # --num-virtual-tokens N (default: 20)
    config = from_args(PromptTuningConfig, args)        # PromptTuningConfig(num_virtual_tokens=N)

RunOptions, the options every run takes besides its method's config, are declared the same way.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Callable

from minitransformer.model import COMPILERS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def option(default: Any, help: str, *, choices: tuple | list | None = None, type: Callable | None = None,
           flag: str | None = None, cli: bool = True, repeat: bool = False, training_only: bool = False) -> Any:
    """A dataclass field that is also a command-line option.

    `flag` overrides the derived name (--field-name); `cli=False` keeps a field off the command line;
    `repeat=True` makes a list option given once per value (--template A --template B);
    `training_only=True`: it shapes only how training starts or runs (an initialisation, a dropout), so
    trained parameters load into a method built with another value of it."""
    metadata = {"help": help, "choices": choices, "type": type, "flag": flag, "cli": cli, "repeat": repeat,
                "training_only": training_only}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=default.copy, metadata=metadata)  # a fresh copy per config
    return dataclasses.field(default=default, metadata=metadata)


def outputs_fields(config) -> dict:
    """The config's fields that decide what a trained method computes (all but the training_only ones)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if not f.metadata.get("training_only", False)}


def cli_fields(config_class: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config_class) if f.metadata.get("cli", False)]


def flag_of(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _base_type(hint) -> tuple[type, bool]:
    """(element type, is a sequence) of a hint such as int, int | None, tuple[str, ...] or list[str] | None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return _base_type(args[0])
    if typing.get_origin(hint) in (tuple, list):
        return typing.get_args(hint)[0], True
    return hint, False


def add_options(parser: argparse.ArgumentParser, config_class: type, title: str | None = None) -> None:
    """Add one option per field of `config_class` declared with `option(...)`, in field order."""
    group = parser.add_argument_group(title or f"{config_class.__name__} (the method's options)")
    hints = typing.get_type_hints(config_class)
    for field in cli_fields(config_class):
        meta = field.metadata
        kind, sequence = _base_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kwargs: dict[str, Any] = {"dest": field.name, "default": default, "help": meta["help"]}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = meta["type"] or kind
            if meta["choices"]:
                kwargs["choices"] = list(meta["choices"])
            if sequence:
                kwargs.update(action="append", default=None) if meta["repeat"] else kwargs.update(nargs="+")
        if "action" in kwargs and kwargs["action"] == "append":
            kwargs["help"] += f" (default: {default})"  # not the None that `append` starts from
        group.add_argument(flag_of(field), **kwargs)


def from_args(config_class: type, args: argparse.Namespace, **fixed) -> Any:
    """The config the command line asked for: every option field from `args`, the rest as `fixed` (or default)."""
    hints = typing.get_type_hints(config_class)
    values = {}
    for field in cli_fields(config_class):
        value = getattr(args, field.name)
        if value is not None and typing.get_origin(_strip_none(hints[field.name])) is tuple:
            value = tuple(value)
        values[field.name] = value
    return config_class(**{**values, **fixed})


def _strip_none(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


def to_argv(config_class: type, overrides: dict[str, Any]) -> list[str]:
    """The command-line words that set `overrides` (field name -> value), e.g. {"mode": "head"} -> --mode head."""
    by_name = {f.name: f for f in cli_fields(config_class)}
    argv = []
    for name, value in overrides.items():
        if name not in by_name:
            raise ValueError(f"{config_class.__name__} has no command-line option {name!r}.")
        flag = flag_of(by_name[name])
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)] if not by_name[name].metadata["repeat"] else \
                [word for item in value for word in (flag, str(item))]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def options_markdown(config_class: type) -> str:
    """A markdown table of a config's command-line options: flag, default, help (the README's tables)."""
    rows = ["| option | default | what it does |", "| --- | --- | --- |"]
    hints = typing.get_type_hints(config_class)
    for field in cli_fields(config_class):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kind, _ = _base_type(hints[field.name])
        flag = f"`{flag_of(field)}`" + (f" / `--no-{flag_of(field)[2:]}`" if kind is bool else "")
        choices = f"; one of {', '.join(map(str, field.metadata['choices']))}" if field.metadata["choices"] else ""
        shown = "" if default is None else f"`{' '.join(map(str, default)) if isinstance(default, tuple) else default}`"
        rows.append(f"| {flag} | {shown} | {field.metadata['help'].replace('|', '/')}{choices} |")
    return "\n".join(rows)


DEFAULT_MODEL = "all-MiniLM-L6-v2"


@dataclasses.dataclass
class RunOptions:
    """What every run takes besides the method's own config: model, task, budget, seed, outputs."""
    model: str = option(DEFAULT_MODEL, "a local Hugging Face directory or a name (all-MiniLM-L6-v2 works offline; "
                        "bert-base-uncased, roberta-base, gpt2 download once)")
    task: str = option("sst2", "task name, e.g. sst2, rte, conll2003, e2e, builtin_sentiment")
    data_dir: str | None = option(None, "directory laid out like ../shared/data (default: $PROMPT_DATA_DIR, then "
                                  "the cache, then download)")
    epochs: int = option(3, "passes over the training split", type=positive_int)
    max_steps: int | None = option(None, "stop after this many steps (default: the epochs decide)", type=positive_int)
    batch_size: int = option(32, "examples per training step", type=positive_int)
    lr: float | None = option(None, "peak learning rate (default: the method's own, which --help ends with)")
    seed: int = option(0, "seed for initialisation, shuffling and dropout")
    device: str | None = option(None, "cpu, cuda or mps (default: the best available)")
    eval_every: int | None = option(None, "dev evaluation every N steps (default: once per epoch)", type=positive_int)
    max_length: int = option(128, "longest input in tokens", type=positive_int)
    limit_train: int | None = option(None, "use only the first N training examples (default: all)", type=positive_int)
    limit_dev: int | None = option(None, "score only the first N dev examples (default: all)", type=positive_int)
    max_new_tokens: int = option(60, "generation tasks: tokens to generate per example", type=positive_int)
    out: str | None = option(None, "output directory (default: runs/RUN_NAME-TASK)")
    progress: bool = option(True, "show a progress bar")
    skip_test: bool = option(False, "do not score the test split at the end (the comparison reports dev only)")
    precision: str = option("auto", "fp32, or autocast to bf16 or fp16 (the trainable parameters and optimizer "
                            "state stay fp32; fp16 with a loss scaler); auto: bf16 on CUDA, fp32 elsewhere",
                            choices=("auto", "fp32", "bf16", "fp16"))
    gradient_checkpointing: bool = option(False, "keep only each layer's input for backward and recompute the rest "
                                          "(less activation memory, about a third more compute; same numbers)")
    compile: str | None = option(None, "torch.compile each transformer block with this backend: inductor (fused "
                                 "kernels, far fewer launches per step on a GPU; the first steps wait about a minute "
                                 "for the compiler) or aot_eager (no code generated: checks that the model compiles)",
                                 choices=COMPILERS)
    resume: bool = option(False, "go on from the run interrupted in --out, or skip it if it finished with these "
                          "settings; a run there with other settings is refused")
    command: list[str] | None = option(None, "the command-line words that asked for the run", cli=False)

    def __post_init__(self):
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr}.")
