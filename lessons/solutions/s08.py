"""Reference solutions for lesson 8 (try the exercises first!)."""
from __future__ import annotations

import torch


def cross_attention_mask(encoder_mask, num_prefix):
    """Every prefix column, then the encoder's real outputs: [B, P + S] bool."""
    prefix = torch.ones(encoder_mask.shape[0], num_prefix, dtype=torch.bool, device=encoder_mask.device)
    return torch.cat([prefix, encoder_mask.bool()], dim=1)


def prefix_numbers(P, num_layers, num_decoder_layers, num_heads, head_dim, places):
    """P keys and P values per layer of each place's stack (cross-attention: the decoder's layers)."""
    layers = {"encoder": num_layers, "decoder": num_decoder_layers, "cross": num_decoder_layers}
    return sum(P * 2 * layers[place] * num_heads * head_dim for place in places)
