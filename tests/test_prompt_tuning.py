"""Prompt tuning: numerically peft's method on the same weights and prompt, and the behaviours it promises."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from minitransformer import load_pretrained
from methods.prompt_tuning import PromptTuning, PromptTuningConfig, main
from methods.shared.prompting import run_with_prompt
from methods.shared.pipeline import save_method
from tests.helpers import (PAIRS, SENTENCES, TOL, assert_refuses_another_backbone, assert_reload_is_exact,
                           assert_trains_only, masked, perturb_trainable)

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

P = 5


def peft_prompt_model(hf_model, task_type, prompt: torch.Tensor):
    """peft's prompt tuning on a copy of the transformers model, its prompt set to ours."""
    config = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=prompt.shape[0])
    model = peft.get_peft_model(copy.deepcopy(hf_model), config).eval()
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.copy_(prompt)
    return model


def tiny_prompt_tuning(directory, head="classifier", verbalizer=None, n=P, **config):
    backbone, tokenizer = load_pretrained(str(directory))
    template = "{text} it was {mask}" if head == "verbalizer" else None  # these tests build their batches by hand
    model = PromptTuning(backbone, tokenizer, 2, PromptTuningConfig(n, head=head, template=template, **config),
                         verbalizer=verbalizer)
    return model.eval(), tokenizer


def test_bert_matches_peft_prompt_tuning(tiny_checkpoints):
    directory, hf_model = tiny_checkpoints["bert"]
    ours, tokenizer = tiny_prompt_tuning(directory, head="verbalizer", verbalizer=["was", "the"])
    texts = [s + " it was " + tokenizer.mask_token for s in SENTENCES]
    batch = tokenizer.encode(texts, PAIRS)  # pairs: the prompt's token types must be 0 in both
    theirs = peft_prompt_model(hf_model, peft.TaskType.TOKEN_CLS, ours.virtual_tokens.detach())
    with torch.no_grad():
        reference = theirs(**batch, output_hidden_states=True)
        hidden = run_with_prompt(ours.backbone, ours.virtual_tokens, batch)
        verbalizer_logits = ours(batch)
    m = batch["attention_mask"]
    # Both put the prompt before [CLS]; compare at the real tokens (positions P..), where both are defined.
    torch.testing.assert_close(masked(hidden[:, P:], m), masked(reference.hidden_states[-1][:, P:], m), **TOL,
                               msg="hidden states of the real tokens differ from peft's (float32 tolerance)")
    torch.testing.assert_close(masked(ours.backbone.lm_logits(hidden)[:, P:], m), masked(reference.logits[:, P:], m),
                               **TOL, msg="masked-LM logits of the real tokens differ from peft's")
    rows, mask_at = (batch["input_ids"] == tokenizer.mask_id).nonzero(as_tuple=True)
    expected = reference.logits[rows, mask_at + P][:, ours.head.label_word_ids]
    torch.testing.assert_close(verbalizer_logits, expected, **TOL,
                               msg="the verbalizer must read the [MASK] at its position + P")


def test_gpt2_matches_peft_prompt_tuning(tiny_checkpoints):
    directory, hf_model = tiny_checkpoints["gpt2"]
    ours, tokenizer = tiny_prompt_tuning(directory, head="verbalizer", verbalizer=["was", "the"])
    batch = tokenizer.encode(SENTENCES)
    del batch["token_type_ids"]
    assert not batch["attention_mask"].all(), "the test should exercise padding"
    theirs = peft_prompt_model(hf_model, peft.TaskType.CAUSAL_LM, ours.virtual_tokens.detach())
    with torch.no_grad():
        reference = theirs(**batch).logits                       # (B, P+T, V)
        hidden = run_with_prompt(ours.backbone, ours.virtual_tokens, batch)
        verbalizer_logits = ours(batch)
    m = batch["attention_mask"]
    torch.testing.assert_close(masked(ours.backbone.lm_logits(hidden)[:, P:], m), masked(reference[:, P:], m), **TOL,
                               msg="next-token logits of the real tokens differ from peft's (float32 tolerance)")
    last = m.sum(1) - 1 + P
    expected = reference[torch.arange(len(SENTENCES)), last][:, ours.head.label_word_ids]
    torch.testing.assert_close(verbalizer_logits, expected, **TOL,
                               msg="the next-token verbalizer must read the last real token at its position + P")


def test_roberta_matches_peft_prompt_tuning(tiny_checkpoints):
    directory, hf_model = tiny_checkpoints["roberta"]
    ours, tokenizer = tiny_prompt_tuning(directory)
    batch = tokenizer.encode(SENTENCES)
    del batch["token_type_ids"]
    theirs = peft_prompt_model(hf_model, peft.TaskType.TOKEN_CLS, ours.virtual_tokens.detach())
    with torch.no_grad():
        reference = theirs(**batch, output_hidden_states=True).hidden_states[-1]
        hidden = run_with_prompt(ours.backbone, ours.virtual_tokens, batch)
    # Given embeddings, RoBERTa counts positions straight through from padding_idx + 1, prompt first.
    m = batch["attention_mask"]
    torch.testing.assert_close(masked(hidden[:, P:], m), masked(reference[:, P:], m), **TOL,
                               msg="RoBERTa real-token hidden states differ from peft's (positions of the prompt?)")


