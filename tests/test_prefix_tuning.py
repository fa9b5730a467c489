"""Prefix tuning: parity with peft, eject, mixed-task batches, saving, generation, bad input."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from data import TableExample
from data.batching import IGNORE_INDEX
from minitransformer import generate, load_pretrained
from data.batching import causal_lm_batches, table_prompt
from methods.prefix_tuning import (PrefixTuning, PrefixTuningConfig, generate_texts, gather_task_prefixes, main,
                                   mixed_task_logits)
from methods.shared.pipeline import load_weights, save_method
from methods.shared.training import TrainConfig, task_loss, train
from tests.helpers import SENTENCES, TOL, assert_refuses_another_backbone, assert_trains_only, masked

EXACT = dict(rtol=0, atol=1e-6)


def build(directory, task_kind="classification", num_labels=2, seed=0, **options):
    """A PrefixTuning on a freshly loaded backbone, in eval mode (no dropout)."""
    torch.manual_seed(seed)
    model, tokenizer = load_pretrained(str(directory))
    config = PrefixTuningConfig(**{"num_virtual_tokens": 5, "mlp_hidden": 16, **options})
    return PrefixTuning(model, tokenizer, num_labels, config, task_kind).eval(), tokenizer


def encode(tokenizer, texts=SENTENCES):
    batch = tokenizer.encode(texts)
    assert not batch["attention_mask"].all(), "the test should exercise padding"
    return batch


def copy_peft_prefix(ours: PrefixTuning, peft_model) -> None:
    """Our prefix takes peft's tensors: the same flat layout [P, layers x (keys, values) x H] (its get_prompt
    views it as (P, 2L, heads, head_dim) and permutes to (2L, B, heads, P, head_dim), key = 2l, value = 2l+1)."""
    encoder = peft_model.prompt_encoder["default"]
    with torch.no_grad():
        if ours.prefix.reparameterized:
            ours.prefix.embedding.copy_(encoder.embedding.weight)
            ours.prefix.mlp.load_state_dict(encoder.transform.state_dict())  # Linear, Tanh, Linear in both
        else:
            ours.prefix.flat_prefix.copy_(encoder.embedding.weight)


@pytest.mark.parametrize("projection", [False, True], ids=["flat", "mlp"])
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_logits_match_peft_prefix_tuning(kind, projection, tiny_checkpoints):
    peft = pytest.importorskip("peft")
    directory, hf_model = tiny_checkpoints[kind]
    task_type = "CAUSAL_LM" if kind == "gpt2" else "FEATURE_EXTRACTION"  # both return the LM head's logits
    theirs_model = peft.get_peft_model(copy.deepcopy(hf_model), peft.PrefixTuningConfig(
        task_type=task_type, num_virtual_tokens=5, prefix_projection=projection, encoder_hidden_size=16)).eval()
    ours, tokenizer = build(directory, flat=not projection)
    copy_peft_prefix(ours, theirs_model)
    batch = encode(tokenizer)
    batch.pop("token_type_ids")
    with torch.no_grad():
        theirs = theirs_model(**batch).logits
        hidden = ours.backbone(**batch, prefix=ours.prefix())
        mine = ours.backbone.lm_logits(hidden)
    real = batch["attention_mask"]
    torch.testing.assert_close(masked(mine, real), masked(theirs, real), **TOL,
                               msg="vocabulary logits differ from peft's by more than float32 rounding")


@pytest.mark.parametrize("projection", [False, True], ids=["flat", "mlp"])
def test_minilm_classifier_logits_match_peft(projection, minilm_dir):
    peft = pytest.importorskip("peft")
    from transformers import BertForSequenceClassification
    torch.manual_seed(0)
    hf_model = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    theirs_model = peft.get_peft_model(hf_model, peft.PrefixTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=20, prefix_projection=projection, encoder_hidden_size=64)).eval()
    model, tokenizer = load_pretrained("all-MiniLM-L6-v2")
    ours = PrefixTuning(model, tokenizer, 2, PrefixTuningConfig(flat=not projection, mlp_hidden=64)).eval()
    copy_peft_prefix(ours, theirs_model)
    classifier = theirs_model.base_model.classifier
    with torch.no_grad():
        ours.head.linear.weight.copy_(classifier.weight)
        ours.head.linear.bias.copy_(classifier.bias)
        batch = encode(tokenizer)
        theirs = theirs_model(**batch).logits
        mine = ours(batch)
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4,
                               msg="MiniLM classifier logits differ from peft's (1e-4: 6 layers of float32)")


def test_eject_keeps_outputs_and_removes_the_mlp(tiny_checkpoints):
    method, tokenizer = build(tiny_checkpoints["bert"][0])
    batch = encode(tokenizer)
    trainable_before = {n for n, p in method.named_parameters() if p.requires_grad}
    with torch.no_grad():
        before = method(batch)
        method.eject()
        after = method(batch)
    trainable_after = {n for n, p in method.named_parameters() if p.requires_grad}
    torch.testing.assert_close(after, before, **EXACT, msg="eject() must not change outputs (1e-6)")
    assert {"prefix.embedding", "prefix.mlp.0.weight", "prefix.mlp.2.bias"} <= trainable_before
    assert not any("mlp" in n or "embedding" in n for n in trainable_after), trainable_after
    P, L, H = 5, 2, 32
    prefix_size = sum(p.numel() for n, p in method.named_parameters() if n.startswith("prefix."))
    assert prefix_size == P * 2 * L * H, "only the [P, 2 x layers x H] prefix remains"
    assert "deploy" in method.saved_contents


def test_prefix_is_computed_once_and_shared_by_the_batch(tiny_checkpoints):
    method, tokenizer = build(tiny_checkpoints["bert"][0])
    calls = []
    method.prefix.mlp.register_forward_hook(lambda *args: calls.append(1))
    prefix = method.prefix()
    assert all(keys.shape == (1, 4, 5, 8) for keys, _ in prefix), "one [1, heads, P, head_dim] prefix per layer"
    calls.clear()
    method(encode(tokenizer))
    assert len(calls) == 1, "the MLP runs once per forward, not once per row"


def test_all_zero_prefix_is_not_a_no_op(tiny_checkpoints):
    method, tokenizer = build(tiny_checkpoints["bert"][0], flat=True)
    batch = encode(tokenizer)
    with torch.no_grad():
        method.prefix.flat_prefix.zero_()
        with_zero_prefix = method(batch)
        without_prefix = method.read(method.backbone(batch["input_ids"], batch["attention_mask"]), batch)
    assert (with_zero_prefix - without_prefix).abs().max() > 1e-3, \
        "zero keys still take softmax mass (score 0 -> weight exp(0)), so outputs must change"


def test_mixed_task_batch_equals_separate_runs(tiny_checkpoints, tmp_path):
    directory = tiny_checkpoints["bert"][0]
    sentiment, tokenizer = build(directory, seed=1)
    topic, _ = build(directory, num_labels=3, seed=2, flat=True)  # another task: 3 labels, a flat prefix
    save_method(sentiment.eject(), tmp_path / "sentiment")
    save_method(topic, tmp_path / "topic")
    backbone, _ = load_pretrained(str(directory))  # serving: one backbone, both tasks' prefixes loaded onto it
    served = [PrefixTuning(backbone, tokenizer, n, PrefixTuningConfig(5, flat=True)).eval() for n in (2, 3)]
    for method, name in zip(served, ("sentiment", "topic")):
        load_weights(method, tmp_path / name)
    batch = encode(tokenizer, SENTENCES + SENTENCES[:2])
    batch["task_ids"] = torch.tensor([0, 1, 1, 0, 1])
    with torch.no_grad():
        mixed = mixed_task_logits(served, batch)
        separate = [sentiment(batch), topic(batch)]
    for row, task in enumerate(batch["task_ids"].tolist()):
        torch.testing.assert_close(mixed[row], separate[task][row], **EXACT,
                                   msg=f"row {row} (task {task}) differs from running its task alone (1e-6)")
    assert [len(r) for r in mixed] == [2, 3, 3, 2, 3], "each row has its own task's label count"


def test_tasks_with_different_prefix_lengths_cannot_share_a_batch(tiny_checkpoints):
    short, _ = build(tiny_checkpoints["bert"][0], num_virtual_tokens=3)
    long, _ = build(tiny_checkpoints["bert"][0], num_virtual_tokens=5)
    with pytest.raises(ValueError, match="same length on the same layers"):
        gather_task_prefixes([short.prefix(), long.prefix()], torch.tensor([0, 1]))


def test_save_load_round_trip_gives_identical_outputs(tiny_checkpoints, tmp_path):
    directory = tiny_checkpoints["bert"][0]
    trained, tokenizer = build(directory, seed=1)
    batch = encode(tokenizer)
    save_method(trained, tmp_path / "training")
    loaded, _ = build(directory, seed=2)  # a different random start
    load_weights(loaded, tmp_path / "training")
    meta = json.loads((tmp_path / "training" / "method.json").read_text())
    assert "training state" in meta["contents"]
    save_method(trained.eject(), tmp_path / "deploy")
    deployed, _ = build(directory, seed=3, flat=True)  # the deploy file loads into a flat prefix
    load_weights(deployed, tmp_path / "deploy")
    with torch.no_grad():
        expected = trained(batch)
        assert torch.equal(loaded(batch), expected), "training-state round trip must be exact"
        assert torch.equal(deployed(batch), expected), "deploy-state round trip must be exact"


def test_loading_a_prefix_trained_for_another_model_is_an_error(tiny_checkpoints, tmp_path):
    trained, _ = build(tiny_checkpoints["bert"][0])
    assert_refuses_another_backbone(trained, build(tiny_checkpoints["roberta"][0])[0], tmp_path)


def test_backbone_is_bit_identical_after_training(tiny_checkpoints):
    method, tokenizer = build(tiny_checkpoints["bert"][0], flat=True)
    assert_trains_only(method, tokenizer, method.prefix.flat_prefix, lr=1e-2, what="the prefix itself")
    method, tokenizer = build(tiny_checkpoints["bert"][0])
    assert_trains_only(method, tokenizer, method.prefix.embedding, lr=1e-2, what="the MLP's input embedding")


def test_prefix_dropout_acts_while_training_only(tiny_checkpoints):
    method, _ = build(tiny_checkpoints["bert"][0], prefix_dropout=0.5)  # built in eval mode
    keys = lambda: torch.cat([k.flatten() for k, _ in filter(None, method.prefix())])
    with torch.no_grad():
        evaluated = keys()
        assert torch.equal(keys(), evaluated), "in eval mode prefix dropout does nothing"
        method.train()
        dropped = keys()
    zeroed = float((dropped == 0).float().mean())
    assert 0.4 < zeroed < 0.6, f"p=0.5 should zero about half of the prefix while training, zeroed {zeroed:.2f}"
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], 2 * evaluated[kept], msg="the kept values are scaled by 1 / (1 - p)")


def test_loading_a_prefix_trained_on_other_layers_is_a_clear_error(tiny_checkpoints, tmp_path):
    trained, _ = build(tiny_checkpoints["bert"][0], flat=True, prompt_layers="1")
    save_method(trained, tmp_path)
    other, _ = build(tiny_checkpoints["bert"][0], flat=True)  # every layer: the flat prefix is twice as wide
    with pytest.raises(ValueError, match=r"trained with other options \(prompt_layers '1' there, 'all' here\)"):
        load_weights(other, tmp_path)
    meta = json.loads((tmp_path / "method.json").read_text())
    del meta["config"]  # a method.json without its config: the shapes say it
    (tmp_path / "method.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"prefix\.flat_prefix.* saved \[5, 64\].* expects \[5, 128\].*options"):
        load_weights(other, tmp_path)


def test_generation_with_prefix_equals_decoding_without_cache(tiny_checkpoints):
    method, tokenizer = build(tiny_checkpoints["gpt2"][0], "generation")
    batch = tokenizer.encode(["the movie was", "what a lovely day to"], padding_side="left")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    prefix = method.prefix()
    generated = generate(method.backbone, ids, mask, max_new_tokens=6, eos_id=-1, prefix=prefix)
    with torch.no_grad():
        for _ in range(6):  # the whole sequence again at each step, no cache; real tokens start at position P
            positions = (5 + mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            logits = method.backbone.lm_logits(method.backbone(ids, mask, position_ids=positions, prefix=prefix))
            next_token = logits[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, next_token], 1), torch.cat([mask, torch.ones_like(next_token)], 1)
    assert torch.equal(generated, ids), "cached generation with a prefix must equal uncached decoding"


TABLES = [TableExample("name : Aromi | food : pub", ["Aromi is a pub.", "a pub called Aromi."]),
          TableExample("name : Vaults | food : fast", ["the Vaults has fast food."])]


def test_lm_batches_train_only_on_reference_tokens(tiny_checkpoints):
    _, tokenizer = load_pretrained(str(tiny_checkpoints["gpt2"][0]))
    batch = next(causal_lm_batches(TABLES, tokenizer, batch_size=8))
    assert batch["input_ids"].shape[0] == 3, "one row per (table, reference) pair"
    prompt = tokenizer.token_ids(table_prompt(TABLES[0].source))
    reference = tokenizer.token_ids(" Aromi is a pub.") + [tokenizer.eos_id]
    labels = batch["labels"][0]
    assert (labels[:len(prompt) - 1] == IGNORE_INDEX).all(), "no loss on the table"
    assert labels[len(prompt) - 1:len(prompt) - 1 + len(reference)].tolist() == reference, \
        "position t predicts token t+1: the reference and its eos"
    assert (labels[len(prompt) - 1 + len(reference):] == IGNORE_INDEX).all(), "no loss on padding"


def test_table_to_text_training_lowers_the_reference_loss(tiny_checkpoints):
    """A few E2E-style examples on a tiny GPT-2 (E2E's train split is not in ../shared/data)."""
    method, tokenizer = build(tiny_checkpoints["gpt2"][0], "generation")
    # A random tiny GPT-2's logits span about 0.1 (0.02-scale embeddings), too flat for any prefix
    # to move the loss: a larger final layer-norm gain gives the logits room, as a trained model has.
    with torch.no_grad():
        method.backbone.final_norm.weight.mul_(40)
    loss = lambda: sum(task_loss(method(b), b["labels"]).item() for b in causal_lm_batches(TABLES, tokenizer, 8))
    before = loss()
    train(method, lambda epoch: causal_lm_batches(TABLES, tokenizer, 3, True, epoch), 1, None,
          TrainConfig(epochs=40, lr=3e-2, progress=False))
    method.eval()
    assert loss() < 0.7 * before, f"the LM loss on the references should fall by 30%: {before:.2f} -> {loss():.2f}"
    texts = generate_texts(method, tokenizer, [t.source for t in TABLES], max_new_tokens=5)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def write_e2e_files(directory, tables):
    folder = directory / "e2e_prefixtuning_format"
    folder.mkdir(parents=True)
    lines = [f"{t.source} ||{r}" for t in tables for r in t.references]
    for name in ("train", "valid"):
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")


def test_command_line_trains_table_to_text_and_saves_both_states(tiny_checkpoints, tmp_path):
    write_e2e_files(tmp_path / "data", TABLES)
    out = tmp_path / "run"
    record = main(["--model", str(tiny_checkpoints["gpt2"][0]), "--task", "e2e_prefixtuning", "--data-dir",
                   str(tmp_path / "data"), "--max-steps", "2", "--num-virtual-tokens", "4", "--mlp-hidden", "16",
                   "--max-new-tokens", "4", "--out", str(out), "--no-progress"])
    assert record.metric == "bleu" and 0 <= record.dev_metric <= 1
    assert "training state" in json.loads((out / "method.json").read_text())["contents"]
    assert "deploy state" in json.loads((out / "deploy" / "method.json").read_text())["contents"]
    assert (out / "deploy" / "method.safetensors").stat().st_size < (out / "method.safetensors").stat().st_size


def test_command_line_classification_run(tiny_checkpoints, tmp_path):
    record = main(["--model", str(tiny_checkpoints["bert"][0]), "--task", "builtin_sentiment", "--flat",
                   "--max-steps", "2", "--num-virtual-tokens", "4", "--max-length", "32", "--out", str(tmp_path),
                   "--no-progress"])
    assert record.options["lr"] == 1e-2, "a flat prefix's default learning rate"
    assert (tmp_path / "results.json").exists() and not (tmp_path / "deploy").exists()


def test_prefix_plus_input_longer_than_the_position_table_is_a_clear_error(tiny_checkpoints):
    method, _ = build(tiny_checkpoints["bert"][0], num_virtual_tokens=10)
    batch = {"input_ids": torch.ones(1, 60, dtype=torch.long), "attention_mask": torch.ones(1, 60, dtype=torch.long)}
    with pytest.raises(ValueError, match="after a prefix of 10.*position table has 64 entries"):
        method(batch)


def test_generation_needs_a_decoder(tiny_checkpoints):
    with pytest.raises(ValueError, match="need a decoder"):
        build(tiny_checkpoints["bert"][0], "generation")
