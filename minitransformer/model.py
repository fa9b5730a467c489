"""One Transformer for BERT, RoBERTa (encoders) and GPT-2 (decoder).

References: Vaswani et al. 2017 (the Transformer), Devlin et al. 2019 (BERT,
post-norm encoder), Radford et al. 2019 (GPT-2, pre-norm causal decoder).

Prompt methods plug in through two arguments of `Transformer.forward`:

* `inputs_embeds` [B, T, H]: embeddings instead of token ids (soft prompts, P-tuning).
* `prefix`: one entry per layer, each None or a pair (keys, values) of shape
  [B or 1, heads, P, head_dim], prepended inside that layer's attention
  (prefix tuning, P-tuning v2). The generation cache is the same thing (kept in
  preallocated buffers, `GrowingKeyValue`, so that it grows without copies).

Conventions (those of Hugging Face transformers, tested against it):

* Attention mask: [B, T] over the real tokens, or [B, P + T] if it already covers
  the prefix; a [B, T] mask gets ones for the P prefix columns, so every token
  sees the whole prefix. The decoder stays causal among real tokens: query i
  may see key j (counted with the prefix) when j <= P + i.
* Position ids: with a key/value prefix of length P, real tokens take positions
  P, P+1, ... (Hugging Face treats the prefix as past key/values); in the decoder they
  count real tokens only, so a left-padded row reads as it would alone. Prompts given
  through `inputs_embeds` are ordinary tokens and take positions 0..P-1.
  RoBERTa adds padding_idx + 1 to every position and, given token ids, skips
  padding (fairseq's make_positions); given `inputs_embeds` it cannot see padding
  and counts straight through. Explicit `position_ids` override all of this.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # torch < 2.3: no cuDNN attention to avoid either
    sdpa_kernel = None

from .config import TransformerConfig

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}

KeyValue = tuple[torch.Tensor, torch.Tensor]


def attention_kernels(device: torch.device):
    """Where SDPA may run: on a GPU, any fused kernel but cuDNN's.

    PyTorch may pick cuDNN's attention on recent GPUs, and cuDNN builds a plan for every new input shape: on an
    H200 a training step on a batch of a length not seen before took 163 ms instead of 17
    (README, "Speed on a GPU"). Batches of sentences come in many lengths, so a run kept paying it; flash / memory-efficient attention
    is as fast once warm and needs no plan."""
    if sdpa_kernel is None or device.type != "cuda":
        return nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


# A generation step multiplies one row per sequence by each weight: up to this many rows count as "a few".
FEW_ROWS = 32
# Below this size (or this many inputs) a weight stays in the CPU's caches and F.linear is the faster form.
LARGE_WEIGHT, LARGE_INPUT = 2 ** 17, 128


def is_large(weight: torch.Tensor) -> bool:
    """Whether a few rows times `weight` is worth a form of its own while generating on a CPU."""
    return weight.numel() >= LARGE_WEIGHT and weight.shape[1] >= LARGE_INPUT


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias: F.linear, except for a few rows times a weight that `decoding_layout` prepared.

    Why: a generation step multiplies a handful of rows by every weight, so it is bound by how fast the
    weights come from memory, and MKL reads them at only 4-8 GB/s through x @ W.T. While generating on a CPU
    (`decoding_layout`), two faster forms (`python benchmarks/small_matmul.py` measures them on your machine):
    - oneDNN's kernel on a copy of the weight laid out in its own blocks: about twice F.linear's speed on the
      whole of GPT-2 small (3x on its 50257 x 768 LM head at 8 rows);
    - where PyTorch lacks that kernel, (W @ x.T).T: 1.2-2x.
    The sums run in another order, so those results agree with F.linear to float rounding (about 1e-6), not
    bit for bit; outside generation (training, evaluation) every product is F.linear, and keeps its numbers."""
    layout = getattr(weight, "decoding_layout", None)  # (weight's version when laid out, blocked copy or None)
    if layout is None:  # training, evaluation: nothing more to look at on this hot path
        return F.linear(x, weight, bias)
    rows = math.prod(x.shape[:-1])
    if (layout[0] != weight._version  # the weight changed since it was laid out: the copy is stale
            or rows > FEW_ROWS or torch.is_grad_enabled() or x.dtype != weight.dtype or x.device.type != "cpu"):
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, -1)  # (rows, in)
    if layout[1] is not None:
        out = torch.ops.mkldnn._linear_pointwise(flat, layout[1], bias, "none", [], "")  # (rows, out)
    else:
        out = (weight @ flat.T if bias is None else torch.addmm(bias[:, None], weight, flat.T)).T.contiguous()
    return out.view(*x.shape[:-1], weight.shape[0])


