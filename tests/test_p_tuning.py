"""P-tuning: peft's prompt encoder on the same weights, the template layout, and the promised behaviours."""
from __future__ import annotations

import copy
import shutil

import pytest
import torch

from data import batches, load_task
from minitransformer import load_pretrained
from methods.p_tuning import PTuning, PTuningConfig, main, shape_template
from methods.shared.pipeline import save_method
from methods.shared.prompting import run_with_prompt
from methods.shared.training import TrainConfig, train
from tests.helpers import (PAIRS, SENTENCES, TOL, assert_refuses_another_backbone, assert_reload_is_exact,
                           assert_trains_only, masked, perturb_trainable)

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

P = 5


def tiny_p_tuning(directory, task_kind="classification", head="classifier", verbalizer=None, **config):
    backbone, tokenizer = load_pretrained(str(directory))
    model = PTuning(backbone, tokenizer, 2, PTuningConfig(head=head, **config), task_kind, verbalizer)
    return model.eval(), tokenizer


def peft_encoder_model(hf_model, task_type, ours: PTuning, encoder: str):
    """peft's P-tuning on a copy of the transformers model; its encoder's weights copied into ours."""
    kind = {"mlp": "MLP", "lstm": "LSTM"}[encoder]
    config = peft.PromptEncoderConfig(task_type=task_type, num_virtual_tokens=ours.config.num_virtual_tokens,
                                      encoder_hidden_size=ours.config.encoder_hidden,
                                      encoder_reparameterization_type=kind)
    model = peft.get_peft_model(copy.deepcopy(hf_model), config).eval()
    theirs = model.prompt_encoder["default"]
    with torch.no_grad():
        ours.prompt_encoder.pseudo_tokens.copy_(theirs.embedding.weight)
        ours.prompt_encoder.mlp.load_state_dict(theirs.mlp_head.state_dict())
        if encoder == "lstm":
            ours.prompt_encoder.lstm.load_state_dict(theirs.lstm_head.state_dict())
    return model


@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
def test_bert_prompt_encoder_matches_peft_in_prefix_layout(tiny_checkpoints, encoder):
    directory, hf_model = tiny_checkpoints["bert"]
    ours, tokenizer = tiny_p_tuning(directory, layout="prefix", num_virtual_tokens=P, encoder=encoder,
                                    encoder_hidden=16)
    theirs = peft_encoder_model(hf_model, peft.TaskType.TOKEN_CLS, ours, encoder)
    batch = tokenizer.encode(SENTENCES, PAIRS)
    with torch.no_grad():
        reference = theirs(**batch, output_hidden_states=True)
        hidden = run_with_prompt(ours.backbone, ours.prompt_encoder(), batch)
    m = batch["attention_mask"]
    # peft's layout puts the prompt before [CLS]; compare the real tokens (positions P..), defined in both.
    torch.testing.assert_close(masked(hidden[:, P:], m), masked(reference.hidden_states[-1][:, P:], m), **TOL,
                               msg=f"{encoder} encoder: real-token hidden states differ from peft's (float32)")
    torch.testing.assert_close(masked(ours.backbone.lm_logits(hidden)[:, P:], m), masked(reference.logits[:, P:], m),
                               **TOL, msg=f"{encoder} encoder: masked-LM logits differ from peft's")


def test_gpt2_prompt_encoder_matches_peft_in_prefix_layout(tiny_checkpoints):
    directory, hf_model = tiny_checkpoints["gpt2"]
    ours, tokenizer = tiny_p_tuning(directory, layout="prefix", num_virtual_tokens=P, head="verbalizer",
                                    verbalizer=["was", "the"], encoder_hidden=16, template="{text} {mask}")
    theirs = peft_encoder_model(hf_model, peft.TaskType.CAUSAL_LM, ours, "mlp")
    batch = tokenizer.encode(SENTENCES)
    del batch["token_type_ids"]
    with torch.no_grad():
        reference = theirs(**batch).logits  # (B, P+T, V)
        hidden = run_with_prompt(ours.backbone, ours.prompt_encoder(), batch)
        verbalizer_logits = ours(batch)
    m = batch["attention_mask"]
    torch.testing.assert_close(masked(ours.backbone.lm_logits(hidden)[:, P:], m), masked(reference[:, P:], m), **TOL,
                               msg="next-token logits of the real tokens differ from peft's (float32 tolerance)")
    expected = reference[torch.arange(len(SENTENCES)), m.sum(1) - 1 + P][:, ours.head.label_word_ids]
    torch.testing.assert_close(verbalizer_logits, expected, **TOL, msg="the verbalizer reads the last token at +P")


