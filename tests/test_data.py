"""data: every real task loads with the sizes of ../shared/data/SOURCES.md; splits, built-in sets, bad input.

Real-data tests read PROMPT_DATA_DIR (the `data_dir` fixture skips them when it is unset).
Downloads are switched off and the cache points at an empty folder, so only the
data directory is read.
"""
from __future__ import annotations

import collections
import hashlib
import json
from functools import lru_cache
from pathlib import Path

import pytest

from data import (TASKS, DataFormatError, DataNotFoundError, Example, MissingSplitError, UnknownTaskError,
                  check_template, iob1_to_bio, load_task)
from data.readers import read_conll, read_e2e_csv, read_e2e_text, read_jsonl_pairs, read_label_lines

BUILTIN = [name for name in TASKS if name.startswith("builtin_")]


@pytest.fixture(autouse=True)
def _offline_and_empty_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPT_OFFLINE", "1")
    monkeypatch.setenv("PROMPT_CACHE_DIR", str(tmp_path / "cache"))


@lru_cache(maxsize=None)
def real(name: str, data_dir: Path):
    """Load each real task once per test session (parsing CoNLL takes ~0.4 s)."""
    return load_task(name, data_dir, allow_download=False)


def label_counts(examples, task):
    return dict(collections.Counter(task.label_names[e.label] for e in examples))


def digest(examples) -> str:
    return hashlib.sha256("\n".join(f"{e.label} {e.text}" for e in examples).encode()).hexdigest()[:16]


# --- real tasks: sizes and labels as in SOURCES.md --------------------------------------------

def test_sst2_sizes_and_labels(data_dir):
    task = real("sst2", data_dir)
    assert {s: len(v) for s, v in task.splits.items()} == {"train": 6920, "dev": 872, "test": 1821}
    assert label_counts(task.split("dev"), task) == {"negative": 428, "positive": 444}
    assert task.metric == "accuracy" and task.kind == "classification" and not task.is_builtin
    assert task.source == str(data_dir)


def test_sst5_sizes_and_labels(data_dir):
    task = real("sst5", data_dir)
    assert {s: len(v) for s, v in task.splits.items()} == {"train": 8544, "dev": 1101, "test": 2210}
    assert label_counts(task.split("train"), task) == {"very negative": 1092, "negative": 2218, "neutral": 1624,
                                                       "positive": 2322, "very positive": 1288}


@pytest.mark.parametrize("name, total", [("mr", 10662), ("subj", 10000),
                                         # lines with a label but no sentence are skipped: 4 in CR, 3 in MPQA
                                         ("cr", 3775 - 4), ("mpqa", 10606 - 3)])
def test_all_files_are_split_completely(data_dir, name, total):
    task = real(name, data_dir)
    assert list(task.splits) == ["train", "dev", "test"]
    assert sum(len(v) for v in task.splits.values()) == total
    assert set(e.label for e in task.split("train")) == {0, 1}


def test_trec_dev_is_carved_from_train(data_dir):
    task = real("trec", data_dir)
    assert len(task.split("train")) + len(task.split("dev")) == 5452 and len(task.split("test")) == 500
    counts = collections.Counter(e.label for e in task.split("train") + task.split("dev"))
    assert counts == {0: 1162, 1: 1250, 2: 86, 3: 1223, 4: 835, 5: 896}  # DESC ENTY ABBR HUM LOC NUM
    assert task.label_names[2] == "abbreviation"


# Digests of the hashed splits: if any of these change, the split changed and results stop being comparable.
DERIVED = {
    "mr": {"train": (8483, "1017286aef0a22ff"), "dev": (1067, "dbd86cdefea70142"), "test": (1112, "dd5521191e184cae")},
    "cr": {"train": (3017, "0b725362d89c741c"), "dev": (377, "33aba366cbeba329"), "test": (377, "e6df1f51aa397c4c")},
    "mpqa": {"train": (8507, "1246f5dba195bdea"), "dev": (1123, "b686f85cf57b74fb"), "test": (973, "2dbdf3adcc2d8108")},
    "subj": {"train": (7919, "931e1fb616c38654"), "dev": (1044, "5dd75992aa8c782e"), "test": (1037, "303fbffda90f9880")},
    "trec": {"train": (4896, "74c5cd44ab1674e5"), "dev": (556, "20eb0821ce831c57")},
}


