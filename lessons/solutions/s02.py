"""Reference solutions for lesson 2 (try the exercises first!)."""
from __future__ import annotations

from data import apply_template, k_shot, label_word

# The premise, the hypothesis as a question, and the answer slot last (so GPT-2 can use it too).
rte_template = "{text} Based on that, is it true that {text_pair}? {mask}."


def label_word_ids(verbalizer, tokenizer):
    """One token id per label word; ValueError naming any word that is several tokens."""
    ids = []
    for word in verbalizer:
        pieces = tokenizer.token_ids(label_word(word, tokenizer))  # " great" for GPT-2/RoBERTa, "great" for BERT
        if len(pieces) != 1:
            raise ValueError(f"label word {word!r} is {len(pieces)} tokens, not one: choose another word")
        ids.append(pieces[0])
    return ids


def build_icl_prompt(pool, query, k, template, verbalizer, mask_token, seed=0):
    """k solved demonstrations per class, a blank line between blocks, then the query."""
    demos = [template.format(text=e.text, text_pair=e.text_pair, mask=verbalizer[e.label])
             for e in k_shot(pool, k, seed)]
    return "\n\n".join(demos + [apply_template(template, query, mask_token)])
