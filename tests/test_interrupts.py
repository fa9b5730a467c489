"""Interrupts, resuming, atomic writes and divergence: a run stopped at any moment loses nothing and says so."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from methods import fine_tuning, prompt_tuning
from methods.shared import training
from methods.shared.pipeline import command_line

ROOT = Path(__file__).parent.parent


def argv(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(checkpoint), "--task", "builtin_sentiment", "--max-steps", "12", "--eval-every", "4",
            "--batch-size", "8", "--max-length", "24", "--no-progress", "--out", str(out), *extra]


def interrupt_at(monkeypatch, step: int, signum: int = signal.SIGINT) -> None:
    """Send the process `signum` while step `step` computes its loss, as a Ctrl-C or a `kill` would."""
    calls, original = {"n": 0}, training.backward

    def backward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)
    monkeypatch.setattr(training, "backward", backward)


@pytest.mark.parametrize("module, extra", [(fine_tuning, ["--mode", "full"]), (prompt_tuning, ["--head", "classifier"])],
                         ids=["full_fine_tuning", "prompt_tuning"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_resumed_equals_an_uninterrupted_one(module, extra, signum, tiny_checkpoints, tmp_path,
                                                                monkeypatch, capsys):
    checkpoint = tiny_checkpoints["bert"][0]
    whole = module.main(argv(checkpoint, tmp_path / "whole", *extra))
    interrupt_at(monkeypatch, 6, signum)
    stopped = module.main(argv(checkpoint, tmp_path / "stopped", *extra))
    said = capsys.readouterr().out
    assert stopped.outcome == "interrupted" and stopped.steps == 6, "it stops at the end of the step it was in"
    assert f"interrupted by {signal.Signals(signum).name} at step 6 of 12" in said and "--resume" in said, said
    assert json.loads((tmp_path / "stopped" / "results.json").read_text())["outcome"] == "interrupted"
    assert (tmp_path / "stopped" / "resume.pt").exists() and (tmp_path / "stopped" / "method.safetensors").exists()
    monkeypatch.undo()
    resumed = module.main(argv(checkpoint, tmp_path / "stopped", *extra, "--resume"))
    assert resumed.outcome == "finished" and resumed.steps == 12
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history], \
        "the resumed run must give the uninterrupted run's losses exactly"
    assert resumed.dev_metric == whole.dev_metric and resumed.best_step == whole.best_step
    saved = [load_file(str(tmp_path / name / "method.safetensors")) for name in ("whole", "stopped")]
    assert all(torch.equal(saved[0][n], saved[1][n]) for n in saved[0]), "and the same trained parameters"
    assert not (tmp_path / "stopped" / "resume.pt").exists(), "a finished run leaves no checkpoint behind"


def test_resume_after_a_kill_before_the_first_checkpoint_starts_over(tiny_checkpoints, tmp_path, monkeypatch, capsys):
    """A run killed hard (kill -9, power) while loading leaves resume.json but no resume.pt: --resume starts over."""
    checkpoint = tiny_checkpoints["bert"][0]
    whole = fine_tuning.main(argv(checkpoint, tmp_path / "whole", "--mode", "head"))
    interrupt_at(monkeypatch, 3)
    fine_tuning.main(argv(checkpoint, tmp_path / "killed", "--mode", "head"))
    (tmp_path / "killed" / "resume.pt").unlink()
    monkeypatch.undo()
    capsys.readouterr()
    again = fine_tuning.main(argv(checkpoint, tmp_path / "killed", "--mode", "head", "--resume"))
    assert "stopped before its first checkpoint; starting over" in capsys.readouterr().out
    assert again.outcome == "finished" and [h["loss"] for h in again.history] == [h["loss"] for h in whole.history]


def test_resume_skips_a_finished_run_and_refuses_other_settings(tiny_checkpoints, tmp_path, capsys):
    checkpoint = tiny_checkpoints["bert"][0]
    first = fine_tuning.main(argv(checkpoint, tmp_path, "--mode", "head"))
    again = fine_tuning.main(argv(checkpoint, tmp_path, "--mode", "head", "--resume"))
    assert "already holds this run, finished" in capsys.readouterr().out
    assert again.history == first.history and again.date == first.date, "nothing was run again"
    for changed, named in ((["--lr", "0.1"], "lr"), (["--seed", "1"], "seed"), (["--task", "builtin_pairs"], "task"),
                           (["--top-layers", "1", "--mode", "top-k"], "config"), (["--max-steps", "5"], "max_steps"),
                           (["--model", str(tiny_checkpoints["roberta"][0])], "model")):
        with pytest.raises(ValueError, match=f"holds a finished run with other settings \\(.*{named}"):
            fine_tuning.main(argv(checkpoint, tmp_path, "--mode", "head", *changed, "--resume"))


def test_a_refused_resume_is_one_line_without_a_traceback(tiny_checkpoints, tmp_path, capsys):
    checkpoint = tiny_checkpoints["bert"][0]
    fine_tuning.main(argv(checkpoint, tmp_path, "--mode", "head"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        command_line(lambda: fine_tuning.main(argv(checkpoint, tmp_path, "--mode", "head", "--lr", "0.5", "--resume")))
    err = capsys.readouterr().err
    assert stop.value.code == 1 and err.count("\n") == 1 and err.startswith("error: ") and "lr 0.005 there, 0.5 here" in err


def test_sigterm_stops_a_command_line_with_one_line_and_exit_130(tiny_checkpoints, tmp_path):
    command = [sys.executable, "-u", "-m", "methods.fine_tuning", *argv(tiny_checkpoints["bert"][0], tmp_path,
                                                                       "--mode", "head")]
    command[command.index("12")] = "100000"  # far more steps than the test waits for
    command += ["--epochs", "100000"]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in child.stdout:  # the parameter count is printed just before training starts
        if "trainable of" in line:
            break
    time.sleep(5)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, (out, err)
    assert "Stopped: interrupted by SIGTERM at step" in out and "--resume" in out and "Traceback" not in err
    assert json.loads((tmp_path / "results.json").read_text())["outcome"] == "interrupted"


DYING_WRITER = """
import os, pathlib, signal, sys
import torch
from methods.shared import pipeline
from methods.shared.files import write_json


