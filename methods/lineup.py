"""Which methods `methods.compare` trains, for which kind of model.

Each entry is a method with the options that set its variant apart; `lineup_for` picks the line-up that fits the
model (an encoder or decoder-only model, or an encoder-decoder) from its config.json or its name.
"""
from __future__ import annotations

from methods import registry
from methods.shared.options import to_argv
from minitransformer.config import SEQ2SEQ_MODEL_TYPES
from minitransformer.loading import model_type_of

# The line-up, in the order of the table: each method with the options that set its variant apart.
LINEUP: list[tuple[str, dict]] = [
    ("fine_tuning", {"mode": "head"}), ("hard_prompt", {"mode": "template-head"}), ("prompt_tuning", {}),
    ("p_tuning", {}), ("prefix_tuning", {}), ("p_tuning_v2", {}), ("bitfit", {}), ("adapters", {}), ("lora", {}),
    ("fine_tuning", {"mode": "full"}),
]


# On an encoder-decoder (T5, BART) every method answers text-to-text (the decoder writes the label word): no
# new head to train alone, and a zero-shot hard prompt instead of template + head (FLAN-T5 follows instructions).
SEQ2SEQ_LINEUP: list[tuple[str, dict]] = [
    ("hard_prompt", {"mode": "zero-shot"}), ("prompt_tuning", {}), ("p_tuning", {}), ("prefix_tuning", {}),
    ("p_tuning_v2", {}), ("bitfit", {}), ("adapters", {}), ("lora", {}), ("fine_tuning", {"mode": "full"}),
]
NO_BIASES = ("t5",)  # BitFit has nothing to train there


def lineup(entries_in: list[tuple[str, dict]] | None = None) -> dict[str, tuple[str, list[str]]]:
    """run name -> (module, its extra command-line words), the names as the registry gives them."""
    entries = {}
    for name, overrides in LINEUP if entries_in is None else entries_in:
        method = registry.get(name)
        config = method.config_class(**overrides)
        entries[registry.run_name(config)] = (method.module, to_argv(method.config_class, overrides))
    return entries


METHODS: dict[str, tuple[str, list[str]]] = lineup()
SEQ2SEQ_METHODS: dict[str, tuple[str, list[str]]] = lineup(SEQ2SEQ_LINEUP)


def lineup_for(model: str) -> tuple[dict[str, tuple[str, list[str]]], str]:
    """The line-up that applies to this model (from its config.json, or its name), and what was left out."""
    model_type = model_type_of(model)
    if model_type not in SEQ2SEQ_MODEL_TYPES:
        return METHODS, ""
    if model_type in NO_BIASES:
        return {k: v for k, v in SEQ2SEQ_METHODS.items() if k != "bitfit"}, "bitfit left out: T5 has no biases"
    return SEQ2SEQ_METHODS, ""
