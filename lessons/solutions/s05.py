"""Reference solutions for lesson 5 (try the exercises first!)."""
from __future__ import annotations

from torch import nn


def mlp_prompt_encoder(hidden_size, encoder_hidden):
    """[m, H] -> [m, H]: Linear -> ReLU -> Linear -> ReLU -> Linear (peft's MLP prompt encoder)."""
    H, h = hidden_size, encoder_hidden
    return nn.Sequential(nn.Linear(H, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, H))


# premise, 2 prompt vectors, hypothesis, the anchor "?", 2 prompt vectors, the [MASK]
pair_template = "{text} {p:2} {text_pair} ? {p:2} {mask}"


def encoder_parameters(kind, num_prompts, hidden_size, encoder_hidden):
    """Trainable numbers of a prompt encoder with its m pseudo-token embeddings."""
    m, H, h = num_prompts, hidden_size, encoder_hidden
    embeddings = m * H
    if kind == "none":
        return embeddings
    if kind == "mlp":
        return embeddings + (H * h + h) + (h * h + h) + (h * H + H)
    lstm_layer = lambda inputs: 2 * (4 * h * inputs + 4 * h * h + 2 * 4 * h)  # two directions, 4 gates each
    lstm = lstm_layer(H) + lstm_layer(2 * h)       # layer 2 reads both directions of layer 1
    mlp = (2 * h * 2 * h + 2 * h) + (2 * h * H + H)
    return embeddings + lstm + mlp
