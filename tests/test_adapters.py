"""Adapters (methods/adapters.py): identity at initialisation, what trains, parameter counts, save/load."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from minitransformer import load_pretrained
from methods.adapters import AdapterBiasShift, AdapterConfig, Adapters, BottleneckAdapter, main
from methods.shared.training import task_loss
from tests.helpers import LONG_SENTENCES, assert_reload_is_exact, perturb_trainable


def build_adapters(directory, config=AdapterConfig(bottleneck=8)):
    backbone, tokenizer = load_pretrained(str(directory))
    return Adapters(backbone, tokenizer, 2, config).eval(), tokenizer


def encode(tokenizer, kind):
    batch = tokenizer.encode(LONG_SENTENCES)
    if kind == "gpt2":
        batch.pop("token_type_ids")
    return batch


@pytest.mark.parametrize("adapter_kind", ["houlsby", "adapterbias"])
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_adapters_leave_outputs_unchanged_before_training(kind, adapter_kind, tiny_checkpoints):
    directory, _ = tiny_checkpoints[kind]
    plain, tokenizer = load_pretrained(str(directory))
    model, _ = build_adapters(directory, AdapterConfig(kind=adapter_kind, bottleneck=8))
    batch = encode(tokenizer, kind)
    with torch.no_grad():
        assert torch.equal(model.backbone(**batch), plain(**batch)), \
            "a zero up-projection (or v = 0) adds exactly zero: outputs must be bit for bit the pretrained ones"


def test_adapters_fill_the_slots_of_every_block(tiny_checkpoints):
    houlsby, _ = build_adapters(tiny_checkpoints["bert"][0])
    bias, _ = build_adapters(tiny_checkpoints["bert"][0], AdapterConfig(kind="adapterbias"))
    for layer in houlsby.backbone.layers:
        assert isinstance(layer.attention_adapter, BottleneckAdapter) and isinstance(layer.mlp_adapter, BottleneckAdapter)
    for layer in bias.backbone.layers:  # Fu et al.: after the feed-forward sublayer only
        assert isinstance(layer.attention_adapter, nn.Identity) and isinstance(layer.mlp_adapter, AdapterBiasShift)


@pytest.mark.parametrize("adapter_kind", ["houlsby", "adapterbias"])
def test_one_step_reaches_the_zero_initialised_parameters(adapter_kind, tiny_checkpoints):
    model, tokenizer = build_adapters(tiny_checkpoints["bert"][0], AdapterConfig(kind=adapter_kind, bottleneck=8))
    model.train()
    batch = tokenizer.encode(LONG_SENTENCES)
    task_loss(model(batch), torch.tensor([1, 0, 0])).backward()
    for layer in model.backbone.layers:
        grown = layer.mlp_adapter.up.weight if adapter_kind == "houlsby" else layer.mlp_adapter.vector
        assert grown.grad is not None and grown.grad.abs().sum() > 0, "the identity start must still learn"


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_trainable_parameters_are_adapters_layer_norms_and_head(kind, tiny_checkpoints):
    model, _ = build_adapters(tiny_checkpoints[kind][0], AdapterConfig(bottleneck=8))
    c, m = model.backbone.config, 8
    norms = [p for n, mod in model.backbone.named_modules() if isinstance(mod, nn.LayerNorm)
             and not n.startswith("mlm_head") for p in mod.parameters()]
    expected = (c.num_layers * 2 * (2 * m * c.hidden_size + m + c.hidden_size)  # two adapters per block
                + sum(p.numel() for p in norms) + (c.hidden_size + 1) * 2)     # LayerNorms, head
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected, "2 m H + m + H per adapter, norms, head"
    assert all("adapter" in n or "norm" in n or n.startswith("head.") for n in trainable), sorted(trainable)
    assert not any(n.startswith("backbone.mlm_head") for n in trainable), "the unused MLM head stays frozen"


def test_adapterbias_trains_a_vector_and_a_scalar_map_per_layer(tiny_checkpoints):
    config = AdapterConfig(kind="adapterbias", train_layer_norms=False)
    model, _ = build_adapters(tiny_checkpoints["bert"][0], config)
    c = model.backbone.config
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == c.num_layers * (c.hidden_size + c.hidden_size + 1) + (c.hidden_size + 1) * 2, \
        "v [H] and alpha: H -> 1 per layer, plus the head"


def test_adapterbias_shift_is_one_direction_scaled_per_token():
    shift = AdapterBiasShift(6)
    with torch.no_grad():
        shift.vector.copy_(torch.arange(6.0))
        shift.alpha.weight.normal_()
    h = torch.randn(5, 6)  # five tokens
    with torch.no_grad():
        moved = shift(h) - h
    scale = h @ shift.alpha.weight.T + shift.alpha.bias  # (5, 1): alpha(h_t), one number per token
    torch.testing.assert_close(moved, scale * shift.vector, msg="h_t + alpha(h_t) v")
    assert moved.norm(dim=1).unique().numel() == 5, "the shift's size depends on the token"
    assert torch.linalg.matrix_rank(moved) == 1, "every token moves along the same direction v"


def test_frozen_layer_norms_option_freezes_them(tiny_checkpoints):
    model, _ = build_adapters(tiny_checkpoints["bert"][0], AdapterConfig(bottleneck=8, train_layer_norms=False))
    assert not any(p.requires_grad for n, p in model.named_parameters() if "norm" in n)


def test_adapters_on_an_adapted_backbone_are_refused(tiny_checkpoints):
    model, tokenizer = build_adapters(tiny_checkpoints["bert"][0])
    with pytest.raises(ValueError, match="already holds adapters"):
        Adapters(model.backbone, tokenizer, 2, AdapterConfig())


def test_bad_options_are_refused(tiny_checkpoints):
    with pytest.raises(ValueError, match="choose one of"):
        build_adapters(tiny_checkpoints["bert"][0], AdapterConfig(kind="lora"))
    with pytest.raises(ValueError, match="bottleneck"):
        build_adapters(tiny_checkpoints["bert"][0], AdapterConfig(bottleneck=0))


@pytest.mark.parametrize("adapter_kind", ["houlsby", "adapterbias"])
def test_save_and_load_round_trip(adapter_kind, tiny_checkpoints, tmp_path):
    directory = tiny_checkpoints["bert"][0]
    config = AdapterConfig(kind=adapter_kind, bottleneck=8)
    model, tokenizer = build_adapters(directory, config)
    perturb_trainable(model)
    assert_reload_is_exact(model, build_adapters(directory, config)[0], tokenizer.encode(LONG_SENTENCES), tmp_path)


def test_command_line_trains_and_writes_results(tiny_checkpoints, tmp_path):
    record = main(["--model", str(tiny_checkpoints["bert"][0]), "--task", "builtin_sentiment", "--max-steps", "2",
                   "--limit-train", "16", "--batch-size", "8", "--bottleneck", "4", "--no-progress",
                   "--out", str(tmp_path)])
    assert (tmp_path / "results.json").exists() and (tmp_path / "method.safetensors").exists()
    assert record.steps == 2 and record.config["bottleneck"] == 4
