"""The lessons' experiments: what each one trains, at what budget, with which seeds, and what the paper claims.

A lesson does not train its main experiment while you read it: the runs were made once, in the
background, by this file, and their records (each run's results.json, as the run wrote it, with its
command line, machine and date) are committed under results/lessons/. In full mode a lesson draws
its plots and tables from them in seconds; `LESSON_RETRAIN` retrains live:

    LESSON_RETRAIN=all                          every setting of the lesson's experiments
    LESSON_RETRAIN="flat, lr 0.01"              one setting (its name as the lesson's table shows it; several: a;b)

    python -m lessons.experiments list                     the experiments, their settings and how many records exist
    python -m lessons.experiments run prefix_stability     train what is missing (resumes; Ctrl-C stops after a step)
    python -m lessons.experiments run --all                everything, in the order below (about 4-5 CPU hours)
    python -m lessons.experiments table prompt_length      mean ± sd over seeds, n, from the records
    python -m lessons.experiments readme                   README.md's table "What the lessons reproduce"

Fast mode (LESSON_FAST=1, the tests) trains every setting for two steps on a few examples, one
seed, into a temporary folder: every line runs, the numbers mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from methods import registry
from methods.shared.options import RunOptions, to_argv

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "results" / "lessons"
FAST = os.environ.get("LESSON_FAST", "0") == "1"
MODEL = os.environ.get("LESSON_MODEL", "all-MiniLM-L6-v2")


@dataclass(frozen=True)
class Budget:
    """How long each run trains. The pilot chose it (results/lessons/README.md says why)."""
    name: str
    steps: int
    batch_size: int
    eval_every: int
    max_length: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)
    limit_train: int | None = None
    limit_dev: int | None = None  # None: the full dev split


PILOT = Budget("pilot", steps=600, batch_size=16, eval_every=100, seeds=(0, 1))
# One epoch of SST-2's 6,920 training sentences: in the pilot the effects separated from seed noise by step
# 400 and were reversed or flat at 100-150, the budgets the lessons ran before (results/lessons/README.md).
MAIN = Budget("main", steps=432, batch_size=16, eval_every=108)
TINY = Budget("fast", steps=2, batch_size=4, eval_every=2, max_length=32, seeds=(0,), limit_train=16, limit_dev=16)


@dataclass(frozen=True)
class Setting:
    """One configuration: a method with the options that set it apart, and its learning rate (None: the
    method's default, a learning rate the project chose for it on SST-2)."""
    name: str
    method: str
    options: dict = field(default_factory=dict)
    lr: float | None = None

    def run_id(self, seed: int) -> str:
        """The file a run is kept under: the same setting in two experiments is one run."""
        words = [self.method] + [f"{k}={v}" for k, v in sorted(self.options.items())]
        words += [f"lr={self.lr:g}"] if self.lr is not None else []
        return "-".join(w.replace(" ", "").replace("/", "_").replace("{", "(").replace("}", ")") for w in words) \
            + f"-seed{seed}"

    def argv(self, budget: Budget, seed: int, task: str, out: Path, device: str | None) -> list[str]:
        """The command line that makes this run: python -m <the method's module> <these words>."""
        method = registry.get(self.method)
        run = {"model": MODEL, "task": task, "max_steps": budget.steps, "epochs": 100, "batch_size": budget.batch_size,
               "eval_every": budget.eval_every, "max_length": budget.max_length, "seed": seed, "lr": self.lr,
               "limit_train": budget.limit_train, "limit_dev": budget.limit_dev, "skip_test": True,
               "out": str(out), "resume": True, "device": device}
        return to_argv(RunOptions, run) + to_argv(method.config_class, self.options)


@dataclass(frozen=True)
class Claim:
    """A paper's finding as a comparison of settings: `higher` (group a scores above group b) or `steadier`
    (a's scores spread less than b's, over every learning rate and seed in the group)."""
    paper: str
    where: str            # table or figure, and the number it reports
    statement: str
    a: tuple[str, ...]
    b: tuple[str, ...]
    kind: str = "higher"


@dataclass(frozen=True)
class Experiment:
    name: str
    lesson: str
    question: str
    settings: tuple[Setting, ...]
    claims: tuple[Claim, ...] = ()
    budget: Budget = MAIN
    task: str = "sst2"
    # Settings whose first seed also keeps what a lesson shows of the trained method (its `keep` tensors: a few
    # KB to a few hundred), so that the lesson can show trained vectors and predictions without training. A run
    # recorded before it kept anything is trained again with the same command for them; beside the tensors is that
    # run's own record (on another machine its scores can differ from the first record's by a few points).
    keep_settings: tuple[str, ...] = ()
    keep: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None

    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        raise ValueError(f"{self.name} has no setting {name!r}; its settings are "
                         f"{', '.join(repr(s.name) for s in self.settings)}.")


def trained_parameters(method: nn.Module) -> dict[str, torch.Tensor]:
    """Everything the run trained (to be loaded back with load_state_dict(strict=False))."""
    return {name: p.detach().clone() for name, p in method.named_parameters() if p.requires_grad}


def produced_prompts(method: nn.Module) -> dict[str, torch.Tensor]:
    """P-tuning: the prompt vectors its encoder produces (what the backbone reads; the LSTM itself is 4 MB)."""
    with torch.no_grad():
        return {"prompts": method.prompt_encoder().detach().clone()}


# ---- the experiments, lesson by lesson ----------------------------------------------------------

LESSON_1 = Experiment(
    "fine_tuning_modes", "01", "How much of full fine-tuning does training only the top or only the head keep?",
    (Setting("full fine-tuning", "fine_tuning", {"mode": "full"}),
     Setting("top-2 layers", "fine_tuning", {"mode": "top-k", "top_layers": 2}),
     Setting("head only", "fine_tuning", {"mode": "head"})),
    (Claim("Howard & Ruder 2018 / Devlin et al. 2019", "BERT §5.3 (NER): the best frozen-feature "
           "setting stays below fine-tuning", "full fine-tuning beats a head on frozen features",
           ("full fine-tuning",), ("head only",)),
     Claim("Lee et al. 2019", "'What would Elsa do?': fine-tuning about a quarter of "
           "the top layers keeps about 90% of full fine-tuning's quality", "the top layers recover most of the gap to full fine-tuning",
           ("top-2 layers",), ("head only",))))

# "vocab" is prompt tuning's default start: left out of the options, so that lesson 6's input-only prompt of
# length 20 and lesson 3's are one run
_PROMPT = lambda n, init="vocab": Setting(f"length {n}, {init}", "prompt_tuning",
                                          {"num_virtual_tokens": n, **({"init": init} if init != "vocab" else {})})
LESSON_3_LENGTH = Experiment(
    "prompt_length", "03", "Does a longer soft prompt learn more? (Lester et al. 2021, Figure 3(a))",
    (_PROMPT(1), _PROMPT(5), _PROMPT(20)),
    (Claim("Lester et al. 2021", "Figure 3(a): at every model size, 1 token is worst; gains flatten past 20",
           "a 20-token prompt beats a 1-token prompt", ("length 20, vocab",), ("length 1, vocab",)),
     Claim("Lester et al. 2021", "Figure 3(a): 5 tokens already well above 1 for small models",
           "a 5-token prompt beats a 1-token prompt", ("length 5, vocab",), ("length 1, vocab",))))
LESSON_3_INIT = Experiment(
    "prompt_init", "03", "Where should a soft prompt start? (Lester et al. 2021, Figure 3(b))",
    (_PROMPT(5, "random"), _PROMPT(5, "vocab"), _PROMPT(5, "labels")),
    (Claim("Lester et al. 2021", "Figure 3(b): class-label init best, random uniform worst (large gap for "
           "small models)", "starting from vocabulary embeddings beats a random start",
           ("length 5, vocab",), ("length 5, random",)),
     Claim("Lester et al. 2021", "Figure 3(b)", "starting from the label words beats a random start",
           ("length 5, labels",), ("length 5, random",))),
    keep_settings=("length 5, labels",), keep=trained_parameters)

PREFIX_LRS = (1e-4, 1e-3, 1e-2, 5e-2)
_PREFIX = lambda flat, lr: Setting(f"{'flat' if flat else 'MLP'}, lr {lr:g}", "prefix_tuning", {"flat": flat}, lr)
LESSON_4 = Experiment(
    "prefix_stability", "04", "Is a prefix made by an MLP steadier to train than a prefix trained directly?",
    tuple(_PREFIX(flat, lr) for flat in (False, True) for lr in PREFIX_LRS),
    (Claim("Li & Liang 2021", "§4.3: updating the prefix directly optimizes unstably and drops "
           "performance slightly; producing it by an MLP stabilises training", "MLP prefixes spread less over learning rates "
           "and seeds than flat ones", tuple(f"MLP, lr {lr:g}" for lr in PREFIX_LRS),
           tuple(f"flat, lr {lr:g}" for lr in PREFIX_LRS), "steadier"),
     Claim("Li & Liang 2021", "§4.3: the MLP prefix is better on average over the sweep",
           "MLP prefixes score higher than flat ones, over the whole sweep",
           tuple(f"MLP, lr {lr:g}" for lr in PREFIX_LRS), tuple(f"flat, lr {lr:g}" for lr in PREFIX_LRS))))

_P = lambda name, encoder, template, read="auto": Setting(name, "p_tuning",
                                                          {"encoder": encoder, "template": template, "read": read})
SHAPE_333 = "{p:3} {text} {p:3} {mask} {p:3}"
LESSON_5 = Experiment(
    "p_tuning_encoders", "05", "Does P-tuning's prompt encoder matter, and does where the prompts sit?",
    (_P("LSTM encoder", "lstm", SHAPE_333), _P("MLP encoder", "mlp", SHAPE_333), _P("no encoder", "none", SHAPE_333),
     _P("MLP, prompts before the text only", "mlp", "{p:9} {text}"),
     _P("MLP, 3,3,3 + anchor words", "mlp", "{p:3} {text} {p:3} it was {mask} . {p:3}"),
     _P("MLP, classifier reads [CLS]", "mlp", SHAPE_333, "input")),
    (Claim("Liu et al. 2021 (GPT understands, too)", "§3: the prompt vectors are produced by a prompt encoder "
           "(a bi-LSTM and an MLP) because training them directly optimizes poorly", "an LSTM encoder beats no encoder", ("LSTM encoder",),
           ("no encoder",)),
     Claim("Liu et al. 2021", "later versions and P-tuning v2 (§3.3) use an MLP encoder too, "
           "and find reparameterization helps on some tasks, not all", "an MLP encoder beats no encoder", ("MLP encoder",),
           ("no encoder",)),
     Claim("Liu et al. 2021", "§3, 'anchor tokens': task-related words in the template help (RTE)",
           "anchor words in the template help", ("MLP, 3,3,3 + anchor words",), ("MLP encoder",))),
    keep_settings=("LSTM encoder", "MLP encoder", "no encoder"), keep=produced_prompts)

_DEEP = lambda name, P=20, layers="all": Setting(name, "p_tuning_v2", {"num_virtual_tokens": P, "prompt_layers": layers})
LESSON_6 = Experiment(
    "deep_prompts", "06", "Do prompts in every layer beat a prompt at the input, and which layers matter?",
    (Setting("input only (prompt tuning)", "prompt_tuning", {"num_virtual_tokens": 20}),
     _DEEP("deep, all layers"), _DEEP("deep, layers 1-3", layers="1-3"), _DEEP("deep, layers 4-6", layers="4-6"),
     _DEEP("deep, P = 5", P=5), _DEEP("deep, P = 50", P=50)),
    (Claim("Liu et al. 2022 (P-tuning v2)", "Figure 1 and Table 2: below 10B parameters deep prompts match "
           "fine-tuning where input-only prompts fall behind",
           "deep prompts beat an input-only prompt of the same length", ("deep, all layers",),
           ("input only (prompt tuning)",)),
     Claim("Liu et al. 2022", "§4.4, the prompt-depth ablation: at equal depth, prompts in the "
           "upper layers beat prompts in the lower ones (RTE, BoolQ)", "upper-layer prompts beat lower-layer prompts", ("deep, layers 4-6",),
           ("deep, layers 1-3",)),
     Claim("Liu et al. 2022", "§3.3, prompt length: simple classification tasks prefer "
           "shorter prompts (under 20), hard sequence labelling longer ones (about 100)",
           "a shorter deep prompt (20 tokens) beats a longer one (50)", ("deep, all layers",),
           ("deep, P = 50",))))

NER_BUDGET = Budget("ner", steps=432, batch_size=16, eval_every=108, max_length=128)
LESSON_6_NER = Experiment(
    "ner_prompts", "06", "On tagging, do deep prompts beat input-only ones, and what do prompts add to the head?",
    (Setting("head only (no prompt)", "fine_tuning", {"mode": "head"}, 1e-2),
     Setting("input only", "prompt_tuning", {"num_virtual_tokens": 20}),
     Setting("deep (all layers)", "p_tuning_v2", {"num_virtual_tokens": 20})),
    (Claim("Liu et al. 2022 (P-tuning v2)", "the sequence-labelling table (CoNLL-2003): input-only prompts "
           "fall far behind deep prompts, which come close to fine-tuning", "deep prompts beat input-only prompts on NER",
           ("deep (all layers)",), ("input only",)),
     Claim("Liu et al. 2022", "the same table (a token head on frozen features is the floor "
           "both stand on)",
           "deep prompts add to a token head alone", ("deep (all layers)",), ("head only (no prompt)",))),
    budget=NER_BUDGET, task="conll2003", keep_settings=("deep (all layers)",), keep=trained_parameters)

PILOT_EXPERIMENT = Experiment(
    "pilot", "--", "At what budget do the lessons' effects separate from seed noise?",
    (_PROMPT(1), _PROMPT(20), _DEEP("deep, all layers")), budget=PILOT)

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in
                                      [LESSON_6, LESSON_4, LESSON_3_LENGTH, LESSON_3_INIT, LESSON_5, LESSON_1,
                                       LESSON_6_NER]}


