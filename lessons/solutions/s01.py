"""Reference solutions for lesson 1 (try the exercises first!)."""
from __future__ import annotations

import torch


def freeze_all_but_top(backbone, k):
    """Freeze the whole backbone, then let the last k layers (and GPT-2's final norm above them) train."""
    backbone.requires_grad_(False)
    for layer in backbone.layers[len(backbone.layers) - k:]:
        layer.requires_grad_(True)
    if backbone.final_norm is not None:  # GPT-2 normalises the top layer's output: it belongs to the top
        backbone.final_norm.requires_grad_(True)
    return backbone


def storage_bytes(model, num_tasks):
    """float32 bytes to serve num_tasks tasks: each task's trainable parameters, plus the frozen ones once."""
    params = list(model.parameters())  # shared (tied) parameters appear once
    trainable = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    return 4 * (num_tasks * trainable + frozen)


def probe_features(backbone, batch):
    """What the head-only classifier reads: the pooled [CLS] vector, [B, H]."""
    with torch.no_grad():
        hidden = backbone(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))  # (B, T, H)
        return backbone.pool(hidden[:, 0])  # tanh(W h_[CLS] + b)
