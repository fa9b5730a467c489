"""Readers for the real file formats, and the example types they return.

Every reader raises :class:`DataFormatError` with the file and line number when a
line does not fit its format, so a broken download or a wrong file is easy to find.
"""
from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ENTITY_TYPES = ("PER", "ORG", "LOC", "MISC")
# BIO tag set shared by conll2003 and builtin_ner; the index is the label id.
NER_TAGS = ["O"] + [f"{prefix}-{kind}" for kind in ENTITY_TYPES for prefix in ("B", "I")]


@dataclass(frozen=True)
class Example:
    """One classification example: a sentence (or a pair) and a label id (-1: none)."""

    text: str
    text_pair: str | None = None
    label: int = -1


@dataclass(frozen=True)
class NerExample:
    """One sentence for sequence labelling: words and their BIO tags (same length)."""

    words: list[str]
    tags: list[str]


@dataclass(frozen=True)
class TableExample:
    """One table-to-text input (a linearized meaning representation) and all its references."""

    source: str
    references: list[str]


class DataFormatError(ValueError):
    """A data file does not match its expected format (the message names file and line)."""


def read_lines(path: str | Path) -> list[str]:
    """The lines of a text file, without line ends; an empty file is an error.

    A few harvardnlp files (rt-polarity.all, subj.all, TREC.train.all) are Latin-1,
    not UTF-8: a file that is not valid UTF-8 is read as Latin-1, which cannot fail.
    """
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    # split("\n"), not splitlines(): Latin-1 byte 0x85 would count as a line break there.
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if not any(line.strip() for line in lines):
        raise DataFormatError(f"{path}: the file is empty. Expected one record per line; "
                              "delete the file so it can be fetched again, or check the path.")
    return lines


def read_label_lines(path: str | Path, label_names: list[str]) -> list[Example]:
    """Read ``LABEL SENTENCE`` lines (harvardnlp format); LABEL is an index into label_names.

    A line with a label but no sentence is skipped (custrev.all has 4, mpqa.all 3):
    there is nothing to classify.
    """
    examples, empty = [], []
    for number, line in enumerate(read_lines(path), start=1):
        label, _, text = line.strip().partition(" ")
        if not label:
            continue  # a blank line
        if not (label.isascii() and label.isdigit()):
            raise DataFormatError(f"{path}:{number}: expected 'LABEL SENTENCE' with an integer label, "
                                  f"got {line[:60]!r}. Check that this is the right file.")
        if int(label) >= len(label_names):
            raise DataFormatError(f"{path}:{number}: unknown label {label}; expected 0..{len(label_names) - 1} "
                                  f"({', '.join(label_names)}).")
        if not text.strip():
            empty.append(number)
            continue
        examples.append(Example(text.strip(), label=int(label)))
    if empty:
        log.info("%s: skipped %d lines with a label but no sentence: %s", path, len(empty), empty)
    return examples


def read_glue_tsv(path: str | Path, label_names: list[str]) -> list[Example]:
    """Read GLUE SST-2 ``sentence<TAB>label`` lines after a header line."""
    lines = read_lines(path)
    if lines[0].split("\t") != ["sentence", "label"]:
        raise DataFormatError(f"{path}:1: expected the header 'sentence<TAB>label', got {lines[0][:60]!r}.")
    examples = []
    for number, line in enumerate(lines[1:], start=2):
        text, _, label = line.rpartition("\t")
        if label not in {str(i) for i in range(len(label_names))} or not text.strip():
            raise DataFormatError(f"{path}:{number}: expected 'sentence<TAB>label' with label 0..{len(label_names) - 1}, "
                                  f"got {line[:60]!r}.")
        examples.append(Example(text.strip(), label=int(label)))
    return examples


def read_jsonl_pairs(path: str | Path, text_key: str, pair_key: str, label_names: list[str]) -> list[Example]:
    """Read SuperGLUE-style jsonl: one object per line with two text fields and a label.

    Labels are matched case-insensitively, so BoolQ's JSON booleans (original release)
    and its strings "true"/"false" (the OpenCompass copy) both work.
    """
    examples = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text, pair, label = record[text_key], record[pair_key], record["label"]
        except json.JSONDecodeError as error:
            raise DataFormatError(f"{path}:{number}: not valid JSON ({error.msg}). Expected one JSON object per line.") from None
        except (KeyError, TypeError) as error:
            raise DataFormatError(f"{path}:{number}: missing field {error}; expected the fields "
                                  f"'{text_key}', '{pair_key}' and 'label'. A test file without labels cannot be used.") from None
        label = str(label).lower()  # True -> "true", "Entailment" -> "entailment"
        if label not in label_names:
            raise DataFormatError(f"{path}:{number}: unknown label {record['label']!r}; expected one of {label_names}.")
        examples.append(Example(text, pair, label_names.index(label)))
    return examples