def get(name: str) -> Experiment:
    if name == "pilot":
        return PILOT_EXPERIMENT
    if name not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {name!r}; the experiments are pilot, {', '.join(EXPERIMENTS)}.")
    return EXPERIMENTS[name]


# ---- running ------------------------------------------------------------------------------------

def record_path(experiment: Experiment, setting: Setting, seed: int, records: Path = RECORDS) -> Path:
    return records / experiment.budget.name / f"{setting.run_id(seed)}.json"


def kept_path(experiment: Experiment, setting: Setting, records: Path = RECORDS) -> Path:
    """The tensors a kept setting's first seed keeps (and, beside them, the record of the run that made them)."""
    return records / experiment.budget.name / "kept" / f"{setting.run_id(experiment.budget.seeds[0])}.safetensors"


def keeps(experiment: Experiment, setting: Setting, seed: int) -> bool:
    return setting.name in experiment.keep_settings and seed == experiment.budget.seeds[0]


def same_command(a: dict, b: dict) -> bool:
    """Two records of one command: the same method, config, data, budget and seed (their run keys). Their numbers
    agree to the last digit only on the same kind of machine: another CPU rounds its sums in another order, and
    over a few hundred steps a prompt's training can drift by a few points (the seeds' spread shows how far)."""
    return a["run_key"] == b["run_key"]


