"""Text generation for the decoder (GPT-2) with a key/value cache.

The cache is the model's `prefix` hook: after the prompt has been read, each
layer's keys and values are handed back in as a prefix, so each new token costs
one position of work. A trained prefix (prefix tuning) is simply where the cache
starts.
"""
from __future__ import annotations

import torch

from .model import GrowingKeyValue, KeyValue, Transformer


@torch.no_grad()
def generate(model: Transformer, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             max_new_tokens: int = 20, temperature: float = 0.0, top_k: int | None = None,
             eos_id: int | None = None, pad_id: int | None = None, prefix: list[KeyValue | None] | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue each row of a padded batch; returns [B, T + new] ids like Hugging Face's generate.

    The new tokens follow each row's last real token, so the batch must be left-padded: a right-padded
    one is moved to left padding first (the rows that come back are left-padded).

    temperature 0 is greedy decoding; otherwise sample from softmax(logits / temperature),
    optionally among the top_k tokens only. A row that produced `eos_id` is filled with
    `pad_id` (default: eos) and generation stops when every row has finished.
    """
    if not model.config.is_decoder:
        raise ValueError("generate() needs a decoder (GPT-2); this is an encoder.")
    eos_id = model.config.eos_token_id if eos_id is None else eos_id
    pad_id = eos_id if pad_id is None else pad_id
    B, T = input_ids.shape
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    if bool((attention_mask[:, -1] == 0).any()):  # right padding: a stable sort puts each row's padding first
        order = torch.argsort(attention_mask.long(), dim=1, stable=True)
        input_ids, attention_mask = input_ids.gather(1, order), attention_mask.gather(1, order)
    P = next((p[0].shape[2] for p in (prefix or []) if p is not None), 0)
    # Positions count real tokens only, so left padding does not shift them; a prefix shifts them by P.
    positions = P + attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 0)
    mask = torch.cat([torch.ones(B, P, dtype=attention_mask.dtype, device=input_ids.device), attention_mask], 1)

    hidden, cache = model(input_ids, attention_mask=mask, position_ids=positions, prefix=prefix, return_cache=True)
    cache = [GrowingKeyValue(keys, values, keys.shape[2] + max_new_tokens) for keys, values in cache]
    sequences, finished = input_ids, torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    next_position = positions[:, -1:] + 1
    for _ in range(max_new_tokens):
        logits = model.lm_logits(hidden[:, -1]).float()  # (B, V)
        if temperature > 0:
            logits = logits / temperature
            if top_k is not None:
                kth_best = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth_best, float("-inf"))
            next_token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
        else:
            next_token = logits.argmax(-1)
        next_token = torch.where(finished, torch.full_like(next_token, pad_id), next_token)
        sequences = torch.cat([sequences, next_token[:, None]], dim=1)
        if eos_id is not None:
            finished |= next_token == eos_id
        if finished.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        hidden = model(next_token[:, None], attention_mask=mask, position_ids=next_position, prefix=cache)
        next_position = next_position + 1
    return sequences
