"""Task metrics written out in full: accuracy, macro-F1, entity-level F1, corpus BLEU-4."""
from __future__ import annotations

import math
from collections import Counter


def accuracy(predictions: list[int], targets: list[int]) -> float:
    """Fraction of predictions equal to their target."""
    _check_lengths(predictions, targets)
    return sum(p == t for p, t in zip(predictions, targets)) / max(len(targets), 1)


def macro_f1(predictions: list[int], targets: list[int], num_labels: int | None = None) -> float:
    """Mean over classes of per-class F1 (a class absent from both lists counts as F1 = 0)."""
    _check_lengths(predictions, targets)
    num_labels = num_labels or max([*predictions, *targets]) + 1
    scores = []
    for label in range(num_labels):
        true_pos = sum(p == t == label for p, t in zip(predictions, targets))
        predicted, actual = predictions.count(label), targets.count(label)
        scores.append(2 * true_pos / (predicted + actual) if predicted + actual else 0.0)
    return sum(scores) / num_labels


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """Entities of a BIO sequence as (type, start, end-exclusive).

    As in seqeval and conlleval, an I-X that does not continue an X starts a new entity.
    """
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):  # the sentinel closes a final entity
        continues = tag.startswith("I-") and tag[2:] == kind
        if start is not None and not continues:
            spans.add((kind, start, i))
            start, kind = None, None
        if tag != "O" and not continues:
            start, kind = i, tag[2:]
    return spans


def entity_f1(predicted: list[list[str]], gold: list[list[str]]) -> float:
    """Micro F1 over exactly matching entity spans (type and boundaries), summed over sentences."""
    _check_lengths(predicted, gold)
    correct = n_predicted = n_gold = 0
    for pred_tags, gold_tags in zip(predicted, gold):
        pred_spans, gold_spans = entity_spans(pred_tags), entity_spans(gold_tags)
        correct += len(pred_spans & gold_spans)
        n_predicted += len(pred_spans)
        n_gold += len(gold_spans)
    precision = correct / n_predicted if n_predicted else 0.0
    recall = correct / n_gold if n_gold else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def corpus_bleu(hypotheses: list[str], references: list[list[str]], max_order: int = 4) -> float:
    """Corpus BLEU (Papineni et al. 2002) on whitespace tokens, in [0, 1], no smoothing.

    n-gram counts are clipped by their largest count in any reference of the same
    input and summed over the corpus; the brevity penalty uses, per input, the
    reference length closest to the hypothesis (the shorter on a tie), as NLTK's
    corpus_bleu and sacrebleu (tokenize="none") do.
    """
    _check_lengths(hypotheses, references)
    matches, totals = [0] * max_order, [0] * max_order
    hyp_length = ref_length = 0
    for hypothesis, refs in zip(hypotheses, references):
        hyp, refs = hypothesis.split(), [ref.split() for ref in refs]
        hyp_length += len(hyp)
        ref_length += min((abs(len(ref) - len(hyp)), len(ref)) for ref in refs)[1]
        for n in range(1, max_order + 1):
            hyp_counts = _ngrams(hyp, n)
            max_ref_counts: Counter = Counter()
            for ref in refs:
                max_ref_counts |= _ngrams(ref, n)  # | keeps the larger count of each n-gram
            matches[n - 1] += sum((hyp_counts & max_ref_counts).values())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if min(matches) == 0:
        return 0.0  # the geometric mean of precisions is 0 when one precision is 0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_order
    brevity_penalty = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / max(hyp_length, 1))
    return brevity_penalty * math.exp(log_precision)


METRICS = {"accuracy": accuracy, "macro_f1": macro_f1, "entity_f1": entity_f1, "bleu": corpus_bleu}


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _check_lengths(predictions: list, targets: list) -> None:
    if len(predictions) != len(targets):
        raise ValueError(f"got {len(predictions)} predictions for {len(targets)} targets; "
                         "pass one prediction per example, in the same order.")
