"""Heads that turn the backbone's hidden states into task logits, shared by every method.

* classifier: dropout + linear on one position per row: [CLS] for an encoder (through the
  checkpoint's pooler when it has one, as BertForSequenceClassification does), the last
  real token for a decoder.
* verbalizer: the language-model head's scores of the label words only, read at the
  [MASK] (encoder) or at the last token, whose next word is the label (decoder).
* token: a linear layer on every token (sequence labelling).

A head only reads: the method's forward, which knows where it put its prompts, says where
(`read_at`, one position per row; see methods/shared/prompting.py) or, for a token head,
hands over the hidden states of the real tokens only.
"""
from __future__ import annotations

import torch
from torch import nn

from data.prompts import check_verbalizer
from minitransformer import Tokenizer, Transformer

from methods.shared.prompting import HEAD_KINDS


def freeze(module: nn.Module) -> nn.Module:
    """Make every parameter of `module` untrainable (the backbone of a parameter-efficient method)."""
    for param in module.parameters():
        param.requires_grad_(False)
    return module


class TaskHead(nn.Module):
    """Logits for a task: [B, C] from the positions `read_at` [B] of hidden [B, L, H] (classifier,
    verbalizer), or [B, T, C] from the real tokens' hidden states [B, T, H] (token)."""

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, kind: str = "classifier",
                 verbalizer: list[str] | None = None, dropout: float = 0.1):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"Unknown head {kind!r}; choose one of {', '.join(HEAD_KINDS)}.")
        self.kind = kind
        self.lm_logits = backbone.lm_logits  # a bound method: the head owns no backbone parameters
        if kind == "verbalizer":
            if not backbone.has_lm_head:
                raise ValueError("The verbalizer head needs a language-model head, which this checkpoint lacks "
                                 "(all-MiniLM-L6-v2 is an encoder only): use --head classifier, or a model "
                                 "with a masked-LM head such as bert-base-uncased.")
            if verbalizer is None or len(verbalizer) != num_labels:
                raise ValueError(f"The verbalizer needs one word per label ({num_labels}), got {verbalizer}.")
            self.register_buffer("label_word_ids", torch.tensor(check_verbalizer(verbalizer, tokenizer)),
                                 persistent=False)
        else:
            # The pooler stays frozen: it belongs to the backbone (as in BertForSequenceClassification + peft).
            self.pool = backbone.pool if backbone.pooler is not None and kind == "classifier" else None
            self.dropout = nn.Dropout(dropout)
            self.linear = nn.Linear(backbone.config.hidden_size, num_labels)
            nn.init.normal_(self.linear.weight, std=0.02)  # BERT's initialisation of new heads
            nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor, read_at: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "token":
            if read_at is not None:
                raise ValueError("A token head labels every token it is given; pass the real tokens' hidden "
                                 "states, not read positions.")
            return self.linear(self.dropout(hidden))  # (B, T, C)
        if read_at is None:
            raise ValueError(f"A {self.kind} head reads one position per row: pass read_at [B].")
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), read_at]  # (B, H)
        if self.kind == "verbalizer":
            return self.lm_logits(picked, vocab_ids=self.label_word_ids)  # (B, C): label words only
        if self.pool is not None:
            picked = self.pool(picked)
        return self.linear(self.dropout(picked))
