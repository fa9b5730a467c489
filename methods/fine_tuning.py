"""Fine-tuning baselines: the costs that prompt methods are measured against.

Devlin et al. 2019 fine-tune every weight of BERT for each task: accurate, but each
task then stores a whole model copy. Two cheaper baselines train less:

* full:     every parameter, theta* = argmin_theta L(f_theta(x), y)
* head:     a linear probe, only the new classification head on the frozen model
* top-k:    the head plus the last k Transformer layers (the "tune the last layers" baseline)

    python methods/fine_tuning.py --mode top-k --layers 2 --task sst2
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from minitransformer import Tokenizer, Transformer

from methods.heads import TaskHead, freeze
from methods.runner import common_parser, run

MODES = ("full", "head", "top-k")
# A frozen body needs a much larger step on the few weights that do train.
DEFAULT_LR = {"full": 5e-5, "head": 5e-3, "top-k": 2e-4}


@dataclass
class FineTuningConfig:
    mode: str = "full"        # full | head | top-k
    layers: int = 2           # for top-k: how many of the last layers to train
    head: str = "auto"        # auto: token head for sequence labelling, else classifier


class FineTuning(nn.Module):
    """The backbone with a task head; `mode` decides which parameters train.

    Input: a batch dict (input_ids, attention_mask, token_type_ids). Output: logits [B, C] or [B, T, C].
    """

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, config: FineTuningConfig,
                 task_kind: str = "classification"):
        super().__init__()
        if config.mode not in MODES:
            raise ValueError(f"Unknown mode {config.mode!r}; choose one of {', '.join(MODES)}.")
        n_layers = backbone.config.num_layers
        if config.mode == "top-k" and not 1 <= config.layers <= n_layers:
            raise ValueError(f"--layers must be between 1 and {n_layers} for this model, got {config.layers}.")
        self.backbone, self.config = backbone, config
        head = config.head if config.head != "auto" else ("token" if task_kind == "ner" else "classifier")
        self.head = TaskHead(backbone, tokenizer, num_labels, head)
        if config.mode != "full":
            freeze(backbone)
        if config.mode == "top-k":
            for layer in backbone.layers[n_layers - config.layers:]:
                layer.requires_grad_(True)
            if backbone.final_norm is not None:  # GPT-2's last norm sits above the top layer
                backbone.final_norm.requires_grad_(True)

    def forward(self, batch: dict):
        hidden = self.backbone(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return self.head(hidden, batch)


def main(argv: list[str] | None = None) -> dict:
    parser = common_parser(__doc__, lr=None)
    parser.add_argument("--mode", choices=MODES, default="full", help="which parameters train (see above)")
    parser.add_argument("--layers", type=int, default=2, help="top-k mode: number of last layers to train")
    args = parser.parse_args(argv)
    args.lr = args.lr or DEFAULT_LR[args.mode]
    config = FineTuningConfig(mode=args.mode, layers=args.layers)
    name = {"full": "full_fine_tuning", "head": "head_only", "top-k": f"top{args.layers}_layers"}[args.mode]
    build = lambda backbone, tokenizer, task, _: FineTuning(backbone, tokenizer, len(task.label_names), config, task.kind)
    return run(args, name, build, asdict(config))


if __name__ == "__main__":
    main()