def train_setting(experiment: Experiment, setting: Setting, seed: int, records: Path = RECORDS,
                  budget: Budget | None = None, device: str | None = None, workdir: Path | None = None) -> dict:
    """Train one (setting, seed) with its method's own command line, in this process, and keep its record.

    The run's folder (weights, resume checkpoint) is under runs/lessons/; the record it writes there is
    copied to `records`. An interrupted run goes on where it stopped when asked again."""
    from methods.shared.files import write_json
    from methods.shared.pipeline import parse_command_line, run

    budget = budget or experiment.budget
    experiment = dataclasses.replace(experiment, budget=budget)
    workdir = workdir or ROOT / "runs" / "lessons"
    out = workdir / budget.name / setting.run_id(seed)
    argv = setting.argv(budget, seed, experiment.task, out, device)
    config, options = parse_command_line(registry.get(setting.method).config_class, "", argv)
    model, record = run(config, dataclasses.replace(options, progress=not FAST and sys.stderr.isatty()))
    if record.outcome != "finished":
        raise KeyboardInterrupt(f"{setting.name} seed {seed}: {record.outcome}")
    saved = json.loads((out / "results.json").read_text())
    saved["command"] = f"python -m {registry.get(setting.method).module} {' '.join(argv)}"
    path = record_path(experiment, setting, seed, records)
    path.parent.mkdir(parents=True, exist_ok=True)
    committed = json.loads(path.read_text()) if path.exists() else None
    if committed is not None and not same_command(committed, saved):  # retrained only to keep its tensors
        raise RuntimeError(f"{setting.name} seed {seed} was trained again with other settings than its record "
                           f"{path}: its tensors are not kept.")
    if keeps(experiment, setting, seed):
        from safetensors.torch import save_file
        kept = kept_path(experiment, setting, records)
        kept.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.float().cpu().contiguous() for k, v in experiment.keep(model).items()}, str(kept))
        write_json(kept.with_suffix(".json"), saved)  # the run that made them, as it wrote its record
    if committed is None:
        write_json(path, saved)
    return saved


