"""What the method tests share: example inputs, the float32 tolerance, and the checks every method repeats.

Fixtures live in conftest.py; these are plain names and functions, imported as `from tests.helpers import ...`.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from data import load_task
from data.batching import batches
from methods.shared.pipeline import load_weights, save_method
from methods.shared.training import TrainConfig, train

# Three rows of different lengths, so every batch has padding; PAIRS are their second segments.
SENTENCES = ["the movie was great", "a boring plot , but the actors were wonderful", "awful"]
PAIRS = ["it was good", "not bad", "the end"]
# The same with a longer middle row (the backbone-changing methods' tests use it: more padding around it).
LONG_SENTENCES = [SENTENCES[0], SENTENCES[1] + " and the food was fine", SENTENCES[2]]
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 rounding after a few tiny layers


def masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token values [B, T, ...] with the padding positions zeroed: only real tokens are defined alike."""
    return x * mask[..., None]


def perturb_trainable(model: nn.Module, scale: float = 0.1, seed: int = 0) -> None:
    """A stand-in for training: move every trainable number, so that nothing is left at its initial value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * scale)


def assert_reload_is_exact(model: nn.Module, fresh: nn.Module, batch: dict, directory: str | Path) -> None:
    """save_method(model), load_weights into `fresh` (the same method newly built): bit-identical outputs on `batch`."""
    save_method(model, directory)
    load_weights(fresh, directory)
    with torch.no_grad():
        assert torch.equal(fresh(batch), model(batch)), f"a loaded {type(model).__name__} must reproduce the saved outputs exactly"


def assert_refuses_another_backbone(model: nn.Module, other: nn.Module, directory: str | Path) -> None:
    """What `model` saved cannot be loaded into `other`, the same method built on a different backbone."""
    save_method(model, directory)
    with pytest.raises(ValueError, match="trained for a backbone"):
        load_weights(other, directory)


def assert_trains_only(model: nn.Module, tokenizer, trained: torch.Tensor, lr: float, what: str) -> None:
    """Four steps on 32 built-in sentiment examples leave the backbone bit-identical and move `trained`."""
    backbone_before = {name: value.clone() for name, value in model.backbone.state_dict().items()}
    trained_before = trained.detach().clone()
    examples = load_task("builtin_sentiment").splits["train"][:32]
    train(model, lambda epoch: batches(examples, tokenizer, 8, shuffle=True, seed=epoch, max_length=32), 4, None,
          TrainConfig(epochs=1, lr=lr, progress=False))
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[name]), f"the frozen backbone changed: {name}"
    assert not torch.equal(trained, trained_before), f"{what} should have trained"
