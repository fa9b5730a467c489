"""LoRA: low-rank updates of frozen projection matrices (Hu et al. 2021, "LoRA: Low-Rank
Adaptation of Large Language Models").

Fine-tuning changes a weight W [out, in] by some dW. Hu et al. observe that dW can be
low-rank, and learn it as a product of two thin matrices while W stays frozen:

    y = W x + b + (B A) x * alpha / r        A: [r, in], B: [out, r], r << min(in, out)

A starts random and B at zero, so training starts from the pretrained model exactly.
alpha / r keeps the update's size steady when r changes (retune nothing but r).
Each adapted matrix costs r * (in + out) parameters instead of in * out.

LoRA adds no latency at inference: `merge()` folds the update into the weight,
W' = W + (B A) * alpha / r, and the model is again a plain Transformer. `unmerge()`
puts the original weight back (a kept copy, not W' - BA, which would round).

Hu et al. adapt the attention query and value projections; `--targets` picks others.

    python methods/lora.py --task sst2 --rank 8 --targets query value
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from minitransformer import Tokenizer, Transformer
from minitransformer.model import KeptCast, kept_weights, linear as frozen_linear

from methods.fine_tuning import FineTuning, FineTuningConfig
from methods.shared.options import option
from methods.shared.pipeline import command_line, parse_command_line, run
from methods.shared.text_to_text import blocks

# Projection name -> where it lives inside a Block (`model.layers[i].<path>`).
TARGETS = {"query": "attention.query", "key": "attention.key", "value": "attention.value",
           "output": "attention.output", "mlp.up": "mlp.up", "mlp.down": "mlp.down"}
DEFAULT_LR = 1e-3


@dataclass
class LoRAConfig:
    rank: int = option(8, "rank r of each update B A")
    alpha: float = option(16.0, "scale: the update is multiplied by alpha / r")
    dropout: float = option(0.0, "dropout on the input of the update only", flag="--lora-dropout", training_only=True)
    targets: tuple[str, ...] = option(("query", "value"), "projections to adapt in every layer", choices=tuple(TARGETS))

    @property
    def default_lr(self) -> float:
        return DEFAULT_LR


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update.

    y = W x + b + (dropout(x) A^T B^T) * alpha / r. `weight` and `bias` are the wrapped
    layer's own Parameters (same names, so the backbone's state dict keys do not change).
    Input shape: [..., in]. Output shape: [..., out].
    """
    cast: KeptCast | None = None  # W and b in bf16 for a mixed-precision run (model.cast_frozen_weights_once)

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}.")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_parameter("weight", linear.weight)
        self.register_parameter("bias", linear.bias)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=linear.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=linear.weight.device))
        # A as nn.Linear initialises its weights (and as peft does); B = 0 makes the update start at zero.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)
        # While merged, the untouched weight is kept here so that unmerge() is exact.
        self.register_buffer("original_weight", None, persistent=False)

    @property
    def merged(self) -> bool:
        return self.original_weight is not None

    def delta_weight(self) -> torch.Tensor:
        """The update as a full matrix, (B A) * alpha / r: [out, in]."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frozen = frozen_linear(x, *kept_weights(self, x))  # (..., out), as F.linear (faster for a generation step)
        if self.merged:
            if self.training and torch.is_grad_enabled():
                raise RuntimeError("This LoRA layer is merged, so A and B would get no gradient: call unmerge() "
                                   "before training (or model.eval() for inference).")
            return frozen  # the update is inside the weight already: one matmul, no extra latency
        # Two thin matmuls, (..., in) -> (..., r) -> (..., out), instead of forming the [out, in] matrix.
        update = self.dropout(x) @ self.lora_A.T @ self.lora_B.T
        return frozen + update * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the weight: W <- W + (B A) * alpha / r."""
        if not self.merged:
            self.original_weight = self.weight.detach().clone()
            self.weight.add_(self.delta_weight().to(self.weight.dtype))

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original weight bit for bit (copied back, not subtracted)."""
        if self.merged:
            self.weight.copy_(self.original_weight)
            self.original_weight = None

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.lora_A.shape[0]}, scaling={self.scaling:g}"


class LoRA(FineTuning):
    """The linear probe of fine_tuning.py (frozen backbone + task head) plus LoRA on the chosen projections.

    The projections in `config.targets` of every layer are replaced by LoRALinear wrappers of
    themselves (the backbone passed in is modified). Trainable: each lora_A, lora_B and the head.
    Input: a batch dict. Output: logits [B, C] (or [B, T, C] for sequence labelling).
    """

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, config: LoRAConfig,
                 task_kind: str = "classification", verbalizer: list[str] | None = None):
        super().__init__(backbone, tokenizer, num_labels, FineTuningConfig(mode="head"), task_kind,
                         verbalizer)
        unknown = [t for t in config.targets if t not in TARGETS]
        if unknown or not config.targets:
            raise ValueError(f"Unknown LoRA targets {unknown or '(none given)'}; choose from {', '.join(TARGETS)}.")
        self.config = config
        for layer in blocks(backbone):  # T5 / BART: both stacks, and the decoder's cross-attention as well
            for target in config.targets:
                paths = [TARGETS[target]]
                if getattr(layer, "cross_attention", None) is not None and TARGETS[target].startswith("attention."):
                    paths.append("cross_" + TARGETS[target])
                for path in paths:
                    parent_path, _, name = path.rpartition(".")
                    parent = layer.get_submodule(parent_path)
                    linear = getattr(parent, name)
                    if isinstance(linear, LoRALinear):
                        raise ValueError(f"{path} already has LoRA: build LoRA on a freshly loaded backbone.")
                    setattr(parent, name, LoRALinear(linear, config.rank, config.alpha, config.dropout))
        self.saved_contents = ("LoRA matrices lora_A and lora_B of each adapted projection and the task head; "
                               "the backbone is not saved")

    def lora_layers(self) -> list[LoRALinear]:
        return [m for m in self.backbone.modules() if isinstance(m, LoRALinear)]

    def merge(self) -> None:
        """Fold every update into its frozen weight for inference (same outputs, plain linear layers' speed)."""
        for layer in self.lora_layers():
            layer.merge()

    def unmerge(self) -> None:
        """Undo merge(): every adapted weight is again the pretrained one, bit for bit."""
        for layer in self.lora_layers():
            layer.unmerge()


def main(argv: list[str] | None = None):
    config, options = parse_command_line(LoRAConfig, __doc__, argv)
    return run(config, options)[1]


if __name__ == "__main__":
    command_line(main)