def test_minilm_matches_peft_prompt_tuning(minilm_dir):
    hf_model = transformers.BertForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=2).eval()
    backbone, tokenizer = load_pretrained(str(minilm_dir))
    ours = PromptTuning(backbone, tokenizer, 2, PromptTuningConfig(20, init="vocab")).eval()
    batch = tokenizer.encode(SENTENCES)
    theirs = peft_prompt_model(hf_model, peft.TaskType.SEQ_CLS, ours.virtual_tokens.detach())
    with torch.no_grad():
        reference = theirs(**batch, output_hidden_states=True).hidden_states[-1]
        hidden = run_with_prompt(ours.backbone, ours.virtual_tokens, batch)
    # peft's BertForSequenceClassification pools position 0, the first virtual token; our head reads the
    # real [CLS] at position P. So the logits differ by design: compare the hidden states of the real tokens.
    m = batch["attention_mask"]
    torch.testing.assert_close(masked(hidden[:, 20:], m), masked(reference[:, 20:], m), rtol=1e-4, atol=1e-4,
                               msg="MiniLM hidden states of the real tokens differ from peft's (1e-4: 6 real layers)")


def test_classifier_reads_real_cls_after_the_prompt(tiny_checkpoints):
    model, tokenizer = tiny_prompt_tuning(tiny_checkpoints["bert"][0])
    batch = tokenizer.encode(SENTENCES)
    with torch.no_grad():
        hidden = run_with_prompt(model.backbone, model.virtual_tokens, batch)
        cls = hidden[:, P]  # the tiny BERT has no pooler: the head reads [CLS] itself
        expected = model.head.linear(cls if model.head.pool is None else model.head.pool(cls))
        torch.testing.assert_close(model(batch), expected, rtol=0, atol=0, msg="the classifier must read [CLS] at P")


def test_save_load_round_trip_gives_identical_outputs(tiny_checkpoints, tmp_path):
    model, tokenizer = tiny_prompt_tuning(tiny_checkpoints["bert"][0])
    perturb_trainable(model, scale=1.0)  # as if trained: the prompt and the head
    fresh, _ = tiny_prompt_tuning(tiny_checkpoints["bert"][0])
    assert_reload_is_exact(model, fresh, tokenizer.encode(SENTENCES), tmp_path)


def test_head_is_trainable_and_saved_with_the_prompt(tiny_checkpoints, tmp_path):
    model, _ = tiny_prompt_tuning(tiny_checkpoints["bert"][0])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"virtual_tokens", "head.linear.weight", "head.linear.bias"}, trainable
    save_method(model, tmp_path)
    from safetensors.torch import load_file
    assert set(load_file(str(tmp_path / "method.safetensors"))) == trainable, "the head must be saved too"
    assert "task head" in json.loads((tmp_path / "method.json").read_text())["contents"]


def test_loading_a_prompt_for_another_backbone_is_an_error(tiny_checkpoints, tmp_path):
    model, _ = tiny_prompt_tuning(tiny_checkpoints["bert"][0])
    other, _ = tiny_prompt_tuning(tiny_checkpoints["gpt2"][0])
    assert_refuses_another_backbone(model, other, tmp_path)


def test_backbone_is_bit_identical_after_training(tiny_checkpoints):
    model, tokenizer = tiny_prompt_tuning(tiny_checkpoints["bert"][0])
    assert_trains_only(model, tokenizer, model.virtual_tokens, lr=3e-2, what="the prompt")


def test_prompt_plus_input_longer_than_positions_is_an_error(tiny_checkpoints):
    model, tokenizer = tiny_prompt_tuning(tiny_checkpoints["bert"][0], n=60)  # tiny models have 64 positions
    batch = tokenizer.encode(SENTENCES)
    with pytest.raises(ValueError, match="60 prompt vectors .* positions.*max-length"):
        model(batch)


def test_unknown_init_text_token_is_an_error(tiny_checkpoints):
    with pytest.raises(ValueError, match="only knows as \\[UNK\\].*'☃'"):
        tiny_prompt_tuning(tiny_checkpoints["bert"][0], init="text", init_text="the ☃ movie")


def test_text_and_label_inits_start_from_those_words(tiny_checkpoints):
    model, tokenizer = tiny_prompt_tuning(tiny_checkpoints["bert"][0], init="text", init_text="the movie")
    embeddings = model.backbone.word_embeddings.weight
    ids = tokenizer.token_ids("the movie") * 3  # repeated to fill the 5 virtual tokens, as peft does
    assert torch.equal(model.virtual_tokens.detach(), embeddings[ids[:P]]), "text init: the text's embeddings"
    labeled, _ = tiny_prompt_tuning(tiny_checkpoints["bert"][0], init="labels", verbalizer=["was", "the"])
    assert torch.equal(labeled.virtual_tokens.detach()[:2], embeddings[tokenizer.token_ids("was the")]), \
        "labels init: the label words first"


def test_nearest_tokens_read_back_the_init_words(tiny_checkpoints):
    model, tokenizer = tiny_prompt_tuning(tiny_checkpoints["bert"][0], init="text", init_text="the movie was")
    nearest = model.nearest_tokens(k=3)
    assert [words[0] for words in nearest] == ["the", "movie", "was", "the", "movie"], \
        f"an untrained prompt starts on its words, which are their own nearest neighbours: {nearest}"


def test_command_line_trains_and_writes_results(tiny_checkpoints, tmp_path, capsys):
    record = main(["--model", str(tiny_checkpoints["bert"][0]), "--task", "builtin_sentiment", "--head", "classifier",
                   "--max-steps", "2", "--limit-train", "16", "--num-virtual-tokens", "4", "--max-length", "32", "--out", str(tmp_path),
                   "--no-progress"])
    assert (tmp_path / "results.json").exists() and record.steps == 2
    assert record.trainable_params == 4 * 32 + 32 * 2 + 2, "prompt (4 x 32) plus the head (32 x 2 + 2)"
    assert "virtual token  0 is nearest to" in capsys.readouterr().out
