"""data.metrics: accuracy, macro-F1, entity-level F1 and corpus BLEU against hand-computed values."""
from __future__ import annotations

import math

import pytest

from data import accuracy, corpus_bleu, entity_f1, entity_spans, macro_f1


def test_accuracy_and_length_check():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    with pytest.raises(ValueError, match="got 2 predictions for 3 targets"):
        accuracy([1, 0], [1, 0, 1])


def test_macro_f1_by_hand():
    # class 0: tp 1, predicted 2, actual 1 -> F1 2/3; class 1: tp 1, predicted 1, actual 2 -> 2/3; class 2: 1
    predictions, targets = [0, 0, 1, 2], [0, 1, 1, 2]
    assert macro_f1(predictions, targets) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_entity_spans_follow_seqeval():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG", "I-ORG", "B-MISC"]
    # an I- without a matching start opens an entity (seqeval's default, conlleval too)
    assert entity_spans(tags) == {("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("ORG", 5, 7), ("MISC", 7, 8)}


def test_entity_f1_counts_exact_spans_only():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]]  # the person is cut short: a miss
    # 3 gold, 3 predicted (PER 0-1 is a wrong span), 2 correct: P 2/3, R 2/3, F1 2/3
    assert entity_f1(predicted, gold) == pytest.approx(2 / 3)
    predicted = [["B-PER", "I-PER", "B-LOC", "B-LOC"], ["O", "O"]]  # one extra place, the ORG missed
    # 3 gold, 3 predicted, 2 correct (PER 0-2, LOC 3-4): again 2/3; recall alone would hide the extra span
    assert entity_f1(predicted, gold) == pytest.approx(2 / 3)
    predicted = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "B-MISC"]]  # all gold + one extra
    assert entity_f1(predicted, gold) == pytest.approx(2 * (3 / 4) * 1 / (3 / 4 + 1))
    assert entity_f1(gold, gold) == 1.0 and entity_f1([["O"]], [["O"]]) == 0.0


def test_corpus_bleu_by_hand():
    hypotheses = ["the cat sat on the mat", "a quick brown fox jumps"]
    references = [["the cat is on the mat", "there is a cat on the mat"],
                  ["a quick brown fox jumped", "the quick brown fox jumps"]]
    # clipped matches / hypothesis n-grams, summed over both sentences:
    #   1-grams (5 + 5) / (6 + 5)   2-grams (3 + 4) / (5 + 4)
    #   3-grams (1 + 3) / (4 + 3)   4-grams (0 + 2) / (3 + 2)
    # lengths: hypotheses 6 + 5, closest references 6 + 5: brevity penalty 1
    expected = (10 / 11 * 7 / 9 * 4 / 7 * 2 / 5) ** 0.25  # = (16/99) ** 0.25 = 0.6340
    assert corpus_bleu(hypotheses, references) == pytest.approx(expected, abs=1e-12)


def test_brevity_penalty_uses_the_closest_reference():
    # all precisions 1; hypothesis 4 words, reference 5: BP = exp(1 - 5/4)
    assert corpus_bleu(["a quick brown fox"], [["a quick brown fox jumps"]]) == pytest.approx(math.exp(-0.25))
    # references of 3 and 7 words are equally close to 5: the shorter wins, so no penalty
    assert corpus_bleu(["a quick brown fox jumps"], [["a quick brown", "a quick brown fox jumps over it"]]) == \
        pytest.approx((5 / 5 * 4 / 4 * 3 / 3 * 2 / 2) ** 0.25 * 1.0)


def test_bleu_is_zero_without_any_4gram_match():
    assert corpus_bleu(["the cat sat on the mat"], [["the cat is on the mat"]]) == 0.0
