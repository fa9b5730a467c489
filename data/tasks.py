"""Task definitions: which files make a task, how to read them, and its prompt material.

``load_task("sst2")`` returns a :class:`Task` with its labelled splits, label names,
metric, templates and verbalizer. Files are found by :func:`data.download.find_file`
(data_dir argument, PROMPT_DATA_DIR, cache, download).

Derived splits. MR, CR, MPQA and Subj come as one ``*.all`` file, and TREC has no
dev set. Their splits are made by hashing: an example goes to a split according to
the sha256 of its text (see :func:`hash_split`). That never changes between runs,
machines, Python or library versions (no random generator involved), does not
depend on file order, and puts duplicate sentences in the same split, so a
sentence cannot leak from train into test.
"""
from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .download import DataNotFoundError, find_file
from .prompts import check_template
from .readers import (NER_TAGS, Example, read_conll, read_e2e_csv, read_e2e_text, read_glue_tsv,
                      read_jsonl_pairs, read_label_lines)

BUILTIN_DIR = Path(__file__).parent / "builtin"

# Fractions of the hashed splits: "train+dev+test" splits a *.all file 80/10/10,
# "train+dev" carves 10% of TREC's train file into a dev set.
HASH_FRACTIONS = {"train+dev+test": {"train": 0.8, "dev": 0.1, "test": 0.1},
                  "train+dev": {"train": 0.9, "dev": 0.1}}


class UnknownTaskError(ValueError):
    """The task name is not one of TASKS."""