def test_minilm_prompt_encoder_matches_peft_in_prefix_layout(minilm_dir):
    hf_model = transformers.BertForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=2).eval()
    ours, tokenizer = tiny_p_tuning(minilm_dir, layout="prefix", num_virtual_tokens=20, read="prompt")
    theirs = peft_encoder_model(hf_model, peft.TaskType.SEQ_CLS, ours, "mlp")
    copy_classifier(ours, hf_model)
    batch = tokenizer.encode(SENTENCES)
    with torch.no_grad():
        reference = theirs(**batch, output_hidden_states=True)
        hidden = run_with_prompt(ours.backbone, ours.prompt_encoder(), batch)
        logits = ours(batch)
    m = batch["attention_mask"]
    torch.testing.assert_close(masked(hidden[:, 20:], m), masked(reference.hidden_states[-1][:, 20:], m), rtol=1e-4,
                               atol=1e-4, msg="MiniLM real-token hidden states differ from peft's (1e-4: 6 real layers)")
    # peft's classifier pools position 0, the first prompt vector, as --read prompt does.
    torch.testing.assert_close(logits, reference.logits, rtol=1e-4, atol=1e-4, msg="MiniLM logits differ from peft's")


def copy_classifier(ours: PTuning, hf_model) -> None:
    with torch.no_grad():
        ours.head.linear.load_state_dict(hf_model.classifier.state_dict())


def test_reading_the_first_prompt_gives_peft_sequence_classification_logits(tiny_checkpoints, tmp_path):
    """peft's BertForSequenceClassification pools position 0, the first prompt vector: --read prompt does too."""
    torch.manual_seed(0)  # the tiny masked LM has no pooler: a sequence classifier adds one, saved with it
    hf_model = transformers.BertForSequenceClassification.from_pretrained(str(tiny_checkpoints["bert"][0]),
                                                                          num_labels=2).eval()
    hf_model.bert.save_pretrained(tmp_path)  # the backbone with its pooler; the classifier is copied below
    for file in tiny_checkpoints["bert"][0].iterdir():
        if not file.name.startswith(("model", "pytorch_model", "config")):
            shutil.copy(file, tmp_path)  # the tokenizer's files
    ours, tokenizer = tiny_p_tuning(tmp_path, layout="prefix", num_virtual_tokens=P, encoder_hidden=16, read="prompt")
    assert ours.backbone.pooler is not None, "the saved classifier's pooler must load"
    theirs = peft_encoder_model(hf_model, peft.TaskType.SEQ_CLS, ours, "mlp")
    copy_classifier(ours, hf_model)
    batch = tokenizer.encode(SENTENCES, PAIRS)
    with torch.no_grad():
        torch.testing.assert_close(ours(batch), theirs(**batch).logits, **TOL,
                                   msg="classifier on the first prompt vector differs from peft's SEQ_CLS logits")


def test_read_prompt_in_a_template_reads_the_first_prompt_slot(tiny_checkpoints):
    model, tokenizer = tiny_p_tuning(tiny_checkpoints["bert"][0], template="{p:2} {text} {p:1}", read="prompt")
    batch = tokenizer.encode(SENTENCES)
    hidden = {}
    model.backbone.register_forward_hook(lambda _, __, output: hidden.update(output=output))
    with torch.no_grad():
        logits = model(batch)
    assert model.head.pool is None, "the tiny masked LM has no pooler: the head reads the hidden state itself"
    expected = model.head.linear(hidden["output"][:, 1])  # [CLS] at 0, the first prompt at 1
    torch.testing.assert_close(logits, expected, rtol=0, atol=0, msg="--read prompt must read position 1")
    with pytest.raises(ValueError, match="first prompt vector, but the head is a verbalizer"):
        tiny_p_tuning(tiny_checkpoints["bert"][0], head="verbalizer", verbalizer=["was", "the"],
                      template="{p:2} {text} {mask}", read="prompt")
    with pytest.raises(ValueError, match="Unknown read position"):
        tiny_p_tuning(tiny_checkpoints["bert"][0], read="sep")


