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
  (`--reparameterize` turns it on; it then wants a ten times smaller learning rate).
* A randomly initialised linear head on [CLS], or on every token for sequence labelling
  (CoNLL-2003 NER with entity-level F1), instead of a verbalizer (`--head verbalizer` compares).
* Prompt depth is a knob: `--layers 4-6` (1-based, inclusive) gives prefixes to layers 4..6 only,
  as in the paper's depth ablation; the other layers get none.

Layers below the first prompted one need no gradient, and autograd builds none there: it only
records an operation when an input requires grad, and below the first prefix nothing does (the
backbone is frozen and token ids carry no grad). Backward therefore stops at the first prompted
layer, and those activations are not kept for it (tests/test_p_tuning_v2.py checks this).
Positions of real tokens start at P whichever layers are prompted (Hugging Face's convention).

    python methods/p_tuning_v2.py --task sst2
    python methods/p_tuning_v2.py --task sst2 --layers 4-6
    python methods/p_tuning_v2.py --task conll2003 --epochs 1
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from minitransformer import Tokenizer, Transformer

from methods.prefix_tuning import DEFAULT_LR, PrefixTuning, PrefixTuningConfig, add_prefix_arguments, run_method
from methods.runner import common_parser


@dataclass
class PTuningV2Config(PrefixTuningConfig):
    flat: bool = True                   # P-tuning v2 trains the prompts directly (no reparameterization)
    prompt_layers: str = "all"          # "all", or 1-based inclusive ranges: "4-6", "1,3-4"


def parse_layers(spec: str, num_layers: int) -> list[int] | None:
    """0-based indices of the layers named by a 1-based spec like "4-6" or "1,3-4"; None for "all"."""
    if spec.strip() == "all":
        return None
    layers = []
    for part in spec.split(","):
        first, _, last = part.strip().partition("-")
        try:
            start, end = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"--layers {spec!r} is not understood: write 'all', a layer such as '3', or 1-based "
                             "inclusive ranges such as '4-6' or '1,3-4'.") from None
        if not 1 <= start <= end <= num_layers:
            raise ValueError(f"--layers {spec!r} is outside this model: it has layers 1 to {num_layers} (1-based, "
                             "inclusive ranges such as '4-6').")
        layers.extend(range(start - 1, end))
    return sorted(set(layers))


class PTuningV2(PrefixTuning):
    """Deep prompt tuning: trainable key/value prompts in every chosen layer, a frozen backbone, a task head.

    Input: a batch dict (input_ids, attention_mask, token_type_ids).
    Output: logits [B, C] (classifier, verbalizer) or [B, T, C] (token head, sequence labelling).
    """

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, config: PTuningV2Config,
                 task_kind: str = "classification", verbalizer: list[str] | None = None, template: str | None = None):
        config = replace(config, layers=parse_layers(config.prompt_layers, backbone.config.num_layers))
        super().__init__(backbone, tokenizer, num_labels, config, task_kind, verbalizer, template)


def main(argv: list[str] | None = None) -> dict:
    parser = add_prefix_arguments(common_parser(__doc__, lr=None))
    parser.add_argument("--layers", default="all", help="layers that get prompts, 1-based inclusive: all, 4-6, 1,3-4")
    parser.add_argument("--reparameterize", action="store_true", help="produce the prompts with an MLP, as prefix "
                        "tuning does (default lr then 3e-4 instead of 1e-2)")
    args = parser.parse_args(argv)
    args.lr = args.lr or DEFAULT_LR["mlp" if args.reparameterize else "flat"]
    config = PTuningV2Config(num_virtual_tokens=args.virtual_tokens, flat=not args.reparameterize,
                             mlp_hidden=args.mlp_hidden, prefix_dropout=args.prefix_dropout, head=args.head,
                             prompt_layers=args.layers)
    name = "p_tuning_v2" + ("" if args.layers == "all" else f"_layers{args.layers.replace(',', '_')}")
    return run_method(args, name, config, PTuningV2)


if __name__ == "__main__":
    main()
