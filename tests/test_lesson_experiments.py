"""lessons/experiments.py: the lessons' experiments as records, read back, judged by one rule, retrained on demand."""
from __future__ import annotations

import json

import pytest

import lessons.experiments as ex


def fake_record(dev: float, steps=(108, 216), lr: float = 1e-3) -> dict:
    return {"dev_metric": dev / 100, "history": [{"step": s, "dev_metric": dev / 100 - 0.01 * (len(steps) - i - 1)}
                                                 for i, s in enumerate(steps)], "options": {"lr": lr}}


def results_of(scores: dict[str, list[float]], claims=()) -> ex.Results:
    settings = tuple(ex.Setting(name, "prompt_tuning") for name in scores)
    experiment = ex.Experiment("synthetic", "--", "?", settings, tuple(claims))
    return ex.Results(experiment, {name: [fake_record(v) for v in values] for name, values in scores.items()},
                      "records")


def test_the_verdict_rule_is_reproduced_partly_or_not_by_the_gap_against_its_standard_error():
    higher = ex.Claim("paper", "Table 1", "a beats b", ("a",), ("b",))
    clear = results_of({"a": [80, 81, 82], "b": [70, 71, 72]}, [higher]).verdicts()[0]
    noisy = results_of({"a": [80, 70, 90], "b": [78, 68, 88]}, [higher]).verdicts()[0]
    reversed_ = results_of({"a": [70, 71, 72], "b": [80, 81, 82]}, [higher]).verdicts()[0]
    assert [clear["verdict"], noisy["verdict"], reversed_["verdict"]] == ["reproduced", "partly", "not"]
    assert "81.0 ± 1.0 vs 71.0 ± 1.0" in clear["measured"] and "n = 3 and 3" in clear["measured"]
    steadier = ex.Claim("paper", "§4.3", "a spreads less", ("a",), ("b",), "steadier")
    assert results_of({"a": [80, 81, 82], "b": [60, 80, 70]}, [steadier]).verdicts()[0]["verdict"] == "reproduced"
    assert results_of({"a": [60, 80, 70], "b": [80, 81, 82]}, [steadier]).verdicts()[0]["verdict"] == "not"


def test_tables_give_mean_sd_and_n_per_setting_and_the_verdicts_with_their_reasons():
    results = results_of({"a": [80, 82], "b": [70, 74]}, [ex.Claim("P", "Fig. 1", "a beats b", ("a",), ("b",))])
    table = results.table()
    assert "| a | 81.0 ± 1.4 | 2 |" in table and "| b | 72.0 ± 2.8 | 2 |" in table
    verdicts = results.verdict_table()
    assert "| P | Fig. 1 | a beats b | 81.0 ± 1.4 vs 72.0 ± 2.8; n = 2 and 2" in verdicts and "**reproduced**" in verdicts


def test_every_experiment_names_settings_its_claims_use_and_one_setting_is_one_run():
    for experiment in ex.EXPERIMENTS.values():
        names = {s.name for s in experiment.settings}
        assert len(names) == len(experiment.settings), experiment.name
        for claim in experiment.claims:
            assert set(claim.a) | set(claim.b) <= names, (experiment.name, claim.statement)
    lesson_6 = ex.EXPERIMENTS["deep_prompts"].setting("input only (prompt tuning)")
    lesson_3 = ex.EXPERIMENTS["prompt_length"].setting("length 20, vocab")
    assert lesson_6.run_id(1) == lesson_3.run_id(1)  # the same run, trained once and read by both lessons
    with pytest.raises(ValueError, match="has no setting 'lenght 20'.*'length 1, vocab'"):
        ex.EXPERIMENTS["prompt_length"].setting("lenght 20")


