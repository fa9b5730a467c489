"""Export a prompt-tuning, P-tuning, prefix-tuning, P-tuning v2 or LoRA result in peft's adapter format.

What a student trains here then runs with the standard library, with the same logits:

    model = AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=2)   # or ...ForTokenClassification,
    model = peft.PeftModel.from_pretrained(model, "export_dir").eval()              # ...ForCausalLM (see below)

peft keeps a prompt-learning adapter in two files (peft 0.21: peft_model.py get_prompt, utils/save_and_load.py):
adapter_config.json (the config dataclass as JSON) and adapter_model.safetensors, whose tensors map to ours:

    ours                                    adapter_model.safetensors               adapter_config.json
    PromptTuning.virtual_tokens [n, H]      prompt_embeddings [n, H]                PROMPT_TUNING
    PTuning: prompt_encoder() [n, H]        prompt_embeddings [n, H]                P_TUNING (--layout prefix)
    PrefixEncoder prefix [P, 2 x L x H]     prompt_embeddings [P, 2 x L x H]        PREFIX_TUNING, no projection
    token head: linear (NER)                base_model.classifier.*                 TOKEN_CLS
    classifier, BERT: linear(pooler(CLS))   base_model.classifier.*                 SEQ_CLS (the pooler: the
                                                                                    base model's own, frozen)
    classifier, RoBERTa: the same           base_model.classifier.dense.* = our pooler,
                                            base_model.classifier.out_proj.* = our linear    SEQ_CLS
    no head (GPT-2 generation)              -                                       CAUSAL_LM
    LoRA, BERT/RoBERTa: lora_A [r, in],     base_model.model.bert.encoder.layer.i.attention.self.query.lora_A.weight
                        lora_B [out, r]     (...lora_B.weight; key, value, attention.output.dense, ...)   LORA
    LoRA, GPT-2: query/value updates        base_model.model.transformer.h.i.attn.c_attn.lora_A/B.weight  LORA,
                                            rank 2r: A = [A_q; A_v], B = the q and v row blocks     fan_in_fan_out
    its head                                base_model.model.classifier.* (LoRA's peft model has one more level)

The prefix needs no reshaping: per virtual token both sides store [layer 0 keys, layer 0 values, layer 1 keys,
...], each H = heads x head_dim wide; peft's get_prompt views it as (P, 2L, heads, head_dim) and permutes it to
past key values, keys of layer l at 2l and values at 2l + 1, exactly as our PrefixEncoder does.
The classifier head is peft's `modules_to_save` (a trained copy of the model's classifier module).

P-tuning is exported as its encoder's output, as peft itself saves it (get_prompt_embedding_to_save runs
the encoder; a model loaded for inference reads the stored vectors and builds no encoder). Without an
encoder (--encoder none) the vectors are trained directly, which is peft's prompt tuning: exported as such.

The MLP reparameterization is exported ejected: prompt_embeddings = MLP(E), prefix_projection false. peft
itself stores the same numbers for a projected prefix (get_prompt_embedding_to_save runs the MLP, and a model
loaded for inference reads the stored output directly), but its config then says prefix_projection true, and
a fresh trainable model of that config has an [P, H] embedding + MLP that the [P, 2LH] tensor does not fit.
Said as what it is, a flat prefix, it also trains further: peft.get_peft_model(model, config with
inference_mode=False) + peft.set_peft_model_state_dict (PeftModel.from_pretrained refuses is_trainable=True
for every prompt-learning adapter).

Both sides share the position conventions: virtual tokens are ordinary inputs at positions 0..n-1 (token
type 0), so peft's token-classification logits have n extra rows in front (ours = theirs[:, n:]); a prefix
is past key values, so real tokens start at position P and the logits have the input's length.

Not representable in peft, hence an error: a verbalizer (peft has no label-word head), a text template
(peft feeds the text unchanged), prefixes on some layers only (peft prompts every layer), a classifier on
GPT-2 (GPT2ForSequenceClassification's score layer has no bias), a prompt-tuning classifier on an encoder
(peft's classifier reads position 0, the first virtual token; ours reads the real [CLS] after the prompt),
P-tuning in a template (peft puts every prompt vector before the input) or reading [CLS] (--read input),
and a classifier on a checkpoint without a pooler (Bert/RobertaForSequenceClassification always have one).
Dropout differs only in training (prefix dropout; RoBERTa's head drops before and after dense).
The other way, an adapter trained with peft read into our methods: methods/import_peft.py.

Encoder-decoders (T5, BART) export as SEQ_2_SEQ_LM: methods/export_peft_seq2seq.py.

    python -m methods.export_peft runs/prefix_tuning-sst2 --out export/prefix_tuning-sst2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from minitransformer.loading import MINILM_NAMES

from methods.lora import TARGETS, LoRA
from methods.p_tuning import PTuning
from methods.prefix_tuning import PrefixTuning
from methods.prompt_tuning import PromptTuning
from methods.shared.files import atomic_path, write_json
from methods.shared.pipeline import command_line, load_method
from methods.shared.text_to_text import is_encoder_decoder

# The transformers class to load the base model with, per peft task type.
AUTO_CLASSES = {"SEQ_CLS": "AutoModelForSequenceClassification", "TOKEN_CLS": "AutoModelForTokenClassification",
                "CAUSAL_LM": "AutoModelForCausalLM", "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM"}


EXPORTABLE = ("prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "lora")  # registry names
# Our LoRA targets -> the module of a BERT/RoBERTa layer they adapt (transformers' names). GPT-2 fuses the query,
# key and value projections into one Conv1D, c_attn: there the targets become row blocks of one update.
LORA_MODULES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                "output": "attention.output.dense", "mlp.up": "intermediate.dense", "mlp.down": "output.dense"}
QKV = ("query", "key", "value")


class NotExportableError(ValueError):
    """The trained method has a part that peft cannot represent."""


def linear_tensors(layer: nn.Linear, name: str) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": layer.weight, f"{name}.bias": layer.bias}


def head_tensors(method: nn.Module, prefix: str = "base_model") -> tuple[str, dict[str, torch.Tensor]]:
    """peft's task type and the classifier tensors under peft's names (`prefix` + "." + the transformers name:
    "base_model" for prompt learning, "base_model.model" for LoRA)."""
    head, config = method.head, method.backbone.config
    if head is None:  # prefix tuning for generation: GPT-2's own LM head, nothing to save
        return "CAUSAL_LM", {}
    if head.kind == "verbalizer":
        raise NotExportableError("A verbalizer head (label-word scores of the LM head) has no peft equivalent: "
                                 "peft's heads are the transformers classification heads. Train with --head "
                                 "classifier (or a token head) to export.")
    if head.kind == "token":  # Bert/Roberta/GPT2ForTokenClassification: dropout + classifier on every token
        return "TOKEN_CLS", linear_tensors(head.linear, f"{prefix}.classifier")
    if config.is_decoder:
        raise NotExportableError("GPT2ForSequenceClassification's score layer has no bias, and our classifier has "
                                 "one, so its logits cannot be reproduced. Export a generation prefix or a token head.")
    if isinstance(method, PromptTuning):
        raise NotExportableError("peft's sequence classifier reads position 0, which after a soft prompt is the "
                                 "first virtual token; ours reads the real [CLS] after the prompt. Prompt tuning "
                                 "with a classifier on an encoder cannot be exported: use prefix tuning or "
                                 "P-tuning v2 (their [CLS] stays at position 0), or a token head.")
    if isinstance(method, PTuning) and not method.read_prompt:
        raise NotExportableError("peft's sequence classifier reads position 0, the first prompt vector in its "
                                 "layout; this P-tuning classifier reads [CLS] (--read input). Train with --read "
                                 "prompt (the default on an encoder) and --layout prefix to export.")
    if head.pool is None:
        raise NotExportableError(f"This {config.model_type} checkpoint has no pooler, so our classifier reads "
                                 "[CLS] directly, but Bert/RobertaForSequenceClassification always pass it through "
                                 "a pooler (a random one if the checkpoint lacks it). Use a checkpoint with a pooler "
                                 "(bert-base-uncased, roberta-base, all-MiniLM-L6-v2).")
    if config.model_type == "roberta":  # RobertaClassificationHead: out_proj(tanh(dense(<s>))) = our linear(pool)
        return "SEQ_CLS", {**linear_tensors(method.backbone.pooler, f"{prefix}.classifier.dense"),
                           **linear_tensors(head.linear, f"{prefix}.classifier.out_proj")}
    return "SEQ_CLS", linear_tensors(head.linear, f"{prefix}.classifier")  # BERT: classifier(pooler(h_cls))


def lora_tensors(method: LoRA) -> tuple[dict, dict[str, torch.Tensor]]:
    """peft's LORA adapter config and tensors: lora_A [r, in] and lora_B [out, r] of each adapted module."""
    config, lora, tensors = method.backbone.config, method.config, {}
    if config.is_decoder:  # c_attn = [query | key | value]: one update of rank r per target, side by side
        if any(t not in QKV for t in lora.targets):
            raise NotExportableError(f"On GPT-2 only query, key and value map onto peft's c_attn; this LoRA also "
                                     f"adapts {[t for t in lora.targets if t not in QKV]}.")
        parts, H = [t for t in QKV if t in lora.targets], config.hidden_size
        rank = lora.rank * len(parts)
        for i, layer in enumerate(method.backbone.layers):
            A, B = torch.zeros(rank, H), torch.zeros(3 * H, rank)
            for j, target in enumerate(parts):
                adapted = getattr(layer.attention, target)
                A[j * lora.rank:(j + 1) * lora.rank] = adapted.lora_A
                B[QKV.index(target) * H:(QKV.index(target) + 1) * H, j * lora.rank:(j + 1) * lora.rank] = adapted.lora_B
            name = f"base_model.model.transformer.h.{i}.attn.c_attn"
            tensors.update({f"{name}.lora_A.weight": A, f"{name}.lora_B.weight": B})
        # peft scales by lora_alpha / r: keep alpha / r as ours with the wider rank
        adapter = {"r": rank, "lora_alpha": lora.alpha * rank / lora.rank, "target_modules": ["c_attn"],
                   "fan_in_fan_out": True}
    else:
        for i, layer in enumerate(method.backbone.layers):
            for target in lora.targets:
                adapted = layer.get_submodule(TARGETS[target])
                name = f"base_model.model.{config.model_type}.encoder.layer.{i}.{LORA_MODULES[target]}"
                tensors.update({f"{name}.lora_A.weight": adapted.lora_A, f"{name}.lora_B.weight": adapted.lora_B})
        modules = "|".join(LORA_MODULES[t].replace(".", r"\.") for t in lora.targets)  # a full match: exactly these
        adapter = {"r": lora.rank, "lora_alpha": lora.alpha, "fan_in_fan_out": False,
                   "target_modules": rf".*\.encoder\.layer\.\d+\.({modules})"}
    return {"peft_type": "LORA", "lora_dropout": lora.dropout, "bias": "none", **adapter}, tensors


