"""Read an adapter trained with peft (adapter_config.json + adapter_model.safetensors) into our methods.

The other direction of methods/export_peft.py: what it writes comes back with the same logits, and so does
an adapter that peft itself trained in those formats, so that it can be inspected here (its prompt's
nearest words, its prefix per layer, its LoRA updates) with the lessons' tools.

    peft_type, task_type         ours
    PROMPT_TUNING, TOKEN_CLS     PromptTuning with a token head; virtual_tokens = prompt_embeddings
    PROMPT_TUNING, SEQ_CLS       PTuning in peft's layout (--layout prefix) with no encoder, reading the first
                                 prompt vector as peft's classifier does; its vectors = prompt_embeddings
    P_TUNING                     the same: peft saves its encoder's output, the vectors the model reads
    PREFIX_TUNING                PrefixTuning with a flat prefix = prompt_embeddings [P, 2 x layers x H] (with
                                 prefix_projection peft saves the MLP's output, the same thing)
    LORA                         LoRA on the same projections: lora_A, lora_B; GPT-2's fused c_attn update is
                                 split back into its query, key and value row blocks (each keeps the whole A)
    classifier.* (SEQ/TOKEN_CLS) the task head's linear layer; RoBERTa's classifier.dense is our pooler

    method, tokenizer = import_peft("export/prefix-sst2")
    python -m methods.import_peft export/prefix-sst2 --out runs/from-peft     # then load_method("runs/from-peft")
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file
from torch import nn

from minitransformer import Tokenizer, load_pretrained

from methods.export_peft import LORA_MODULES, QKV, NotExportableError
from methods.lora import TARGETS, LoRA, LoRAConfig
from methods.p_tuning import PTuning, PTuningConfig
from methods.prefix_tuning import PrefixTuning, PrefixTuningConfig
from methods.prompt_tuning import PromptTuning, PromptTuningConfig
from methods.shared.pipeline import command_line, save_method
from methods.shared.training import count_parameters

TASK_KINDS = {"SEQ_CLS": "classification", "TOKEN_CLS": "ner", "CAUSAL_LM": "generation"}


def head_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The classifier's tensors, named as transformers names them under the model (classifier.weight, ...)."""
    return {name.split("classifier.", 1)[1]: t for name, t in tensors.items() if ".classifier." in name}


def build(config: dict, tensors: dict[str, torch.Tensor], backbone, tokenizer: Tokenizer) -> nn.Module:
    """Our method for the adapter, with the adapter's numbers in it."""
    peft_type, kind = config["peft_type"], TASK_KINDS.get(config["task_type"])
    head = head_weights(tensors)
    weight = head.get("weight", head.get("out_proj.weight"))
    num_labels = 0 if weight is None else weight.shape[0]
    if kind is None:
        raise NotExportableError(f"peft task type {config['task_type']!r} has no counterpart here (SEQ_CLS, TOKEN_CLS, "
                                 "CAUSAL_LM).")
    head_kind = {"ner": "token", "classification": "classifier"}.get(kind, "auto")
    if peft_type in ("PROMPT_TUNING", "P_TUNING"):
        prompt = tensors["prompt_embeddings"]  # (n, H): the vectors the frozen model reads first
        if kind == "ner":
            method = PromptTuning(backbone, tokenizer, num_labels, PromptTuningConfig(len(prompt), "random", head="token"),
                                  kind)
            method.virtual_tokens.data.copy_(prompt)
        elif kind == "classification":
            method = PTuning(backbone, tokenizer, num_labels, PTuningConfig(layout="prefix", encoder="none", read="prompt",
                             num_virtual_tokens=len(prompt), head="classifier"), kind)
            method.prompt_encoder.pseudo_tokens.data.copy_(prompt)
        else:
            raise NotExportableError("Input prompts for generation (CAUSAL_LM) have no counterpart here: prefix "
                                     "tuning is the method that generates.")
    elif peft_type == "PREFIX_TUNING":
        prefix = tensors["prompt_embeddings"]  # (P, 2 x layers x H)
        method = PrefixTuning(backbone, tokenizer, num_labels, PrefixTuningConfig(len(prefix), flat=True, head=head_kind),
                              kind)
        method.prefix.flat_prefix.data.copy_(prefix)
    elif peft_type == "LORA":
        method = build_lora(config, tensors, backbone, tokenizer, num_labels, kind)
    else:
        raise NotExportableError(f"peft type {peft_type!r} is not one of ours (PROMPT_TUNING, P_TUNING, "
                                 "PREFIX_TUNING, LORA).")
    if head:
        load_head(method, head)
    return method


