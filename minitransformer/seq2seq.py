"""Encoder–decoder Transformers: T5 and BART, one readable model for both.

References: Vaswani et al. 2017 (the encoder–decoder), Raffel et al. 2020 (T5: relative position
buckets, RMS norms, no biases; v1.1 and FLAN-T5 add the gated-GELU feed-forward), Lewis et al. 2020
(BART: a BERT-like post-norm encoder and a GPT-like decoder). The switches are in Seq2SeqConfig.

    encoder:  tokens (+ a soft prompt) -> self-attention, feed-forward, x num_layers -> memory [B, S, H]
    decoder:  targets shifted right -> causal self-attention, cross-attention over the memory,
              feed-forward, x num_decoder_layers -> hidden [B, T, H] -> lm_logits [B, T, V]

Prompt methods plug in at the same two places as in model.py, in three attentions:

* `inputs_embeds` of the encoder (prompt tuning, P-tuning: Lester et al. prepended the prompt there).
* prefixes, one entry per layer, each None or (keys, values) [B or 1, heads, P, head_dim]:
  `encoder_prefix` (encoder self-attention), `decoder_prefix` (decoder self-attention) and
  `cross_prefix` (cross-attention: P key/value columns beside the encoder's S outputs).

Conventions, as in model.py and tested against Hugging Face transformers:

* Masks are [B, S] / [B, T] over the real tokens; every token sees every prefix column. The decoder
  is causal among its tokens: decoder query i sees self-attention key j (counted with the prefix)
  when j <= P + i.
* A self-attention prefix of length P counts as P earlier positions (Hugging Face's past key/values):
  the tokens take positions P, P+1, ... for BART's learned positions and T5's relative buckets alike;
  cross-attention has no positions (T5's bias there is zero; BART has none).
* Outputs at padding positions are zeros (the blocks skip the padding, as model.py's `Padding`
  does; transformers computes numbers there that nothing should read). Decoder inputs are
  right-padded; encoder inputs are right-padded too (BART numbers positions straight through the
  padding, as transformers does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import Seq2SeqConfig
from .model import ACTIVATIONS, Dropout, GrowingKeyValue, KeyValue, Linear, Padding, attention_kernels, linear


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
                             ) -> torch.Tensor:
    """T5's bucket of each (key position - query position): exact for small distances, logarithmic
    bins up to max_distance, one bucket beyond. The encoder tells left from right (half the buckets
    each); the causal decoder only looks left."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = num_buckets // 2
    far = exact + (torch.log(distance.float() / exact) / math.log(max_distance / exact)
                   * (num_buckets - exact)).long()
    return buckets + torch.where(distance < exact, distance, far.clamp(max=num_buckets - 1))


def hide(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as an additive bias: 0 where allowed, the dtype's lowest number elsewhere (as
    transformers does; -inf would give NaN in a row that may see nothing)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


class Attention(nn.Module):
    """Multi-head attention over the queries' own tokens (self) or over given keys and values (cross).

    Separate query/key/value/output projections, named as in model.py, so LoRA wraps them alike.
    T5 has no biases and does not divide by sqrt(head_dim)."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        inner, bias = config.num_heads * config.head_dim, not config.is_t5
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.query = Linear(config.hidden_size, inner, bias=bias)
        self.key = Linear(config.hidden_size, inner, bias=bias)
        self.value = Linear(config.hidden_size, inner, bias=bias)
        self.output = Linear(inner, config.hidden_size, bias=bias)
        self.scale = 1.0 if config.is_t5 else config.head_dim ** -0.5
        self.dropout = Dropout(config.attention_dropout, config.fast)  # on the attention weights
        self.fast = config.fast

    def split(self, x: torch.Tensor, padding: Padding) -> torch.Tensor:
        """[N, inner] (the real tokens) -> (B, nh, T, hd), zeros at the padding."""
        return padding.pad(x).view(padding.B, padding.T, self.num_heads, self.head_dim).transpose(1, 2)

    def keys_values(self, source: torch.Tensor, padding: Padding) -> KeyValue:
        return self.split(self.key(source), padding), self.split(self.value(source), padding)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, padding: Padding, prefix: KeyValue | None = None,
                keys_values: KeyValue | None = None) -> tuple[torch.Tensor, KeyValue]:
        """x: the real tokens [N, H] (see model.Padding); `bias` [B or 1, nh or 1, T, keys] is added to the
        scores (mask and positions). Self-attention: keys and values from x, after the prefix (or appended
        to a generation cache). Cross-attention: `keys_values`, computed once from the encoder's output."""
        B, T = padding.B, padding.T
        q = self.split(self.query(x), padding)
        if keys_values is not None:
            k, v = keys_values
        else:
            k, v = self.keys_values(x, padding)
            if isinstance(prefix, GrowingKeyValue):
                k, v = prefix.append(k, v)
            elif prefix is not None:
                k = torch.cat([prefix[0].expand(B, -1, -1, -1).to(k.dtype), k], dim=2)
                v = torch.cat([prefix[1].expand(B, -1, -1, -1).to(v.dtype), v], dim=2)
        bias = None if bias is None else bias.to(q.dtype)
        if self.fast and self.training and self.dropout.p > 0 and q.device.type == "cpu":
            # as in model.Attention: SDPA would drop attention weights with the slow draw; the same math by hand
            scores = q @ k.transpose(-2, -1) * self.scale
            y = self.dropout((scores if bias is None else scores + bias).softmax(-1)) @ v
        else:
            with attention_kernels(q.device):  # not cuDNN's: a plan per input shape (model.attention_kernels)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale,
                                                   dropout_p=self.dropout.p if self.training else 0.0)
        return self.output(padding.unpad(y.transpose(1, 2).reshape(B, T, -1))), (k, v)


