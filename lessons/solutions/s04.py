"""Reference solutions for lesson 4 (try the exercises first!)."""
from __future__ import annotations

import torch
from torch import nn


def reparameterization_mlp(hidden_size, mlp_hidden, num_layers):
    """E [P, H] -> [P, 2 x layers x H]: Linear -> tanh -> Linear (Li & Liang section 4.3)."""
    return nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.Tanh(),
                         nn.Linear(mlp_hidden, 2 * num_layers * hidden_size))


def split_prefix(flat, num_layers, num_heads, batch_size):
    """flat [P, 2 x L x H] -> per layer (keys, values), each [batch_size, heads, P, head_dim]."""
    P, width = flat.shape
    head_dim = width // (2 * num_layers * num_heads)
    per_layer = flat.view(P, 2 * num_layers, num_heads, head_dim)  # (P, 2L, nh, hd)
    per_layer = per_layer.permute(1, 2, 0, 3)                      # (2L, nh, P, hd)
    expand = lambda t: t.unsqueeze(0).expand(batch_size, -1, -1, -1)  # (B, nh, P, hd), a view
    return [(expand(per_layer[2 * i]), expand(per_layer[2 * i + 1])) for i in range(num_layers)]


def prefixes_for_rows(task_prefixes, task_ids):
    """Per layer, stack the tasks' [1, nh, P, hd] prefixes to [tasks, nh, P, hd] and index rows by task id."""
    result = []
    for layer in zip(*task_prefixes):  # layer: each task's (keys, values)
        keys = torch.cat([k for k, _ in layer])[task_ids]    # (B, nh, P, hd)
        values = torch.cat([v for _, v in layer])[task_ids]  # (B, nh, P, hd)
        result.append((keys, values))
    return result
