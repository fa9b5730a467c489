"""LoRA (methods/lora.py): parity with peft's LoRA, exact merge/unmerge, trainable parameters, save/load."""
from __future__ import annotations

import copy

import pytest
import torch

from minitransformer import load_pretrained
from methods.lora import LoRA, LoRAConfig, LoRALinear, main
from tests.helpers import LONG_SENTENCES, TOL, assert_reload_is_exact, masked

peft = pytest.importorskip("peft")


def build_lora(directory, config=LoRAConfig(rank=4, alpha=8.0)):
    backbone, tokenizer = load_pretrained(str(directory))
    return LoRA(backbone, tokenizer, 2, config).eval(), tokenizer


def randomize_lora(model, seed=0):
    """Non-zero B (and a fresh A), so that the update really changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.lora_layers():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.3)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)


def backbone_logits(model, batch):
    hidden = model.backbone(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    return model.backbone.lm_logits(hidden)


def peft_lora(hf_model, target_modules, rank=4, alpha=8.0, seed=0):
    """peft's LoRA on a copy of the transformers model, with random non-zero lora_A and lora_B."""
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules,
                             fan_in_fan_out=target_modules == ["c_attn"])  # GPT-2's Conv1D stores W as [in, out]
    reference = peft.get_peft_model(copy.deepcopy(hf_model), config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.3)
    return reference


def lora_weights(reference, layer: int, module: str):
    """peft's (lora_A [r, in], lora_B [out, r]) of one adapted module in one layer."""
    found = {n: p for n, p in reference.named_parameters() if f".{layer}." in n and f".{module}.lora_" in n}
    (a,) = [p for n, p in found.items() if "lora_A" in n]
    (b,) = [p for n, p in found.items() if "lora_B" in n]
    return a.detach(), b.detach()


def copy_peft_lora(model, reference) -> None:
    """Our query/value LoRA takes peft's A and B, layer by layer (same names and shapes on BERT)."""
    with torch.no_grad():
        for i, layer in enumerate(model.backbone.layers):
            for name in ("query", "value"):
                a, b = lora_weights(reference, i, name)
                getattr(layer.attention, name).lora_A.copy_(a)
                getattr(layer.attention, name).lora_B.copy_(b)


def assert_logits_match_peft(model, reference, batch: dict, message: str) -> None:
    """Our backbone's vocabulary logits against peft's model, on the real tokens (float32 tolerance)."""
    with torch.no_grad():
        theirs = reference(**batch).logits
        ours = backbone_logits(model, batch)
    m = batch["attention_mask"]
    torch.testing.assert_close(masked(ours, m), masked(theirs, m), **TOL, msg=message)


def test_lora_matches_peft_on_tiny_bert(tiny_checkpoints):
    directory, hf_model = tiny_checkpoints["bert"]
    reference = peft_lora(hf_model, ["query", "value"])
    model, tokenizer = build_lora(directory)
    copy_peft_lora(model, reference)
    assert_logits_match_peft(model, reference, tokenizer.encode(LONG_SENTENCES),
                             "LoRA on query/value must equal peft's on the same weights (float32 rounding)")


def test_lora_matches_peft_on_tiny_gpt2(tiny_checkpoints):
    """GPT-2 computes q, k, v in one fused c_attn [H -> 3H]; ours has three separate projections.

    peft on c_attn learns one update B A with A [r, H] and B [3H, r]: its output columns are
    q | k | v, so rows 0:H of B update the query, H:2H the key, 2H:3H the value, all sharing A.
    Our query/value LoRA is that same update with the key block zero: we zero B[H:2H] in peft,
    and give our query (A, B[:H]) and our value (A, B[2H:]).
    """
    directory, hf_model = tiny_checkpoints["gpt2"]
    reference = peft_lora(hf_model, ["c_attn"])
    model, tokenizer = build_lora(directory)
    H = model.backbone.config.hidden_size
    with torch.no_grad():
        for i, layer in enumerate(model.backbone.layers):
            a, b = lora_weights(reference, i, "c_attn")
            b[H:2 * H] = 0  # no update of the key (in place: this is peft's parameter)
            layer.attention.query.lora_A.copy_(a)
            layer.attention.query.lora_B.copy_(b[:H])
            layer.attention.value.lora_A.copy_(a)
            layer.attention.value.lora_B.copy_(b[2 * H:])
    batch = tokenizer.encode(LONG_SENTENCES)
    batch.pop("token_type_ids")
    assert_logits_match_peft(model, reference, batch,
                             "LoRA on query/value must equal peft's c_attn LoRA with the key block zero")


def test_lora_matches_peft_on_minilm(minilm_dir):
    from transformers import BertModel
    reference = peft_lora(BertModel.from_pretrained(minilm_dir), ["query", "value"], rank=8, alpha=16.0)
    backbone, tokenizer = load_pretrained("all-MiniLM-L6-v2")
    model = LoRA(backbone, tokenizer, 2, LoRAConfig(rank=8, alpha=16.0)).eval()
    copy_peft_lora(model, reference)
    batch = tokenizer.encode(LONG_SENTENCES)
    with torch.no_grad():
        theirs = reference(**batch).last_hidden_state
        ours = model.backbone(**batch)
    m = batch["attention_mask"]
    difference = (masked(ours, m) - masked(theirs, m)).abs().max().item()
    assert difference < 1e-4, f"MiniLM with LoRA differs from peft by {difference:.2e} (6 real layers: 1e-4)"


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_lora_starts_as_the_pretrained_model(kind, tiny_checkpoints):
    directory, _ = tiny_checkpoints[kind]
    plain, tokenizer = load_pretrained(str(directory))
    model, _ = build_lora(directory)
    batch = tokenizer.encode(LONG_SENTENCES)
    with torch.no_grad():
        assert torch.equal(model.backbone(**batch), plain(**batch)), "B = 0: the update must be exactly zero"