def export_peft(method: nn.Module, directory: str | Path, base_model_name_or_path: str) -> Path:
    """Write `method` (PromptTuning, PTuning, PrefixTuning, PTuningV2 or LoRA) as a peft adapter in `directory`."""
    if isinstance(method, LoRA):
        task_type, head = head_tensors(method, "base_model.model")
        adapter, tensors = lora_tensors(method)
        common = {"task_type": task_type, "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
                  "modules_to_save": ["classifier", "score"] if head else None}
        return write_adapter(directory, {**adapter, **common}, {**tensors, **head})
    if not isinstance(method, (PromptTuning, PTuning, PrefixTuning)):
        raise NotExportableError(f"{type(method).__name__} has no exporter: peft's formats here cover prompt "
                                 "tuning, P-tuning, prefix tuning, P-tuning v2 and LoRA.")
    if is_encoder_decoder(method.backbone):
        from methods.export_peft_seq2seq import export_seq2seq  # it builds on this module's writer
        return export_seq2seq(method, directory, base_model_name_or_path)
    task_type, tensors = head_tensors(method)  # first: a verbalizer's template is not the deeper problem
    if method.template:
        raise NotExportableError(f"This method was trained on inputs rewritten by the template "
                                 f"{method.template!r}; peft feeds the text unchanged, so the logits would differ.")
    if isinstance(method, PTuning) and method.config.layout != "prefix":
        raise NotExportableError(f"This P-tuning run placed its prompt vectors with the template "
                                 f"{method.config.template!r}; peft puts them all before the input. Train with "
                                 "--layout prefix to export.")
    config = method.backbone.config
    common = {"task_type": task_type, "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
              "token_dim": config.hidden_size, "num_attention_heads": config.num_heads,
              "num_layers": config.num_layers, "num_transformer_submodules": 1,
              "modules_to_save": ["classifier", "score"] if tensors else None}
    if isinstance(method, PromptTuning):
        prompt = method.virtual_tokens  # (n, H): fed as input embeddings by both
        adapter = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": prompt.shape[0], "prompt_tuning_init": "RANDOM"}
    elif isinstance(method, PTuning):
        with torch.no_grad():
            prompt = method.prompt_encoder()  # (n, H): the vectors the frozen model reads
        adapter = ({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": prompt.shape[0], "prompt_tuning_init": "RANDOM"}
                   if method.config.encoder == "none" else
                   {"peft_type": "P_TUNING", "num_virtual_tokens": prompt.shape[0],
                    "encoder_reparameterization_type": method.config.encoder.upper(),
                    "encoder_hidden_size": method.config.encoder_hidden, "encoder_num_layers": 2,
                    "encoder_dropout": 0.0})
    else:
        encoder = method.prefix
        if encoder.layers != list(range(config.num_layers)):
            raise NotExportableError(f"This prefix covers layers {[i + 1 for i in encoder.layers]} (1-based) of "
                                     f"{config.num_layers}; peft's prefix tuning gives every layer one. Train with "
                                     "--layers all to export.")
        with torch.no_grad():  # the deploy prefix: MLP(E) when reparameterized, else the prefix itself (no dropout)
            prompt = encoder.mlp(encoder.embedding) if encoder.reparameterized else encoder.flat_prefix  # (P, 2LH)
        adapter = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": prompt.shape[0], "prefix_projection": False,
                   "encoder_hidden_size": config.hidden_size}
    return write_adapter(directory, {**adapter, **common}, {"prompt_embeddings": prompt, **tensors})