def half_then_killed(path, text_or_bytes):  # the write gets half way, then the process is killed (SIGKILL)
    mode = "wb" if isinstance(text_or_bytes, bytes) else "w"
    with open(path, mode) as handle:
        handle.write(text_or_bytes[: len(text_or_bytes) // 2])
        handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)


pathlib.Path.write_text = lambda self, text, *args, **kwargs: half_then_killed(self, text)
pipeline.save_file = lambda state, path: half_then_killed(path, b"x" * 4096)
if sys.argv[2] == "record":
    write_json(sys.argv[1], {"new": list(range(10000))})
else:  # the weights, written as save_method writes them
    with pipeline.atomic_path(sys.argv[1]) as temporary:
        pipeline.save_file({"w": torch.zeros(4, 4)}, str(temporary))
"""


@pytest.mark.parametrize("what", ["record", "weights"])
def test_a_kill_during_a_write_leaves_the_old_file_whole(what, tmp_path):
    """A write killed half way (SIGKILL: no handler runs) leaves the previous file as it was, never half of one."""
    from safetensors.torch import save_file
    path = tmp_path / ("results.json" if what == "record" else "method.safetensors")
    if what == "record":
        path.write_text(json.dumps({"old": list(range(10000))}))
    else:
        save_file({"w": torch.ones(4, 4)}, str(path))
    before = path.read_bytes()
    child = subprocess.run([sys.executable, "-c", DYING_WRITER, str(path), what], cwd=ROOT)
    assert child.returncode == -signal.SIGKILL, "the writer must have been killed mid-write"
    assert path.read_bytes() == before, "the file must be the old one, whole"
    assert json.loads(path.read_text())["old"] if what == "record" else torch.equal(load_file(str(path))["w"],
                                                                                    torch.ones(4, 4))


@pytest.mark.parametrize("lr", ["1e4", "1e30"])
def test_a_diverging_run_stops_keeps_the_start_and_exits_non_zero(lr, tiny_checkpoints, tmp_path, capsys):
    checkpoint = tiny_checkpoints["bert"][0]
    with pytest.raises(SystemExit) as stop:
        command_line(lambda: fine_tuning.main(argv(checkpoint, tmp_path, "--mode", "full", "--lr", lr)))
    assert stop.value.code == 3
    said = capsys.readouterr()
    assert "training diverged" in said.err and "smaller learning rate" in said.err and "Traceback" not in said.err
    text = (tmp_path / "results.json").read_text()
    record = json.loads(text)  # strict JSON: no NaN
    assert "NaN" not in text and record["outcome"] == "diverged" and record["steps"] < 12
    from minitransformer import load_pretrained
    start = load_pretrained(str(checkpoint))[0].state_dict()
    kept = load_file(str(tmp_path / "method.safetensors"))
    assert all(torch.equal(kept[f"backbone.{n}"], start[n]) for n in start if f"backbone.{n}" in kept), \
        "nothing was evaluated before it diverged: the state kept is the one it started from"