def iob1_to_bio(tags: list[str]) -> list[str]:
    """Convert IOB1 tags (B- only between touching entities of one type) to BIO.

    In BIO every entity starts with B-: an I-X that does not continue an X becomes B-X.
    """
    bio = []
    for i, tag in enumerate(tags):
        previous = tags[i - 1] if i > 0 else "O"
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        bio.append(tag)
    return bio


def read_conll(path: str | Path) -> list[NerExample]:
    """Read CoNLL-2003 columns ``word POS chunk NER`` (IOB1), returning BIO-tagged sentences.

    Sentences are separated by blank lines; ``-DOCSTART-`` lines mark documents and are skipped.
    """
    sentences, words, tags = [], [], []
    for number, line in enumerate(read_lines(path) + [""], start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if words:
                sentences.append(NerExample(words, iob1_to_bio(tags)))
            words, tags = [], []
            continue
        if len(columns) != 4:
            raise DataFormatError(f"{path}:{number}: expected 4 columns 'word POS chunk NER', got {len(columns)}: "
                                  f"{line[:60]!r}.")
        if columns[3] != "O" and (columns[3][:2] not in {"B-", "I-"} or columns[3][2:] not in ENTITY_TYPES):
            raise DataFormatError(f"{path}:{number}: unknown NER tag {columns[3]!r}; expected O or B-/I- with "
                                  f"one of {', '.join(ENTITY_TYPES)}.")
        words.append(columns[0])
        tags.append(columns[3])
    return sentences


# Attribute names of the official CSV -> those of the prefix-tuning text form, so both
# forms give the same kind of source ("name : X | Type : Y | ...").
E2E_ATTRIBUTES = {"eatType": "Type", "familyFriendly": "family friendly",
                  "priceRange": "price", "rating": "customer rating"}


def linearize_mr(mr: str) -> str:
    """``name[Alimentum], area[city centre]`` -> ``name : Alimentum | area : city centre``."""
    pairs = re.findall(r"(\w+)\[(.*?)\]", mr)
    return " | ".join(f"{E2E_ATTRIBUTES.get(key, key)} : {value}" for key, value in pairs)


def _group(pairs: list[tuple[str, str]]) -> list[TableExample]:
    """Group (source, reference) pairs by source, keeping first-seen order."""
    grouped: dict[str, list[str]] = {}
    for source, reference in pairs:
        grouped.setdefault(source, []).append(reference)
    return [TableExample(source, references) for source, references in grouped.items()]


def read_e2e_csv(path: str | Path) -> list[TableExample]:
    """Read the official E2E csv (columns mr, ref); several rows share one MR."""
    rows = list(csv.reader(read_lines(path)))
    if [name.lower() for name in rows[0]] != ["mr", "ref"]:
        raise DataFormatError(f"{path}:1: expected the header 'mr,ref', got {rows[0]}. "
                              "testset.csv has no references; use testset_w_refs.csv.")
    pairs = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not re.search(r"\w+\[", row[0]):
            raise DataFormatError(f"{path}:{number}: expected two fields 'mr,ref' with an MR like "
                                  f"'name[X], area[Y]', got {row}.")
        pairs.append((linearize_mr(row[0]), row[1].strip()))
    return _group(pairs)


def read_e2e_text(path: str | Path) -> list[TableExample]:
    """Read the prefix-tuning form ``attr : value | ... ||reference`` (one reference per line)."""
    pairs = []
    for number, line in enumerate(read_lines(path), start=1):
        source, separator, reference = line.partition("||")
        if not separator or not source.strip() or not reference.strip():
            raise DataFormatError(f"{path}:{number}: expected 'attr : value | ... ||reference', got {line[:60]!r}.")
        pairs.append((source.strip(), reference.strip()))
    return _group(pairs)
