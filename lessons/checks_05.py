"""Checks for lesson 5 (P-tuning): the MLP prompt encoder, a pair template with an anchor, and
where a prompt encoder's parameters are.

Each check takes the student's answer, raises AssertionError with a hint when it is wrong
(NotImplementedError passes through), and compares against methods/p_tuning.py: the real
MiniLM tokenizer (for the template) and tiny random models built here.
"""
from __future__ import annotations

import torch
from torch import nn

from methods.p_tuning import PromptEncoder, PTuning, PTuningConfig
from minitransformer import Tokenizer, Transformer, TransformerConfig
from minitransformer.loading import resolve

TOL = dict(rtol=1e-5, atol=1e-6)  # the same float32 sums; only their order may differ
PREMISE, HYPOTHESIS = "a man is sleeping on the sofa", "a person rests"


def check_mlp_prompt_encoder(mlp_prompt_encoder) -> None:
    H, h, m = 24, 10, 6
    mlp = mlp_prompt_encoder(H, h)
    assert isinstance(mlp, nn.Module), f"return an nn.Module (e.g. nn.Sequential), got {type(mlp).__name__}"
    linears = [layer for layer in mlp.modules() if isinstance(layer, nn.Linear)]
    shapes = [tuple(layer.weight.shape) for layer in linears]
    expected_shapes = [(h, H), (h, h), (H, h)]
    assert shapes == expected_shapes, (f"three Linear layers H -> h -> h -> H (H={H}, h={h}) have weights "
                                       f"{[list(s) for s in expected_shapes]}; yours: {[list(s) for s in shapes]}")
    torch.manual_seed(0)
    encoder = PromptEncoder(m, H, "mlp", encoder_hidden=h)  # the project's version
    with torch.no_grad():
        for yours, theirs in zip(linears, [layer for layer in encoder.mlp if isinstance(layer, nn.Linear)]):
            yours.weight.copy_(theirs.weight)
            yours.bias.copy_(theirs.bias)
        got, expected = mlp(encoder.pseudo_tokens), encoder()
    assert tuple(got.shape) == (m, H), f"{m} pseudo tokens [{m}, {H}] must give {m} prompt vectors [{m}, {H}]"
    lin = [layer for layer in encoder.mlp if isinstance(layer, nn.Linear)]
    no_activation = lin[2](lin[1](lin[0](encoder.pseudo_tokens))).detach()
    if torch.allclose(got, no_activation, **TOL):
        raise AssertionError("without activations three Linear layers collapse into one: put a ReLU after the "
                             "first and after the second")
    torch.testing.assert_close(got, expected, **TOL, msg=lambda msg: "with the project's weights copied in, your "
                               f"encoder differs from Linear -> ReLU -> Linear -> ReLU -> Linear: {msg}")


def minilm_tokenizer() -> Tokenizer:
    return Tokenizer.from_dir(resolve("all-MiniLM-L6-v2"))


def check_pair_template(pair_template) -> None:
    assert isinstance(pair_template, str), "write the template as a string, e.g. \"{text} {p:2} ...\""
    tokenizer = minilm_tokenizer()
    config = TransformerConfig(vocab_size=len(tokenizer), hidden_size=8, num_layers=1, num_heads=2,
                               intermediate_size=16, max_positions=64)
    try:
        model = PTuning(Transformer(config), tokenizer, 2, PTuningConfig(template=pair_template, head="classifier"),
                        task_kind="pair")
    except ValueError as error:
        raise AssertionError(f"PTuning does not accept the template: {error}") from None
    placed = model.place(tokenizer.encode([PREMISE], [HYPOTHESIS]))["ids"][0].tolist()
    ids = tokenizer.token_ids
    expected = ([tokenizer.cls_id] + ids(PREMISE) + [-1, -2] + ids(HYPOTHESIS) + ids("?") + [-3, -4]
                + [tokenizer.mask_id, tokenizer.sep_id])
    show = lambda row: " ".join(f"[P{-i}]" if i < 0 else tokenizer.backend.id_to_token(i) for i in row)
    assert placed == expected, (f"the premise \"{PREMISE}\" and the hypothesis \"{HYPOTHESIS}\" should be laid out "
                                f"as\n    {show(expected)}\nyours gives\n    {show(placed)}")


def check_encoder_parameters(encoder_parameters) -> None:
    for kind in ("none", "mlp", "lstm"):
        for m, H, h in [(9, 384, 128), (4, 16, 6), (20, 768, 768)]:
            got = encoder_parameters(kind, m, H, h)
            expected = sum(p.numel() for p in PromptEncoder(m, H, kind, encoder_hidden=h).parameters())
            hint = {"none": "without an encoder only the m x H pseudo-token embeddings train",
                    "mlp": "count the m x H embeddings, then weight + bias of Linear(H, h), Linear(h, h), Linear(h, H)",
                    "lstm": "each LSTM direction of each layer has 4 gates: a weight 4h x input, a weight 4h x h and "
                            "two biases of 4h; layer 1 reads H numbers, layer 2 reads 2h (both directions); then the "
                            "MLP Linear(2h, 2h), Linear(2h, H); and the m x H embeddings"}[kind]
            assert got == expected, (f"{kind} encoder, m={m}, H={H}, h={h}: you count {got!r}, PromptEncoder has "
                                     f"{expected:,} parameters. Hint: {hint}.")


EXERCISES = {"mlp_prompt_encoder": check_mlp_prompt_encoder, "pair_template": check_pair_template,
             "encoder_parameters": check_encoder_parameters}
