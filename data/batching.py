"""Batches of tensors from examples: tokenize, pad, attach labels; seeded and bucketed.

The tokenizer is ``minitransformer.Tokenizer`` (any object with its ``encode``,
``encode_words`` and ``mask_token`` works). Padding is dynamic: each batch is as
long as its longest sequence.
"""
from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from typing import Iterator

import torch
from torch.nn.utils.rnn import pad_sequence

from .prompts import apply_template
from .readers import NER_TAGS, Example, NerExample, TableExample

IGNORE_INDEX = -100  # cross_entropy's default ignore_index: no loss on these tokens


def align_word_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Spread word labels over subword tokens: a word's first token gets its label.

    The other tokens of the word and the special tokens ([CLS], [SEP], padding:
    word id None) get -100, so each word is counted once in the loss and the metric.
    """
    labels, previous = [], None
    for word_id in word_ids:
        labels.append(IGNORE_INDEX if word_id is None or word_id == previous else word_labels[word_id])
        previous = word_id
    return labels


def encode_examples(examples: list, tokenizer, max_length: int | None = None, template: str | None = None,
                    padding_side: str = "right", tag_names: list[str] = NER_TAGS) -> dict[str, torch.Tensor]:
    """Tokenize one batch of examples into padded tensors plus ``labels``.

    Output: ``input_ids``, ``attention_mask``, ``token_type_ids`` [B, T] and ``labels``:
    [B] class ids for Example, [B, T] tag ids (or -100) for NerExample.
    With a ``template`` each Example becomes one prompt text holding the tokenizer's
    mask token (cut before the slot for a tokenizer without one, e.g. GPT-2).
    """
    first = examples[0]
    if isinstance(first, NerExample):
        batch, word_ids = tokenizer.encode_words([e.words for e in examples], max_length=max_length)
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)  # [B, T]; padding stays -100
        tag_id = {tag: i for i, tag in enumerate(tag_names)}
        for row, (example, ids) in enumerate(zip(examples, word_ids)):
            tag_ids = [tag_id[tag] for tag in example.tags]
            labels[row, : len(ids)] = torch.tensor(align_word_labels(ids, tag_ids))
        batch["labels"] = labels
        return batch
    if isinstance(first, TableExample):
        raise TypeError("TableExample batches depend on the method (source and reference are joined for "
                        "a causal LM); build them in the method from example.source and example.references.")
    if template is not None:
        texts, pairs = [fit_template(template, e, tokenizer, max_length) for e in examples], None
    else:
        texts = [e.text for e in examples]
        has_pair = [e.text_pair is not None for e in examples]
        if any(has_pair) and not all(has_pair):
            raise ValueError("a batch mixes sentence pairs and single sentences; use one task's examples per batch.")
        pairs = [e.text_pair for e in examples] if all(has_pair) else None
    batch = tokenizer.encode(texts, pairs, max_length=max_length, padding_side=padding_side)
    batch["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)  # [B]
    return batch


def fit_template(template: str, example: Example, tokenizer, max_length: int | None) -> str:
    """The prompt text of ``example``, its sentence(s) shortened so the whole prompt fits ``max_length``.

    Truncating the finished prompt would cut its end, and with it the [MASK] that the
    method reads. Instead each sentence keeps at most ``cap`` words, longest first like
    the tokenizer's own pair truncation, with the largest cap that fits found by
    bisection (a longer cap never gives a shorter prompt).
    """
    def prompt(cap: int | None) -> str:
        if cap is None:
            return apply_template(template, example, tokenizer.mask_token)
        text = " ".join(example.text.split()[:cap])
        pair = None if example.text_pair is None else " ".join(example.text_pair.split()[:cap])
        return apply_template(template, dataclasses.replace(example, text=text, text_pair=pair), tokenizer.mask_token)

    def fits(text: str) -> bool:
        return len(tokenizer.encode([text])["input_ids"][0]) <= max_length

    if max_length is None or fits(prompt(None)):
        return prompt(None)
    low, high = 1, max(len(example.text.split()), len((example.text_pair or "").split()))  # prompt(high) is too long
    while low < high - 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(prompt(middle)) else (low, middle)
    return prompt(low)  # one word each if even that is too long: the method's own check then says so


def _length(example) -> int:
    """A cheap length proxy for bucketing (characters or words): no need to tokenize twice."""
    if isinstance(example, NerExample):
        return len(example.words)
    if isinstance(example, TableExample):
        return len(example.source)
    return len(example.text) + len(example.text_pair or "")


def batches(examples: list, tokenizer, batch_size: int = 16, shuffle: bool = False, seed: int = 0,
            max_length: int | None = None, bucket_by_length: bool = False, template: str | None = None,
            padding_side: str = "right", shard=None) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batches (see :func:`encode_examples`) over ``examples``; the last may be smaller.

    ``shuffle`` uses ``random.Random(seed)``: the same seed gives the same order on any
    machine (pass e.g. ``seed + epoch`` for a new order each epoch).
    ``bucket_by_length`` puts examples of similar length together so less padding is
    computed; the batches themselves are then shuffled (when ``shuffle``), otherwise
    they run from shortest to longest.
    ``shard(chunk) -> (examples, weights)`` keeps one process's share of each batch (several
    processes: methods/shared/distributed.py); the batch then carries ``weights`` [B].
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    rng = random.Random(seed)
    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)
    if bucket_by_length:
        order.sort(key=lambda i: _length(examples[i]))  # stable: equal lengths keep the shuffled order
    chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if bucket_by_length and shuffle:
        rng.shuffle(chunks)
    for chunk in chunks:
        chosen, weights = shard(chunk) if shard is not None else (chunk, None)
        if not chosen:  # this process has no share of a last, small batch (evaluation only)
            continue
        batch = encode_examples([examples[i] for i in chosen], tokenizer, max_length, template, padding_side)
        if weights is not None:
            batch["weights"] = torch.tensor(weights)
        yield batch


def k_shot(examples: list[Example], k: int, seed: int = 0) -> list[Example]:
    """Sample ``k`` examples of every label (seeded), returned in a seeded random order.

    For few-shot training and in-context demonstrations. Raises if a label has fewer
    than ``k`` examples.
    """
    by_label: dict[int, list[Example]] = defaultdict(list)
    for example in examples:
        by_label[example.label].append(example)
    rng = random.Random(seed)
    chosen = []
    for label in sorted(by_label):
        if len(by_label[label]) < k:
            raise ValueError(f"label {label} has only {len(by_label[label])} examples, fewer than k={k}; "
                             "choose a smaller k or a larger split.")
        chosen.extend(rng.sample(by_label[label], k))
    rng.shuffle(chosen)
    return chosen


def table_prompt(source: str) -> str:
    """What a causal LM reads before it writes a table's text: the linearized table, then " ||" (Li & Liang's E2E files)."""
    return f"{source} ||"


def causal_lm_batches(examples: list[TableExample], tokenizer, batch_size: int, shuffle: bool = False,
                      seed: int = 0, max_length: int | None = None, shard=None) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches for a causal LM: "source ||" + " reference" + eos, one row per reference.

    labels [B, T]: labels[t] = token t + 1 where that token belongs to the reference (or is eos),
    else -100, so only the reference is learned (the LM loss of Li & Liang)."""
    pairs = [(e.source, reference) for e in examples for reference in e.references]
    if shuffle:
        random.Random(seed).shuffle(pairs)
    for start in range(0, len(pairs), batch_size):
        rows, prompt_lengths = [], []
        chosen, weights = shard(pairs[start:start + batch_size]) if shard is not None else \
            (pairs[start:start + batch_size], None)
        for source, reference in chosen:
            prompt = tokenizer.token_ids(table_prompt(source))
            rows.append((prompt + tokenizer.token_ids(" " + reference) + [tokenizer.eos_id])[:max_length])
            prompt_lengths.append(len(prompt))
        input_ids = pad_sequence([torch.tensor(r) for r in rows], batch_first=True, padding_value=tokenizer.pad_id)
        labels = torch.full_like(input_ids, IGNORE_INDEX)  # (B, T)
        for i, (ids, prompt_length) in enumerate(zip(rows, prompt_lengths)):
            labels[i, prompt_length - 1:len(ids) - 1] = torch.tensor(ids[prompt_length:])
        mask = pad_sequence([torch.ones(len(r), dtype=torch.long) for r in rows], batch_first=True)
        yield {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
               **({"weights": torch.tensor(weights)} if weights is not None else {})}


def seq2seq_batches(examples: list[TableExample], tokenizer, batch_size: int, shuffle: bool = False,
                    seed: int = 0, max_length: int | None = None, shard=None) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches for an encoder-decoder (T5, BART): the linearized table is the encoder's input, each
    reference + eos the decoder's target (labels [B, T], -100 past its end), one row per reference."""
    pairs = [(e.source, reference) for e in examples for reference in e.references]
    if shuffle:
        random.Random(seed).shuffle(pairs)
    for start in range(0, len(pairs), batch_size):
        chosen, weights = shard(pairs[start:start + batch_size]) if shard is not None else \
            (pairs[start:start + batch_size], None)
        batch = tokenizer.encode([source for source, _ in chosen], max_length=max_length)
        targets = [(tokenizer.token_ids(reference) + [tokenizer.eos_id])[:max_length] for _, reference in chosen]
        labels = pad_sequence([torch.tensor(t) for t in targets], batch_first=True, padding_value=IGNORE_INDEX)
        yield {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels,
               **({"weights": torch.tensor(weights)} if weights is not None else {})}