def test_merge_keeps_outputs_and_skips_the_update(tiny_checkpoints):
    model, tokenizer = build_lora(tiny_checkpoints["bert"][0])
    randomize_lora(model)
    batch = tokenizer.encode(LONG_SENTENCES)
    with torch.no_grad():
        before = backbone_logits(model, batch)
        model.merge()
        after = backbone_logits(model, batch)
        difference = (after - before).abs().max().item()
        assert difference < 1e-5, f"merge() changed the logits by {difference:.2e} (only float rounding allowed)"
        for layer in model.lora_layers():
            layer.lora_B.mul_(2)
        assert torch.equal(backbone_logits(model, batch), after), "a merged layer must not run the update"


def test_unmerge_restores_the_backbone_bit_for_bit(tiny_checkpoints):
    model, tokenizer = build_lora(tiny_checkpoints["gpt2"][0])
    randomize_lora(model)
    pretrained = {n: t.clone() for n, t in model.backbone.state_dict().items() if "lora_" not in n}
    model.merge()
    assert any(not torch.equal(t, pretrained[n]) for n, t in model.backbone.state_dict().items() if n in pretrained)
    model.unmerge()
    for name, tensor in model.backbone.state_dict().items():
        if name in pretrained:
            assert torch.equal(tensor, pretrained[name]), f"{name} is not the pretrained tensor after unmerge()"
    assert all(not layer.merged for layer in model.lora_layers())


def test_merged_layer_refuses_to_train(tiny_checkpoints):
    model, tokenizer = build_lora(tiny_checkpoints["bert"][0])
    model.merge()
    model.train()
    with pytest.raises(RuntimeError, match="unmerge"):
        model.backbone(**tokenizer.encode(LONG_SENTENCES))


@pytest.mark.parametrize("targets", [("query", "value"), ("key", "output", "mlp.up", "mlp.down")])
def test_trainable_parameters_are_the_lora_matrices_and_head(targets, tiny_checkpoints):
    model, _ = build_lora(tiny_checkpoints["bert"][0], LoRAConfig(rank=4, targets=targets))
    c = model.backbone.config
    sizes = {"query": (c.hidden_size, c.hidden_size), "value": (c.hidden_size, c.hidden_size),
             "key": (c.hidden_size, c.hidden_size), "output": (c.hidden_size, c.hidden_size),
             "mlp.up": (c.hidden_size, c.intermediate_size), "mlp.down": (c.intermediate_size, c.hidden_size)}
    expected = c.num_layers * sum(4 * (i + o) for i, o in (sizes[t] for t in targets)) + (c.hidden_size + 1) * 2
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("head.") for n in trainable), sorted(trainable)
    assert sum(p.numel() for p in trainable.values()) == expected, "r (in + out) per adapted matrix, plus the head"
    assert len(model.lora_layers()) == c.num_layers * len(targets)


def test_unknown_target_is_refused(tiny_checkpoints):
    with pytest.raises(ValueError, match="choose from"):
        build_lora(tiny_checkpoints["bert"][0], LoRAConfig(targets=("attention.qkv",)))


def test_save_and_load_round_trip(tiny_checkpoints, tmp_path):
    directory = tiny_checkpoints["bert"][0]
    model, tokenizer = build_lora(directory)
    randomize_lora(model)
    assert_reload_is_exact(model, build_lora(directory)[0], tokenizer.encode(LONG_SENTENCES), tmp_path)


def test_command_line_trains_and_writes_results(tiny_checkpoints, tmp_path):
    record = main(["--model", str(tiny_checkpoints["bert"][0]), "--task", "builtin_sentiment", "--max-steps", "2",
                   "--limit-train", "16", "--batch-size", "8", "--rank", "2", "--no-progress", "--out", str(tmp_path)])
    assert (tmp_path / "results.json").exists() and (tmp_path / "method.safetensors").exists()
    assert record.steps == 2 and record.trainable_params == 2 * 2 * 2 * (32 + 32) + 33 * 2


def test_lora_dropout_touches_the_update_path_only_while_training():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(16, 8), rank=4, alpha=8.0, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(64, 16)
    with torch.no_grad():
        frozen = torch.nn.functional.linear(x, layer.weight, layer.bias)
        evaluated = layer.eval()(x)
        full_update = (evaluated - frozen) / layer.scaling
        torch.manual_seed(1)
        trained = layer.train()(x)
        torch.manual_seed(1)
        kept = torch.nn.Dropout(0.5)(x)  # the same mask that layer drew for its input
    torch.testing.assert_close(evaluated, layer.eval()(x), rtol=0, atol=0, msg="eval: no dropout, deterministic")
    torch.testing.assert_close(full_update, x @ layer.lora_A.T @ layer.lora_B.T, **TOL)
    torch.testing.assert_close(trained, frozen + (kept @ layer.lora_A.T @ layer.lora_B.T) * layer.scaling, **TOL,
                               msg="training: dropout on the update's input, the frozen path untouched")
