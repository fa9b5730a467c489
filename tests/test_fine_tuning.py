"""Fine-tuning baselines: which parameters each mode trains, and its bad input."""
from __future__ import annotations

import math

import pytest
import torch

from data import batches, load_task
from methods.fine_tuning import FineTuning, FineTuningConfig
from methods.shared.training import TrainConfig, count_parameters, train
from minitransformer import load_pretrained


def build(tiny_checkpoints, kind="bert", **config):
    torch.manual_seed(0)
    backbone, tokenizer = load_pretrained(tiny_checkpoints[kind][0])
    return FineTuning(backbone, tokenizer, 2, FineTuningConfig(**config)), tokenizer


def trainable_names(model) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def test_full_mode_trains_every_parameter(tiny_checkpoints):
    model, _ = build(tiny_checkpoints, mode="full")
    trainable, total = count_parameters(model)
    assert trainable == total


def test_head_mode_trains_only_the_head(tiny_checkpoints):
    model, _ = build(tiny_checkpoints, mode="head")
    assert trainable_names(model) == {"head.linear.weight", "head.linear.bias"}, \
        "the pooler belongs to the frozen backbone (as in peft's linear probe)"


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_top_k_marks_exactly_the_last_k_layers_trainable(tiny_checkpoints, kind):
    model, _ = build(tiny_checkpoints, kind, mode="top-k", top_layers=1)
    last = len(model.backbone.layers) - 1
    expected = {f"backbone.layers.{last}.{name}" for name, _ in model.backbone.layers[last].named_parameters()}
    expected |= {"head.linear.weight", "head.linear.bias"}
    if kind == "gpt2":  # GPT-2's final layer norm sits on top of the last layer
        expected |= {"backbone.final_norm.weight", "backbone.final_norm.bias"}
    assert trainable_names(model) == expected


def test_top_k_training_changes_only_the_last_k_layers(tiny_checkpoints):
    task = load_task("builtin_sentiment")
    model, tokenizer = build(tiny_checkpoints, mode="top-k", top_layers=1)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    examples = task.splits["train"][:32]
    make = lambda epoch: batches(examples, tokenizer, 8, shuffle=True, seed=epoch, max_length=32)
    train(model, make, math.ceil(len(examples) / 8), None, TrainConfig(epochs=1, lr=1e-2, progress=False))
    changed = {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}
    top = f"backbone.layers.{len(model.backbone.layers) - 1}."
    assert changed and all(name.startswith(top) or name.startswith("head.") for name in changed), \
        f"only the last layer and the head may change, but these changed: {sorted(changed)}"
    assert any(name.startswith(top) for name in changed), "the last layer did not train"


@pytest.mark.parametrize("layers", [0, 3])
def test_top_k_with_more_layers_than_the_model_is_a_clear_error(tiny_checkpoints, layers):
    with pytest.raises(ValueError, match="--top-layers must be between 1 and 2"):
        build(tiny_checkpoints, mode="top-k", top_layers=layers)


def test_unknown_mode_is_a_clear_error(tiny_checkpoints):
    with pytest.raises(ValueError, match="Unknown mode 'partial'; choose one of full, head, top-k"):
        build(tiny_checkpoints, mode="partial")
