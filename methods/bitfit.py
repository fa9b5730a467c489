"""BitFit: train only the bias terms (Ben Zaken et al. 2021, "BitFit: Simple Parameter-efficient
Fine-tuning for Transformer-based Masked Language-models").

Every affine map of the Transformer is y = W x + b. BitFit freezes every W (and every
LayerNorm gain) and trains only the b's, plus the new task head:

    theta_trainable = { b : every bias tensor of the backbone } + head

That is about 0.1% of BERT's parameters, yet Ben Zaken et al. match full fine-tuning on
much of GLUE: the biases shift each layer's features, which appears to be enough to
expose knowledge the pretrained weights already hold. The biases are those of the
query/key/value/output and feed-forward projections, the LayerNorm biases (beta), and the
pooler's; the masked-LM head's, unused by a classifier, stay frozen.

    python methods/bitfit.py --task sst2
"""
from __future__ import annotations

from dataclasses import dataclass

from minitransformer import Tokenizer, Transformer

from methods.fine_tuning import FineTuning, FineTuningConfig
from methods.shared.options import option
from methods.shared.pipeline import command_line, parse_command_line, run

DEFAULT_LR = 1e-3


@dataclass
class BitFitConfig:
    head: str = option("auto", "task head (auto: a token head for sequence labelling, else a classifier)",
                       choices=("auto", "classifier", "token"))

    @property
    def default_lr(self) -> float:
        return DEFAULT_LR


def bias_names(backbone: Transformer) -> list[str]:
    """Names of the bias tensors BitFit trains: every `*.bias` of the backbone outside the masked-LM head."""
    return [name for name, _ in backbone.named_parameters()
            if name.split(".")[-1] == "bias" and not name.startswith("mlm_head.")]


class BitFit(FineTuning):
    """The linear probe of fine_tuning.py (frozen backbone + task head) with the backbone's biases trainable.

    Input: a batch dict. Output: logits [B, C] (or [B, T, C] for sequence labelling).
    """

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, config: BitFitConfig,
                 task_kind: str = "classification", verbalizer: list[str] | None = None):
        super().__init__(backbone, tokenizer, num_labels, FineTuningConfig(mode="head", head=config.head),
                         task_kind, verbalizer)
        self.config = config
        parameters = dict(backbone.named_parameters())
        if not bias_names(backbone):
            raise ValueError(f"This {backbone.config.model_type} model has no biases (T5 has none), so BitFit has "
                             "nothing to train: use BART, an encoder, or another method (lora, adapters).")
        for name in bias_names(backbone):
            parameters[name].requires_grad_(True)
        self.saved_contents = "every bias of the backbone (all else is the pretrained checkpoint) and the task head"


def main(argv: list[str] | None = None):
    config, options = parse_command_line(BitFitConfig, __doc__, argv)
    return run(config, options)[1]


if __name__ == "__main__":
    command_line(main)