def test_read_input_reads_cls_and_auto_picks_by_architecture(tiny_checkpoints):
    model, tokenizer = tiny_p_tuning(tiny_checkpoints["bert"][0], template="{p:2} {text} {p:1}", read="input")
    hidden = {}
    model.backbone.register_forward_hook(lambda _, __, output: hidden.update(output=output))
    with torch.no_grad():
        logits = model(tokenizer.encode(SENTENCES))
    torch.testing.assert_close(logits, model.head.linear(hidden["output"][:, 0]), rtol=0, atol=0,
                               msg="--read input must read [CLS] at position 0")
    assert tiny_p_tuning(tiny_checkpoints["bert"][0])[0].read_prompt, "auto: an encoder reads the first prompt"
    assert not tiny_p_tuning(tiny_checkpoints["gpt2"][0])[0].read_prompt, "auto: GPT-2 reads its last token"
    with pytest.raises(ValueError, match="cannot see the input"):
        tiny_p_tuning(tiny_checkpoints["gpt2"][0], read="prompt")


def test_shape_places_prompts_input_and_mask(tiny_checkpoints):
    model, tokenizer = tiny_p_tuning(tiny_checkpoints["bert"][0], template=shape_template("2,1,1"))
    batch = tokenizer.encode(["the movie"])
    text = tokenizer.token_ids("the movie")
    placed = model.place(batch)
    expected = [tokenizer.cls_id, -1, -2, *text, -3, tokenizer.mask_id, -4, tokenizer.sep_id]
    assert placed["ids"][0].tolist() == expected, "[CLS] p1 p2 x p3 [MASK] p4 [SEP] (prompt i stored as -i)"
    seen = {}
    model.backbone.register_forward_pre_hook(lambda _, args, kwargs: seen.update(kwargs), with_kwargs=True)
    with torch.no_grad():
        model(batch)
    prompts, embeds = model.prompt_encoder(), seen["inputs_embeds"][0]
    torch.testing.assert_close(embeds[[1, 2, 5, 7]], prompts, rtol=0, atol=0, msg="prompt vectors at their slots")
    assert torch.equal(embeds[3:5], model.backbone.word_embeddings.weight[text]), "input tokens at theirs"


def test_pair_template_puts_the_anchor_between_the_sentences(tiny_checkpoints):
    model, tokenizer = tiny_p_tuning(tiny_checkpoints["bert"][0], task_kind="pair",
                                     template="{p:1} {text} ? {text_pair} {p:1} {mask}")
    placed = model.place(tokenizer.encode(["the movie"], ["not bad"]))
    first, second, question = tokenizer.token_ids("the movie"), tokenizer.token_ids("not bad"), tokenizer.token_ids("?")
    assert placed["ids"][0].tolist() == [tokenizer.cls_id, -1, *first, *question, *second, -2, tokenizer.mask_id,
                                         tokenizer.sep_id], "the anchor replaces the [SEP] between the sentences"
    types = placed["token_type_ids"][0].tolist()
    assert types == [0] * (3 + len(first)) + [1] * (len(second) + 3), "the second sentence keeps token type 1"


def test_gpt2_template_ends_before_the_mask(tiny_checkpoints):
    model, tokenizer = tiny_p_tuning(tiny_checkpoints["gpt2"][0], template="{p:2} {text} {p:1} {mask} {p:3}")
    assert model.prompt_encoder.pseudo_tokens.shape[0] == 3, "prompts after {mask} cannot reach the label"
    assert model.place(tokenizer.encode(["the movie"]))["ids"][0, -1].item() == -3, "the last token is prompt 3"
    with pytest.raises(ValueError, match="input must come before it"):
        tiny_p_tuning(tiny_checkpoints["gpt2"][0], template="{p:2} {mask} {text}")


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_outputs_do_not_depend_on_padding(tiny_checkpoints, kind):
    model, tokenizer = tiny_p_tuning(tiny_checkpoints[kind][0], template="{p:2} {text} {p:2}", encoder="lstm")
    batch = tokenizer.encode(SENTENCES)
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model(tokenizer.encode([sentence])) for sentence in SENTENCES])
    torch.testing.assert_close(together, alone, **TOL, msg="a row's logits must not depend on the other rows")


def test_prompt_encoder_runs_once_per_step(tiny_checkpoints):
    model, tokenizer = tiny_p_tuning(tiny_checkpoints["bert"][0], encoder="lstm")
    calls = []
    model.prompt_encoder.register_forward_hook(lambda *_: calls.append(1))
    model(tokenizer.encode(SENTENCES)).sum().backward()
    assert len(calls) == 1, f"the encoder ran {len(calls)} times for one batch; once is enough"


