"""Where prompts go and where heads read: the plumbing the prompt methods share.

Input-level prompts (prompt tuning, P-tuning in peft's layout) are vectors put in front of
the input's token embeddings: they take positions 0..n-1, the attention mask gets ones for
them, and every real token moves n places to the right. A key/value prefix (prefix tuning,
P-tuning v2) adds no positions: the input keeps its layout.

A method knows its own layout, so its forward says where the head reads each row (`read_at`,
one position per row) with `read_positions`, or which span a token head labels. The head
itself only reads.

The "auto" head, one rule for every method (`choose_head`):
  1. a sequence-labelling task gets the token head;
  2. a method that prefers label words (those that prompt at the input, as their papers do:
     prompt tuning, P-tuning), on a model with a language-model head, for a task with a
     verbalizer, gets the verbalizer (the label words' LM scores at the [MASK] or next token);
  3. otherwise a classifier (a new linear layer on [CLS] or the last token).
"""
from __future__ import annotations

import dataclasses
import string

import torch

from data.prompts import label_word
from minitransformer import Tokenizer, Transformer

HEAD_KINDS = ("classifier", "verbalizer", "token")
PLACES = ("encoder", "decoder", "cross")  # where an encoder-decoder's prefixes can go (prefix tuning's --placement)


def choose_head(requested: str, task_kind: str, backbone: Transformer, verbalizer: list[str] | None,
                prefers_label_words: bool) -> str:
    """The head a method gets: `requested` unless it is "auto" (the rule in the module docstring)."""
    if requested != "auto":
        if requested not in HEAD_KINDS:
            raise ValueError(f"Unknown head {requested!r}; choose auto or one of {', '.join(HEAD_KINDS)}.")
        return requested
    if task_kind == "ner":
        return "token"
    if prefers_label_words and backbone.has_lm_head and verbalizer:
        return "verbalizer"
    return "classifier"


def for_task(config, task, backbone: Transformer, prefers_label_words: bool):
    """`config` with the task's first template filled in where the head will read label words and none was given
    (the verbalizer reads the template's [MASK]; without one there is nowhere to read)."""
    if getattr(backbone.config, "is_encoder_decoder", False):
        return config  # text-to-text: the decoder writes the label word, no [MASK] to read
    head = choose_head(config.head, task.kind, backbone, task.verbalizer, prefers_label_words)
    if head == "verbalizer" and config.template is None and task.templates:
        return dataclasses.replace(config, template=task.templates[0])
    return config


def last_real_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, [B], whichever side the padding is on."""
    T = attention_mask.shape[1]
    return T - 1 - attention_mask.flip(1).float().argmax(1).long()


def mask_position(input_ids: torch.Tensor, mask_id: int | None) -> torch.Tensor:
    """Index of each row's [MASK], [B]; an input without one is an error (a cut template, or no {mask})."""
    is_mask = input_ids == mask_id
    if mask_id is None or not bool(is_mask.any(1).all()):
        raise ValueError("The label words are read at the [MASK], but an input has none: use a template with "
                         "{mask} (or a longer max_length, if truncation cut it off).")
    return is_mask.float().argmax(1)


def read_positions(head_kind: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, is_decoder: bool,
                   mask_id: int | None, offset: int = 0) -> torch.Tensor:
    """Where a classifier or verbalizer reads each row, [B]: the last real token (decoder), the [MASK]
    (encoder, verbalizer) or [CLS] at 0 (encoder, classifier); plus `offset` prompt vectors in front."""
    if is_decoder:
        return last_real_token(attention_mask) + offset
    if head_kind == "verbalizer":
        return mask_position(input_ids, mask_id) + offset
    return torch.full_like(input_ids[:, 0], offset)


def check_position_budget(backbone: Transformer, prompt_length: int, input_length: int) -> None:
    """Input-level prompts use up positions: prompt + input must fit the position table (T5 has none)."""
    if getattr(backbone.config, "is_encoder_decoder", False):
        if not backbone.config.max_positions:
            return
        available = backbone.config.max_positions
    else:
        available = backbone.config.max_positions - backbone.config.position_offset
    if prompt_length + input_length > available:
        room = available - prompt_length
        advice = (f"lower --max-length to at most {room} or use fewer prompt vectors" if room > 0 else
                  f"use at most {available - 1} prompt vectors (--num-virtual-tokens), leaving room for the input")
        raise ValueError(f"{prompt_length} prompt vectors + {input_length} input tokens need "
                         f"{prompt_length + input_length} positions, but this {backbone.config.model_type} model "
                         f"has {available}: {advice}.")