@contextmanager
def decoding_layout(weights: list[torch.Tensor], blocked_copies: bool = True):
    """While inside, `linear` multiplies a few rows by each of these weights (the large fp32 ones on a CPU) in a
    faster form: oneDNN's kernel on a copy of the weight in its blocked layout (what PyTorch's compiler calls
    weight prepacking), made on entering and dropped on leaving. The copies cost a second copy of those weights
    meanwhile and time to make (0.3-0.5 s for GPT-2 small here, about what 10 decoding steps save), so
    blocked_copies=False skips them for a short generation. The copy is a snapshot: a weight changed inside
    goes back to F.linear. The ops are PyTorch's internal ones (torch.ops.mkldnn); without copies, or where
    the ops are missing (a build without oneDNN), the (W @ x.T).T form serves. Under autocast nothing changes
    (its rows would not be fp32)."""
    if is_autocast_on("cpu"):
        yield
        return
    weights = [w for w in {id(w): w for w in weights}.values()  # each once: a tied weight may come twice
               if w.device.type == "cpu" and w.dtype == torch.float32 and w.dim() == 2 and is_large(w)]
    blocked = (blocked_copies and torch.backends.mkldnn.is_available()
               and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))
    for weight in weights:
        copy = None
        if blocked:
            try:
                copy = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), FEW_ROWS)
            except RuntimeError:  # this build's oneDNN cannot: (W @ x.T).T for all of them
                blocked = False
        weight.decoding_layout = (weight._version, copy)
    try:
        yield
    finally:
        for weight in weights:
            if hasattr(weight, "decoding_layout"):  # an inner decoding_layout may have dropped it already
                del weight.decoding_layout


def is_autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


@contextmanager
def cast_frozen_weights_once(model: nn.Module, dtype: torch.dtype | None):
    """While inside, the frozen weights and biases of `model`'s linear layers (Linear, and any layer that declares
    a `cast` attribute and reads it with `kept_weights`, as LoRA's) are kept cast to `dtype` (the one autocast runs
    the products in: bf16 or fp16; None: nothing to do) and used under autocast instead of the fp32 ones, which
    autocast would cast again at every product (its own cache keeps only tensors that require grad, and only for
    one autocast region). Each Attention keeps its query/key/value weights stacked (queries_keys_values); their
    own copies are views of that one.

    Why: on a GPU at the course's batch sizes a step waits on launching kernels (README, "Speed on a GPU"), and with
    a frozen backbone these are 8 casts and 2 stacks a layer, of about 90 operators a layer in all (counted by
    benchmarks/host_bound.py, where attention is some 40 of them; on a GPU it is 2). The copies are the ones
    autocast makes, so the numbers do not change; they cost half the memory of those fp32 weights in bf16 until
    the block ends. A weight changed in place or made trainable inside the block is used as itself again (the
    copy remembers its version); the other layers' frozen weights (poolers, LM heads) are cast as before."""
    modules = [m for m in model.modules() if hasattr(type(m), "cast")] if dtype is not None else []
    previous = [m.cast for m in modules]
    frozen = lambda *tensors: not any(t.requires_grad for t in tensors)
    with torch.no_grad():
        for module in modules:  # parents before children: an Attention before its projections
            if module.cast is not None:  # kept by an enclosing block, or as a view of its Attention's stack
                continue
            if isinstance(module, Attention) and module.stacks_projections(grad=True, autocast=True):
                projections = (module.query, module.key, module.value)
                weights, biases = [p.weight for p in projections], [p.bias for p in projections]
                if frozen(*weights):  # trainable biases (BitFit) are stacked at each product: None here
                    bias = torch.cat(biases).to(dtype) if frozen(*biases) else None
                    sources = weights + (biases if bias is not None else [])
                    module.cast = KeptCast(torch.cat(weights).to(dtype), bias, sources)
                    own_biases = biases if bias is None else bias.chunk(3)
                    for p, weight, own_bias in zip(projections, module.cast.weight.chunk(3), own_biases):
                        p.cast = KeptCast(weight, own_bias, [p.weight] + ([p.bias] if bias is not None else []))
            elif not isinstance(module, Attention) and frozen(module.weight):
                # a trainable bias (BitFit) stays itself: autocast casts it at each product, so its gradient flows
                keep_bias = module.bias is not None and frozen(module.bias)
                module.cast = KeptCast(module.weight.to(dtype), module.bias.to(dtype) if keep_bias else module.bias,
                                       [module.weight] + ([module.bias] if keep_bias else []))
    try:
        yield
    finally:
        for module, kept in zip(modules, previous):
            module.cast = kept


