"""P-tuning v2: deep prompts at chosen layers, parity with peft, heads, no graph below the prompts."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from data import load_task
from data.batching import batches
from minitransformer import load_pretrained
from methods.p_tuning_v2 import PTuningV2, PTuningV2Config, main
from methods.prefix_tuning import PrefixTuning, PrefixTuningConfig, parse_layers
from methods.shared.training import TrainConfig, evaluate, train
from tests.test_prefix_tuning import copy_peft_prefix, encode


def build(directory, num_labels=2, task_kind="classification", **options):
    torch.manual_seed(0)
    model, tokenizer = load_pretrained(str(directory))
    config = PTuningV2Config(**{"num_virtual_tokens": 5, "mlp_hidden": 16, **options})
    return PTuningV2(model, tokenizer, num_labels, config, task_kind, ["bad", "good"]).eval(), tokenizer


@pytest.mark.parametrize("spec, expected", [("all", None), ("4-6", [3, 4, 5]), ("2", [1]), ("1,3-4", [0, 2, 3])])
def test_layer_specs_are_one_based_and_inclusive(spec, expected):
    assert parse_layers(spec, 6) == expected


@pytest.mark.parametrize("spec", ["4-8", "0-2", "3-1", "7", "four"])
def test_layers_outside_the_model_are_a_clear_error(spec):
    with pytest.raises(ValueError, match="--prompt-layers"):
        parse_layers(spec, 6)


def test_depth_ablation_only_creates_prefixes_where_asked(minilm_dir):
    method, tokenizer = build("all-MiniLM-L6-v2", prompt_layers="4-6", num_virtual_tokens=20)
    prefix = method.prefix()
    assert [i for i, kv in enumerate(prefix) if kv is not None] == [3, 4, 5], "prefixes in layers 4-6 (1-based) only"
    assert all(kv is None for kv in prefix[:3])
    trainable = {n: p.shape for n, p in method.named_parameters() if p.requires_grad and n.startswith("prefix.")}
    assert trainable == {"prefix.flat_prefix": (20, 2 * 3 * 384)}, "parameters for 3 layers' keys and values only"
    with torch.no_grad():
        logits = method(encode(tokenizer))
    assert logits.shape == (3, 2)


def test_no_graph_is_built_below_the_first_prompted_layer(minilm_dir):
    method, tokenizer = build("all-MiniLM-L6-v2", prompt_layers="4-6")
    method.train()
    needs_grad = []
    for layer in method.backbone.layers:
        layer.register_forward_hook(lambda module, args, output: needs_grad.append(output[0].requires_grad))
    method(encode(tokenizer)).sum().backward()
    assert needs_grad == [False] * 3 + [True] * 3, \
        "layers 1-3 have no prompt and frozen weights, so autograd must record nothing there"


def test_p_tuning_v2_reuses_prefix_tuning_with_flat_prompts_by_default(tiny_checkpoints):
    method, tokenizer = build(tiny_checkpoints["bert"][0])
    assert isinstance(method, PrefixTuning) and not method.prefix.reparameterized
    torch.manual_seed(0)
    model, _ = load_pretrained(str(tiny_checkpoints["bert"][0]))
    flat_prefix_tuning = PrefixTuning(model, tokenizer, 2, PrefixTuningConfig(5, flat=True)).eval()
    with torch.no_grad():
        batch = encode(tokenizer)
        assert torch.equal(method(batch), flat_prefix_tuning(batch)), \
            "full-depth P-tuning v2 is flat prefix tuning: same seed, same model, same outputs"
    reparameterized, _ = build(tiny_checkpoints["bert"][0], flat=False)
    assert reparameterized.prefix.reparameterized


def test_minilm_classifier_matches_peft_prefix_without_projection(minilm_dir):
    peft = pytest.importorskip("peft")
    from transformers import BertForSequenceClassification
    torch.manual_seed(0)
    hf_model = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    theirs_model = peft.get_peft_model(hf_model, peft.PrefixTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=20, prefix_projection=False)).eval()
    ours, tokenizer = build("all-MiniLM-L6-v2", num_virtual_tokens=20)
    copy_peft_prefix(ours, theirs_model)
    with torch.no_grad():
        ours.head.linear.weight.copy_(theirs_model.base_model.classifier.weight)
        ours.head.linear.bias.copy_(theirs_model.base_model.classifier.bias)
        batch = encode(tokenizer)
        torch.testing.assert_close(ours(batch), theirs_model(**batch).logits, rtol=1e-4, atol=1e-4,
                                   msg="P-tuning v2 is peft's prefix tuning without projection (1e-4 on MiniLM)")


def test_token_head_trains_sequence_labelling_with_entity_f1(tiny_checkpoints):
    task = load_task("builtin_ner")
    method, tokenizer = build(tiny_checkpoints["bert"][0], len(task.label_names), task.kind)
    frozen = {n: p.clone() for n, p in method.backbone.state_dict().items()}
    examples = task.splits["train"][:16]
    with torch.no_grad():
        logits = method(next(batches(examples, tokenizer, 4, max_length=32)))
    assert logits.shape[0] == 4 and logits.shape[2] == len(task.label_names), "[B, T, tags]: one row per token"
    train(method, lambda epoch: batches(examples, tokenizer, 8, shuffle=True, seed=epoch, max_length=32), 2, None,
          TrainConfig(epochs=1, lr=1e-2, progress=False))
    f1 = evaluate(method, batches(task.splits["dev"], tokenizer, 16, max_length=32), "entity_f1")
    assert 0.0 <= f1 <= 1.0
    assert all(torch.equal(p, frozen[n]) for n, p in method.backbone.state_dict().items()), "backbone changed"


def test_verbalizer_head_reads_label_words_at_the_mask(tiny_checkpoints):
    method, tokenizer = build(tiny_checkpoints["bert"][0], head="verbalizer")
    batch = tokenizer.encode([f"the movie was {tokenizer.mask_token} .", f"awful {tokenizer.mask_token}"])
    with torch.no_grad():
        logits = method(batch)
        hidden = method.backbone(batch["input_ids"], batch["attention_mask"], prefix=method.prefix())
    at_mask = hidden[batch["input_ids"] == tokenizer.mask_id]  # (B, H)
    expected = method.backbone.lm_logits(at_mask, vocab_ids=method.head.label_word_ids)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0, msg="the label words' scores at [MASK]")


def test_verbalizer_head_without_lm_head_says_so(minilm_dir):
    with pytest.raises(ValueError, match="needs a language-model head"):
        build("all-MiniLM-L6-v2", head="verbalizer")


def test_command_line_runs_a_depth_ablation(tiny_checkpoints, tmp_path):
    record = main(["--model", str(tiny_checkpoints["bert"][0]), "--task", "builtin_sentiment", "--prompt-layers", "2",
                   "--max-steps", "2", "--num-virtual-tokens", "4", "--max-length", "32", "--out", str(tmp_path),
                   "--no-progress"])
    assert record.run_name == "p_tuning_v2_layers2" and record.config["prompt_layers"] == "2"
    assert record.options["lr"] == 1e-2, "flat deep prompts default to lr 1e-2"
    assert record.trainable_params == 4 * 2 * 1 * 32 + 32 * 2 + 2, "one layer's prefix plus the linear head"


def test_command_line_rejects_layers_outside_the_model(tiny_checkpoints, tmp_path):
    with pytest.raises(ValueError, match="it has layers 1 to 2"):
        main(["--model", str(tiny_checkpoints["bert"][0]), "--task", "builtin_sentiment", "--prompt-layers", "2-4",
              "--max-steps", "1", "--out", str(tmp_path), "--no-progress"])


class OpCounts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_a_training_step_launches_few_copies(tiny_checkpoints, kind):
    """On a GPU a step with a small batch is bound by how many kernels the host launches, so: queries, keys and
    values are re-padded in one copy per layer (not three), and the prefix's gradient is written at once
    (per-layer indexing would fill and add a zero tensor of the whole prefix's size for every key and value)."""
    method, tokenizer = build(tiny_checkpoints[kind][0])
    method.train()
    batch = encode(tokenizer)
    assert not batch["attention_mask"].all(), "the sentences differ in length, so the layers re-pad"
    with OpCounts() as ops:
        method(batch).sum().backward()
    layers = method.backbone.config.num_layers
    assert ops.counts["index_copy"] == layers + 1, "one re-padding per layer and one of the output"
    assert ops.counts["index_select"] == 2 * layers + 1, "L + 1 unpaddings; in backward one gather per re-padding"
    assert ops.counts["select_backward"] == 0, "the prefix's gradient is one stack, not a zero-filled tensor per layer"


def products_of_a_step(directory, precision: str, separate: bool, monkeypatch, gradients: bool = True):
    """Loss, trainable gradients and the number of matrix products of one P-tuning v2 step (forward only
    without gradients); `separate`: Attention.queries_keys_values forced to three products."""
    from minitransformer.model import Attention
    if separate:
        monkeypatch.setattr(Attention, "queries_keys_values",
                            lambda self, x: torch.cat([self.query(x), self.key(x), self.value(x)], dim=-1))
    method, tokenizer = build(directory)
    method.train()
    batch = encode(tokenizer)
    torch.manual_seed(1)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with OpCounts() as ops, torch.set_grad_enabled(gradients):
        with autocast:
            loss = method(batch).float().logsumexp(-1).sum()
        if gradients:
            loss.backward()
    monkeypatch.undo()
    grads = [p.grad for p in method.parameters() if p.requires_grad]
    return loss, grads, ops.counts["addmm"] + ops.counts["mm"], method.backbone.config.num_layers


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_mixed_precision_training_projects_queries_keys_values_in_one_product(tiny_checkpoints, kind, monkeypatch):
    """Attention.queries_keys_values: under autocast with gradients on, one product with the three weights stacked
    (fewer kernels forward and backward); the loss as with three products, the gradients to bf16's rounding (the
    input's gradient is one bf16 product instead of three bf16 products summed)."""
    directory = tiny_checkpoints[kind][0]
    loss, grads, products, layers = products_of_a_step(directory, "bf16", False, monkeypatch)
    loss_separate, grads_separate, products_separate, _ = products_of_a_step(directory, "bf16", True, monkeypatch)
    torch.testing.assert_close(loss, loss_separate, rtol=1e-6, atol=1e-6)
    for stacked, separate in zip(grads, grads_separate):
        torch.testing.assert_close(stacked, separate, rtol=2 ** -6, atol=1e-5)  # bf16 keeps 8 bits
    # Two products fewer per layer forward, and two backward wherever the layer's input needs a gradient (all but
    # the first: the embeddings are frozen).
    assert products_separate - products == 2 * layers + 2 * (layers - 1)


def test_fp32_evaluation_and_hooked_projections_keep_three_products(tiny_checkpoints, monkeypatch):
    """fp32 (a stacked weight would be one more copy kept for backward) keeps its numbers bit for bit; no
    gradients (evaluation, generation) and a hook on a projection keep three products too."""
    directory = tiny_checkpoints["gpt2"][0]
    loss, grads, products, _ = products_of_a_step(directory, "fp32", False, monkeypatch)
    loss_separate, grads_separate, products_separate, _ = products_of_a_step(directory, "fp32", True, monkeypatch)
    assert torch.equal(loss, loss_separate) and products == products_separate
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_separate))
    assert (products_of_a_step(directory, "bf16", False, monkeypatch, gradients=False)[2]
            == products_of_a_step(directory, "bf16", True, monkeypatch, gradients=False)[2])
    method, tokenizer = build(directory)
    calls = []
    method.backbone.layers[0].attention.query.register_forward_hook(lambda *args: calls.append(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        method.train()(encode(tokenizer)).float().sum().backward()
    assert calls == [1], "a hooked projection runs as a module of its own"