def run_experiment(experiment: Experiment, records: Path = RECORDS, device: str | None = None,
                   seeds: tuple[int, ...] | None = None) -> None:
    """Every (setting, seed) of `experiment` that has no record yet, seed by seed (so n grows evenly).

    `seeds` picks some of the budget's seeds: two processes given different seeds share one experiment
    without training the same run twice (on 2 cores, two 1-thread processes train ~1.7x faster than one)."""
    budget = experiment.budget
    if seeds is not None and not set(seeds) <= set(budget.seeds):
        raise ValueError(f"{experiment.name} has seeds {list(budget.seeds)}; got {list(seeds)}")
    todo = [(s, seed) for seed in budget.seeds for s in experiment.settings
            if (seeds is None or seed in seeds) and (not record_path(experiment, s, seed, records).exists()
                                                     or keeps(experiment, s, seed)
                                                     and not kept_path(experiment, s, records).exists())]
    print(f"{experiment.name}: {len(todo)} of {len(budget.seeds) * len(experiment.settings)} runs to go "
          f"({budget.steps} steps of {budget.batch_size}, seeds {list(budget.seeds)})", flush=True)
    for i, (setting, seed) in enumerate(todo):
        print(f"[{i + 1}/{len(todo)}] {setting.name}, seed {seed}", flush=True)
        record = train_setting(experiment, setting, seed, records, device=device)
        print(f"    dev {100 * record['dev_metric']:.2f}% in {record['train_seconds']:.0f} s", flush=True)