def write_adapter(directory: str | Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """adapter_model.safetensors and adapter_config.json, as peft's save_pretrained writes them (atomically)."""
    directory = Path(directory)
    with atomic_path(directory / "adapter_model.safetensors") as temporary:
        save_file({name: t.detach().float().cpu().contiguous() for name, t in tensors.items()}, str(temporary),
                  metadata={"format": "pt"})
    write_json(directory / "adapter_config.json", config)
    return directory


def load_run(run_dir: str | Path, model_name: str | None = None) -> tuple[nn.Module, str]:
    """Rebuild and load a method saved by a method command line (OUT/method.json + method.safetensors, or
    prefix tuning's OUT/deploy), through the registry. Returns (method, model name)."""
    run_dir = Path(run_dir)
    if not (run_dir / "method.json").exists():
        raise FileNotFoundError(f"{run_dir} has no method.json: pass the --out directory of a method command line.")
    meta = json.loads((run_dir / "method.json").read_text())
    if meta["method"] not in EXPORTABLE:
        raise NotExportableError(f"{run_dir} holds a {meta['method']!r} run; the peft formats here cover "
                                 f"{', '.join(EXPORTABLE[:-1])} and {EXPORTABLE[-1]} runs.")
    method, _ = load_method(run_dir, model_name)
    return method, model_name or meta["model"]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="the --out directory of a prompt_tuning, p_tuning, prefix_tuning or "
                        "p_tuning_v2 run")
    parser.add_argument("--out", required=True, help="directory for adapter_config.json + adapter_model.safetensors")
    parser.add_argument("--model", default=None, help="the base model, if not the one in results.json")
    args = parser.parse_args(argv)
    method, model_name = load_run(args.run_dir, args.model)
    # The name transformers knows: the offline MiniLM alias is the hub's sentence-transformers model.
    base = MINILM_NAMES[1] if model_name in MINILM_NAMES else model_name
    directory = export_peft(method, args.out, base)
    task_type = json.loads((directory / "adapter_config.json").read_text())["task_type"]
    labels = "" if task_type in ("CAUSAL_LM", "SEQ_2_SEQ_LM") else f", num_labels={method.head.linear.out_features}"
    print(f"wrote {directory}/adapter_config.json and adapter_model.safetensors ({task_type}). Load with:\n"
          f"    model = transformers.{AUTO_CLASSES[task_type]}.from_pretrained({base!r}{labels})\n"
          f"    model = peft.PeftModel.from_pretrained(model, {str(directory)!r}).eval()")
    return directory


if __name__ == "__main__":
    command_line(main)  # a limit of peft's format (NotExportableError) or a wrong folder: one line, no traceback