def run_with_prompt(backbone: Transformer, prompt: torch.Tensor, batch: dict) -> torch.Tensor:
    """The frozen backbone on [prompt ; input]; prompt (n, H) is computed once and shared by the batch.

    Output: hidden states (B, n + T, H); the real tokens sit at n..n+T-1.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    (B, T), n = input_ids.shape, prompt.shape[0]
    check_position_budget(backbone, n, T)
    words = backbone.word_embeddings(input_ids)                                          # (B, T, H)
    inputs_embeds = torch.cat([prompt.unsqueeze(0).expand(B, -1, -1), words], dim=1)  # (B, n+T, H)
    # Every token may attend to the whole prompt; padding stays masked.
    attention_mask = torch.cat([attention_mask.new_ones(B, n), attention_mask], dim=1)  # (B, n+T)
    token_type_ids = batch.get("token_type_ids")
    if token_type_ids is not None:  # the prompt belongs to the first segment (type 0), as in peft
        token_type_ids = torch.cat([token_type_ids.new_zeros(B, n), token_type_ids], dim=1)
    return backbone(inputs_embeds=inputs_embeds, attention_mask=attention_mask, token_type_ids=token_type_ids)


def encode_with_prompt(backbone, prompt: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """An encoder-decoder's encoder on [prompt ; input] (Lester et al.'s T5 prompt tuning): its hidden
    states (B, n + T, H) and the mask over them, which the decoder's cross-attention reads."""
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    (B, T), n = input_ids.shape, prompt.shape[0]
    check_position_budget(backbone, n, T)
    inputs_embeds = torch.cat([prompt.unsqueeze(0).expand(B, -1, -1), backbone.embed(input_ids)], dim=1)
    attention_mask = torch.cat([attention_mask.new_ones(B, n), attention_mask], dim=1)
    return backbone.encode(inputs_embeds=inputs_embeds, attention_mask=attention_mask), attention_mask


def parse_places(spec: str) -> list[str]:
    """The attentions named by --placement: "all" or a comma-separated subset of encoder, decoder, cross."""
    places = list(PLACES) if spec.strip() == "all" else [p.strip() for p in spec.split(",") if p.strip()]
    unknown = [p for p in places if p not in PLACES]
    if unknown or not places:
        raise ValueError(f"--placement {spec!r}: choose all, or any of {', '.join(PLACES)} separated by commas "
                         "(e.g. encoder,cross).")
    return [p for p in PLACES if p in places]


def parse_layers(spec: str, num_layers: int) -> list[int] | None:
    """0-based indices of the layers named by a 1-based spec like "4-6" or "1,3-4"; None for "all"."""
    if spec.strip() == "all":
        return None
    layers = []
    for part in spec.split(","):
        first, _, last = part.strip().partition("-")
        try:
            start, end = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"--prompt-layers {spec!r} is not understood: write 'all', a layer such as '3', or "
                             "1-based inclusive ranges such as '4-6' or '1,3-4'.") from None
        if not 1 <= start <= end <= num_layers:
            raise ValueError(f"--prompt-layers {spec!r} is outside this model: it has layers 1 to {num_layers} "
                             "(1-based, inclusive ranges such as '4-6').")
        layers.extend(range(start - 1, end))
    return sorted(set(layers))


# ---- P-tuning's templates: where its prompt vectors go among the input's tokens ----------------------

def shape_template(shape: str) -> str:
    """The paper's shape notation "a,b,c" -> "{p:a} {text} {p:b} {mask} {p:c}"."""
    try:
        a, b, c = (int(part) for part in shape.split(","))
    except ValueError:
        raise ValueError(f"--shape takes three counts like 3,3,3 (prompts, input, prompts, [MASK], prompts); "
                         f"got {shape!r}.") from None
    return f"{{p:{a}}} {{text}} {{p:{b}}} {{mask}} {{p:{c}}}"


def parse_template(template: str, tokenizer: Tokenizer, is_decoder: bool, pair: bool) -> list[tuple]:
    """The template as pieces: ("prompt", first, count), ("anchor", ids), ("mask",), ("text",), ("text_pair",)."""
    pieces, used, next_prompt, after_mask = [], [], 0, False
    for literal, field, spec, _ in string.Formatter().parse(template):
        used += [field] if field is not None else []
        if after_mask and is_decoder:  # GPT-2 predicts the label as the next token: the sequence ends at {mask}
            if field in ("text", "text_pair"):
                raise ValueError(f"In {template!r} the input comes after {{mask}}; GPT-2 predicts the next "
                                 "token, so the input must come before it.")
            continue
        if literal.strip():  # anchor text; byte-level BPE gets the space a word has mid-sentence (" ?" is not "?")
            pieces.append(("anchor", tokenizer.token_ids(label_word(literal.strip(), tokenizer))))
        if field == "p":
            if not spec.isdigit():
                raise ValueError(f"A prompt slot is written {{p:N}} with a count N, got {{p:{spec}}} in {template!r}.")
            if int(spec):
                pieces.append(("prompt", next_prompt, int(spec)))
                next_prompt += int(spec)
        elif field == "mask":
            after_mask = True
            pieces += [] if is_decoder else [("mask",)]
        elif field in ("text", "text_pair"):
            pieces.append((field,))
        elif field is not None:
            raise ValueError(f"Unknown slot {{{field}}} in template {template!r}; use {{p:N}}, {{text}}, "
                             "{text_pair} and {mask}.")
    if used.count("text") != 1 or used.count("mask") > 1 or used.count("text_pair") > 1:
        raise ValueError(f"Template {template!r} needs {{text}} exactly once and {{mask}}, {{text_pair}} at most once.")
    if "text_pair" in used and (not pair or is_decoder):
        raise ValueError("{text_pair} needs a pair task and an encoder (its separator marks where the pair "
                         "starts); use {text} alone for the whole input.")
    if next_prompt == 0:
        raise ValueError(f"Template {template!r} has no prompt vectors: add {{p:N}} slots.")
    return pieces
