"""Checks for lesson 8 (prefixes in an encoder-decoder): the cross-attention mask and a placement's size."""
from __future__ import annotations

import torch


def check_cross_attention_mask(cross_attention_mask) -> None:
    encoder_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    got = cross_attention_mask(encoder_mask, 2)
    expected = torch.tensor([[True, True, True, True, True, False], [True, True, True, True, False, False]])
    assert isinstance(got, torch.Tensor) and got.dtype == torch.bool, "return a bool tensor"
    assert got.shape == (2, 6), f"expected shape [B, P + S] = (2, 6), got {tuple(got.shape)}"
    assert torch.equal(got, expected), (f"every decoder token may read every prefix column (the first P) and the real "
                                        f"encoder outputs: expected {expected.int().tolist()}, got {got.int().tolist()}")
    assert torch.equal(cross_attention_mask(encoder_mask, 0), encoder_mask.bool()), "with no prefix, the encoder's mask"
    from minitransformer import EncoderDecoder, Seq2SeqConfig  # the model's own mask agrees
    model = EncoderDecoder(Seq2SeqConfig(vocab_size=10, hidden_size=8, num_layers=1, num_decoder_layers=1,
                                         num_heads=2, head_dim=4, intermediate_size=8))
    prefix = [(torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))]
    bias = model.memory(torch.zeros(2, 4, 8), encoder_mask, prefix).bias[:, 0, 0]
    assert torch.equal(bias == 0, got), "the model's memory bias hides what your mask hides"


def check_prefix_numbers(prefix_numbers) -> None:
    from methods.prefix_tuning import PlacedPrefixes
    from minitransformer import Seq2SeqConfig
    cases = [(4, 2, 3, 4, 8, ["encoder"]), (4, 2, 3, 4, 8, ["decoder", "cross"]), (5, 6, 6, 8, 64, ["encoder", "decoder",
                                                                                                   "cross"])]
    for P, layers, decoder_layers, heads, head_dim, places in cases:
        config = Seq2SeqConfig(vocab_size=10, hidden_size=heads * head_dim, num_layers=layers,
                               num_decoder_layers=decoder_layers, num_heads=heads, head_dim=head_dim)
        real = sum(p.numel() for p in PlacedPrefixes(config, places, P, "all", True, 16, 0.0).parameters())
        got = prefix_numbers(P, layers, decoder_layers, heads, head_dim, places)
        assert got == real, (f"P={P}, {layers} encoder / {decoder_layers} decoder layers, {heads} heads of {head_dim}, "
                             f"places {places}: the modules hold {real:,}, you said {got!r}. Cross-attention is in the "
                             "decoder's layers.")


EXERCISES = {"cross_attention_mask": check_cross_attention_mask, "prefix_numbers": check_prefix_numbers}
