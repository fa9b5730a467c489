"""BitFit (methods/bitfit.py): exactly the bias tensors (and the head) train; save/load."""
from __future__ import annotations

import pytest
import torch

from minitransformer import load_pretrained
from methods.bitfit import BitFit, BitFitConfig, main
from methods.shared.training import TrainConfig, train
from tests.helpers import LONG_SENTENCES, assert_reload_is_exact, perturb_trainable


def build_bitfit(directory):
    backbone, tokenizer = load_pretrained(str(directory))
    return BitFit(backbone, tokenizer, 2, BitFitConfig()).eval(), tokenizer


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_bitfit_trains_exactly_the_bias_tensors(kind, tiny_checkpoints):
    model, _ = build_bitfit(tiny_checkpoints[kind][0])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    biases = {n for n, _ in model.named_parameters()
              if n.startswith("backbone.") and n.endswith(".bias") and not n.startswith("backbone.mlm_head.")}
    assert trainable == biases | {"head.linear.weight", "head.linear.bias"}, \
        f"missing {sorted(biases - trainable)}, extra {sorted(trainable - biases)}"
    c = model.backbone.config
    per_layer = 4 * c.hidden_size + c.intermediate_size + c.hidden_size + 2 * c.hidden_size  # q k v o, up, down, 2 norms
    assert sum(model.backbone.get_parameter(n[len("backbone."):]).numel() for n in biases) == \
        c.num_layers * per_layer + c.hidden_size, "every projection and LayerNorm bias, plus one outer LayerNorm's"


def test_minilm_bitfit_includes_the_pooler_bias(minilm_dir):
    backbone, tokenizer = load_pretrained("all-MiniLM-L6-v2")
    model = BitFit(backbone, tokenizer, 2, BitFitConfig())
    assert model.backbone.pooler.bias.requires_grad and not model.backbone.pooler.weight.requires_grad
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 26_882, "MiniLM: 26,112 biases + 770 head (0.12% of 22.7M)"


def test_training_changes_only_biases_and_head(tiny_checkpoints):
    model, tokenizer = build_bitfit(tiny_checkpoints["bert"][0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = {**tokenizer.encode(LONG_SENTENCES), "labels": torch.tensor([1, 0, 0])}
    train(model, lambda epoch: [batch] * 3, 3, None, TrainConfig(epochs=1, lr=1e-2, progress=False))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen_changed = {n for n in changed if not (n.endswith(".bias") or n.startswith("head."))}
    assert not frozen_changed, f"weights other than biases moved: {sorted(frozen_changed)}"
    assert "backbone.layers.0.attention.query.bias" in changed, "the biases must actually train"


def test_save_and_load_round_trip(tiny_checkpoints, tmp_path):
    directory = tiny_checkpoints["gpt2"][0]
    model, tokenizer = build_bitfit(directory)
    perturb_trainable(model)
    assert_reload_is_exact(model, build_bitfit(directory)[0], tokenizer.encode(LONG_SENTENCES), tmp_path)


def test_command_line_trains_and_writes_results(tiny_checkpoints, tmp_path):
    record = main(["--model", str(tiny_checkpoints["bert"][0]), "--task", "builtin_sentiment", "--max-steps", "2",
                   "--limit-train", "16", "--batch-size", "8", "--no-progress", "--out", str(tmp_path)])
    assert (tmp_path / "results.json").exists() and (tmp_path / "method.safetensors").exists()
    assert record.steps == 2 and record.trainable_params < record.total_params * 0.1
