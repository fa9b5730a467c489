"""Checks for lesson 2 (hard prompts): a template of your own, a verbalizer check, an in-context prompt.

Each check takes the student's answer, raises AssertionError with a hint when it is wrong
(NotImplementedError passes through), and compares against data/prompts.py and methods/hard_prompt.py.
"""
from __future__ import annotations

import functools
import string

from data import Example, TemplateError, apply_template, check_template, check_verbalizer, load_task
from data.tasks import TASK_SPECS
from methods.hard_prompt import SEPARATOR, demonstrations, icl_template
from minitransformer import Tokenizer
from minitransformer.loading import resolve

PAIR = Example("A man is playing a guitar on stage.", "A person is making music.", 0)


@functools.lru_cache(maxsize=1)
def minilm_tokenizer() -> Tokenizer:
    """MiniLM's WordPiece tokenizer (the offline model of the lessons), without loading the weights."""
    return Tokenizer.from_dir(resolve("all-MiniLM-L6-v2"), "bert")


@functools.lru_cache(maxsize=1)
def byte_level_tokenizer() -> Tokenizer:
    """A small byte-level BPE (GPT-2's kind), trained here, in which ' great' and ' terrible' are one token each."""
    from tokenizers.implementations import ByteLevelBPETokenizer
    sentences = [e.text for e in load_task("builtin_sentiment").splits["train"]]
    corpus = sentences + [f"It was {word}." for word in ("terrible", "great", "good", "bad")] * 50
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False)
    return Tokenizer(bpe._tokenizer)


def check_rte_template(template) -> None:
    assert isinstance(template, str), (f"rte_template should be a template string with the slots {{text}}, "
                                       f"{{text_pair}} and {{mask}}; got {template!r}")
    try:
        check_template(template, pair=True)
    except TemplateError as error:
        raise AssertionError(str(error)) from None
    assert template not in TASK_SPECS["rte"].templates, "that is one of RTE's own templates: write your own wording"
    words = template
    for slot in ("{text}", "{text_pair}", "{mask}"):
        words = words.replace(slot, "")
    assert any(c.isalpha() for c in words), ("the template has only slots: add words that tell the model what "
                                             "the blank means (e.g. a question whose answer is yes or no)")
    try:
        as_gpt2_sees_it = apply_template(template, PAIR, None)
    except TemplateError as error:
        raise AssertionError(f"a causal LM such as GPT-2 could not use it: {error}") from None
    tokenizer = minilm_tokenizer()
    ids = tokenizer.encode([apply_template(template, PAIR, tokenizer.mask_token)])["input_ids"][0]
    assert int((ids == tokenizer.mask_id).sum()) == 1, "the prompt must hold exactly one [MASK] token"
    assert PAIR.text_pair in as_gpt2_sees_it, "GPT-2 must see both sentences before the slot"


def check_label_word_ids(label_word_ids) -> None:
    tokenizer = minilm_tokenizer()
    got = label_word_ids(["terrible", "great"], tokenizer)
    expected = check_verbalizer(["terrible", "great"], tokenizer)
    assert got is not None and list(got) == expected, (
        f"MiniLM's ids of 'terrible' and 'great' are {expected}, you returned {got}. Look the words up without "
        "special tokens ([CLS]/[SEP]): tokenizer.token_ids(word).")
    for words, culprit, pieces in [(["terrible", "mediocre"], "mediocre", "med ##io ##cre"),
                                   (["meh", "great"], "meh", "me ##h")]:
        try:
            result = label_word_ids(words, tokenizer)
        except ValueError as error:
            assert culprit in str(error), (f"for {words} the error should name the culprit {culprit!r} "
                                           f"(it is {pieces} for MiniLM); your message: {error}")
        else:
            raise AssertionError(f"{culprit!r} is several tokens for MiniLM ({pieces}), so it cannot be a label "
                                 f"word, but {words} returned {result}: raise ValueError naming the word")
    bpe = byte_level_tokenizer()
    expected = check_verbalizer(["terrible", "great"], bpe)
    try:
        got = label_word_ids(["terrible", "great"], bpe)
    except ValueError as error:
        raise AssertionError("on a byte-level tokenizer (GPT-2, RoBERTa) 'great' and 'terrible' are single tokens "
                             "*with their leading space* (' great'), as they appear in a prompt; you raised: "
                             f"{error}. Use data.label_word(word, tokenizer).") from None
    assert list(got) == expected, (f"on a byte-level tokenizer the ids should be those of ' terrible' and ' great' "
                                   f"{expected}, you returned {got}: use data.label_word(word, tokenizer)")


def check_build_icl_prompt(build_icl_prompt) -> None:
    cases = [("builtin_sentiment", 2, 0, "[MASK]"), ("builtin_sentiment", 3, 5, None), ("builtin_pairs", 1, 1, None)]
    for name, k, seed, mask_token in cases:
        task = load_task(name)
        pool, query, template = task.splits["train"], task.splits["dev"][0], task.templates[0]
        demos = demonstrations(pool, k, len(task.label_names), seed)
        expected = apply_template(icl_template(template, demos, task.verbalizer), query, mask_token)
        got = build_icl_prompt(pool, query, k, template, task.verbalizer, mask_token, seed)
        where = f"({name}, k={k}, seed={seed}, mask_token={mask_token!r})"
        assert isinstance(got, str), f"return the prompt as one string {where}; got {type(got).__name__}"
        if got == expected:
            continue
        got_blocks, expected_blocks = got.split(SEPARATOR), expected.split(SEPARATOR)
        assert len(got_blocks) == len(expected_blocks), (
            f"{where}: expected {k} demonstrations for each of the {len(task.label_names)} classes plus the query, "
            f"{len(expected_blocks)} blocks separated by a blank line, got {len(got_blocks)} blocks")
        assert got_blocks[-1] == expected_blocks[-1], (
            f"{where}: the last block should be the query, {expected_blocks[-1]!r}, got {got_blocks[-1]!r} "
            "(data.apply_template fills it and cuts it before the slot when mask_token is None)")
        index = next(i for i, (a, b) in enumerate(zip(got_blocks, expected_blocks)) if a != b)
        raise AssertionError(f"{where}: demonstration {index + 1} should be {expected_blocks[index]!r}, got "
                             f"{got_blocks[index]!r} (take data.k_shot(pool, k, seed) in its order; fill each with "
                             "its text and its label word)")


EXERCISES = {
    "rte_template": check_rte_template,
    "label_word_ids": check_label_word_ids,
    "build_icl_prompt": check_build_icl_prompt,
}
