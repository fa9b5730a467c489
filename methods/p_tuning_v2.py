"""P-tuning v2 (Liu et al. 2022, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning
Universally Across Scales and Tasks").

Idea: prompts at the input only (Lester et al. 2021) lag fine-tuning on small models and on
hard tasks such as sequence labelling. P-tuning v2 gives every layer its own trainable prompt
("deep prompt tuning"): P key and P value vectors that the layer's attention reads before the
real tokens. For each prompted layer l:

    h_l = softmax(Q_l [K_prompt_l ; K_l]^T / sqrt(d)) [V_prompt_l ; V_l]

That is the machinery of prefix tuning, imported from methods/prefix_tuning.py (PrefixTuning,
PrefixEncoder). What P-tuning v2 changes, for understanding tasks:

* No reparameterization by default: the paper finds the MLP helps some tasks and hurts others
  (`--no-flat` turns it on; it then wants a thirty times smaller learning rate).
* A randomly initialised linear head on [CLS], or on every token for sequence labelling
  (CoNLL-2003 NER with entity-level F1), instead of a verbalizer (`--head verbalizer` compares).
* Prompt depth is a knob: `--prompt-layers 4-6` (1-based, inclusive) gives prefixes to layers 4..6 only,
  as in the paper's depth ablation; the other layers get none.

Layers below the first prompted one need no gradient, and autograd builds none there: it only
records an operation when an input requires grad, and below the first prefix nothing does (the
backbone is frozen and token ids carry no grad). Backward therefore stops at the first prompted
layer, and those activations are not kept for it (tests/test_p_tuning_v2.py checks this).
Positions of real tokens start at P whichever layers are prompted (Hugging Face's convention).

    python methods/p_tuning_v2.py --task sst2
    python methods/p_tuning_v2.py --task sst2 --prompt-layers 4-6
    python methods/p_tuning_v2.py --task conll2003 --epochs 1
"""
from __future__ import annotations

from dataclasses import dataclass

from methods.prefix_tuning import DEFAULT_LR, PrefixTuning, PrefixTuningConfig  # noqa: F401 (DEFAULT_LR: the same rates)
from methods.shared.options import option
from methods.shared.pipeline import command_line, parse_command_line, run


@dataclass
class PTuningV2Config(PrefixTuningConfig):
    flat: bool = option(True, "train the prompts directly (P-tuning v2's default); --no-flat produces them with "
                        "prefix tuning's MLP")


class PTuningV2(PrefixTuning):
    """Deep prompt tuning: trainable key/value prompts in every chosen layer, a frozen backbone, a task head.

    Input: a batch dict (input_ids, attention_mask, token_type_ids).
    Output: logits [B, C] (classifier, verbalizer) or [B, T, C] (token head, sequence labelling).
    The machinery is PrefixTuning's; what differs is the config's defaults (flat prompts, a linear head).
    """


def main(argv: list[str] | None = None):
    config, options = parse_command_line(PTuningV2Config, __doc__, argv)
    return run(config, options)[1]


if __name__ == "__main__":
    command_line(main)
