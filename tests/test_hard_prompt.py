"""Hard prompts: verbalizer scores, in-context demonstrations, the command line's variants and its bad input."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from data import TemplateError, VerbalizerError, batches, label_word, load_task
from methods import hard_prompt
from methods.hard_prompt import (SEPARATOR, HardPrompt, HardPromptConfig, demonstrations, icl_template,
                                 parse_verbalizer)
from minitransformer import load_pretrained

POSITIVE = ["the movie was great", "the actors were wonderful", "a lovely day", "the food was fine",
            "good , not bad at all", "what a great film"]
NEGATIVE = ["a terrible film", "a boring plot", "the food was awful", "the movie was bad",
            "nobody expected it , boring", "the service was awful"]
# Candidate label words; the tiny vocabularies are trained afresh, so the test picks two that are one token.
CANDIDATES = ["bad", "great", "good", "fine", "awful", "boring", "the", "movie", "was", "with", "a"]


@pytest.fixture(scope="module")
def tiny_sst2(tmp_path_factory):
    """A data directory laid out like ../shared/data with a few short SST-2-format sentences (tiny vocabulary)."""
    root = tmp_path_factory.mktemp("data")
    (root / "harvardnlp").mkdir()
    for split, (positive, negative) in {"train": (POSITIVE, NEGATIVE), "dev": (POSITIVE[:4], NEGATIVE[:4]),
                                        "test": (POSITIVE[2:], NEGATIVE[2:])}.items():
        lines = [f"1 {s}" for s in positive] + [f"0 {s}" for s in negative]
        (root / "harvardnlp" / f"stsa.binary.{split}").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def words(tiny_checkpoints) -> dict[str, list[str]]:
    """{kind: [negative word, positive word]}, each a single token for that tiny tokenizer."""
    chosen = {}
    for kind in ("bert", "gpt2"):
        tokenizer = load_pretrained(tiny_checkpoints[kind][0])[1]
        chosen[kind] = [w for w in CANDIDATES if len(tokenizer.token_ids(label_word(w, tokenizer))) == 1][:2]
        assert len(chosen[kind]) == 2, f"the tiny {kind} vocabulary has no two single-token words among {CANDIDATES}"
    return chosen


def cli(tiny_checkpoints, tiny_sst2, tmp_path, words, kind, *options):
    negative, positive = words[kind]
    return hard_prompt.main(["--model", str(tiny_checkpoints[kind][0]), "--task", "sst2", "--data-dir", str(tiny_sst2),
                             "--verbalizer", f"negative={negative}", f"positive={positive}", "--out", str(tmp_path),
                             "--no-progress", *options])


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_verbalizer_scores_equal_the_reference_lm_logits_of_the_label_words(tiny_checkpoints, tiny_sst2, words, kind):
    directory, reference = tiny_checkpoints[kind]
    backbone, tokenizer = load_pretrained(directory)
    model = HardPrompt(backbone, tokenizer, 2, HardPromptConfig(templates=["{text} it was {mask} ."]),
                       verbalizer=words[kind]).eval()
    batch = next(batches(load_task("sst2", tiny_sst2).splits["dev"], tokenizer, 8, template=model.template))
    with torch.no_grad():
        ours = model(batch)  # (B, 2)
        logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    if kind == "bert":  # the label word fills the [MASK]
        slot = (batch["input_ids"] == tokenizer.mask_id).float().argmax(1)
    else:  # GPT-2: the label word is the next token after the last real one
        slot = batch["attention_mask"].sum(1) - 1
    label_ids = [tokenizer.token_ids(w if kind == "bert" else " " + w)[0] for w in words[kind]]
    by_hand = logits[torch.arange(len(slot)), slot][:, label_ids]  # (B, 2)
    torch.testing.assert_close(ours, by_hand, rtol=1e-4, atol=1e-4,
                               msg="verbalizer scores must be the LM logits of the label words (float32 tolerance)")


def test_icl_prompt_holds_exactly_k_demonstrations_per_class():
    pool = load_task("builtin_sentiment").splits["train"]
    demos = demonstrations(pool, shots=3, num_labels=2, seed=0)
    assert Counter(example.label for example, _ in demos) == {0: 3, 1: 3}
    template, label_words = "{text} It was {mask}.", ["terrible", "great"]
    blocks = icl_template(template, demos, label_words).split(SEPARATOR)
    assert len(blocks) == 7 and blocks[-1] == template, "six demonstrations, then the query's template"
    for block, (example, label) in zip(blocks, demos):
        assert block == f"{example.text} It was {label_words[label]}.".replace("{", "{{").replace("}", "}}")


def test_demonstrations_are_seeded():
    pool = load_task("builtin_sentiment").splits["train"]
    assert demonstrations(pool, 2, 2, seed=1) == demonstrations(pool, 2, 2, seed=1)
    assert demonstrations(pool, 2, 2, seed=1) != demonstrations(pool, 2, 2, seed=2)


def test_random_label_control_changes_only_the_labels():
    pool = load_task("builtin_sentiment").splits["train"]
    gold = demonstrations(pool, shots=4, num_labels=2, seed=0)
    shuffled = demonstrations(pool, shots=4, num_labels=2, seed=0, random_labels=True)
    assert [e for e, _ in gold] == [e for e, _ in shuffled], "the same examples in the same order"
    assert [label for _, label in gold] != [label for _, label in shuffled], "seed 0 draws at least one other label"
    template, label_words = "{text} It was {mask}.", ["terrible", "great"]
    gold_blocks = icl_template(template, gold, label_words).split(SEPARATOR)
    random_blocks = icl_template(template, shuffled, label_words).split(SEPARATOR)
    assert gold_blocks[-1] == random_blocks[-1] == template, "the query's part is the same"
    for gold_block, random_block, (example, label) in zip(gold_blocks, random_blocks, shuffled):
        shown_label = f"It was {label_words[label]}."
        assert random_block == gold_block.replace(f"It was {label_words[example.label]}.", shown_label)


def test_zero_shot_runs_end_to_end_on_a_tiny_gpt2(tiny_checkpoints, tiny_sst2, words, tmp_path, capsys):
    record = cli(tiny_checkpoints, tiny_sst2, tmp_path, words, "gpt2", "--mode", "zero-shot")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["details"]["variant"] == "zero-shot" and "next-token head" in saved["details"]["variant_reason"]
    assert 0 <= saved["dev_metric"] <= 1 and 0 <= saved["test_metric"] <= 1 and saved["trainable_params"] == 0
    assert record.dev_metric == saved["dev_metric"]
    assert "variant: zero-shot" in capsys.readouterr().out


def test_icl_runs_end_to_end_with_the_random_label_control(tiny_checkpoints, tiny_sst2, words, tmp_path):
    cli(tiny_checkpoints, tiny_sst2, tmp_path, words, "gpt2", "--mode", "icl", "--shots", "1",
        "--template", "{text} was {mask}")  # short: the tiny GPT-2 reads 64 positions
    conditions = json.loads((tmp_path / "results.json").read_text())["details"]["conditions"]
    assert list(conditions) == ["zero-shot", "gold labels", "random labels"]
    assert conditions["gold labels"]["prompt"].count(SEPARATOR) == 2, "one demonstration per class, then the query"
    assert all(0 <= c["dev_metric"] <= 1 for c in conditions.values())


def test_sensitivity_reports_every_template_and_draws_them(tiny_checkpoints, tiny_sst2, words, tmp_path):
    record = cli(tiny_checkpoints, tiny_sst2, tmp_path, words, "gpt2", "--mode", "sensitivity")
    scores = [t["dev_metric"] for t in record.details["templates"]]
    assert [t["template"] for t in record.details["templates"]] == load_task("sst2", tiny_sst2).templates
    assert (record.details["mean"], record.details["min"], record.details["max"]) == (sum(scores) / len(scores), min(scores), max(scores))
    assert record.details["spread"] == max(scores) - min(scores)
    assert (tmp_path / "template_sensitivity.png").read_bytes()[:4] == b"\x89PNG"


def test_a_model_without_lm_head_runs_template_head_and_says_why(minilm_dir, tmp_path, capsys):
    record = hard_prompt.main(["--model", str(minilm_dir), "--task", "builtin_sentiment", "--mode", "zero-shot",
                               "--max-steps", "2", "--limit-train", "32", "--out", str(tmp_path), "--no-progress"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["details"]["variant"] == "template-head" and saved["trainable_params"] == 384 * 2 + 2, "a linear head only"
    assert "no masked-LM head, so zero-shot cloze scoring is impossible" in saved["details"]["variant_reason"]
    assert "no masked-LM head" in capsys.readouterr().out
    assert (tmp_path / "learning_curve.png").exists()


def test_template_head_reads_the_mask_position(tiny_checkpoints, tiny_sst2):
    backbone, tokenizer = load_pretrained(tiny_checkpoints["bert"][0])
    model = HardPrompt(backbone, tokenizer, 2, HardPromptConfig("template-head", ["{text} it was {mask} ."], read="mask")).eval()
    batch = next(batches(load_task("sst2", tiny_sst2).splits["dev"], tokenizer, 8, template=model.template))
    with torch.no_grad():
        hidden = backbone(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (B, T, H)
        at_mask = hidden[batch["input_ids"] == tokenizer.mask_id]  # (B, H): one [MASK] per row
        torch.testing.assert_close(model(batch), model.linear(at_mask), msg="the head must read the [MASK] state")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"linear.weight", "linear.bias"}


def test_template_without_its_slot_is_a_clear_error(tiny_checkpoints, tiny_sst2, words, tmp_path):
    with pytest.raises(TemplateError, match=r"expected exactly one \{mask\}.*missing \['mask'\]"):
        cli(tiny_checkpoints, tiny_sst2, tmp_path, words, "bert", "--template", "{text} It was great.")


def test_gpt2_template_with_text_after_the_slot_is_a_clear_error(tiny_checkpoints, tiny_sst2, words, tmp_path):
    with pytest.raises(TemplateError, match="needs a template that ends with {mask}"):
        cli(tiny_checkpoints, tiny_sst2, tmp_path, words, "gpt2", "--template", "{mask}: {text}")


def test_verbalizer_word_of_several_tokens_is_a_clear_error(tiny_checkpoints, tiny_sst2, words, tmp_path):
    with pytest.raises(VerbalizerError, match="must be single tokens, but 'xylophone' -> .* tokens"):
        hard_prompt.main(["--model", str(tiny_checkpoints["bert"][0]), "--task", "sst2", "--data-dir", str(tiny_sst2),
                          "--verbalizer", f"negative={words['bert'][0]}", "positive=xylophone", "--out", str(tmp_path)])


@pytest.mark.parametrize("given", [["negative=bad"], ["bad"], ["negative=bad", "postive=great"]])
def test_label_missing_from_the_verbalizer_is_a_clear_error(given):
    with pytest.raises(VerbalizerError, match=r"no word for \['positive'\].*--verbalizer negative=WORD positive=WORD"):
        parse_verbalizer(given, ["negative", "positive"])


def test_verbalizer_accepts_label_word_pairs_in_any_order_or_words_in_label_order():
    assert parse_verbalizer(["positive=good", "negative=bad"], ["negative", "positive"]) == ["bad", "good"]
    assert parse_verbalizer(["bad", "good"], ["negative", "positive"]) == ["bad", "good"]


def test_icl_prompt_longer_than_the_model_reads_is_a_clear_error(tiny_checkpoints, tiny_sst2, words, tmp_path):
    with pytest.raises(ValueError, match="reads at most 64: use fewer demonstrations"):
        cli(tiny_checkpoints, tiny_sst2, tmp_path, words, "gpt2", "--mode", "icl", "--shots", "4")


def test_several_templates_outside_sensitivity_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        hard_prompt.main(["--mode", "zero-shot", "--template", "{text} A {mask}.", "--template", "{text} B {mask}."])
    assert "give several --template only with --mode sensitivity" in capsys.readouterr().err