def test_save_load_round_trip_gives_identical_outputs(tiny_checkpoints, tmp_path):
    model, tokenizer = tiny_p_tuning(tiny_checkpoints["bert"][0], encoder="lstm")
    perturb_trainable(model)  # as if trained
    fresh, _ = tiny_p_tuning(tiny_checkpoints["bert"][0], encoder="lstm")
    assert_reload_is_exact(model, fresh, tokenizer.encode(SENTENCES), tmp_path)


def test_head_and_encoder_are_trainable_and_saved(tiny_checkpoints, tmp_path):
    model, _ = tiny_p_tuning(tiny_checkpoints["bert"][0])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"head.linear.weight", "head.linear.bias", "prompt_encoder.pseudo_tokens"} <= trainable
    assert all(name.startswith(("head.", "prompt_encoder.")) for name in trainable), trainable
    save_method(model, tmp_path)
    from safetensors.torch import load_file
    assert set(load_file(str(tmp_path / "method.safetensors"))) == trainable, "encoder and head must be saved"


def test_loading_for_another_backbone_is_an_error(tiny_checkpoints, tmp_path):
    model, _ = tiny_p_tuning(tiny_checkpoints["bert"][0])
    assert_refuses_another_backbone(model, tiny_p_tuning(tiny_checkpoints["roberta"][0])[0], tmp_path)


def test_backbone_is_bit_identical_after_training(tiny_checkpoints):
    model, tokenizer = tiny_p_tuning(tiny_checkpoints["bert"][0], template=shape_template("2,2,2"))
    assert_trains_only(model, tokenizer, model.prompt_encoder.mlp[0].weight, lr=1e-2, what="the encoder")


def test_prompt_plus_input_longer_than_positions_is_an_error(tiny_checkpoints):
    model, tokenizer = tiny_p_tuning(tiny_checkpoints["bert"][0], template="{p:30} {text} {p:30}")
    with pytest.raises(ValueError, match="60 prompt vectors .* positions.*max-length"):
        model(tokenizer.encode(SENTENCES))


@pytest.mark.parametrize("template, message", [
    ("{p:3} {txt}", "Unknown slot"), ("{p:3}", "needs {text} exactly once"), ("{text} again", "no prompt vectors"),
    ("{p:x} {text}", "written {p:N}"), ("{p:2} {text} {text_pair}", "needs a pair task")])
def test_bad_templates_are_clear_errors(tiny_checkpoints, template, message):
    with pytest.raises(ValueError, match=message.replace("{", "\\{")):
        tiny_p_tuning(tiny_checkpoints["bert"][0], template=template)


def test_verbalizer_needs_a_mask_in_the_template(tiny_checkpoints):
    with pytest.raises(ValueError, match="has no \\{mask\\}"):
        tiny_p_tuning(tiny_checkpoints["bert"][0], head="verbalizer", verbalizer=["was", "the"],
                      template="{p:2} {text}")


def test_command_line_trains_with_a_shape(tiny_checkpoints, tmp_path):
    record = main(["--model", str(tiny_checkpoints["bert"][0]), "--task", "builtin_sentiment", "--head", "classifier",
                   "--shape", "1,1,1", "--encoder", "lstm", "--encoder-hidden", "8", "--max-steps", "2",
                   "--limit-train", "16", "--max-length", "32", "--out", str(tmp_path), "--no-progress"])
    assert (tmp_path / "results.json").exists() and record.steps == 2
    assert record.config["template"] == "{p:1} {text} {p:1} {mask} {p:1}"


def test_training_gives_the_same_numbers_for_a_seed(minilm_dir, data_dir):
    """Placing the prompt vectors by an indexed gather made training differ from run to run on CPU (its backward
    scatter-adds in a thread-dependent order, and at lr 3e-2 the difference grows); a one-hot product does not."""
    examples = load_task("sst2", data_dir).splits["train"][:64]
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        backbone, tokenizer = load_pretrained(str(minilm_dir))
        model = PTuning(backbone, tokenizer, 2, PTuningConfig())
        train(model, lambda epoch: batches(examples, tokenizer, 16, shuffle=True, seed=epoch, max_length=64), 4, None,
              TrainConfig(epochs=1, lr=3e-2, progress=False))
        runs.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0]), "same seed, different P-tuning parameters"