# ---- reading the records ------------------------------------------------------------------------

@dataclass
class Results:
    """An experiment's records: setting name -> the record of each seed that has one."""
    experiment: Experiment
    runs: dict[str, list[dict]]
    source: str  # where the numbers came from: "records" or "trained now"
    folders: dict[str, Path] = field(default_factory=dict)  # setting name -> the records folder it was read from

    def kept(self, name: str) -> tuple[dict[str, torch.Tensor], dict]:
        """What the setting's first seed kept of its trained method, and the record of the run that made it."""
        from safetensors.torch import load_file
        setting = self.experiment.setting(name)
        path = kept_path(self.experiment, setting, self.folders.get(name, RECORDS))
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: `python -m lessons.experiments run {self.experiment.name}` "
                                    "makes it (or retrain the setting with LESSON_RETRAIN)")
        return load_file(str(path)), json.loads(path.with_suffix(".json").read_text())

    def kept_note(self, name: str) -> str:
        """One line on where a kept setting's tensors come from, with its score beside its record's."""
        _, made_by = self.kept(name)
        seed = made_by["options"]["seed"]
        record = next((r for r in self.runs.get(name, []) if r["options"]["seed"] == seed), None)
        line = (f"{name}, seed {seed}: tensors kept by the run of {made_by['date'][:10]}, best dev "
                f"{self.metric_name()} {100 * made_by['dev_metric']:.1f}% after {made_by['steps']} steps")
        if record is not None and record["date"] != made_by["date"]:
            line += (f" (the same command as the record of {record['date'][:10]}, {100 * record['dev_metric']:.1f}%: "
                     "a re-run to keep them; another machine rounds differently)")
        return line

    def scores(self, name: str, at_step: int | None = None) -> list[float]:
        """Dev score (%: accuracy, or entity F1 for tagging) per seed: the best state each run kept, or the evaluation at `at_step`."""
        if at_step is None:
            return [100 * r["dev_metric"] for r in self.runs[name]]
        return [100 * h["dev_metric"] for r in self.runs[name] for h in r["history"] if h["step"] == at_step]

    def pooled(self, names) -> list[float]:
        return [score for name in names for score in self.scores(name)]

    def summary(self, name: str) -> tuple[float, float, int]:
        values = self.scores(name)
        return mean(values), sd(values), len(values)

    def metric_name(self) -> str:
        """What the scores are: "accuracy", or "entity F1" for tagging (as the records name it)."""
        metric = next((runs[0].get("metric") for runs in self.runs.values() if runs), None) or "accuracy"
        return {"entity_f1": "entity F1"}.get(metric, metric)

    def table(self) -> str:
        rows = [f"| setting | dev {self.metric_name()} (%), mean ± sd | n | steps × batch | learning rate |",
                "|---|---:|---:|---|---|"]
        for s in self.experiment.settings:
            if self.runs.get(s.name):
                m, d, n = self.summary(s.name)
                lr = self.runs[s.name][0]["options"]["lr"]
                rows.append(f"| {s.name} | {m:.1f} ± {d:.1f} | {n} | {self.budget_text()} | {lr:g} |")
        return "\n".join(rows)

    def budget_text(self) -> str:
        b = self.experiment.budget
        return f"{b.steps} × {b.batch_size}"

    def verdicts(self) -> list[dict]:
        return [verdict(claim, self) for claim in self.experiment.claims]

    def verdict_table(self) -> str:
        rows = ["| paper | where, what it reports | claim | we measured (mean ± sd, n) | verdict |", "|---|---|---|---|---|"]
        for v in self.verdicts():
            rows.append(f"| {v['paper']} | {v['where']} | {v['statement']} | {v['measured']} | **{v['verdict']}** "
                        f"({v['why']}) |")
        return "\n".join(rows)


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def verdict(claim: Claim, results: Results) -> dict:
    """Reproduced / partly / not, by one rule for every claim (never tuned towards the paper):

    higher: reproduced when a's mean exceeds b's by more than twice the standard error of the difference,
    partly when it exceeds it by less (the right direction, within seed noise), else not.
    steadier: reproduced when a's spread is below two thirds of b's, partly when below b's, else not."""
    a, b = results.pooled(claim.a), results.pooled(claim.b)
    budget = f"n = {len(a)} and {len(b)}, {results.budget_text()}"
    if claim.kind == "steadier":
        measured = f"sd {sd(a):.1f} vs {sd(b):.1f} (range {min(a):.1f}–{max(a):.1f} vs {min(b):.1f}–{max(b):.1f}); {budget}"
        outcome = ("reproduced", "a clearly steadier") if sd(a) < 2 / 3 * sd(b) else \
            ("partly", "steadier, not by much") if sd(a) < sd(b) else ("not", "not steadier")
    else:
        gap = mean(a) - mean(b)
        error = math.sqrt(sd(a) ** 2 / max(1, len(a)) + sd(b) ** 2 / max(1, len(b)))
        measured = f"{mean(a):.1f} ± {sd(a):.1f} vs {mean(b):.1f} ± {sd(b):.1f}; {budget}"
        outcome = ("reproduced", f"gap {gap:+.1f} > 2 × s.e. {error:.1f}") if gap > 2 * error else \
            ("partly", f"gap {gap:+.1f} within 2 × s.e. {error:.1f}") if gap > 0 else ("not", f"gap {gap:+.1f}")
    return {"paper": claim.paper, "where": claim.where, "statement": claim.statement, "measured": measured,
            "verdict": outcome[0], "why": outcome[1], "lesson": results.experiment.lesson}