def test_records_are_replayed_without_training_and_a_run_is_made_only_where_one_is_missing(tmp_path, monkeypatch,
                                                                                           data_dir):
    """run_experiment writes each (setting, seed) once, with the command that makes it; results_for then reads
    them (no training) and LESSON_RETRAIN names a setting to retrain live, an unknown name being an error."""
    tiny = ex.Experiment("tiny", "--", "?", (ex.Setting("short", "prompt_tuning", {"num_virtual_tokens": 2}),),
                         budget=ex.TINY)
    monkeypatch.setitem(ex.EXPERIMENTS, "tiny", tiny)
    monkeypatch.setattr(ex, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(ex, "ROOT", tmp_path)
    ex.run_experiment(tiny, records=tmp_path / "records")
    path = ex.record_path(tiny, tiny.settings[0], 0, tmp_path / "records")
    record = json.loads(path.read_text())
    assert record["command"].startswith("python -m methods.prompt_tuning ") and "--max-steps 2" in record["command"]
    assert record["steps"] == 2 and record["machine"] and record["date"]
    modified = path.stat().st_mtime_ns
    ex.run_experiment(tiny, records=tmp_path / "records")  # nothing missing: nothing trains, nothing is rewritten
    assert path.stat().st_mtime_ns == modified
    monkeypatch.setattr(ex, "FAST", False)
    replayed = ex.results_for("tiny", retrain=set())
    assert replayed.source == "records" and replayed.scores("short") == [100 * record["dev_metric"]]
    with pytest.raises(ValueError, match="has no setting 'long'"):
        ex.results_for("tiny", retrain={"long"})
    monkeypatch.setenv("LESSON_RETRAIN", "short")
    retrained = ex.results_for("tiny")
    assert retrained.source == "trained now" and retrained.scores("short") == replayed.scores("short")  # same seed


def test_a_kept_setting_keeps_its_trained_tensors_and_retraining_for_them_must_repeat_the_record(
        tmp_path, monkeypatch, data_dir):
    """The first seed of a kept setting saves what the lesson shows (here the trained prompt); a record made
    before keeping existed is retrained once for its tensors with the same command, and the record stays."""
    import torch
    tiny = ex.Experiment("tiny", "--", "?", (ex.Setting("short", "prompt_tuning", {"num_virtual_tokens": 2}),),
                         budget=ex.TINY)
    monkeypatch.setitem(ex.EXPERIMENTS, "tiny", tiny)
    monkeypatch.setattr(ex, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(ex, "ROOT", tmp_path)
    ex.run_experiment(tiny, records=tmp_path / "records")  # no keep: the record alone
    assert not ex.kept_path(tiny, tiny.settings[0], tmp_path / "records").exists()
    kept = ex.dataclasses.replace(tiny, keep_settings=("short",), keep=ex.trained_parameters)
    monkeypatch.setitem(ex.EXPERIMENTS, "tiny", kept)
    record = ex.record_path(kept, kept.settings[0], 0, tmp_path / "records")
    modified = record.stat().st_mtime_ns
    ex.run_experiment(kept, records=tmp_path / "records", device="cpu")  # trains again for the tensors only
    assert record.stat().st_mtime_ns == modified, "the committed record is not rewritten"
    monkeypatch.setattr(ex, "FAST", False)
    tensors, made_by = ex.results_for("tiny", retrain=set()).kept("short")
    assert tensors["virtual_tokens"].shape == (2, 384) and set(tensors) >= {"virtual_tokens"}
    assert ex.same_command(made_by, json.loads(record.read_text()))
    changed = json.loads(record.read_text())
    changed["run_key"]["lr"] = 0.5  # a record of another command under this setting's name
    record.write_text(json.dumps(changed))
    ex.kept_path(kept, kept.settings[0], tmp_path / "records").unlink()
    with pytest.raises(RuntimeError, match="trained again with other settings than its record"):
        ex.run_experiment(kept, records=tmp_path / "records", device="cpu")
    assert not ex.kept_path(kept, kept.settings[0], tmp_path / "records").exists()
    with pytest.raises(FileNotFoundError, match="lessons.experiments run tiny"):
        ex.results_for("tiny", retrain=set()).kept("short")
    assert isinstance(tensors["virtual_tokens"], torch.Tensor)


def test_the_committed_records_are_the_runs_their_experiments_describe_and_the_readme_shows_their_verdicts(
        monkeypatch):
    """Every committed record was made at its experiment's budget, with its setting's options and its seed, by the
    command it names; README.md's table 'What the lessons reproduce' is what the records give now."""
    monkeypatch.setattr(ex, "FAST", False)
    for experiment in ex.EXPERIMENTS.values():
        b = experiment.budget
        for setting in experiment.settings:
            for seed in b.seeds:
                path = ex.record_path(experiment, setting, seed)
                if not path.exists():
                    continue  # still to run: the README says "pending" for it (checked below)
                record = json.loads(path.read_text())
                options = record["options"]
                assert (record["steps"], options["batch_size"], options["seed"]) == (b.steps, b.batch_size, seed), path
                assert options["limit_dev"] == b.limit_dev and record["outcome"] == "finished", path
                assert record["method"] == ex.registry.get(setting.method).name, path
                for key, value in setting.options.items():
                    assert record["config"][key] == value, (path, key)
                assert setting.lr is None or options["lr"] == setting.lr, path
                assert record["command"].startswith(f"python -m {ex.registry.get(setting.method).module} "), path
        for name in experiment.keep_settings:  # what a lesson shows of a trained run, made by the recorded run
            setting = experiment.setting(name)
            tensors, made_by = ex.Results(experiment, {}, "records").kept(name)
            record = json.loads(ex.record_path(experiment, setting, b.seeds[0]).read_text())
            assert tensors and ex.same_command(made_by, record), (experiment.name, name)
    readme = (ex.ROOT / "README.md").read_text()
    assert ex.readme_table() in readme, "README.md's lesson verdicts are stale: python -m lessons.experiments readme"