class KeptCast:
    """A layer's weight and bias kept in a low precision by cast_frozen_weights_once, with the frozen tensors they
    were made from and those tensors' versions at the time."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, sources: list[torch.Tensor]):
        self.weight, self.bias, self.sources = weight, bias, sources
        self.versions = [t._version for t in sources]

    def usable(self, x: torch.Tensor) -> bool:
        """Under autocast to the copy's dtype, its sources still frozen and unchanged (in a compiled block the
        versions are not looked at: the compiler cannot read them)."""
        if not is_autocast_on(x.device.type) or autocast_dtype(x.device.type) != self.weight.dtype:
            return False
        if any([t.requires_grad for t in self.sources]):
            return False
        return is_compiling() or [t._version for t in self.sources] == self.versions


# Looked up once, not at every product (torch < 2.3 has no torch.compiler.is_compiling).
is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def kept_weights(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (weight, bias) a linear layer multiplies `x` by: its kept copies (cast_frozen_weights_once) where usable,
    else its own parameters (autocast, if on, casts them)."""
    kept = layer.cast
    if kept is not None and kept.usable(x):
        return kept.weight, kept.bias
    return layer.weight, layer.bias


def autocast_dtype(device_type: str) -> torch.dtype:
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) computed by `linear`: faster in a generation step; inside
    cast_frozen_weights_once, with its frozen weight and bias cast once for the whole block."""
    cast: KeptCast | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, *kept_weights(self, x))


class GrowingKeyValue:
    """One layer's generation cache in buffers allocated once for the whole generation.

    Handing the cache back as a plain (keys, values) prefix would make attention copy all of it
    (torch.cat) at every new token, which on CPU took about as long as the layers' matrix products;
    here each step writes its new columns in place and attention reads a view of the filled part.
    Indexing gives that view, as for a (keys, values) pair.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        B, heads, self.length, head_dim = keys.shape
        self.buffer = keys.new_empty(2, B, heads, capacity, head_dim)
        self.buffer[0, :, :, :self.length], self.buffer[1, :, :, :self.length] = keys, values

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.buffer[index, :, :, :self.length]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> KeyValue:
        """Write the new columns after the filled ones; returns all keys and values so far."""
        end = self.length + keys.shape[2]
        if end > self.buffer.shape[3]:
            raise ValueError(f"the generation cache holds {self.buffer.shape[3]} positions; {end} are needed")
        self.buffer[0, :, :, self.length:end], self.buffer[1, :, :, self.length:end] = keys, values
        self.length = end
        return self[0], self[1]