@pytest.mark.parametrize("name", DERIVED)
def test_derived_splits_are_stable(data_dir, name):
    task = real(name, data_dir)
    got = {split: (len(task.split(split)), digest(task.split(split))) for split in DERIVED[name]}
    assert got == DERIVED[name], "the hashed split changed: it must never change between runs or machines"


@pytest.mark.parametrize("name", DERIVED)
def test_derived_splits_are_disjoint(data_dir, name):
    task = real(name, data_dir)
    texts = {split: {e.text for e in task.split(split)} for split in DERIVED[name]}
    splits = list(texts)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not texts[a] & texts[b], f"{name}: a sentence is in both {a} and {b}"


def test_derived_split_does_not_depend_on_file_order(data_dir, tmp_path):
    lines = (data_dir / "harvardnlp/custrev.all").read_bytes().split(b"\n")
    (tmp_path / "harvardnlp").mkdir()
    (tmp_path / "harvardnlp/custrev.all").write_bytes(b"\n".join(reversed(lines)))
    shuffled = load_task("cr", tmp_path)
    original = real("cr", data_dir)
    for split in ("train", "dev", "test"):
        assert sorted(e.text for e in shuffled.split(split)) == sorted(e.text for e in original.split(split))


def test_rte_and_cb_sizes_and_labels(data_dir):
    rte, cb = real("rte", data_dir), real("cb", data_dir)
    assert label_counts(rte.split("train"), rte) == {"entailment": 1249, "not_entailment": 1241}
    assert label_counts(rte.split("dev"), rte) == {"entailment": 146, "not_entailment": 131}
    assert label_counts(cb.split("train"), cb) == {"contradiction": 119, "entailment": 115, "neutral": 16}
    assert label_counts(cb.split("dev"), cb) == {"contradiction": 28, "entailment": 23, "neutral": 5}
    first = rte.split("train")[0]
    assert (first.text, first.text_pair) == ("No Weapons of Mass Destruction Found in Iraq Yet.",
                                             "Weapons of Mass Destruction Found in Iraq.")
    assert cb.also_report == ["macro_f1"]


def test_boolq_has_dev_only_and_string_labels_work(data_dir):
    task = real("boolq", data_dir)
    assert list(task.splits) == ["dev"]
    assert label_counts(task.split("dev"), task) == {"true": 2033, "false": 1237}


def test_boolq_json_booleans_read_like_strings(tmp_path):
    rows = [{"question": "is it", "passage": "p", "label": True}, {"question": "is it", "passage": "p", "label": "false"}]
    path = tmp_path / "val.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [e.label for e in read_jsonl_pairs(path, "passage", "question", ["false", "true"])] == [1, 0]


def test_conll_sizes_and_bio_tags(data_dir):
    task = real("conll2003", data_dir)
    sentences = {s: len(v) for s, v in task.splits.items()}
    tokens = {s: sum(len(e.words) for e in v) for s, v in task.splits.items()}
    assert sentences == {"train": 14041, "dev": 3250, "test": 3453}
    assert tokens == {"train": 203621, "dev": 51362, "test": 46435}  # the shared-task paper's counts
    assert task.metric == "entity_f1"
    tags = {tag for split in task.splits.values() for e in split for tag in e.tags}
    assert tags == set(task.label_names), "every BIO tag occurs and no other"


def test_conll_first_sentence_starts_entities_with_b(data_dir):
    first = real("conll2003", data_dir).split("train")[0]
    assert first.words == ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    # IOB1 in the file: I-ORG O I-MISC O O O I-MISC O O
    assert first.tags == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]


def test_conll_touching_entities_stay_apart(data_dir):
    """eng.train has 'the Golan Heights Israel captured' (I-LOC I-LOC B-LOC in IOB1): two places."""
    sentence = next(e for e in real("conll2003", data_dir).split("train") if "Golan" in e.words)
    start = sentence.words.index("Golan")
    assert sentence.words[start:start + 3] == ["Golan", "Heights", "Israel"]
    assert sentence.tags[start:start + 3] == ["B-LOC", "I-LOC", "B-LOC"]


def test_iob1_to_bio_rules():
    assert iob1_to_bio(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG"]) == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG"]


def test_e2e_csv_groups_references_by_mr(data_dir):
    task = real("e2e", data_dir)
    dev, test = task.split("dev"), task.split("test")
    assert (len(dev), sum(len(e.references) for e in dev)) == (547, 4672)
    assert (len(test), sum(len(e.references) for e in test)) == (630, 4693)
    assert dev[0].source == "name : Alimentum | area : city centre | family friendly : no"
    assert dev[0].references[0] == "There is a place in the city centre, Alimentum, that is not family-friendly."
    assert task.metric == "bleu" and task.kind == "generation"