class FeedForward(nn.Module):
    """up, activation (times a gate in T5 v1.1: act(gate x) * up x), dropout, down."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        bias = not config.is_t5
        self.gate = Linear(config.hidden_size, config.intermediate_size, bias=bias) if config.gated else None
        self.up = Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down = Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.activation = ACTIVATIONS[config.activation]
        self.dropout = Dropout(config.activation_dropout, config.fast)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(self.gate(x)) * self.up(x) if self.gate is not None else self.activation(self.up(x))
        return self.down(self.dropout(h))


def norm(config: Seq2SeqConfig) -> nn.Module:
    # T5: scale only, no mean subtracted (RMS norm, Zhang & Sennrich 2019); BART: the usual layer norm
    if config.is_t5:
        return nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class Block(nn.Module):
    """Self-attention, (in the decoder) cross-attention, feed-forward; each a residual sublayer.

    T5 is pre-norm, x = x + f(norm(x)); BART post-norm, x = norm(x + f(x)). The adapters hook in
    before each residual sum, as in model.Block."""

    def __init__(self, config: Seq2SeqConfig, cross: bool):
        super().__init__()
        self.pre_norm = config.is_t5
        self.attention, self.attention_norm = Attention(config), norm(config)
        self.cross_attention = Attention(config) if cross else None
        self.cross_norm = norm(config) if cross else None
        self.mlp, self.mlp_norm = FeedForward(config), norm(config)
        self.dropout = Dropout(config.hidden_dropout, config.fast)
        self.attention_adapter: nn.Module = nn.Identity()
        self.cross_adapter: nn.Module = nn.Identity()
        self.mlp_adapter: nn.Module = nn.Identity()

    def residual(self, x, layer_norm, sublayer, adapter):
        if self.pre_norm:
            return x + adapter(self.dropout(sublayer(layer_norm(x))))
        return layer_norm(x + adapter(self.dropout(sublayer(x))))

    def forward(self, x, bias, padding, prefix=None, memory: KeyValue | None = None, memory_bias=None):
        keys_values = []  # this layer's self-attention keys and values (the generation cache keeps them)

        def attend(h):
            out, kv = self.attention(h, bias, padding, prefix)
            keys_values.append(kv)
            return out
        x = self.residual(x, self.attention_norm, attend, self.attention_adapter)
        if self.cross_attention is not None:
            cross = lambda h: self.cross_attention(h, memory_bias, padding, keys_values=memory)[0]
            x = self.residual(x, self.cross_norm, cross, self.cross_adapter)
        return self.residual(x, self.mlp_norm, self.mlp, self.mlp_adapter), keys_values[0]


class Stack(nn.Module):
    """The encoder (decoder=False) or the decoder: positions, layers, and T5's final norm."""

    def __init__(self, config: Seq2SeqConfig, decoder: bool):
        super().__init__()
        self.config, self.is_decoder = config, decoder
        count = config.num_decoder_layers if decoder else config.num_layers
        self.layers = nn.ModuleList(Block(config, cross=decoder) for _ in range(count))
        H = config.hidden_size
        # T5: one bias per (bucket, head), computed once and added in every layer; BART: learned positions
        self.relative_attention_bias = nn.Embedding(config.relative_buckets, config.num_heads) if config.is_t5 else None
        self.position_embeddings = None if config.is_t5 else nn.Embedding(config.max_positions + config.position_offset, H)
        self.embedding_norm = None if config.is_t5 else nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.final_norm = norm(config) if config.is_t5 else None
        self.dropout = Dropout(config.hidden_dropout, config.fast)
        self.gradient_checkpointing = False  # as in model.Transformer: keep each layer's inputs, redo the rest

    def position_bias(self, T: int, P: int, device) -> torch.Tensor:
        """T5's (1, heads, T, P+T) bias for queries at positions P.. and keys at 0..P+T-1."""
        queries = torch.arange(P, P + T, device=device)[:, None]
        keys = torch.arange(P + T, device=device)[None, :]
        buckets = relative_position_bucket(keys - queries, not self.is_decoder, self.config.relative_buckets,
                                           self.config.relative_max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None, prefix: list | None = None,
                memory: list[KeyValue] | None = None, memory_bias: torch.Tensor | None = None,
                return_cache: bool = False):
        """x: token embeddings [B, T, H]; returns hidden states [B, T, H] (and each layer's keys, values)."""
        B, T, _ = x.shape
        prefix = prefix if prefix is not None else [None] * len(self.layers)
        if len(prefix) != len(self.layers):
            raise ValueError(f"prefix has {len(prefix)} entries; the {'decoder' if self.is_decoder else 'encoder'} "
                             f"has {len(self.layers)} layers (use None for a layer without a prefix).")
        lengths = [0 if p is None else p[0].shape[2] for p in prefix]
        P = max(lengths)
        if self.position_embeddings is not None:
            if P + T > self.config.max_positions:
                raise ValueError(f"{T} tokens after {P} prefix positions need position {P + T - 1}, but the "
                                 f"position table has {self.config.max_positions}: shorten the input or the prefix.")
            x = x + self.position_embeddings(torch.arange(P, P + T, device=x.device) + self.config.position_offset)
            x = self.embedding_norm(x)
        keys = torch.ones(B, P + T, dtype=torch.bool, device=x.device)
        if attention_mask is not None:
            keys[:, P:] = attention_mask[:, -T:].bool()
        allowed = keys[:, None, None, :]  # (B, 1, 1, P+T)
        if self.is_decoder:
            allowed = allowed & (torch.arange(P + T, device=x.device)[None, :] <= P + torch.arange(T, device=x.device)[:, None])
        bias = hide(allowed, x.dtype)
        if self.relative_attention_bias is not None:
            bias = bias + self.position_bias(T, P, x.device)
        # fast: the blocks carry the N real tokens [N, H], re-padded inside attention (model.Padding)
        padding = Padding(attention_mask if self.config.fast else None, B, T)
        x = self.dropout(padding.unpad(x))
        cache = []
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, (layer, layer_prefix, length) in enumerate(zip(self.layers, prefix, lengths)):
            inputs = (x, bias[..., P - length:], padding, layer_prefix, None if memory is None else memory[i],
                      memory_bias)  # the prefix and the memory stay inputs of a recomputed layer
            x, kv = checkpoint(layer, *inputs, use_reentrant=False) if recompute else layer(*inputs)
            cache.append(kv)
        if self.final_norm is not None:
            x = self.dropout(self.final_norm(x))
        x = padding.pad(x)  # (B, T, H), zeros at the padding
        return (x, cache) if return_cache else x


