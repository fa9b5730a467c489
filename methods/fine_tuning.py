"""Fine-tuning baselines: the costs that prompt methods are measured against.

Devlin et al. 2019 fine-tune every weight of BERT for each task: accurate, but each
task then stores a whole model copy. Two cheaper baselines train less:

* full:     every parameter, theta* = argmin_theta L(f_theta(x), y)
* head:     a linear probe, only the new classification head on the frozen model
* top-k:    the head plus the last k Transformer layers (the "tune the last layers" baseline)

    python methods/fine_tuning.py --mode top-k --top-layers 2 --task sst2
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from minitransformer import Tokenizer, Transformer

from methods.shared.heads import TaskHead, freeze
from methods.shared.options import option
from methods.shared.pipeline import command_line, parse_command_line, run
from methods.shared.prompting import choose_head, read_positions
from methods.shared.text_to_text import LabelTargets, is_encoder_decoder, label_scores, text_to_text_head

MODES = ("full", "head", "top-k")
# A frozen body needs a much larger step on the few weights that do train.
DEFAULT_LR = {"full": 5e-5, "head": 5e-3, "top-k": 2e-4}


@dataclass
class FineTuningConfig:
    mode: str = option("full", "which parameters train: every one, the head only, or the head and the top layers",
                       choices=MODES)
    top_layers: int = option(2, "top-k mode: how many of the last layers train")
    head: str = option("auto", "task head (auto: a token head for sequence labelling, else a classifier)",
                       choices=("auto", "classifier", "token"))

    @property
    def default_lr(self) -> float:
        return DEFAULT_LR[self.mode]


class FineTuning(nn.Module):
    """The backbone with a task head; `mode` decides which parameters train.

    Input: a batch dict (input_ids, attention_mask, token_type_ids). Output: logits [B, C] or [B, T, C].
    """

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, config: FineTuningConfig,
                 task_kind: str = "classification", verbalizer: list[str] | None = None):
        super().__init__()
        if config.mode not in MODES:
            raise ValueError(f"Unknown mode {config.mode!r}; choose one of {', '.join(MODES)}.")
        seq2seq = is_encoder_decoder(backbone)
        n_layers = backbone.config.num_decoder_layers if seq2seq else backbone.config.num_layers
        if config.mode == "top-k" and not 1 <= config.top_layers <= n_layers:
            raise ValueError(f"--top-layers must be between 1 and {n_layers} for this model, got {config.top_layers}.")
        self.backbone, self.config, self.mask_id = backbone, config, tokenizer.mask_id
        self.template, self.prompt_length = None, 0  # the plain input, nothing in front of it
        if seq2seq:  # text-to-text: the decoder writes the label word with the model's own LM head
            text_to_text_head("auto" if config.head == "classifier" else config.head, task_kind)
            if config.mode == "head" and type(self) is FineTuning:
                raise ValueError("On an encoder-decoder the model's own LM head writes the label word, so there is "
                                 "no new head to train alone: use --mode full, or --mode top-k (the top decoder "
                                 "layers).")
            self.head, self.targets = None, LabelTargets(tokenizer, verbalizer, num_labels)
        else:
            kind = choose_head(config.head, task_kind, backbone, verbalizer, prefers_label_words=False)
            self.head = TaskHead(backbone, tokenizer, num_labels, kind, verbalizer)
        if config.mode != "full":
            freeze(backbone)
        if config.mode == "top-k":
            stack = backbone.decoder if seq2seq else backbone
            for layer in stack.layers[n_layers - config.top_layers:]:
                layer.requires_grad_(True)
            if stack.final_norm is not None:  # GPT-2's (and T5's) last norm sits above the top layer
                stack.final_norm.requires_grad_(True)
        self.saved_contents = ("every parameter" if config.mode == "full" else "the trained layers and the task head"
                               if config.mode == "top-k" else "the task head") + " (the trainable parameters)"

    @classmethod
    def for_task(cls, backbone: Transformer, tokenizer: Tokenizer, task, config) -> "FineTuning":
        """Built for a task (a data.Task or TaskSpec): its label count, kind and label words."""
        return cls(backbone, tokenizer, len(task.label_names), config, task.kind, task.verbalizer)

    def forward(self, batch: dict):
        if self.head is None:  # encoder-decoder: [B, C] label-word log-likelihoods (rank classification)
            encoded = self.backbone.encode(batch["input_ids"], batch["attention_mask"])
            return label_scores(self.backbone, self.targets, encoded, batch["attention_mask"])
        hidden = self.backbone(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        if self.head.kind == "token":
            return self.head(hidden)
        return self.head(hidden, read_positions(self.head.kind, batch["input_ids"], batch["attention_mask"],
                                                self.backbone.config.is_decoder, self.mask_id))


def main(argv: list[str] | None = None):
    config, options = parse_command_line(FineTuningConfig, __doc__, argv)
    return run(config, options)[1]


if __name__ == "__main__":
    command_line(main)
