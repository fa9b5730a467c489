"""Reference solutions for lesson 06 (P-tuning v2). Try the exercises first!"""
from __future__ import annotations

import torch


def per_layer_prefix(flat_prefix: torch.Tensor, layers: list[int], num_layers: int, num_heads: int,
                     head_dim: int) -> list:
    """[P, 2 x len(layers) x H] -> per model layer: (keys, values) each [1, heads, P, head_dim], or None."""
    P = flat_prefix.shape[0]
    per_layer = flat_prefix.view(P, 2 * len(layers), num_heads, head_dim)  # (P, 2L, nh, hd)
    per_layer = per_layer.permute(1, 2, 0, 3).unsqueeze(1)                 # (2L, 1, nh, P, hd)
    prefix = [None] * num_layers
    for i, layer in enumerate(sorted(layers)):
        prefix[layer] = (per_layer[2 * i], per_layer[2 * i + 1])          # keys, values of that layer
    return prefix


def count_prompt_parameters(num_virtual_tokens: int, hidden_size: int, num_prompted_layers: int,
                            num_labels: int, deep: bool) -> int:
    """Trainable numbers: the prompts plus a Linear(H, labels) head on [CLS]."""
    head = hidden_size * num_labels + num_labels
    if deep:  # P keys and P values, each H wide, in every prompted layer
        return num_virtual_tokens * 2 * num_prompted_layers * hidden_size + head
    return num_virtual_tokens * hidden_size + head  # P vectors in the embedding space, at the input only


# Layers 1-2 see no trainable input (frozen weights, token ids): no graph. Layers 3-4 read the prompts,
# and layers 5-6 compute from their outputs, so the gradient must flow back through them too.
layers_with_gradient = [3, 4, 5, 6]