def build_lora(config: dict, tensors: dict[str, torch.Tensor], backbone, tokenizer, num_labels: int, kind: str) -> LoRA:
    """A LoRA with the adapter's updates; GPT-2's c_attn update becomes one per query, key and value block."""
    if config.get("use_dora") or config.get("lora_bias") or config.get("bias", "none") != "none":
        raise NotExportableError("DoRA, LoRA biases and trained biases have no counterpart in our LoRA.")
    per_layer: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    H = backbone.config.hidden_size
    for name, A in tensors.items():
        if not name.endswith("lora_A.weight"):
            continue
        B, module = tensors[name.replace("lora_A", "lora_B")], name.rsplit(".lora_A", 1)[0]
        layer = int(module.split(".h.")[1].split(".")[0]) if backbone.config.is_decoder else \
            int(module.split(".layer.")[1].split(".")[0])
        if backbone.config.is_decoder:  # c_attn: rows [0, H) query, [H, 2H) key, [2H, 3H) value
            parts = {t: (A, B[i * H:(i + 1) * H]) for i, t in enumerate(QKV) if B[i * H:(i + 1) * H].any()}
        else:
            target = next(t for t, path in LORA_MODULES.items() if module.endswith(f".layer.{layer}.{path}"))
            parts = {target: (A, B)}
        per_layer.setdefault(layer, {}).update(parts)
    targets = tuple(t for t in LORA_MODULES if t in per_layer[0])
    rank = next(iter(per_layer[0].values()))[0].shape[0]
    method = LoRA(backbone, tokenizer, num_labels, LoRAConfig(rank=rank, alpha=float(config["lora_alpha"]),
                                                              dropout=float(config.get("lora_dropout", 0.0)),
                                                              targets=targets), kind)
    for layer, parts in per_layer.items():
        for target, (A, B) in parts.items():
            adapted = method.backbone.layers[layer].get_submodule(TARGETS[target])
            adapted.lora_A.data.copy_(A)
            adapted.lora_B.data.copy_(B)
    return method


@torch.no_grad()
def load_head(method: nn.Module, head: dict[str, torch.Tensor]) -> None:
    """The classifier's numbers into our head (RoBERTa's classifier.dense into the backbone's pooler)."""
    if "out_proj.weight" in head:  # RobertaClassificationHead: out_proj(tanh(dense(<s>)))
        method.backbone.pooler.weight.copy_(head["dense.weight"])
        method.backbone.pooler.bias.copy_(head["dense.bias"])
        head = {"weight": head["out_proj.weight"], "bias": head["out_proj.bias"]}
    method.head.linear.weight.copy_(head["weight"])
    method.head.linear.bias.copy_(head["bias"])


def import_peft(directory: str | Path, model_name: str | None = None, device=None) -> tuple[nn.Module, Tokenizer]:
    """The adapter in `directory` as one of our methods, on its base model (or `model_name`), in eval mode."""
    directory = Path(directory)
    if not (directory / "adapter_config.json").exists():
        raise FileNotFoundError(f"{directory} has no adapter_config.json: pass the folder of a peft adapter "
                                "(as save_pretrained or methods.export_peft writes it).")
    config = json.loads((directory / "adapter_config.json").read_text())
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    backbone, tokenizer = load_pretrained(model_name or config["base_model_name_or_path"])
    return build(config, tensors, backbone, tokenizer).to(device or "cpu").eval(), tokenizer


def main(argv: list[str] | None = None) -> nn.Module:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter_dir", help="a peft adapter folder (adapter_config.json + adapter_model.safetensors)")
    parser.add_argument("--model", default=None, help="the base model, if not the one adapter_config.json names")
    parser.add_argument("--out", default=None, help="save it as one of our runs here (method.json + "
                        "method.safetensors), to open with methods.shared.pipeline.load_method")
    args = parser.parse_args(argv)
    method, _ = import_peft(args.adapter_dir, args.model)
    config = json.loads((Path(args.adapter_dir) / "adapter_config.json").read_text())
    print(f"{config['peft_type']} ({config['task_type']}) -> {type(method).__name__} {method.config}: "
          f"{count_parameters(method)[0]:,} trainable parameters")
    if args.out:
        labels = method.head.linear.out_features if method.head is not None and method.head.kind != "verbalizer" else 0
        task = SimpleNamespace(name=None, kind=TASK_KINDS[config["task_type"]],
                               label_names=[f"label_{i}" for i in range(labels)], verbalizer=[])
        save_method(method, args.out, task, args.model or config["base_model_name_or_path"])
        print(f"saved in {args.out}")
    return method


if __name__ == "__main__":
    command_line(main)