@dataclass
class Memory:
    """What the decoder reads of the encoder, computed once per input: each decoder layer's cross-attention
    keys and values (after its cross prefix, if any) and the mask over them as a bias."""
    keys_values: list[KeyValue]
    bias: torch.Tensor  # (B, 1, 1, P + S)


class EncoderDecoder(nn.Module):
    """T5 or BART, chosen by `config.model_type`. See the module docstring for shapes and conventions."""

    def __init__(self, config: Seq2SeqConfig, tied_lm_head: bool = True):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.encoder, self.decoder = Stack(config, decoder=False), Stack(config, decoder=True)
        # T5 v1.1 / flan-t5 keep an LM head of their own; t5 v1.0 and BART read the embeddings
        self.lm_head = None if tied_lm_head else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if not config.is_t5:
            self.register_buffer("final_logits_bias", torch.zeros(config.vocab_size))
        self.embed_scale = math.sqrt(config.hidden_size) if config.scale_embedding else 1.0

    has_lm_head = True

    @property
    def gradient_checkpointing(self) -> bool:
        return self.encoder.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:  # both stacks (the pipeline's --gradient-checkpointing)
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = on

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids) * self.embed_scale

    def encode(self, input_ids=None, attention_mask=None, inputs_embeds=None, prefix=None) -> torch.Tensor:
        """The encoder's hidden states [B, S, H]; a soft prompt goes in through inputs_embeds."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        return self.encoder(x, attention_mask, prefix)

    def memory(self, encoder_hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               cross_prefix: list | None = None) -> Memory:
        """Each decoder layer's cross-attention keys and values of the encoder output, after its cross prefix."""
        B, S, _ = encoder_hidden.shape
        layers = self.decoder.layers
        cross_prefix = cross_prefix if cross_prefix is not None else [None] * len(layers)
        if len(cross_prefix) != len(layers):
            raise ValueError(f"cross_prefix has {len(cross_prefix)} entries; the decoder has {len(layers)} layers.")
        P = max((0 if p is None else p[0].shape[2]) for p in cross_prefix)
        keys_values, whole = [], Padding(None, B, S)
        for layer, prefix in zip(layers, cross_prefix):
            k, v = layer.cross_attention.keys_values(encoder_hidden.reshape(B * S, -1), whole)
            if prefix is not None:
                k = torch.cat([prefix[0].expand(B, -1, -1, -1).to(k.dtype), k], dim=2)
                v = torch.cat([prefix[1].expand(B, -1, -1, -1).to(v.dtype), v], dim=2)
            keys_values.append((k, v))
        if any(kv[0].shape[2] != P + S for kv in keys_values):
            raise ValueError("every cross prefix must have the same length (give all layers one, or none)")
        allowed = torch.ones(B, P + S, dtype=torch.bool, device=encoder_hidden.device)
        if attention_mask is not None:
            allowed[:, P:] = attention_mask.bool()
        return Memory(keys_values, hide(allowed[:, None, None, :], encoder_hidden.dtype))

    def decode(self, decoder_input_ids: torch.Tensor, memory: Memory, attention_mask=None, prefix=None,
               return_cache: bool = False):
        """The decoder's hidden states [B, T, H] (and each layer's self-attention keys and values)."""
        return self.decoder(self.embed(decoder_input_ids), attention_mask, prefix, memory.keys_values, memory.bias,
                            return_cache)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                inputs_embeds=None, encoder_prefix=None, decoder_prefix=None, cross_prefix=None) -> torch.Tensor:
        """Decoder hidden states [B, T, H] for `decoder_input_ids` (the targets shifted right: shift_right)."""
        if decoder_input_ids is None:
            raise ValueError("Pass decoder_input_ids (the targets shifted right: model.shift_right(labels)).")
        encoder_hidden = self.encode(input_ids, attention_mask, inputs_embeds, encoder_prefix)
        mask = None if attention_mask is None else attention_mask
        if inputs_embeds is not None and mask is not None and mask.shape[1] != encoder_hidden.shape[1]:
            raise ValueError("attention_mask must cover every encoder input, the prompt included.")
        return self.decode(decoder_input_ids, self.memory(encoder_hidden, mask, cross_prefix),
                           decoder_attention_mask, decoder_prefix)

    def lm_logits(self, hidden: torch.Tensor, vocab_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary logits [..., V] of decoder states, or only the columns `vocab_ids` (label words)."""
        if self.config.scale_decoder_outputs:  # T5 v1.0's tied head (Mesh TensorFlow's rescaling)
            hidden = hidden * self.config.hidden_size ** -0.5
        weight = (self.lm_head.weight if self.lm_head is not None else self.word_embeddings.weight)
        weight = weight if vocab_ids is None else weight[vocab_ids]
        logits = linear(hidden, weight)
        if not self.config.is_t5:
            logits = logits + (self.final_logits_bias if vocab_ids is None else self.final_logits_bias[vocab_ids])
        return logits

    def shift_right(self, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Decoder inputs for teacher forcing: the start token, then the labels but the last (ignored
        positions read as padding)."""
        start = torch.full_like(labels[:, :1], self.config.decoder_start_token_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == ignore_index, self.config.pad_token_id)
