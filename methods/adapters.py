"""Adapters: small trainable modules inside a frozen Transformer.

Houlsby et al. 2019 ("Parameter-Efficient Transfer Learning for NLP") insert a bottleneck
after the attention and after the feed-forward sublayer of every block, acting on the
sublayer's output before the residual sum:

    adapter(h) = h + W_up f(W_down h + b_down) + b_up      W_down: [m, H], W_up: [H, m], m << H

The inner skip connection plus W_up = 0 (and b_up = 0) make each adapter the identity at
the start, so training begins from the pretrained model. Each adapter costs 2 m H + m + H
parameters; the bottleneck size m trades parameters for accuracy.

AdapterBias (Fu et al. 2022, "AdapterBias: Parameter-efficient Token-dependent Representation
Shift for Adapters in NLP Tasks") shrinks this to a vector v [H] and a linear map to one
number per token, placed after the feed-forward sublayer only:

    adapter(h)_t = h_t + alpha(h_t) v          alpha(h_t) = w . h_t + c  (a scalar per token t)

v = 0 at the start, so it too begins as the identity. Fu et al.'s code feeds alpha the
feed-forward's inner activations (width 4H); the adapter slot sees the sublayer output
h = W_2 a + b_2, a linear image of them, so here alpha is that map restricted to the
directions W_2 keeps (H + 1 weights per layer instead of 4H + 1).

Layer norms: Houlsby et al. train the layer-norm gains and biases too (a few thousand
numbers that let each block rescale its features for the task); Fu et al.'s code trains
all but those after attention. Here `train_layer_norms` (default True) trains every
LayerNorm of the Transformer body, for both kinds; the masked-LM head's, unused by a
classifier, stays frozen.

Both plug into the `attention_adapter` / `mlp_adapter` slots of minitransformer's Block.

    python methods/adapters.py --task sst2 --kind houlsby --bottleneck 64
    python methods/adapters.py --task sst2 --kind adapterbias
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minitransformer import Tokenizer, Transformer
from minitransformer.model import ACTIVATIONS

from methods.fine_tuning import FineTuning, FineTuningConfig
from methods.shared.options import option, positive_int
from methods.shared.pipeline import command_line, parse_command_line, run
from methods.shared.text_to_text import blocks

KINDS = ("houlsby", "adapterbias")
DEFAULT_LR = {"houlsby": 1e-3, "adapterbias": 3e-3}


@dataclass
class AdapterConfig:
    kind: str = option("houlsby", "houlsby: bottleneck adapters after both sublayers; adapterbias: a per-token "
                       "shift after the feed-forward only", choices=KINDS)
    bottleneck: int = option(64, "houlsby: the bottleneck width m", type=positive_int)
    activation: str = option("gelu", "houlsby: the bottleneck's nonlinearity f", choices=tuple(ACTIVATIONS))
    init_std: float = option(1e-2, "W_down ~ N(0, init_std^2), as Houlsby et al.: near zero, near the identity",
                             training_only=True)
    train_layer_norms: bool = option(True, "train the LayerNorm gains and biases too (Houlsby et al.)")

    @property
    def default_lr(self) -> float:
        return DEFAULT_LR[self.kind]


class BottleneckAdapter(nn.Module):
    """h + W_up f(W_down h + b_down) + b_up, the identity at initialisation (W_up = 0, b_up = 0).

    Input shape: [..., H], one row per token (the model passes its real tokens, [N, H]). Output: the same shape.
    """

    def __init__(self, hidden_size: int, bottleneck: int, activation: str = "gelu", init_std: float = 1e-2):
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"The bottleneck size must be at least 1, got {bottleneck}.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}.")
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        self.activation = ACTIVATIONS[activation]
        # Houlsby et al.: small random down-projection (truncated at 2 std); a zero up-projection
        # makes the adapter exactly the identity while gradients still reach W_up.
        nn.init.trunc_normal_(self.down.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.activation(self.down(h)))  # (..., H) -> (..., m) -> (..., H)


class AdapterBiasShift(nn.Module):
    """h_t + alpha(h_t) v: one learned direction v, scaled per token by a linear score alpha.

    Input shape: [..., H], one row per token (the model passes its real tokens, [N, H]). Output: the same shape.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.vector = nn.Parameter(torch.zeros(hidden_size))  # v = 0: no shift before training
        self.alpha = nn.Linear(hidden_size, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.alpha(h) * self.vector  # (..., 1) * (H,) -> (..., H)


class Adapters(FineTuning):
    """The linear probe of fine_tuning.py (frozen backbone + task head) plus adapters in every block.

    The adapters go into the backbone's adapter slots (the backbone passed in is modified).
    Trainable: the adapters, the LayerNorms (if `train_layer_norms`) and the head.
    Input: a batch dict. Output: logits [B, C] (or [B, T, C] for sequence labelling).
    """

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, config: AdapterConfig,
                 task_kind: str = "classification", verbalizer: list[str] | None = None):
        super().__init__(backbone, tokenizer, num_labels, FineTuningConfig(mode="head"), task_kind,
                         verbalizer)
        if config.kind not in KINDS:
            raise ValueError(f"Unknown adapter kind {config.kind!r}; choose one of {', '.join(KINDS)}.")
        self.config = config
        H = backbone.config.hidden_size
        for layer in blocks(backbone):  # T5 / BART: the encoder's and the decoder's blocks
            if not (isinstance(layer.attention_adapter, nn.Identity) and isinstance(layer.mlp_adapter, nn.Identity)):
                raise ValueError("This backbone already holds adapters: build adapters on a freshly loaded backbone.")
            if config.kind == "houlsby":
                layer.attention_adapter = BottleneckAdapter(H, config.bottleneck, config.activation, config.init_std)
                layer.mlp_adapter = BottleneckAdapter(H, config.bottleneck, config.activation, config.init_std)
            else:  # Fu et al. shift the feed-forward output only
                layer.mlp_adapter = AdapterBiasShift(H)
        if config.train_layer_norms:
            for name, module in backbone.named_modules():
                if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and not name.startswith("mlm_head"):
                    module.requires_grad_(True)
        what = "bottleneck adapters" if config.kind == "houlsby" else "AdapterBias vectors and alpha layers"
        self.saved_contents = (f"the {what}, " + ("the LayerNorm gains and biases, " if config.train_layer_norms
                                                  else "") + "and the task head; the backbone is not saved")


def main(argv: list[str] | None = None):
    config, options = parse_command_line(AdapterConfig, __doc__, argv)
    return run(config, options)[1]


if __name__ == "__main__":
    command_line(main)