def recorded(name: str) -> Results:
    """The experiment's committed records as they are: nothing trains, whatever LESSON_FAST or LESSON_RETRAIN say."""
    experiment = get(name)
    runs: dict[str, list[dict]] = {}
    for s in experiment.settings:
        for seed in experiment.budget.seeds:
            path = record_path(experiment, s, seed)
            if path.exists():
                runs.setdefault(s.name, []).append(json.loads(path.read_text()))
    return Results(experiment, runs, "records")


def retrain_choice() -> set[str] | str:
    """LESSON_RETRAIN: "all", or setting names separated by ";" (empty: replay the records)."""
    value = os.environ.get("LESSON_RETRAIN", "").strip()
    return "all" if value == "all" else {name.strip() for name in value.split(";") if name.strip()}


def results_for(name: str, retrain: set[str] | str | None = None, device: str | None = None) -> Results:
    """The experiment's results: from the committed records, after retraining what `retrain` names
    (default: LESSON_RETRAIN) into a temporary folder. Fast mode trains every setting at a tiny budget."""
    experiment = get(name)
    retrain = retrain_choice() if retrain is None else retrain
    if FAST:
        records, budget = Path(tempfile.mkdtemp(prefix="lesson-records-")), TINY
        experiment = dataclasses.replace(experiment, budget=budget)
        chosen = {s.name for s in experiment.settings}
    else:
        records, chosen = RECORDS, ({s.name for s in experiment.settings} if retrain == "all" else set(retrain))
        for wanted in chosen:
            experiment.setting(wanted)  # an unknown name is an error that lists the settings
        if chosen:
            live = Path(tempfile.mkdtemp(prefix="lesson-retrain-"))
            for seed in experiment.budget.seeds:
                for s in experiment.settings:
                    if s.name in chosen:
                        print(f"retraining {s.name}, seed {seed} ({experiment.budget.steps} steps)...", flush=True)
                        train_setting(experiment, s, seed, live, device=device, workdir=live / "runs")
            records = None
    runs: dict[str, list[dict]] = {}
    folders: dict[str, Path] = {}
    for s in experiment.settings:
        for seed in experiment.budget.seeds:
            if FAST:
                train_setting(experiment, s, seed, records, device=device, workdir=records / "runs")
            source = folders[s.name] = live if (not FAST and s.name in chosen) else records
            path = record_path(experiment, s, seed, source)
            if path.exists():
                runs.setdefault(s.name, []).append(json.loads(path.read_text()))
    missing = [s.name for s in experiment.settings if s.name not in runs]
    if missing:
        print(f"no records yet for {', '.join(missing)}: `python -m lessons.experiments run {name}` trains them "
              f"(or LESSON_RETRAIN=all here)")
    return Results(experiment, runs, "trained now" if (FAST or chosen) else "records", folders)


