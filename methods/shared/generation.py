"""Text from a prefix-tuned model (table-to-text): greedy, cached decoding with the method's prefixes.

GPT-2 continues "table ||" (Li & Liang's E2E format); an encoder-decoder (T5, BART) reads the table with
its encoder and writes the text with its decoder, each prefix where the method placed it.
"""
from __future__ import annotations

import torch

from data.batching import table_prompt
from minitransformer import Tokenizer, generate, generate_seq2seq

from methods.shared.text_to_text import is_encoder_decoder


@torch.no_grad()
def generate_texts(method, tokenizer: Tokenizer, sources: list[str], max_new_tokens: int = 60,
                   batch_size: int = 32) -> list[str]:
    """Greedy continuations of "source ||" with the method's prefix (cached decoding), up to eos."""
    method.eval()
    device, texts = next(method.parameters()).device, []
    if is_encoder_decoder(method.backbone):  # T5 / BART: the table to the encoder, the decoder writes
        prefix = method.prefix()
        for start in range(0, len(sources), batch_size):
            batch = tokenizer.encode(sources[start:start + batch_size])
            out = generate_seq2seq(method.backbone, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                   max_new_tokens, eos_id=tokenizer.eos_id, encoder_prefix=prefix.get("encoder"),
                                   decoder_prefix=prefix.get("decoder"), cross_prefix=prefix.get("cross"))
            for row in out[:, 1:].tolist():  # after the start token, up to eos
                texts.append(tokenizer.decode(row[:row.index(tokenizer.eos_id)] if tokenizer.eos_id in row else row).strip())
        return texts
    for start in range(0, len(sources), batch_size):
        batch = tokenizer.encode([table_prompt(s) for s in sources[start:start + batch_size]], padding_side="left",
                                 add_special_tokens=False)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        out = generate(method.backbone, ids, mask, max_new_tokens, eos_id=tokenizer.eos_id, prefix=method.prefix())
        for row in out[:, ids.shape[1]:].tolist():
            texts.append(tokenizer.decode(row[:row.index(tokenizer.eos_id)] if tokenizer.eos_id in row else row).strip())
    return texts
