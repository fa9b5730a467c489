"""Prompt tuning or a decoder prefix on an encoder-decoder (T5, BART) in peft's SEQ_2_SEQ_LM adapter format.

peft's logits here are the decoder's vocabulary logits (the rank classification over label words is applied
to them). Two kinds of run are representable: prompt tuning (peft stores 2 x n rows, one set
per "transformer submodule", and reads the first n before the encoder's input: both get ours), and a
prefix placed in the decoder only (--placement decoder), written into the slots peft's decoder layers
read (layer j reads slot 2j mod L, prefix_tuning.py says why). With an even number of decoder layers two
layers read one slot, so only a prefix whose layers j and j + L/2 agree is representable; prefixes in
the encoder or cross-attention are not (peft has no place for them).

`methods.export_peft` calls this for an encoder-decoder run; the file format and writer are that module's.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from methods.export_peft import NotExportableError, write_adapter
from methods.prefix_tuning import PrefixTuning
from methods.prompt_tuning import PromptTuning


def peft_decoder_slot(layer: int, num_layers: int) -> int:
    """The slot of peft's seq2seq prefix that decoder layer `layer` reads (module docstring)."""
    return 2 * layer % num_layers


def export_seq2seq(method: nn.Module, directory: str | Path, base_model_name_or_path: str) -> Path:
    """Prompt tuning or a decoder-only prefix on T5 / BART as a SEQ_2_SEQ_LM adapter (module docstring)."""
    config = method.backbone.config
    common = {"task_type": "SEQ_2_SEQ_LM", "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
              "token_dim": config.hidden_size, "num_attention_heads": config.num_heads,
              "num_layers": config.num_decoder_layers, "num_transformer_submodules": 2, "modules_to_save": None}
    if isinstance(method, PromptTuning):
        prompt = method.virtual_tokens.detach()
        adapter = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": prompt.shape[0], "prompt_tuning_init": "RANDOM"}
        return write_adapter(directory, {**adapter, **common}, {"prompt_embeddings": torch.cat([prompt, prompt])})
    if not isinstance(method, PrefixTuning) or list(method.prefix) != ["decoder"]:
        placed = list(method.prefix) if isinstance(method, PrefixTuning) else None
        raise NotExportableError(f"On an encoder-decoder peft represents prompt tuning and a prefix in the decoder's "
                                 f"self-attention only; this is {type(method).__name__}"
                                 + (f" with prefixes in {', '.join(placed)}" if placed else "")
                                 + ". Train with --placement decoder to export a prefix.")
    encoder, L = method.prefix["decoder"], config.num_decoder_layers
    if encoder.layers != list(range(L)):
        raise NotExportableError("peft's prefix tuning gives every decoder layer a prefix; train with --prompt-layers "
                                 "all to export.")
    if config.num_heads * config.head_dim != config.hidden_size:
        raise NotExportableError("peft sizes a prefix by the hidden size, and this model's heads x head_dim differ "
                                 "from it (T5 v1.1): peft cannot hold this prefix.")
    with torch.no_grad():
        ours = (encoder.mlp(encoder.embedding) if encoder.reparameterized else encoder.flat_prefix).detach()
    P, block = ours.shape[0], 2 * config.hidden_size  # per layer: keys then values
    ours = ours.view(P, L, block)
    theirs = torch.zeros_like(ours)
    for j in range(L):
        theirs[:, peft_decoder_slot(j, L)] = ours[:, j]
    if not all(torch.equal(theirs[:, peft_decoder_slot(j, L)], ours[:, j]) for j in range(L)):
        raise NotExportableError(f"peft's seq2seq prefix makes decoder layers j and j + {L // 2} read one slot "
                                 f"({L} layers, an even number), and this prefix gives them different keys and "
                                 "values: it cannot be written in peft's format.")
    adapter = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": P, "prefix_projection": False,
               "encoder_hidden_size": config.hidden_size}
    return write_adapter(directory, {**adapter, **common}, {"prompt_embeddings": theirs.reshape(P, L * block)})