# ---- pictures: every seed shown, the mean and its spread ----------------------------------------

def plot_curves(results: Results, names: list[str], ax, labels: list[str] | None = None) -> None:
    """Dev accuracy against training step: the mean over seeds as a line, mean ± sd as a band."""
    for i, name in enumerate(names):
        runs = results.runs.get(name, [])
        if not runs:
            continue
        steps = [h["step"] for h in runs[0]["history"]]
        by_step = [[100 * r["history"][j]["dev_metric"] for r in runs if len(r["history"]) > j]
                   for j in range(len(steps))]
        means, spreads = [mean(v) for v in by_step], [sd(v) for v in by_step]
        ax.plot(steps, means, marker="o", color=f"C{i}", label=f"{(labels or names)[i]} (n={len(runs)})")
        ax.fill_between(steps, [m - d for m, d in zip(means, spreads)], [m + d for m, d in zip(means, spreads)],
                        color=f"C{i}", alpha=0.2)
    ax.set(xlabel="training step", ylabel=f"dev {results.metric_name()} (%), mean ± sd")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_scores(results: Results, names: list[str], ax, labels: list[str] | None = None, xs=None,
                color: str | None = None, label: str | None = None) -> None:
    """Each setting's best dev accuracy: every seed as a dot, the mean ± sd as an error bar (at positions
    `xs`, e.g. learning rates; one `color` and legend `label` for the whole series if given)."""
    xs = list(range(len(names))) if xs is None else xs
    for i, (x, name) in enumerate(zip(xs, names)):
        values = results.scores(name) if results.runs.get(name) else []
        if not values:
            continue
        ax.scatter([x] * len(values), values, color="0.5", s=12, zorder=3)
        ax.errorbar([x], [mean(values)], yerr=[sd(values)], fmt="o", color=color or f"C{i}", capsize=5,
                    markersize=8, zorder=4, label=label if i == 0 else None)
    if not isinstance(xs[0], float):
        ax.set_xticks(xs, labels or names, fontsize=8)
    ax.set(ylabel=f"best dev {results.metric_name()} (%)")
    ax.grid(alpha=0.3, axis="y")