class Padding:
    """Where the real tokens of a padded [B, T] batch are, so that token-wise layers skip the padding.

    About half of a batch of short sentences is padding. Every layer but attention works on each
    token alone (linear maps, layer norms, dropout), so the blocks carry the N real tokens packed
    as [N, H] and re-pad them only inside attention: same numbers, N / (B x T) of the work (the
    unpadding of FlashAttention's BERT). Without padding, or on the plain path (config.fast=False),
    `rows` is None and both moves are reshapes: the blocks then run on all B x T positions.
    """

    def __init__(self, attention_mask: torch.Tensor | None, B: int, T: int):
        self.B, self.T = B, T
        tokens = None if attention_mask is None else attention_mask[:, -T:].bool()  # its last T columns: tokens
        self.rows = None if tokens is None or bool(tokens.all()) else tokens.reshape(-1).nonzero().squeeze(1)  # (N,)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, H] -> [N, H], the real tokens only."""
        x = x.reshape(self.B * self.T, -1)
        return x if self.rows is None else x.index_select(0, self.rows)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [B, T, H], zeros at the padding."""
        if self.rows is not None:
            x = x.new_zeros(self.B * self.T, x.shape[-1]).index_copy(0, self.rows, x)
        return x.view(self.B, self.T, -1)


class Dropout(nn.Dropout):
    """nn.Dropout with its mask drawn by torch.rand on CPU, where that is faster than the bernoulli draw of
    F.dropout (README, "Speed and memory"); the same distribution (each number kept with probability 1 - p, scaled by
    1 / (1 - p)), not the same draws. On a GPU F.dropout is one fused kernel and the faster one, so it is used there.
    fast=False: nn.Dropout itself."""

    def __init__(self, p: float, fast: bool = True):
        super().__init__(p)
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast or x.device.type != "cpu":
            return super().forward(x)
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x) >= self.p) * (1 / (1 - self.p))


class Attention(nn.Module):
    """Multi-head self-attention; separate query/key/value projections so LoRA can wrap each."""
    cast: KeptCast | None = None  # q/k/v's weights stacked, see cast_frozen_weights_once

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(config.hidden_size, config.hidden_size)
        self.value = Linear(config.hidden_size, config.hidden_size)
        self.output = Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(config.attention_dropout, config.fast)  # on the attention weights
        self.fast = config.fast

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, padding: Padding, prefix: KeyValue | None = None
                ) -> tuple[torch.Tensor, KeyValue]:
        """x: the real tokens [N, H] (see Padding); returns [N, H] and this layer's (keys, values)."""
        B, T = padding.B, padding.T
        # Re-padded side by side: one pad (and in backward one gather) for the three instead of one each.
        qkv = padding.pad(self.queries_keys_values(x))  # (B, T, 3H)
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hd)
        if isinstance(prefix, GrowingKeyValue):  # generation: the new keys and values go into the cache's buffer
            k, v = prefix.append(k, v)
        elif prefix is not None:
            prefix_keys, prefix_values = prefix  # (B or 1, nh, P, hd): one prefix may serve the whole batch
            k = torch.cat([prefix_keys.expand(B, -1, -1, -1).to(k.dtype), k], dim=2)  # (B, nh, P+T, hd)
            v = torch.cat([prefix_values.expand(B, -1, -1, -1).to(v.dtype), v], dim=2)
        if self.fast and self.training and self.dropout.p > 0 and q.device.type == "cpu":
            # SDPA would drop attention weights with the slow draw (and leave its fused kernel): same math by hand.
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, nh, T, P+T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            y = self.dropout(scores.softmax(-1)) @ v  # (B, nh, T, hd)
        else:
            with attention_kernels(q.device):
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                   dropout_p=self.dropout.p if self.training else 0.0)
        y = padding.unpad(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, H) -> (N, H)
        return self.output(y), (k, v)

    def stacks_projections(self, grad: bool, autocast: bool) -> bool:
        """Whether queries_keys_values multiplies by the three weights stacked (its docstring says when, and why)."""
        return grad and autocast and all(type(p) is Linear and p.bias is not None and not p._forward_hooks
                                         and not p._forward_pre_hooks for p in (self.query, self.key, self.value))

    def queries_keys_values(self, x: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N, 3H]: the three projections side by side.

        Training in mixed precision, one product with the three weights stacked (as GPT-2's own c_attn): forward,
        one product, two stacks and one cast of each instead of three products and three casts of each weight
        and bias; backward, one product for the input's gradient instead of three and their sum. A GPU step at
        the course's batch sizes waits on launching kernels (README, "Speed on a GPU"), so fewer is faster. The
        outputs are the same; the input's gradient sums the three in one bf16 product instead of three, so it
        moves by bf16's rounding. In fp32 the stack would be one more copy of the weights kept for backward (under
        autocast their casts are kept either way), so fp32 keeps three products and its numbers; so do
        evaluation and generation (no gradients), projections a method wraps (LoRA), and hooked ones."""
        projections = (self.query, self.key, self.value)
        if self.stacks_projections(torch.is_grad_enabled(), is_autocast_on(x.device.type)):
            if self.cast is not None and self.cast.usable(x):  # stacked and cast once (cast_frozen_weights_once)
                weight, bias = self.cast.weight, self.cast.bias  # bias None: trainable biases (BitFit)
            else:
                weight, bias = torch.cat([p.weight for p in projections]), None
            return F.linear(x, weight, torch.cat([p.bias for p in projections]) if bias is None else bias)
        return torch.cat([p(x) for p in projections], dim=-1)


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.up = Linear(config.hidden_size, config.intermediate_size)
        self.down = Linear(config.intermediate_size, config.hidden_size)
        self.activation = ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.activation(self.up(x)))


class Block(nn.Module):
    """Attention and MLP sublayers, each wrapped in a residual connection and a layer norm.

    Encoder (BERT): post-norm, x = LN(x + sublayer(x)). Decoder (GPT-2): pre-norm, x = x + sublayer(LN(x)).
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.pre_norm = config.is_decoder
        self.attention = Attention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout, config.fast)
        # Where adapter methods (Houlsby et al. 2019) plug in: each sublayer's output passes through
        # these before the residual sum. Identity (no parameters) unless a method replaces them.
        self.attention_adapter: nn.Module = nn.Identity()
        self.mlp_adapter: nn.Module = nn.Identity()

    def forward(self, x, mask, padding, prefix=None):
        if self.pre_norm:
            attended, kv = self.attention(self.attention_norm(x), mask, padding, prefix)
            x = x + self.attention_adapter(self.dropout(attended))
            return x + self.mlp_adapter(self.dropout(self.mlp(self.mlp_norm(x)))), kv
        attended, kv = self.attention(x, mask, padding, prefix)
        x = self.attention_norm(x + self.attention_adapter(self.dropout(attended)))
        return self.mlp_norm(x + self.mlp_adapter(self.dropout(self.mlp(x)))), kv


