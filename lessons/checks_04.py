"""Checks for lesson 4 (prefix tuning): the reparameterization MLP, splitting a flat prefix into
per-layer keys and values, and one batch that serves several tasks.

Each check takes the student's function, raises AssertionError with a hint when it is wrong
(NotImplementedError passes through), and compares against methods/prefix_tuning.py on a tiny
random model built here (instant on a CPU).
"""
from __future__ import annotations

import torch
from torch import nn

from methods.prefix_tuning import PrefixEncoder, gather_task_prefixes
from minitransformer import Transformer, TransformerConfig

TOL = dict(rtol=1e-5, atol=1e-6)  # the same float32 sums; only their order may differ
H, HEADS, LAYERS, P = 16, 4, 3, 5  # hidden size, heads (head_dim 4), layers, prefix length


def tiny_config() -> TransformerConfig:
    return TransformerConfig(vocab_size=50, hidden_size=H, num_layers=LAYERS, num_heads=HEADS,
                             intermediate_size=2 * H, max_positions=32, hidden_dropout=0.0, attention_dropout=0.0)


def tiny_batch() -> dict:
    return {"input_ids": torch.tensor([[2, 5, 7, 9, 3], [2, 8, 3, 0, 0], [2, 4, 4, 6, 3]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}


def check_reparameterization_mlp(reparameterization_mlp) -> None:
    mlp_hidden = 12
    mlp = reparameterization_mlp(H, mlp_hidden, LAYERS)
    assert isinstance(mlp, nn.Module), f"return an nn.Module (e.g. nn.Sequential), got {type(mlp).__name__}"
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2, f"the MLP has exactly two nn.Linear layers (Linear -> tanh -> Linear), found {len(linears)}"
    first, second = (tuple(layer.weight.shape) for layer in linears)
    assert first == (mlp_hidden, H), (f"the first Linear maps hidden size {H} to the MLP width {mlp_hidden}: "
                                      f"its weight is [{mlp_hidden}, {H}], yours is {list(first)}")
    width = 2 * LAYERS * H
    assert second == (width, mlp_hidden), (f"the second Linear maps the MLP width {mlp_hidden} to 2 x layers x hidden "
                                           f"= 2 x {LAYERS} x {H} = {width}: weight [{width}, {mlp_hidden}], "
                                           f"yours is {list(second)}")
    torch.manual_seed(0)
    encoder = PrefixEncoder(tiny_config(), P, mlp_hidden=mlp_hidden)  # the project's version
    with torch.no_grad():  # give yours the project's weights, then both must compute the same prefix
        for yours, theirs in zip(linears, (encoder.mlp[0], encoder.mlp[2])):
            yours.weight.copy_(theirs.weight)
            yours.bias.copy_(theirs.bias)
        got, expected = mlp(encoder.embedding), encoder.mlp(encoder.embedding)
    assert tuple(got.shape) == (P, width), f"E [{P}, {H}] must become [{P}, {width}], got {list(got.shape)}"
    relu = encoder.mlp[2](torch.relu(encoder.mlp[0](encoder.embedding))).detach()
    if torch.allclose(got, relu, **TOL):
        raise AssertionError("you used ReLU; the reparameterization uses tanh (bounded: a big step on E cannot "
                             "blow up every layer's keys at once)")
    torch.testing.assert_close(got, expected, **TOL, msg=lambda m: "with the project's weights copied in, your "
                               f"MLP's output differs from PrefixEncoder's W2 tanh(W1 E + b1) + b2: {m}")


def check_split_prefix(split_prefix) -> None:
    torch.manual_seed(0)
    encoder = PrefixEncoder(tiny_config(), P, flat=True)
    flat, batch_size, head_dim = encoder.flat_prefix.detach(), 2, H // HEADS
    got = split_prefix(flat, LAYERS, HEADS, batch_size)
    assert got is not None and len(got) == LAYERS, f"return one (keys, values) pair per layer ({LAYERS}), got {got!r:.80}"
    expected = [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in encoder()]
    for layer, (pair, (keys, values)) in enumerate(zip(got, expected)):
        assert len(pair) == 2, f"layer {layer}: return a pair (keys, values)"
        shape = (batch_size, HEADS, P, head_dim)
        for name, tensor in zip(("keys", "values"), pair):
            assert tuple(tensor.shape) == shape, (f"layer {layer} {name}: expected [batch {batch_size}, heads {HEADS}, "
                                                  f"P {P}, head_dim {head_dim}] = {list(shape)}, got {list(tensor.shape)}")
        if torch.equal(pair[0], values) and torch.equal(pair[1], keys):
            raise AssertionError(f"layer {layer}: keys and values are swapped (per layer the keys come first, then "
                                 "the values)")
        if not (torch.equal(pair[0], keys) and torch.equal(pair[1], values)):
            raise AssertionError(
                f"layer {layer}: your numbers are in the wrong places. Each row of flat holds, in order, layer 0's "
                "keys (H numbers), layer 0's values, layer 1's keys, ...; each H splits into heads x head_dim. View as "
                "[P, 2 x layers, heads, head_dim], then move P next to head_dim: [2 x layers, heads, P, head_dim].")
    model = Transformer(tiny_config()).eval()
    with torch.no_grad():  # and the model reads your prefix exactly as it reads PrefixEncoder's
        batch = {k: v[:batch_size] for k, v in tiny_batch().items()}
        torch.testing.assert_close(model(**batch, prefix=got), model(**batch, prefix=encoder()), **TOL)


def check_prefixes_for_rows(prefixes_for_rows) -> None:
    torch.manual_seed(0)
    encoders = [PrefixEncoder(tiny_config(), P, flat=flat) for flat in (True, False, True)]  # three tasks
    task_prefixes = [[(k.detach(), v.detach()) for k, v in e()] for e in encoders]
    task_ids = torch.tensor([2, 0, 1])
    got = prefixes_for_rows(task_prefixes, task_ids)
    expected = gather_task_prefixes(task_prefixes, task_ids)
    assert got is not None and len(got) == LAYERS, f"return one (keys, values) pair per layer ({LAYERS})"
    for layer, ((keys, values), (k, v)) in enumerate(zip(got, expected)):
        assert tuple(keys.shape) == tuple(k.shape) and tuple(values.shape) == tuple(v.shape), (
            f"layer {layer}: each row needs its own prefix: [B {len(task_ids)}, heads, P, head_dim] = {list(k.shape)}, "
            f"got keys {list(keys.shape)}, values {list(values.shape)}")
        for row, task in enumerate(task_ids.tolist()):
            assert torch.equal(keys[row], k[row]) and torch.equal(values[row], v[row]), (
                f"layer {layer}, row {row}: expected task {task}'s prefix (task_ids[{row}] = {task})")
    model = Transformer(tiny_config()).eval()
    batch = tiny_batch()
    with torch.no_grad():  # one pass for the mixed batch == each row run with its own task's prefix
        mixed = model(**batch, prefix=got)
        for row, task in enumerate(task_ids.tolist()):
            alone = model(**{k: v[row:row + 1] for k, v in batch.items()}, prefix=task_prefixes[task])
            torch.testing.assert_close(mixed[row:row + 1], alone, **TOL, msg=lambda m: (
                f"row {row}: the mixed batch differs from running task {task} alone: {m}"))


EXERCISES = {"reparameterization_mlp": check_reparameterization_mlp, "split_prefix": check_split_prefix,
             "prefixes_for_rows": check_prefixes_for_rows}
