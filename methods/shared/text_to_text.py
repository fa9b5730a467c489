"""Classification as text-to-text on an encoder–decoder (T5, BART), the way Lester et al. used T5.

The input goes to the encoder; the answer is text the decoder writes: each label's word (the
task's verbalizer, e.g. "great" / "terrible"), then end-of-sequence. A label's score is the
log-likelihood the decoder gives that whole target, over the full vocabulary:

    score(x, c) = sum_t log p(y_c,t | y_c,<t, x)          y_c = tokens of label word c, then </s>

Prediction is rank classification: the label whose target is most likely (T0, T-Few score their
choices the same way). Training maximises the correct target's likelihood against the other
labels' (cross-entropy over the C scores), which for one-token label words is a verbalizer over
the whole target; Lester et al. trained on the target's likelihood alone (the same numerator, the
whole vocabulary as the only competitor). Label words may be several tokens here.

The encoder output is computed once per batch and read by every label's decoding.
"""
from __future__ import annotations

import torch
from torch import nn

from data.prompts import label_word
from minitransformer import EncoderDecoder, Tokenizer


def is_encoder_decoder(backbone: nn.Module) -> bool:
    return isinstance(backbone, EncoderDecoder)


class LabelTargets(nn.Module):
    """The decoder targets of the labels: [C, L] token ids (right-padded with -100) of `word </s>`."""

    def __init__(self, tokenizer: Tokenizer, label_words: list[str] | None, num_labels: int):
        super().__init__()
        if not label_words or len(label_words) != num_labels:
            raise ValueError(f"Text-to-text classification writes one label word per label ({num_labels}); this "
                             f"task has {label_words!r}. Give the task a verbalizer (its label words).")
        targets = []
        for word in label_words:
            ids = tokenizer.token_ids(label_word(word, tokenizer))  # BART: " great", as in running text
            if not ids or tokenizer.unk_id in ids:
                raise ValueError(f"The label word {word!r} is not in this tokenizer's vocabulary ({ids}).")
            targets.append(ids + [tokenizer.eos_id])
        longest = max(len(t) for t in targets)
        padded = torch.full((len(targets), longest), -100, dtype=torch.long)
        for row, ids in enumerate(targets):
            padded[row, :len(ids)] = torch.tensor(ids)
        self.register_buffer("ids", padded, persistent=False)
        self.words = list(label_words)


def label_scores(backbone: EncoderDecoder, targets: LabelTargets, encoder_hidden: torch.Tensor,
                 attention_mask: torch.Tensor, decoder_prefix=None, cross_prefix=None) -> torch.Tensor:
    """[B, C]: log-likelihood of each label's target given each input (see the module docstring)."""
    B, C = encoder_hidden.shape[0], targets.ids.shape[0]
    memory = backbone.memory(encoder_hidden, attention_mask, cross_prefix)
    # every row decodes every label: rows b*C + c; the memory is shared, only repeated
    repeat = lambda t: t.repeat_interleave(C, dim=0)
    memory.keys_values = [(repeat(k), repeat(v)) for k, v in memory.keys_values]
    memory.bias = repeat(memory.bias)
    labels = targets.ids.repeat(B, 1)  # (B*C, L)
    decoder_mask = (labels != -100).long()
    hidden = backbone.decode(backbone.shift_right(labels), memory, decoder_mask, decoder_prefix)
    log_probs = backbone.lm_logits(hidden).float().log_softmax(-1)  # (B*C, L, V)
    picked = log_probs.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * decoder_mask
    return picked.sum(-1).view(B, C)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of target tokens (-100 ignored): transformers' seq2seq loss, for the parity tests."""
    return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def text_to_text_head(requested: str, task_kind: str) -> None:
    """On an encoder-decoder the answer is written by the decoder: no other head applies."""
    if task_kind not in ("classification", "pair"):
        raise ValueError(f"On an encoder-decoder (T5, BART) the methods do {task_kind!r} tasks only as text-to-text "
                         "classification so far; use an encoder (e.g. all-MiniLM-L6-v2) for tagging.")
    if requested not in ("auto", "verbalizer"):
        raise ValueError(f"--head {requested}: on an encoder-decoder the decoder writes the label word (text-to-text, "
                         "scored by rank classification); leave --head at auto.")


def blocks(backbone) -> list[nn.Module]:
    """Every block a method may adapt: the layers of a one-stack model, or the encoder's then the decoder's."""
    if is_encoder_decoder(backbone):
        return list(backbone.encoder.layers) + list(backbone.decoder.layers)
    return list(backbone.layers)
