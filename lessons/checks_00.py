"""Checks for lesson 0 (the minitransformer): attention for one head, a layer's parameter count, a soft prompt.

Each check takes the student's function, raises AssertionError with a hint when it is wrong
(NotImplementedError passes through), and compares against the project's own model code.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from methods.shared.prompting import run_with_prompt
from minitransformer import Transformer, TransformerConfig
from minitransformer.model import Block, Padding

TOL = dict(rtol=1e-5, atol=1e-5)  # float32 rounding of the same sums in another order


def tiny_model(hidden: int = 16, heads: int = 4) -> Transformer:
    """A 1-layer random BERT-like encoder: instant to build, same code as MiniLM."""
    config = TransformerConfig(vocab_size=50, hidden_size=hidden, num_layers=1, num_heads=heads,
                               intermediate_size=2 * hidden, max_positions=32)
    return Transformer(config).eval()


def check_attention_one_head(attention_one_head) -> None:
    torch.manual_seed(0)
    # More keys (5) than queries (3), as with a key/value prefix; row 2 has two padded keys.
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    got = attention_one_head(q, k, v)
    assert got is not None and tuple(got.shape) == (2, 3, 8), \
        f"q [2, 3, 8], k and v [2, 5, 8] must give [2, 3, 8] (one output per query), got {getattr(got, 'shape', got)}"
    expected = F.scaled_dot_product_attention(q, k, v)
    unscaled = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
    if torch.allclose(got, unscaled, **TOL):
        raise AssertionError("the scores must be divided by sqrt(d) (d = 8 here) before the softmax")
    torch.testing.assert_close(got, expected, **TOL, msg=lambda m: "without a mask, your output differs from "
                               f"softmax(q k^T / sqrt(d)) v: {m}")

    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])  # True: this key may be attended
    got = attention_one_head(q, k, v, mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, :])
    torch.testing.assert_close(got, expected, **TOL, msg=lambda m: "with a padding mask, masked keys must get "
                               "weight 0 (set their scores to -inf before the softmax; mask is True where a key "
                               f"may be attended): {m}")

    # The model's own attention: every head through your function, then the output projection.
    model = tiny_model()
    attention, (B, T, H) = model.layers[0].attention, (2, 6, 16)
    x = torch.randn(B, T, H)
    heads = lambda t: t.view(B, T, attention.num_heads, attention.head_dim).transpose(1, 2)  # (B, nh, T, hd)
    with torch.no_grad():
        q, k, v = heads(attention.query(x)), heads(attention.key(x)), heads(attention.value(x))
        per_head = [attention_one_head(q[:, h], k[:, h], v[:, h]) for h in range(attention.num_heads)]
        ours = attention.output(torch.cat(per_head, dim=-1))  # heads side by side, then W_o
        theirs, _ = attention(x.reshape(B * T, H), None, Padding(None, B, T))  # it takes tokens packed [B*T, H]
        theirs = theirs.view(B, T, H)
    torch.testing.assert_close(ours, theirs, **TOL, msg=lambda m: "your heads, concatenated and projected, "
                               f"differ from the model's attention layer: {m}")


def check_layer_parameters(layer_parameters) -> None:
    for hidden, intermediate, heads in [(384, 1536, 12), (16, 40, 4), (768, 3072, 12)]:
        config = TransformerConfig(hidden_size=hidden, intermediate_size=intermediate, num_heads=heads,
                                   num_layers=1, vocab_size=10, max_positions=8)
        expected = sum(p.numel() for p in Block(config).parameters())
        got = layer_parameters(hidden, intermediate)
        assert got == expected, (
            f"for hidden size {hidden} and intermediate size {intermediate} you count {got:,}, but the layer "
            f"(minitransformer.model.Block) has {expected:,} parameters. Count the weight and bias of the four "
            "attention projections (query, key, value, output), of the two MLP layers (up, down), and the "
            "weight and bias of the two layer norms.")


def check_prepend_prompt(prepend_prompt) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    batch = {"input_ids": torch.tensor([[2, 5, 7, 9, 3], [2, 8, 3, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    prompt = torch.randn(4, 16)  # P = 4 prompt vectors of width H = 16
    result = prepend_prompt(model, batch, prompt)
    assert isinstance(result, tuple) and len(result) == 2, "return a pair (inputs_embeds, attention_mask)"
    embeds, mask = result
    assert tuple(embeds.shape) == (2, 9, 16), f"inputs_embeds should be [B, P+T, H] = [2, 9, 16], got {tuple(embeds.shape)}"
    assert tuple(mask.shape) == (2, 9), f"attention_mask should be [B, P+T] = [2, 9], got {tuple(mask.shape)}"
    torch.testing.assert_close(embeds[:, :4], prompt.expand(2, -1, -1), msg=lambda m: "each row must start with "
                               f"the P prompt vectors: {m}")
    torch.testing.assert_close(embeds[:, 4:], model.word_embeddings(batch["input_ids"]), msg=lambda m: "after the "
                               f"prompt come the word embeddings of the tokens (model.word_embeddings): {m}")
    assert mask[:, :4].eq(1).all() and mask[:, 4:].eq(batch["attention_mask"]).all(), (
        "the mask needs a 1 for every prompt column (every token may see the prompt), followed by the "
        f"original mask; got {mask.tolist()}")
    with torch.no_grad():
        ours = model(inputs_embeds=embeds, attention_mask=mask)
        theirs = run_with_prompt(model, prompt, batch)  # the project's prompt tuning does the same
    torch.testing.assert_close(ours, theirs, **TOL, msg=lambda m: "the model's output on your input differs "
                               f"from methods.shared.prompting.run_with_prompt: {m}")


EXERCISES = {
    "attention_one_head": check_attention_one_head,
    "layer_parameters": check_layer_parameters,
    "prepend_prompt": check_prepend_prompt,
}
