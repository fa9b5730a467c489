"""Heads that turn the backbone's hidden states into task logits, shared by every method.

* classifier: dropout + linear on one position: [CLS] for an encoder (through the
  checkpoint's pooler when it has one, as BertForSequenceClassification does), the
  last real token for a decoder.
* verbalizer: the language-model head's scores of the label words only, read at the
  [MASK] (encoder) or at the last token, whose next word is the label (decoder).
* token: a linear layer on every token (sequence labelling).

`offset` is the number of prompt vectors a method put in front of the input
(prompt tuning, P-tuning): every position of the real input then moves by it.
A key/value prefix adds no positions, so prefix methods pass offset 0.
"""
from __future__ import annotations

import torch
from torch import nn

from data.prompts import check_verbalizer
from minitransformer import Tokenizer, Transformer

HEAD_KINDS = ("classifier", "verbalizer", "token")


def freeze(module: nn.Module) -> nn.Module:
    """Make every parameter of `module` untrainable (the backbone of a parameter-efficient method)."""
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token in a right-padded batch, [B]."""
    return attention_mask.sum(1) - 1


class TaskHead(nn.Module):
    """Logits for a task from hidden states [B, T, H]: [B, C] (classifier, verbalizer) or [B, T, C] (token)."""

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, kind: str = "classifier",
                 verbalizer: list[str] | None = None, dropout: float = 0.1):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"Unknown head {kind!r}; choose one of {', '.join(HEAD_KINDS)}.")
        self.kind, self.is_decoder = kind, backbone.config.is_decoder
        self.mask_id = tokenizer.mask_id
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

    def positions(self, batch: dict, offset: int) -> torch.Tensor:
        """Where to read each row: [CLS], [MASK] or the last real token, shifted by `offset`, [B]."""
        input_ids = batch["input_ids"]
        if self.is_decoder:
            return last_token_positions(batch["attention_mask"]) + offset
        if self.kind == "verbalizer":
            is_mask = input_ids == self.mask_id
            if not bool(is_mask.any(1).all()):
                raise ValueError("A verbalizer needs a [MASK] in every input: use a template with {mask} "
                                 "(or a longer max_length, if truncation cut it off).")
            return is_mask.float().argmax(1) + offset
        return torch.full_like(input_ids[:, 0], offset)

    def forward(self, hidden: torch.Tensor, batch: dict, offset: int = 0,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """`positions` [B], when given, says where to read instead of [CLS] / [MASK] / the last token."""
        if self.kind == "token":
            return self.linear(self.dropout(hidden[:, offset:]))  # (B, T, C)
        positions = self.positions(batch, offset) if positions is None else positions
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]  # (B, H)
        if self.kind == "verbalizer":
            return self.lm_logits(picked, vocab_ids=self.label_word_ids)  # (B, C): label words only
        if self.pool is not None:
            picked = self.pool(picked)
        return self.linear(self.dropout(picked))
