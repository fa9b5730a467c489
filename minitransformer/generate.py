"""Text generation with a key/value cache: for the decoder (GPT-2) and for encoder–decoders (T5, BART).

The cache is the model's `prefix` hook: after the prompt has been read, each
layer's keys and values are handed back in as a prefix, so each new token costs
one position of work. A trained prefix (prefix tuning) is simply where the cache
starts. An encoder–decoder reads its input once: the encoder's output, turned into
each decoder layer's cross-attention keys and values (after a cross prefix, if any),
serves every step.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from .model import (GrowingKeyValue, KeyValue, Transformer, autocast_dtype, cast_frozen_weights_once, decoding_layout,
                    is_autocast_on)
from .seq2seq import EncoderDecoder


# New tokens from which generation makes oneDNN's blocked copies of the weights (model.decoding_layout).
BLOCKED_COPIES_FROM = 16


def weights_of(model: Transformer | EncoderDecoder) -> list[torch.Tensor]:
    """The matrices a decoding step multiplies rows by: every projection's weight (a module's 2-D weight that is
    not an embedding table) and the LM head (GPT-2's is its token embeddings)."""
    head = model.lm_head if getattr(model, "lm_head", None) is not None else model.word_embeddings
    projections = [m.weight for m in model.modules() if not isinstance(m, nn.Embedding)
                   and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2]
    return projections + [head.weight]


@contextmanager
def decoding(model: Transformer | EncoderDecoder, max_new_tokens: int):
    """The decoding loop's context: on a CPU, faster products of a few rows by each weight (model.decoding_layout;
    the blocked copies pay for themselves after ~10 steps, so shorter generations go without them); under autocast
    (bf16 on a GPU), the frozen weights cast once for the whole generation instead of at every step
    (model.cast_frozen_weights_once: a decoding step is a few rows per weight, so it is bound by launching kernels
    and reading weights, and a cast is both); blocks compiled by model.compile_blocks run eagerly, since every
    step's shapes are new to the compiler."""
    eager = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") else nullcontext()
    device = next(model.parameters()).device.type
    low_precision = autocast_dtype(device) if is_autocast_on(device) else None
    with (eager, decoding_layout(weights_of(model), blocked_copies=max_new_tokens >= BLOCKED_COPIES_FROM),
          cast_frozen_weights_once(model, low_precision)):
        yield


def choose_next(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
                ) -> torch.Tensor:
    """Greedy (temperature 0) or a sample from softmax(logits / temperature), among the top_k tokens if given."""
    logits = logits.float()  # (B, V)
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)


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
    if isinstance(model, EncoderDecoder):
        raise ValueError("generate() continues a decoder's text; for T5 / BART use generate_seq2seq().")
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
    with decoding(model, max_new_tokens):
        for _ in range(max_new_tokens):
            next_token = choose_next(model.lm_logits(hidden[:, -1]), temperature, top_k, generator)
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


@torch.no_grad()
def generate_seq2seq(model: EncoderDecoder, input_ids: torch.Tensor | None = None,
                     attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20, temperature: float = 0.0,
                     top_k: int | None = None, eos_id: int | None = None, pad_id: int | None = None,
                     inputs_embeds: torch.Tensor | None = None, encoder_prefix: list | None = None,
                     decoder_prefix: list | None = None, cross_prefix: list | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Decode each row of a (right-)padded input batch: [B, 1 + new] ids, starting with the decoder's start
    token, like Hugging Face's generate for T5 and BART (greedy, or sampling as in `generate`).

    Prefixes go where they went in training: the encoder's self-attention, the decoder's (the cache starts
    from it) and cross-attention (its columns sit beside the encoder's outputs in every step's memory)."""
    if not isinstance(model, EncoderDecoder):
        raise ValueError("generate_seq2seq() needs an encoder-decoder (T5, BART); for GPT-2 use generate().")
    config = model.config
    eos_id = config.eos_token_id if eos_id is None else eos_id
    pad_id = config.pad_token_id if pad_id is None else pad_id
    encoder_hidden = model.encode(input_ids, attention_mask, inputs_embeds, encoder_prefix)
    memory = model.memory(encoder_hidden, attention_mask, cross_prefix)  # once for every step
    B, device = encoder_hidden.shape[0], encoder_hidden.device
    sequences = torch.full((B, 1), config.decoder_start_token_id, dtype=torch.long, device=device)
    hidden, cache = model.decode(sequences, memory, prefix=decoder_prefix, return_cache=True)
    cache = [GrowingKeyValue(keys, values, keys.shape[2] + max_new_tokens) for keys, values in cache]
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    with decoding(model, max_new_tokens):
        for _ in range(max_new_tokens):
            next_token = choose_next(model.lm_logits(hidden[:, -1]), temperature, top_k, generator)
            next_token = torch.where(finished, torch.full_like(next_token, pad_id), next_token)
            sequences = torch.cat([sequences, next_token[:, None]], dim=1)
            finished |= next_token == eos_id
            if finished.all():
                break
            hidden = model.decode(next_token[:, None], memory, prefix=cache)
    return sequences