class MaskedLMHead(nn.Module):
    """BERT/RoBERTa cloze head: dense, activation, layer norm, then the (tied) word embeddings plus a bias."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.activation = ACTIVATIONS[config.activation]

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activation(self.dense(hidden)))


COMPILERS = ("inductor", "aot_eager")


def compile_blocks(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """torch.compile every transformer block of `model` in place (Ansel et al. 2024; "regional compilation").

    inductor fuses each block's small operations (norms, dropout, residual sums, the padding moves) into a few
    generated kernels: on a GPU a step then launches far fewer kernels, which is what bounds it at the course's
    batch sizes (README, "Speed on a GPU"). Compiling the blocks rather than the whole model means one compilation
    that every layer reuses (PyTorch >= 2.5), and dynamic=True compiles for any number of real tokens (Padding),
    which changes with every batch. aot_eager runs the traced graphs without generating code: it checks that the
    model compiles, in seconds. Parameter names and state dicts do not change; generation stays eager
    (generate.decoding), since its shapes change at every step. Dropout under inductor draws its masks with
    its own generator: seeded, so a seed still gives the same numbers, but not eager's numbers."""
    from .seq2seq import Block as Seq2SeqBlock  # seq2seq builds on this module
    if backend not in COMPILERS:
        raise ValueError(f"Unknown compiler backend {backend!r}; choose one of {', '.join(COMPILERS)}.")
    # Every variant of a block (encoder or decoder, training or evaluation, with or without a prefix, padded or
    # not) is one more compiled entry of the same code; past the default limit of 8, PyTorch falls back to eager.
    import torch._dynamo
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))
    for module in model.modules():
        if isinstance(module, (Block, Seq2SeqBlock)):
            module.compile(backend=backend, dynamic=True)
    return model