# ---- the README's table -------------------------------------------------------------------------

README_BLOCK = r"(<!-- lesson verdicts: begin \(python -m lessons.experiments readme\) -->\n).*?(\n<!-- lesson verdicts: end -->)"


def readme_table() -> str:
    """Every claim of every experiment, with its verdict from the committed records (or that they are pending)."""
    rows = ["| lesson | paper, where | claim | measured (mean ± sd, n, steps × batch) | verdict |",
            "|---|---|---|---|---|"]
    for experiment in EXPERIMENTS.values():
        expected = len(experiment.settings) * len(experiment.budget.seeds)
        results = recorded(experiment.name) if not FAST else None
        complete = results is not None and sum(len(r) for r in results.runs.values()) == expected
        for claim in experiment.claims:
            if complete:
                v = verdict(claim, results)
                rows.append(f"| {experiment.lesson} | {claim.paper}, {claim.where} | {claim.statement} | "
                            f"{v['measured']} | **{v['verdict']}** ({v['why']}) |")
            else:
                rows.append(f"| {experiment.lesson} | {claim.paper}, {claim.where} | {claim.statement} | records "
                            f"pending (`python -m lessons.experiments run {experiment.name}`) | not yet measured |")
    return "\n".join(rows)


def write_readme(path: Path) -> None:
    import re
    text = path.read_text()
    if not re.search(README_BLOCK, text, flags=re.S):
        raise ValueError(f"{path} has no lesson-verdicts block (the two marker comments) to fill in.")
    path.write_text(re.sub(README_BLOCK, lambda m: m.group(1) + readme_table() + m.group(2), text, flags=re.S))


# ---- command line -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lessons.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("list", "run", "table", "readme"),
                        help="readme: write the verdicts of every experiment into README.md's table")
    parser.add_argument("experiments", nargs="*", help="experiment names (see list); run --all for every one")
    parser.add_argument("--all", action="store_true", help="every experiment, in the order list shows")
    parser.add_argument("--device", default=os.environ.get("LESSON_DEVICE"), help="cpu or cuda (default: the best)")
    parser.add_argument("--seeds", type=lambda text: tuple(int(x) for x in text.split(",")),
                        help="run: only these seeds, e.g. 0,1 (share one experiment between processes)")
    args = parser.parse_args(argv)
    if args.action == "readme":
        write_readme(ROOT / "README.md")
        print("wrote the table 'What the lessons reproduce' in README.md")
        return
    names = list(EXPERIMENTS) if args.all else args.experiments
    try:
        chosen = [get(n) for n in names] if names else [PILOT_EXPERIMENT, *EXPERIMENTS.values()]
    except ValueError as error:
        parser.error(str(error))
    for experiment in chosen:
        if args.action == "list":
            done = sum(record_path(experiment, s, seed).exists() for s in experiment.settings
                       for seed in experiment.budget.seeds)
            print(f"{experiment.name} (lesson {experiment.lesson}, {experiment.budget.name} budget): "
                  f"{done}/{len(experiment.settings) * len(experiment.budget.seeds)} runs recorded")
            for s in experiment.settings:
                print(f"    {s.name}")
        elif args.action == "run":
            try:
                run_experiment(experiment, device=args.device, seeds=args.seeds)
            except ValueError as error:
                parser.error(str(error))
            except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the run saved its state after its step
                again = " ".join(["python -m lessons.experiments", *(argv if argv is not None else sys.argv[1:])])
                print(f"Stopped ({stop or 'interrupted'}); the finished runs are kept and the interrupted one goes on "
                      f"where it stopped with: {again}")
                raise SystemExit(130) from None
        else:
            results = results_for(experiment.name, retrain=set())
            print(f"## {experiment.name}\n\n{results.table()}\n\n{results.verdict_table()}\n")


if __name__ == "__main__":
    main()
