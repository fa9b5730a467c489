"""Checks for lesson 06 (P-tuning v2): each compares your answer with the project's code or a measurement.

    per_layer_prefix          the flat prompt matrix cut into per-layer (keys, values), None elsewhere
    count_prompt_parameters   trainable numbers of deep vs input-only prompts, by formula
    layers_with_gradient      your prediction: which layers carry a gradient with prompts in layers 3-4
"""
from __future__ import annotations

from functools import lru_cache

import torch

from minitransformer import Tokenizer, Transformer, TransformerConfig, load_pretrained
from minitransformer.loading import resolve
from methods.p_tuning_v2 import PTuningV2, PTuningV2Config
from methods.prompt_tuning import PromptTuning, PromptTuningConfig
from methods.shared.training import count_parameters


@lru_cache(maxsize=1)
def minilm_tokenizer() -> Tokenizer:
    return Tokenizer.from_dir(resolve("all-MiniLM-L6-v2"))


def tiny_backbone(num_layers: int = 6, hidden_size: int = 32, num_heads: int = 4) -> Transformer:
    """A small random BERT with a pooler, shaped like MiniLM but narrow (the checks only count and reshape)."""
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=120, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                               intermediate_size=2 * hidden_size, max_positions=64)
    return Transformer(config, pooler=True)


def check_per_layer_prefix(per_layer_prefix) -> None:
    """Compare with PTuningV2's own PrefixEncoder on tiny models, for several layer sets and head counts."""
    for num_layers, num_heads, spec, P in [(6, 4, "3-4", 5), (6, 2, "1,6", 3), (4, 4, "all", 2)]:
        backbone = tiny_backbone(num_layers, num_heads=num_heads)
        method = PTuningV2(backbone, minilm_tokenizer(), 2, PTuningV2Config(num_virtual_tokens=P, prompt_layers=spec))
        encoder = method.prefix
        expected = encoder()
        config = backbone.config
        answer = per_layer_prefix(encoder.flat_prefix.detach(), encoder.layers, num_layers, num_heads,
                                  config.head_dim)
        where = f"(layers {spec!r} of {num_layers}, {num_heads} heads, P={P})"
        assert isinstance(answer, (list, tuple)) and len(answer) == num_layers, \
            f"return one entry per layer of the model ({num_layers}), got {type(answer).__name__} " \
            f"of length {len(answer) if hasattr(answer, '__len__') else '?'} {where}"
        for layer, (ours, theirs) in enumerate(zip(expected, answer)):
            if ours is None:
                assert theirs is None, f"layer {layer} (0-based) has no prompt: its entry must be None {where}"
                continue
            assert theirs is not None, f"layer {layer} (0-based) is prompted but you returned None {where}"
            for part, a, b in (("keys", ours[0], theirs[0]), ("values", ours[1], theirs[1])):
                assert tuple(b.shape) == tuple(a.shape), \
                    f"layer {layer} {part}: shape {tuple(b.shape)}, expected {tuple(a.shape)} = " \
                    f"[1, heads, P, head_dim] {where}"
                assert torch.equal(a, b), \
                    f"layer {layer} {part}: right shape, wrong numbers. The flat layout per virtual token is " \
                    f"[keys of the 1st prompted layer, its values, keys of the 2nd, ...], each H = heads x " \
                    f"head_dim wide; view as (P, 2 x prompted layers, heads, head_dim) before permuting {where}"


def check_count_prompt_parameters(count_prompt_parameters) -> None:
    """Compare the formula with count_parameters of real PTuningV2 / PromptTuning modules on tiny models."""
    cases = [(20, 6, "all", 2), (5, 6, "4-6", 2), (8, 4, "2", 9), (1, 6, "1,3-4", 3)]
    for P, num_layers, spec, num_labels in cases:
        backbone = tiny_backbone(num_layers)
        H = backbone.config.hidden_size
        deep = PTuningV2(backbone, minilm_tokenizer(), num_labels,
                         PTuningV2Config(num_virtual_tokens=P, prompt_layers=spec))
        prompted = len(deep.prefix.layers)
        measured = count_parameters(deep)[0]
        answer = count_prompt_parameters(P, H, prompted, num_labels, True)
        assert answer == measured, \
            f"deep prompts, P={P}, H={H}, {prompted} prompted layers, {num_labels} labels: you say {answer}, " \
            f"PTuningV2 trains {measured}. Each prompted layer gets P keys and P values, each H numbers; " \
            "the [CLS] head is a Linear(H, labels) with a bias (the pooler stays frozen)."
        shallow = PromptTuning(tiny_backbone(num_layers), minilm_tokenizer(), num_labels,
                               PromptTuningConfig(num_virtual_tokens=P, init="random", head="classifier"))
        measured = count_parameters(shallow)[0]
        answer = count_prompt_parameters(P, H, prompted, num_labels, False)
        assert answer == measured, \
            f"input-only prompts, P={P}, H={H}, {num_labels} labels: you say {answer}, PromptTuning trains " \
            f"{measured}. Input-only prompts are P word vectors (no keys/values, whatever num_prompted_layers " \
            "says), plus the same head."


@lru_cache(maxsize=None)
def measured_layers_with_gradient(spec: str) -> tuple[int, ...]:
    """1-based layers whose output requires grad in one training step of MiniLM with prompts in `spec`."""
    backbone, tokenizer = load_pretrained("all-MiniLM-L6-v2")
    method = PTuningV2(backbone, tokenizer, 2, PTuningV2Config(num_virtual_tokens=4, prompt_layers=spec)).train()
    carries = []
    hooks = [layer.register_forward_hook(lambda module, args, output: carries.append(output[0].requires_grad))
             for layer in backbone.layers]
    batch = tokenizer.encode(["a gripping film", "dull and far too long"])
    method(batch).sum().backward()
    for hook in hooks:
        hook.remove()
    return tuple(i + 1 for i, has_grad in enumerate(carries) if has_grad)


def check_layers_with_gradient(prediction) -> None:
    """Measure on MiniLM which layers' outputs autograd tracks with prompts only in layers 3-4."""
    assert prediction is not None, \
        "write your prediction first: a list of 1-based layer numbers, e.g. [1, 2]"
    try:
        predicted = sorted(int(layer) for layer in prediction)
    except (TypeError, ValueError):
        raise AssertionError(f"give a list of 1-based layer numbers such as [1, 2], not {prediction!r}") from None
    measured = list(measured_layers_with_gradient("3-4"))
    assert predicted == measured, \
        f"you predicted {predicted}; MiniLM measured {measured}. Autograd records an operation only when one of " \
        "its inputs requires grad: below the first prompt nothing does (frozen weights, token ids), and above the " \
        "last prompt the hidden states still depend on the prompts, so the gradient must flow back through them."


EXERCISES = {
    "per_layer_prefix": check_per_layer_prefix,
    "count_prompt_parameters": check_count_prompt_parameters,
    "layers_with_gradient": check_layers_with_gradient,
}