class MissingSplitError(KeyError):
    """A task has no such split here (KeyError, so ``dict``-style code keeps working)."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


class Splits(dict):
    """``{"train": [...], "dev": [...], "test": [...]}``; a missing split raises a clear error."""

    def __init__(self, task: str):
        super().__init__()
        self.task = task
        self.missing: dict[str, str] = {}  # split -> why it is missing (where it was looked for)

    def __missing__(self, split: str):
        why = self.missing.get(split, f"it has labelled splits {list(self)} only")
        raise MissingSplitError(f"task '{self.task}' has no '{split}' split: {why}")


@dataclass
class Task:
    """A loaded task: labelled splits plus everything a prompt method needs.

    ``splits`` maps "train"/"dev"/"test" to lists of examples (:class:`Example`,
    ``NerExample`` or ``TableExample``); only splits with labels are there.
    ``verbalizer[i]`` is the label word for ``label_names[i]``; templates have the
    slots {text}, {text_pair} (pair tasks) and {mask}, the mask slot last so that a
    causal LM can predict it as the next token.
    """

    name: str
    kind: str
    description: str
    label_names: list[str]
    metric: str
    templates: list[str]
    verbalizer: list[str]
    is_builtin: bool
    source: str  # the data directory the files were read from
    splits: Splits
    also_report: list[str] = field(default_factory=list)  # secondary metrics, e.g. macro_f1 for CB
    files: dict[str, Path] = field(default_factory=dict)  # split(s) -> file read

    def split(self, name: str) -> list:
        """The examples of split ``name``; raises MissingSplitError naming the file looked for."""
        return self.splits[name]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split} {len(examples)}" for split, examples in self.splits.items())
        return f"Task({self.name}: {self.description}; {self.kind}, {sizes}; from {self.source})"


@dataclass(frozen=True)
class TaskSpec:
    """How to build a Task: its files (split -> path under a data dir) and prompt material."""

    kind: str
    description: str
    files: dict[str, str]
    read: Callable[[Path, list[str]], list]
    label_names: list[str]
    verbalizer: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    metric: str = "accuracy"
    also_report: list[str] = field(default_factory=list)
    is_builtin: bool = False


def _pairs(text_key: str, pair_key: str) -> Callable[[Path, list[str]], list]:
    return lambda path, labels: read_jsonl_pairs(path, text_key, pair_key, labels)


def _ignore_labels(reader: Callable[[Path], list]) -> Callable[[Path, list[str]], list]:
    return lambda path, labels: reader(path)


# Templates end with {mask} (plus punctuation), so GPT-2 can predict the label word next.
SENTIMENT_TEMPLATES = ["{text} It was {mask}.", "{text} All in all, it was {mask}.",
                       "Review: {text} Sentiment: {mask}", "{text} I thought it was {mask}."]
BINARY = dict(label_names=["negative", "positive"], verbalizer=["terrible", "great"], templates=SENTIMENT_TEMPLATES)
ENTAILMENT_TEMPLATES = ["{text} Question: {text_pair} Yes or no? Answer: {mask}.",
                        "Premise: {text} Hypothesis: {text_pair} Does the premise imply the hypothesis? {mask}."]
RTE_LIKE = dict(label_names=["entailment", "not_entailment"], verbalizer=["yes", "no"],
                templates=ENTAILMENT_TEMPLATES, read=_pairs("premise", "hypothesis"))
NER = dict(label_names=NER_TAGS, read=_ignore_labels(read_conll), metric="entity_f1")
E2E = dict(label_names=[], templates=["Table: {text} Text: {mask}"], metric="bleu")

TASK_SPECS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("classification", "SST-2, binary movie-review sentiment (sentence level)",
                     {s: f"harvardnlp/stsa.binary.{s}" for s in ("train", "dev", "test")}, read_label_lines, **BINARY),
    "sst5": TaskSpec("classification", "SST-5, five-way movie-review sentiment",
                     {s: f"harvardnlp/stsa.fine.{s}" for s in ("train", "dev", "test")}, read_label_lines,
                     ["very negative", "negative", "neutral", "positive", "very positive"],
                     ["terrible", "bad", "okay", "good", "great"], SENTIMENT_TEMPLATES),
    "mr": TaskSpec("classification", "MR, movie-review polarity (hashed 80/10/10 split)",
                   {"train+dev+test": "harvardnlp/rt-polarity.all"}, read_label_lines, **BINARY),
    "cr": TaskSpec("classification", "CR, customer-review polarity (hashed 80/10/10 split)",
                   {"train+dev+test": "harvardnlp/custrev.all"}, read_label_lines, **BINARY),
    "mpqa": TaskSpec("classification", "MPQA, opinion polarity of short phrases (hashed 80/10/10 split)",
                     {"train+dev+test": "harvardnlp/mpqa.all"}, read_label_lines, ["negative", "positive"],
                     ["terrible", "great"], ["{text} It was {mask}.", "{text} This is {mask}."]),
    "subj": TaskSpec("classification", "Subj, subjective vs objective sentences (hashed 80/10/10 split)",
                     {"train+dev+test": "harvardnlp/subj.all"}, read_label_lines, ["subjective", "objective"],
                     ["subjective", "objective"], ["{text} This is {mask}.", "{text} This sentence is {mask}."]),
    "trec": TaskSpec("classification", "TREC, six question types (dev: hashed 10% of train)",
                     {"train+dev": "harvardnlp/TREC.train.all", "test": "harvardnlp/TREC.test.all"}, read_label_lines,
                     # harvardnlp's label ids: 0 DESC, 1 ENTY, 2 ABBR, 3 HUM, 4 LOC, 5 NUM. The word for
                     # ABBR is "expression", as in LM-BFF (Gao et al. 2021): the rarer "abbreviation" is
                     # unlikely to be one token in GPT-2/RoBERTa's BPE vocabulary.
                     ["description", "entity", "abbreviation", "human", "location", "number"],
                     ["description", "entity", "expression", "human", "location", "number"],
                     ["{text} Answer type: {mask}.", "Question: {text} Type: {mask}"]),
    "glue_sst2": TaskSpec("classification", "GLUE SST-2 (phrase-level train, 67k)",
                          {"train": "glue_sst2/train.tsv", "dev": "glue_sst2/dev.tsv"}, read_glue_tsv, **BINARY),
    "rte": TaskSpec("pair", "SuperGLUE RTE, textual entailment",
                    {"train": "superglue_rte/train.jsonl", "dev": "superglue_rte/val.jsonl"}, **RTE_LIKE),
    "cb": TaskSpec("pair", "SuperGLUE CB (CommitmentBank), three-way entailment",
                   {"train": "superglue_cb/train.jsonl", "dev": "superglue_cb/val.jsonl"}, _pairs("premise", "hypothesis"),
                   ["entailment", "contradiction", "neutral"], ["yes", "no", "maybe"],
                   ["{text} Question: {text_pair} Yes, no, or maybe? Answer: {mask}.",
                    "Premise: {text} Hypothesis: {text_pair} Is the hypothesis true? {mask}."],
                   also_report=["macro_f1"]),
    # text = passage, text_pair = question (the context comes first, as the premise does)
    "boolq": TaskSpec("pair", "SuperGLUE BoolQ, yes/no questions about a passage",
                      {"train": "superglue_boolq/train.jsonl", "dev": "superglue_boolq/val.jsonl"},
                      _pairs("passage", "question"), ["false", "true"], ["no", "yes"],
                      ["{text} Question: {text_pair}? Answer: {mask}.",
                       "Passage: {text} After reading this, the answer to \"{text_pair}?\" is {mask}."]),
    "conll2003": TaskSpec("ner", "CoNLL-2003 English NER (IOB1 in the files, BIO here)",
                          {"train": "conll2003/eng.train", "dev": "conll2003/eng.testa", "test": "conll2003/eng.testb"},
                          **NER),
    "e2e": TaskSpec("generation", "E2E NLG restaurant descriptions, official csv (MRs linearized)",
                    {"train": "e2e/trainset.csv", "dev": "e2e/devset.csv", "test": "e2e/testset_w_refs.csv"},
                    _ignore_labels(read_e2e_csv), **E2E),
    "e2e_prefixtuning": TaskSpec("generation", "E2E NLG in the prefix-tuning text form (tokenized)",
                                 {s: f"e2e_prefixtuning_format/{f}.txt" for s, f in
                                  (("train", "train"), ("dev", "valid"), ("test", "test"))},
                                 _ignore_labels(read_e2e_text), **E2E),
    "builtin_sentiment": TaskSpec("classification", "built-in (not a benchmark): 320 sentiment sentences "
                                  "written for this project", {"train": "sentiment.train", "dev": "sentiment.dev"},
                                  read_label_lines, is_builtin=True, **BINARY),
    "builtin_pairs": TaskSpec("pair", "built-in (not a benchmark): 104 entailment pairs written for this project",
                              {"train": "pairs.train.jsonl", "dev": "pairs.dev.jsonl"}, is_builtin=True, **RTE_LIKE),
    "builtin_ner": TaskSpec("ner", "built-in (not a benchmark): 61 NER sentences written for this project",
                            {"train": "ner.train", "dev": "ner.dev"}, is_builtin=True, **NER),
}
TASKS: list[str] = list(TASK_SPECS)


def hash_split(examples: list[Example], fractions: dict[str, float]) -> dict[str, list[Example]]:
    """Assign each example to a split by the sha256 of its text (see the module docstring).

    The first 8 hex digits of the hash, read as a number in [0, 1), pick the split
    whose cumulative fraction range contains it; split sizes are therefore close to,
    not exactly, the fractions.
    """
    splits: dict[str, list[Example]] = {name: [] for name in fractions}
    for example in examples:
        key = example.text if example.text_pair is None else f"{example.text}\t{example.text_pair}"
        position = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 16 ** 8
        cumulative = 0.0
        for name, fraction in fractions.items():
            cumulative += fraction
            if position < cumulative or name == list(fractions)[-1]:
                splits[name].append(example)
                break
    return splits


def load_task(name: str, data_dir: str | Path | None = None, allow_download: bool | None = None) -> Task:
    """Load task ``name`` (one of TASKS) with every labelled split that can be found.

    Files are searched in ``data_dir``, then PROMPT_DATA_DIR, then the cache, then
    downloaded (unless ``allow_download=False`` or PROMPT_OFFLINE=1). A split whose
    file is nowhere is left out, and asking for it (``task.split("train")``) raises
    an error that says where it was looked for; if no file is found at all,
    DataNotFoundError is raised right away. Built-in tasks read from data/builtin/.
    """
    if name not in TASK_SPECS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        raise UnknownTaskError(f"unknown task {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "") +
                               f". Known tasks: {', '.join(TASKS)}.")
    spec = TASK_SPECS[name]
    splits, files, errors = Splits(name), {}, []
    for split, relpath in spec.files.items():
        try:
            path = BUILTIN_DIR / relpath if spec.is_builtin else find_file(relpath, data_dir, allow_download=allow_download)
        except DataNotFoundError as error:
            for missing in split.split("+"):
                splits.missing[missing] = str(error)
            errors.append(error)
            continue
        files[split] = path
        examples = spec.read(path, spec.label_names)
        splits.update(hash_split(examples, HASH_FRACTIONS[split]) if "+" in split else {split: examples})
    if not splits:
        raise DataNotFoundError(f"task {name!r}: none of its files were found. {errors[0]}")
    for template in spec.templates:
        check_template(template, pair=spec.kind == "pair")
    first_split, first_path = next(iter(files.items()))
    # The data directory is the file's path minus the relative path that named it.
    source = first_path.parents[len(Path(spec.files[first_split]).parts) - 1]
    return Task(name, spec.kind, spec.description, list(spec.label_names), spec.metric, list(spec.templates),
                list(spec.verbalizer), spec.is_builtin, str(source), splits, list(spec.also_report), files)
