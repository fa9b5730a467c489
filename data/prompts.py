"""Templates and verbalizers: turning an example into a prompt, and labels into words.

A template is a Python format string with the slots ``{text}``, ``{text_pair}`` (pair
tasks) and ``{mask}``: where the model predicts the label word. A masked LM (BERT,
RoBERTa) sees its mask token there; a causal LM (GPT-2) has no mask token, so the
prompt ends just before the slot and the label word is the *next* token.
A verbalizer lists one word per label (``verbalizer[label_id]``).
"""
from __future__ import annotations

import string

from .readers import Example

SLOTS = {"text", "text_pair", "mask"}


class TemplateError(ValueError):
    """A template lacks a slot it needs or has one it should not."""


class VerbalizerError(ValueError):
    """A label word is not a single token for the tokenizer at hand."""


def template_slots(template: str) -> list[str]:
    """The slot names used in ``template``, in order (``"{text} It was {mask}."`` -> [text, mask])."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]


def check_template(template: str, pair: bool = False) -> str:
    """Raise TemplateError unless ``template`` has one {mask}, {text}, and {text_pair} iff ``pair``."""
    slots = template_slots(template)
    needed = ["text", "mask"] + (["text_pair"] if pair else [])
    unknown = [slot for slot in slots if slot not in SLOTS or (slot == "text_pair" and not pair)]
    missing = [slot for slot in needed if slot not in slots]
    if missing or unknown or slots.count("mask") != 1:
        raise TemplateError(
            f"template {template!r} has slots {slots}; expected exactly one {{mask}} and "
            f"{' and '.join('{' + slot + '}' for slot in needed if slot != 'mask')}"
            + (f", missing {missing}" if missing else "") + (f", unknown {unknown}" if unknown else "")
            + ". Write e.g. '{text} It was {mask}.'")
    return template


def apply_template(template: str, example: Example, mask_token: str | None) -> str:
    """Fill ``template`` with the example's text(s) and the mask token.

    With ``mask_token=None`` (a causal LM such as GPT-2) the prompt is cut just
    before ``{mask}``: the model's next token is then the label word.
    Sentences may contain braces: only the template is parsed, never the text.
    """
    if mask_token is None:
        before_mask = template.split("{mask}")[0].rstrip()
        if set(template_slots(template)) - {"mask"} != set(template_slots(before_mask)):
            raise TemplateError(f"template {template!r} has text after {{mask}}; a causal LM predicts the "
                                "next token, so it needs a template that ends with {mask} (and punctuation).")
        return before_mask.format(text=example.text, text_pair=example.text_pair)
    return template.format(text=example.text, text_pair=example.text_pair, mask=mask_token)


def label_word(word: str, tokenizer) -> str:
    """The label word as the tokenizer sees it in a prompt.

    Byte-level BPE (GPT-2, RoBERTa) folds the space before a word into the token,
    and in a prompt the label word follows a space: " great", not "great".
    """
    return " " + word.strip() if getattr(tokenizer, "is_byte_level", False) else word.strip()


def check_verbalizer(verbalizer: list[str], tokenizer) -> list[int]:
    """Return one token id per label word; raise VerbalizerError if a word is several tokens.

    ``tokenizer`` needs ``token_ids(text) -> list[int]`` (no special tokens), an
    ``is_byte_level`` flag and ``decode(ids)``, as ``minitransformer.Tokenizer`` has.
    """
    label_word_ids, problems = [], []
    for word in verbalizer:
        as_seen = label_word(word, tokenizer)
        ids = tokenizer.token_ids(as_seen)
        if len(ids) != 1:
            pieces = [tokenizer.decode([token]) for token in ids]
            problems.append(f"{as_seen!r} -> {len(ids)} tokens {pieces}")
        label_word_ids.extend(ids[:1])
    if problems:
        raise VerbalizerError(
            "verbalizer words must be single tokens, but " + "; ".join(problems) + ". A verbalizer "
            "scores one token per label. Choose a more common word (e.g. 'great' rather than 'splendid'); "
            "for GPT-2/RoBERTa the word is looked up with its leading space.")
    return label_word_ids


def parse_verbalizer(words: list[str], label_names: list[str]) -> list[str]:
    """`label=word` pairs (any order), or one word per label in label order -> words in label order."""
    named = all("=" in word for word in words)
    mapping = dict(word.split("=", 1) for word in words) if named else dict(zip(label_names, words))
    missing = [name for name in label_names if name not in mapping]
    extra = [name for name in mapping if name not in label_names] if named else words[len(label_names):]
    if missing or extra:
        raise VerbalizerError(f"The verbalizer needs one word for each label ({', '.join(label_names)})"
                              + (f"; no word for {missing}" if missing else "")
                              + (f"; not labels of this task: {extra}" if extra else "")
                              + f". Write e.g. --verbalizer {' '.join(name + '=WORD' for name in label_names)}.")
    return [mapping[name] for name in label_names]


def longest_prompt(examples: list[Example], tokenizer, template: str) -> int:
    """Tokens (special ones included) in the longest prompt that `template` makes from `examples`."""
    texts = [apply_template(template, example, tokenizer.mask_token) for example in examples]
    return int(tokenizer.encode(texts)["attention_mask"].sum(1).max())


def check_fits(longest: int, tokenizer) -> None:  # prompts are never cut: that could remove the slot
    if longest > tokenizer.model_max_length:
        raise ValueError(f"The longest prompt is {longest} tokens, but the model reads at most "
                         f"{tokenizer.model_max_length}: use fewer demonstrations (--shots) or a shorter template.")