def test_e2e_text_form_has_the_same_inputs(data_dir):
    text, csv = real("e2e_prefixtuning", data_dir), real("e2e", data_dir)
    for split, (inputs, references) in {"dev": (547, 4672), "test": (630, 4693)}.items():
        examples = text.split(split)
        assert (len(examples), sum(len(e.references) for e in examples)) == (inputs, references)
        # same MRs in the same order; the text form tokenizes values ("£ 20 - 25" vs "£20-25")
        assert [len(e.references) for e in examples] == [len(e.references) for e in csv.split(split)]


def test_glue_sst2_dev_equals_harvardnlp_dev(data_dir):
    glue = real("glue_sst2", data_dir)
    assert (len(glue.split("train")), len(glue.split("dev"))) == (67349, 872)
    assert collections.Counter(e.label for e in glue.split("dev")) == {1: 444, 0: 428}


def test_every_real_task_loads_and_has_prompt_material(data_dir):
    for name in TASKS:
        task = real(name, data_dir)
        assert task.kind in {"classification", "pair", "ner", "generation"}
        if task.kind in {"classification", "pair"}:
            assert len(task.verbalizer) == len(task.label_names) and task.templates
            for template in task.templates:
                check_template(template, pair=task.kind == "pair")
                assert template.rstrip(".:").endswith("{mask}"), "mask slot last, so GPT-2 can predict it next"
    assert len(real("sst2", data_dir).templates) >= 3, "the template-sensitivity lesson needs several templates"


# --- built-in sets ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_tasks_say_they_are_not_benchmarks(name):
    task = load_task(name)
    assert task.is_builtin and "built-in (not a benchmark)" in task.description
    assert "built-in (not a benchmark)" in repr(task)
    assert Path(task.source) == Path(__file__).parents[1] / "data" / "builtin"


def test_builtin_sentiment_is_balanced_and_disjoint():
    task = load_task("builtin_sentiment")
    assert collections.Counter(e.label for e in task.split("train")) == {0: 120, 1: 120}
    assert collections.Counter(e.label for e in task.split("dev")) == {0: 40, 1: 40}
    train, dev = {e.text for e in task.split("train")}, {e.text for e in task.split("dev")}
    assert len(train) == 240 and len(dev) == 80 and not train & dev


def test_builtin_pairs_keep_each_premise_in_one_split():
    task = load_task("builtin_pairs")
    assert (len(task.split("train")), len(task.split("dev"))) == (80, 24)
    assert collections.Counter(e.label for e in task.split("train")) == {0: 40, 1: 40}
    assert not {e.text for e in task.split("train")} & {e.text for e in task.split("dev")}


def test_builtin_ner_uses_all_types_and_iob1_b_tags():
    task = load_task("builtin_ner")
    assert (len(task.split("train")), len(task.split("dev"))) == (46, 15)
    tags = {t for split in task.splits.values() for e in split for t in e.tags}
    assert {"B-PER", "B-ORG", "B-LOC", "B-MISC", "I-PER", "I-ORG", "I-LOC", "I-MISC", "O"} == tags
    derby = next(e for e in task.split("train") if "derby" in e.words)
    assert derby.tags[derby.words.index("Lyon"):derby.words.index("derby")] == ["B-ORG", "B-ORG"]


# --- bad input -------------------------------------------------------------------------------

def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_malformed_label_line_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.train", "1 fine\nnot-a-label here\n")
    with pytest.raises(DataFormatError, match=r"bad\.train:2: expected 'LABEL SENTENCE' with an integer label"):
        read_label_lines(path, ["negative", "positive"])


def test_unknown_label_value(tmp_path):
    path = write(tmp_path, "bad.train", "1 fine\n0 ok\n7 seven\n")
    with pytest.raises(DataFormatError, match=r"bad\.train:3: unknown label 7; expected 0\.\.1 \(negative, positive\)"):
        read_label_lines(path, ["negative", "positive"])


def test_unknown_jsonl_label(tmp_path):
    path = write(tmp_path, "val.jsonl", json.dumps({"premise": "a", "hypothesis": "b", "label": "maybe"}) + "\n")
    with pytest.raises(DataFormatError, match=r"val\.jsonl:1: unknown label 'maybe'; expected one of"):
        read_jsonl_pairs(path, "premise", "hypothesis", ["entailment", "not_entailment"])


