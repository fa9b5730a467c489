"""Bad input, one row each: a one-line error that says what to do, and no traceback from the command line.

Each row runs a command line in this process the way `python -m methods.X` does (through `command_line`,
or argparse for the options it checks itself) and asserts the exit status, the message and that stderr
holds no traceback. The README's "When something goes wrong" lists the same cases.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from methods import compare, export_peft, fine_tuning, hard_prompt, import_peft, lora, p_tuning, prompt_tuning
from methods.shared.pipeline import command_line

BASE = ["--task", "builtin_sentiment", "--max-steps", "2", "--batch-size", "8", "--max-length", "24", "--no-progress"]


def refuse(capsys, main, argv: list[str], message: str, code: int = 1) -> str:
    """Run `main(argv)` as a command line; it must stop with `code` and `message`, in one line, no traceback."""
    with pytest.raises(SystemExit) as stop:
        command_line(lambda: main(argv))
    err = capsys.readouterr().err
    assert stop.value.code == code, f"exit status {stop.value.code}, expected {code}: {err}"
    assert message in err, f"expected {message!r} in: {err}"
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1 or (code == 2 and lines[0].startswith("usage:")), f"one line, got: {err}"
    return err


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No data directory, no cache, no downloads, no hub: what a fresh machine without internet has."""
    monkeypatch.delenv("PROMPT_DATA_DIR", raising=False)
    monkeypatch.setenv("PROMPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PROMPT_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def broken_checkpoints(tiny_checkpoints, tmp_path):
    """An empty folder, a cut config.json, a config without hidden_size."""
    source = tiny_checkpoints["bert"][0]
    empty = tmp_path / "empty"
    empty.mkdir()
    cut = shutil.copytree(source, tmp_path / "cut")
    (cut / "config.json").write_text((source / "config.json").read_text()[:40])
    incomplete = shutil.copytree(source, tmp_path / "incomplete")
    config = json.loads((source / "config.json").read_text())
    del config["hidden_size"]
    (incomplete / "config.json").write_text(json.dumps(config))
    return {"empty": empty, "cut": cut, "incomplete": incomplete}


def test_a_misspelled_model_name_suggests_the_near_ones(capsys, offline):
    refuse(capsys, fine_tuning.main, ["--model", "all-minilm-l6-v2", *BASE], "did you mean 'all-MiniLM-L6-v2'")
    refuse(capsys, fine_tuning.main, ["--model", "bert-base-uncasd", *BASE], "did you mean 'bert-base-uncased'")


def test_a_missing_folder_says_there_is_none(capsys):
    refuse(capsys, fine_tuning.main, ["--model", "./no/such/folder", *BASE], "There is no folder './no/such/folder'")


@pytest.mark.parametrize("case, message", [("empty", "has no config.json, so it is not a checkpoint folder"),
                                           ("cut", "config.json is not valid JSON"),
                                           ("incomplete", "config.json lacks 'hidden_size'")])
def test_a_broken_checkpoint_folder_is_named(case, message, broken_checkpoints, capsys):
    refuse(capsys, fine_tuning.main, ["--model", str(broken_checkpoints[case]), *BASE], message)


def test_a_wrong_task_name_suggests_the_near_one(capsys, minilm_dir):
    refuse(capsys, fine_tuning.main, ["--model", str(minilm_dir), *BASE, "--task", "sst-2"],
           "unknown task 'sst-2' (did you mean 'sst2'?)")


def test_a_data_directory_without_the_task_says_where_it_looked(capsys, offline, minilm_dir, tmp_path):
    refuse(capsys, fine_tuning.main, ["--model", str(minilm_dir), *BASE, "--task", "sst2", "--data-dir",
                                      str(tmp_path)], "Data file 'harvardnlp/stsa.binary.train' was not found")


def test_a_garbled_data_line_names_file_and_line(capsys, offline, minilm_dir, tmp_path):
    (tmp_path / "harvardnlp").mkdir()
    (tmp_path / "harvardnlp" / "stsa.binary.train").write_text("1 a fine film\nthis line has no label\n")
    (tmp_path / "harvardnlp" / "stsa.binary.dev").write_text("0 a dull film\n")
    refuse(capsys, fine_tuning.main, ["--model", str(minilm_dir), *BASE, "--task", "sst2", "--data-dir",
                                      str(tmp_path)], "stsa.binary.train:2: expected 'LABEL SENTENCE'")


def test_a_data_file_cut_short_is_said_and_counted(capsys, minilm_dir, data_dir, tmp_path):
    (tmp_path / "harvardnlp").mkdir()
    lines = (data_dir / "harvardnlp" / "stsa.binary.train").read_text().splitlines()
    (tmp_path / "harvardnlp" / "stsa.binary.train").write_text("\n".join(lines[:939]) + "\n")
    shutil.copy(data_dir / "harvardnlp" / "stsa.binary.dev", tmp_path / "harvardnlp")
    fine_tuning.main(["--model", str(minilm_dir), *BASE, "--mode", "head", "--task", "sst2", "--data-dir",
                      str(tmp_path), "--limit-dev", "8", "--out", str(tmp_path / "run")])
    said = capsys.readouterr()
    assert "is not the published harvardnlp/stsa.binary.train" in said.err, said.err
    assert "train 939" in said.out, "how many examples each split has is printed"


def test_a_prompt_longer_than_the_position_table_says_how_to_fit(capsys, minilm_dir):
    err = refuse(capsys, prompt_tuning.main, ["--model", str(minilm_dir), *BASE, "--num-virtual-tokens", "600"],
                 "600 prompt vectors + 24 input tokens need 624 positions")
    assert "at most 511 prompt vectors" in err and "-" not in err.split("has 512:")[1].split("prompt")[0]


@pytest.mark.parametrize("main, option", [(prompt_tuning.main, ["--num-virtual-tokens", "0"]),
                                          (p_tuning.main, ["--layout", "prefix", "--num-virtual-tokens", "-3"]),
                                          (fine_tuning.main, ["--batch-size", "0"]),
                                          (lora.main, ["--max-steps", "0"])])
def test_a_count_that_is_not_positive_is_refused(main, option, capsys):
    refuse(capsys, main, [*BASE, *option], "must be a positive integer", code=2)


def test_a_label_word_of_several_tokens_is_refused(capsys, tiny_checkpoints, tmp_path):
    (tmp_path / "harvardnlp").mkdir()  # short sentences in the tiny model's small vocabulary
    for split in ("train", "dev", "test"):
        (tmp_path / "harvardnlp" / f"stsa.binary.{split}").write_text("1 the movie was great\n0 a boring plot\n")
    refuse(capsys, hard_prompt.main, ["--model", str(tiny_checkpoints["bert"][0]), *BASE, "--task", "sst2",
                                      "--data-dir", str(tmp_path), "--verbalizer", "negative=bad",
                                      "positive=xylophone"], "verbalizer words must be single tokens")


@pytest.mark.parametrize("template, message", [("{text} It was great.", "expected exactly one {mask}"),
                                               ("{text} {foo} It was {mask}.", "unknown ['foo']")])
def test_a_template_without_its_slot_or_with_unknown_slots_is_refused(template, message, capsys, minilm_dir):
    refuse(capsys, hard_prompt.main, ["--model", str(minilm_dir), *BASE, "--mode", "template-head", "--template",
                                      template], message)


@pytest.mark.parametrize("lr", ["nan", "-1", "0"])
def test_a_learning_rate_that_is_no_rate_is_refused(lr, capsys):
    refuse(capsys, fine_tuning.main, [*BASE, "--lr", lr], "--lr must be a positive number")


def test_a_device_this_torch_has_not_is_refused(capsys, minilm_dir):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refuse(capsys, fine_tuning.main, ["--model", str(minilm_dir), *BASE, "--device", "cuda"], "sees no CUDA device")


def test_a_method_saved_with_other_options_or_for_another_model_is_refused(capsys, tiny_checkpoints, tmp_path):
    run = tmp_path / "lora"
    lora.main(["--model", str(tiny_checkpoints["bert"][0]), *BASE, "--out", str(run)])
    from methods.lora import LoRA, LoRAConfig
    from methods.shared.pipeline import load_method, load_weights
    from minitransformer import load_pretrained
    backbone, tokenizer = load_pretrained(str(tiny_checkpoints["bert"][0]))
    with pytest.raises(ValueError, match=r"other options \(alpha 16.0 there, 32.0 here\)"):
        load_weights(LoRA(backbone, tokenizer, 2, LoRAConfig(alpha=32.0)), run)
    with pytest.raises(ValueError, match="was trained for a backbone"):
        load_method(run, str(tiny_checkpoints["roberta"][0]))


def test_export_of_a_folder_that_is_no_run_is_refused(capsys, tmp_path):
    refuse(capsys, export_peft.main, [str(tmp_path), "--out", str(tmp_path / "export")], "has no method.json")
    refuse(capsys, import_peft.main, [str(tmp_path)], "has no adapter_config.json")


@pytest.mark.parametrize("option, message", [(["--max-steps", "0"], "must be a positive integer"),
                                             (["--epochs", "0"], "must be a positive integer"),
                                             (["--methods", "lora,prefix_tunning"], "unknown method(s)"),
                                             (["--seeds", "0,one"], "--seeds takes whole numbers")])
def test_compare_refuses_a_budget_or_a_name_it_cannot_run(option, message, capsys):
    with pytest.raises(SystemExit) as stop:
        compare.main(option)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err


def test_a_debug_switch_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("PROMPT_DEBUG", "1")
    with pytest.raises(ValueError, match="--lr must be a positive number"):
        command_line(lambda: fine_tuning.main([*BASE, "--lr", "nan"]))


def test_the_readme_lists_what_can_go_wrong():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## When something goes wrong")[1].split("\n## ")[0]
    for phrase in ("did you mean", "There is no folder", "has no config.json", "not valid JSON", "unknown task",
                   "was not found", "is not the published", "positions", "positive integer", "single tokens",
                   "{mask}", "--lr", "diverged", "--device", "other options", "--resume", "method.json"):
        assert phrase in section, f"README's 'When something goes wrong' lacks {phrase!r}"
