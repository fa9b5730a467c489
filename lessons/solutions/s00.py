"""Reference solutions for lesson 0 (try the exercises first!)."""
from __future__ import annotations

import math

import torch


def attention_one_head(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d)) v for one head: q [B, T, d], k and v [B, S, d], mask [B, S] (True: may attend)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))  # a masked key gets weight exp(-inf) = 0
    return torch.softmax(scores, dim=-1) @ v  # (B, T, d)


def layer_parameters(hidden_size, intermediate_size):
    """Parameters of one Transformer layer (BERT or GPT-2 block)."""
    H, I = hidden_size, intermediate_size
    attention = 4 * (H * H + H)          # query, key, value, output: an H x H weight and a bias of H each
    mlp = (H * I + I) + (I * H + H)      # up: H -> I, down: I -> H
    norms = 2 * (2 * H)                  # two layer norms, each a scale and a shift of H
    return attention + mlp + norms


def prepend_prompt(model, batch, prompt):
    """[prompt ; word embeddings] and a mask that lets every token see the prompt."""
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    B, P = input_ids.shape[0], prompt.shape[0]
    words = model.word_embeddings(input_ids)                                         # (B, T, H)
    inputs_embeds = torch.cat([prompt.unsqueeze(0).expand(B, -1, -1), words], dim=1)  # (B, P+T, H)
    mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)          # (B, P+T)
    return inputs_embeds, mask