def test_broken_json_and_missing_field(tmp_path):
    path = write(tmp_path, "val.jsonl", '{"premise": "a", "hypothesis": "b", "label": "entailment"}\n{"premise": \n')
    with pytest.raises(DataFormatError, match=r"val\.jsonl:2: not valid JSON"):
        read_jsonl_pairs(path, "premise", "hypothesis", ["entailment", "not_entailment"])
    path = write(tmp_path, "test.jsonl", '{"premise": "a", "hypothesis": "b", "idx": 0}\n')
    with pytest.raises(DataFormatError, match=r"test\.jsonl:1: missing field 'label'"):
        read_jsonl_pairs(path, "premise", "hypothesis", ["entailment", "not_entailment"])


@pytest.mark.parametrize("reader", [lambda p: read_label_lines(p, ["a", "b"]), read_conll, read_e2e_text,
                                    lambda p: read_jsonl_pairs(p, "premise", "hypothesis", ["a"])])
def test_empty_file(tmp_path, reader):
    path = write(tmp_path, "empty.txt", "\n  \n")
    with pytest.raises(DataFormatError, match=r"empty\.txt: the file is empty"):
        reader(path)


def test_conll_wrong_column_count_and_unknown_tag(tmp_path):
    path = write(tmp_path, "eng.train", "-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ O\n")
    with pytest.raises(DataFormatError, match=r"eng\.train:4: expected 4 columns 'word POS chunk NER', got 3"):
        read_conll(path)
    path = write(tmp_path, "eng.testa", "EU NNP I-NP I-ORG\nParis NNP I-NP I-CITY\n")
    with pytest.raises(DataFormatError, match=r"eng\.testa:2: unknown NER tag 'I-CITY'"):
        read_conll(path)


def test_e2e_bad_header_and_missing_separator(tmp_path):
    path = write(tmp_path, "testset.csv", "MR\n\"name[Blue Spice]\"\n")
    with pytest.raises(DataFormatError, match=r"testset\.csv:1: expected the header 'mr,ref'.*testset_w_refs"):
        read_e2e_csv(path)
    path = write(tmp_path, "valid.txt", "name : A||A is a pub .\nname : B | area : riverside\n")
    with pytest.raises(DataFormatError, match=r"valid\.txt:2: expected 'attr : value \| \.\.\. \|\|reference'"):
        read_e2e_text(path)


def test_bad_file_in_a_data_dir_names_it(tmp_path):
    for split in ("train", "dev", "test"):
        write(tmp_path, f"harvardnlp/stsa.binary.{split}", "1 good\n0 bad\n")
    write(tmp_path, "harvardnlp/stsa.binary.dev", "1 good\n\u00e9 bad\n")
    with pytest.raises(DataFormatError, match=r"stsa\.binary\.dev:2"):
        load_task("sst2", tmp_path)


def test_unknown_task_lists_known_ones():
    with pytest.raises(UnknownTaskError, match=r"unknown task 'sst-2' \(did you mean 'sst2'\?\)\. Known tasks: sst2, sst5, mr"):
        load_task("sst-2")


def test_missing_split_names_the_file_looked_for(data_dir):
    task = real("boolq", data_dir)
    with pytest.raises(MissingSplitError, match=r"task 'boolq' has no 'train' split: Data file "
                                                r"'superglue_boolq/train\.jsonl' was not found") as error:
        task.split("train")
    assert str(data_dir / "superglue_boolq/train.jsonl") in str(error.value)
    assert isinstance(error.value, KeyError)  # so `task.splits["train"]` fails the same way
    with pytest.raises(MissingSplitError, match=r"task 'e2e' has no 'train' split.*e2e/trainset\.csv"):
        real("e2e", data_dir).splits["train"]
    with pytest.raises(MissingSplitError, match=r"task 'rte' has no 'test' split: it has labelled splits \['train', 'dev'\]"):
        real("rte", data_dir).split("test")


def test_task_found_nowhere_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPT_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError) as error:
        load_task("rte", tmp_path / "nothing")
    message = str(error.value)
    for expected in ["task 'rte': none of its files were found", "data_dir argument: " + str(tmp_path / "nothing"),
                     "PROMPT_DATA_DIR: not set", "cache: " + str(tmp_path / "cache"), "download: skipped (offline",
                     "https://raw.githubusercontent.com/tonyzhaozh/few-shot-learning/", "To fix: point PROMPT_DATA_DIR"]:
        assert expected in message


def test_example_is_a_small_value():
    assert Example("a") == Example("a", None, -1)
