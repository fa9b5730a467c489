"""Checks for lesson 1 (why not just fine-tune?): freezing all but the top layers, storage per task, probe features.

Each check takes the student's function, raises AssertionError with a hint when it is wrong
(NotImplementedError passes through), and compares against methods/fine_tuning.py and the model.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from methods.fine_tuning import FineTuning, FineTuningConfig
from minitransformer import Transformer, TransformerConfig

TINY = dict(vocab_size=60, hidden_size=16, num_layers=4, num_heads=4, intermediate_size=32, max_positions=32)
NO_TOKENIZER = SimpleNamespace(mask_id=None)  # a classifier head never reads the tokenizer


def tiny_backbone(model_type: str = "bert", pooler: bool = False) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(model_type=model_type, **TINY), pooler=pooler).eval()


def trainable_names(module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def check_freeze_all_but_top(freeze_all_but_top) -> None:
    for model_type in ("bert", "gpt2"):
        for k in (1, 3):
            reference = FineTuning(tiny_backbone(model_type), NO_TOKENIZER, 2, FineTuningConfig(mode="top-k", top_layers=k))
            expected = trainable_names(reference.backbone)
            backbone = tiny_backbone(model_type)
            returned = freeze_all_but_top(backbone, k)
            got = trainable_names(backbone)
            assert returned is None or returned is backbone, "change the backbone in place (return it or nothing)"
            if got != expected:
                missing, extra = sorted(expected - got), sorted(got - expected)
                raise AssertionError(
                    f"{model_type} with {TINY['num_layers']} layers, k={k}: trainable parameters differ from "
                    f"methods/fine_tuning.py's top-k mode. Should train but does not: {missing[:4]}"
                    f"{' ...' if len(missing) > 4 else ''}; trains but should not: {extra[:4]}"
                    f"{' ...' if len(extra) > 4 else ''}. (Layers are model.layers; GPT-2's final_norm sits "
                    "above its top layer.)")


def check_storage_bytes(storage_bytes) -> None:
    for mode in ("full", "head", "top-k"):
        model = FineTuning(tiny_backbone(pooler=True), NO_TOKENIZER, 3, FineTuningConfig(mode=mode, top_layers=1))
        params = list(model.parameters())  # each parameter once, even if two modules share it
        trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen = sum(p.numel() for p in params if not p.requires_grad)
        for tasks in (1, 100):
            expected = 4 * (tasks * trainable + frozen)  # float32: 4 bytes per number
            got = storage_bytes(model, tasks)
            assert got == expected, (
                f"mode {mode!r}, {tasks} task(s): you answer {got:,} bytes, expected {expected:,}. Each task stores "
                f"its own trainable parameters ({trainable:,} numbers here); the frozen ones ({frozen:,}) are shared "
                "and stored once; a float32 number takes 4 bytes.")


def check_probe_features(probe_features) -> None:
    backbone = tiny_backbone(pooler=True)
    batch = {"input_ids": torch.tensor([[2, 5, 7, 9, 3], [2, 8, 3, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
             "token_type_ids": torch.zeros(2, 5, dtype=torch.long)}
    features = probe_features(backbone, batch)
    assert features is not None and tuple(features.shape) == (2, 16), \
        f"expected one vector of the hidden size per example, [2, 16]; got {getattr(features, 'shape', features)}"
    model = FineTuning(backbone, NO_TOKENIZER, 2, FineTuningConfig(mode="head")).eval()
    seen = {}
    model.head.linear.register_forward_hook(lambda module, inputs, output: seen.update(x=inputs[0]))
    with torch.no_grad():
        model(batch)
    torch.testing.assert_close(features.detach(), seen["x"], rtol=1e-5, atol=1e-5, msg=lambda m: (
        "these are not the vectors the head-only classifier reads (in methods/heads.py: the [CLS] hidden state "
        f"of the last layer, through the model's pooler, tanh(W h + b)): {m}"))


EXERCISES = {
    "freeze_all_but_top": check_freeze_all_but_top,
    "storage_bytes": check_storage_bytes,
    "probe_features": check_probe_features,
}