class Transformer(nn.Module):
    """BERT, RoBERTa or GPT-2, chosen by `config.model_type`.

    Input shape: input_ids [B, T] (or inputs_embeds [B, T, H]); optional prefix (see module docstring).
    Output shape: hidden states [B, T, H]; the prefix never adds output positions, and padding
    positions hold zeros (the reference computes numbers there that nothing should read).
    """

    def __init__(self, config: TransformerConfig, mlm_head: bool = False, pooler: bool = False):
        super().__init__()
        self.config = config
        H = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, H)
        self.position_embeddings = nn.Embedding(config.max_positions, H)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, H) if config.type_vocab_size else None
        self.embedding_norm = None if config.is_decoder else nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.embedding_dropout = Dropout(config.hidden_dropout, config.fast)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(H, eps=config.layer_norm_eps) if config.is_decoder else None
        self.mlm_head = MaskedLMHead(config) if mlm_head else None
        self.pooler = nn.Linear(H, H) if pooler else None
        # Gradient checkpointing (Chen et al. 2016): trade a second forward pass of each layer in backward for
        # not keeping its activations; the random state is replayed, so dropout draws the same masks.
        self.gradient_checkpointing = False

    @property
    def has_lm_head(self) -> bool:
        """GPT-2 always has one (tied to the embeddings); an encoder only if the checkpoint had a cloze head."""
        return self.config.is_decoder or self.mlm_head is not None

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, prefix: list[KeyValue | None] | None = None, return_cache: bool = False):
        """Hidden states [B, T, H]; with return_cache=True also each layer's (keys, values) including the prefix."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        elif inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(f"inputs_embeds has width {inputs_embeds.shape[-1]}, but this model's hidden size "
                             f"is {self.config.hidden_size}.")
        B, T, _ = inputs_embeds.shape
        prefix = prefix if prefix is not None else [None] * self.config.num_layers
        if len(prefix) != self.config.num_layers:
            raise ValueError(f"prefix has {len(prefix)} entries; the model has {self.config.num_layers} layers "
                             "(use None for a layer without a prefix).")
        # Layers may differ (a depth ablation has none in some; a generation cache then grows them all):
        # positions shift by the longest, and each layer reads the last columns of the mask.
        lengths = [0 if p is None else p[0].shape[2] for p in prefix]
        P = max(lengths)

        if position_ids is None:
            position_ids = self.default_position_ids(input_ids, attention_mask, B, T, P, inputs_embeds.device)
        if int(position_ids.max()) >= self.config.max_positions:
            raise ValueError(f"Input of {T} tokens after a prefix of {P} needs position {int(position_ids.max())}, "
                             f"but the position table has {self.config.max_positions} entries: shorten the input "
                             "(max_length) or the prompt.")
        x = inputs_embeds + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(position_ids)
            x = x + self.token_type_embeddings(types)

        mask = self.attention_mask(attention_mask, B, T, P, x.device)  # (B, 1, T or 1, P+T) bool, or None
        # fast: from here on only the N real tokens [N, H], re-padded inside attention; plain: all B x T of them
        padding = Padding(attention_mask if self.config.fast else None, B, T)
        x = padding.unpad(x)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = self.embedding_dropout(x)
        cache = []
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer, layer_prefix, length in zip(self.layers, prefix, lengths):
            layer_mask = None if mask is None else mask[..., P - length:]
            if recompute:  # keep only the layer's inputs (its prefix among them) and redo the rest in backward
                x, kv = checkpoint(layer, x, layer_mask, padding, layer_prefix, use_reentrant=False)
            else:
                x, kv = layer(x, layer_mask, padding, layer_prefix)
            cache.append(kv)
        if self.final_norm is not None:
            x = self.final_norm(x)
        x = padding.pad(x)  # (B, T, H), zeros at the padding
        if not self.config.fast and attention_mask is not None:  # the plain path computed numbers there: hide them
            x = x * attention_mask[:, -T:, None].to(x.dtype)
        return (x, cache) if return_cache else x

    def default_position_ids(self, input_ids, attention_mask, B, T, P, device) -> torch.Tensor:
        offset = self.config.position_offset
        if self.config.model_type == "roberta" and input_ids is not None:
            not_pad = (input_ids != self.config.pad_token_id).long()
            return (torch.cumsum(not_pad, dim=1) + P) * not_pad + self.config.pad_token_id
        if self.config.is_decoder and attention_mask is not None:
            # Count real tokens only, so that a left-padded row gets the positions it has alone (right
            # padding: the same as counting every column); generation does the same.
            return (P + attention_mask[:, -T:].long().cumsum(1) - 1).clamp(min=P)
        return (torch.arange(P, P + T, device=device) + offset).unsqueeze(0).expand(B, T)

    def attention_mask(self, attention_mask, B, T, P, device) -> torch.Tensor | None:
        """Boolean mask, True where a query may attend: (B, 1, 1, P+T) for an encoder, (B, 1, T, P+T) for
        the causal decoder; None when nothing is masked."""
        if not self.config.is_decoder and (attention_mask is None or bool(attention_mask.all())):
            return None  # fast path: nothing to hide, SDPA without a mask
        keys = torch.ones(B, P + T, dtype=torch.bool, device=device)
        if attention_mask is not None:
            if attention_mask.shape[1] not in (T, P + T):
                raise ValueError(f"attention_mask has {attention_mask.shape[1]} columns; expected {T} (tokens) "
                                 f"or {P + T} (prefix + tokens).")
            keys[:, P + T - attention_mask.shape[1]:] = attention_mask.bool()
        allowed = keys[:, None, None, :]  # (B, 1, 1, P+T): broadcast over queries, SDPA's fastest form
        if self.config.is_decoder:
            # Explicit causal mask: SDPA's is_causal aligns top-left, wrong when a prefix adds key columns.
            causal = torch.arange(P + T, device=device)[None, :] <= P + torch.arange(T, device=device)[:, None]
            # A left-padding query may see nothing, and SDPA would return NaN there (NaN that then
            # leaks through zero attention weights): let it see itself; its output is never used.
            itself = torch.arange(P + T, device=device)[None, :] == P + torch.arange(T, device=device)[:, None]
            allowed = (allowed & causal) | itself
        return allowed

    def lm_logits(self, hidden: torch.Tensor, vocab_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary logits [..., V], or only the columns `vocab_ids` (e.g. a verbalizer's label words)."""
        weight = self.word_embeddings.weight if vocab_ids is None else self.word_embeddings.weight[vocab_ids]
        if self.config.is_decoder:
            return linear(hidden, weight)  # GPT-2's LM head is the transposed token embedding, no bias
        if self.mlm_head is None:
            raise ValueError("This checkpoint has no masked-LM head (e.g. all-MiniLM-L6-v2 is an encoder only): "
                             "use a classification head, or a checkpoint such as bert-base-uncased.")
        bias = self.mlm_head.bias if vocab_ids is None else self.mlm_head.bias[vocab_ids]
        return self.mlm_head.transform(hidden) @ weight.T + bias

    def pool(self, first_token: torch.Tensor) -> torch.Tensor:
        """BERT's pooler on the [CLS] hidden state [B, H]: tanh(W h + b), [B, H]."""
        if self.pooler is None:
            raise ValueError("This checkpoint has no pooler.")
        return torch.tanh(self.pooler(first_token))
