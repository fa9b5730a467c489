"""The main job: `python -m methods.compare` trains every method, writes all its outputs, resumes, stops cleanly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from methods.compare import BUILTIN_EPOCHS, METHODS, QUICK_METHODS, markdown_table, summarize

OUTPUTS = ("results.json", "results.md", "curves.png", "metric_vs_params.png", "cost.png")
ROOT = Path(__file__).parent.parent


def test_quick_comparison_shows_learning_and_writes_every_output(minilm_dir, tmp_path):
    out = tmp_path / "compare"
    # The real default model on the built-in set (what --quick uses): offline and a few minutes on 2 cores.
    cmd = [sys.executable, "-m", "methods.compare", "--quick", "--out", str(out)]
    completed = subprocess.run(cmd, capture_output=True, text=True, timeout=2400)
    assert completed.returncode == 0, completed.stderr[-2000:]
    for name in OUTPUTS:
        assert (out / name).exists(), f"{name} missing"
    summary = json.loads((out / "results.json").read_text())
    records = summary["records"]
    assert [r["method"] for r in records] == QUICK_METHODS, "every quick method has a record, in order"
    failed = {r["method"]: r["error"] for r in records if "error" in r}
    assert not failed, f"methods failed in quick mode: {failed}"
    assert all(r["steps"] == BUILTIN_EPOCHS * 8 and r["task"] == "builtin_sentiment" for r in records)
    above = [r["method"] for r in records if r["dev_metric"] > 0.70]
    assert len(above) >= 3, f"the first look must show learning: above 70% dev accuracy only {above}"
    table = (out / "results.md").read_text()
    assert all(f"| {name} |" in table for name in QUICK_METHODS) and "10 epochs of 32" in table, table


def quick(model_dir, out, *extra):
    return [sys.executable, "-m", "methods.compare", "--model", str(model_dir), "--task", "builtin_sentiment",
            "--out", str(out), "--max-length", "24", "--max-steps", "3", "--methods", "head_only", *extra]


def test_resume_keeps_only_records_made_with_the_same_settings(tiny_checkpoints, tmp_path):
    model_dir, out = tiny_checkpoints["bert"][0], tmp_path / "compare"
    subprocess.run(quick(model_dir, out), check=True, capture_output=True, timeout=600)
    first = (out / "records" / "head_only-seed0.json").read_text()
    resumed = subprocess.run(quick(model_dir, out, "--resume"), check=True, capture_output=True, text=True, timeout=600)
    assert "already done, skipped" in resumed.stdout
    assert (out / "records" / "head_only-seed0.json").read_text() == first, "a finished record is never rewritten"
    (out / "results.json").unlink()
    subprocess.run(quick(model_dir, out, "--resume", "--methods", "template_head,head_only"), check=True,
                   capture_output=True, timeout=600)
    summary = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in summary["records"]] == ["template_head", "head_only"], \
        "results.json holds every record, the skipped ones too"
    # Another task (or budget) under the same name is run again, never relabelled.
    other = subprocess.run(quick(model_dir, out, "--resume", "--task", "builtin_pairs"), check=True,
                           capture_output=True, text=True, timeout=600)
    assert "made with other settings: running it again" in other.stdout
    record = json.loads((out / "records" / "head_only-seed0.json").read_text())
    assert record["task"] == "builtin_pairs" and "--task" in record["command"]
    broken = subprocess.run(quick(model_dir, out, "--methods", "head_only,bitfit", "--device", "no-such-device"),
                            capture_output=True, text=True, timeout=600)
    assert broken.returncode == 0, "a failing method must not stop the comparison"
    assert broken.stdout.count("    failed: error: Unknown device") == 2, broken.stdout


def test_ctrl_c_stops_the_comparison_keeps_what_ran_and_resumes(tiny_checkpoints, tmp_path):
    model_dir, out = tiny_checkpoints["bert"][0], tmp_path / "compare"
    cmd = quick(model_dir, out)
    cmd[cmd.index("3")] = "100000"  # far more steps than the test waits for
    cmd += ["--epochs", "100000"]
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    for line in child.stdout:  # compare says which run it starts
        if "head_only (seed 0)" in line:
            break
    time.sleep(12)  # the child loads and starts training
    os.killpg(child.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group gets it
    out_text, err = child.communicate(timeout=300)
    assert child.returncode == 130, (out_text, err)
    assert "Stopped by SIGINT" in out_text and "--resume" in out_text and "Traceback" not in err
    record = json.loads((out / "records" / "head_only-seed0.json").read_text())
    assert record["outcome"] == "interrupted" and 0 < record["steps"]


def test_table_reports_failures_and_spread():
    records = [
        {"method": "a", "dev_metric": 0.8, "trainable_params": 10, "trainable_percent": 1.0, "seconds_per_step": 0.1,
         "peak_memory_mb": 100.0, "stored_bytes": 2048, "metric": "accuracy", "history": []},
        {"method": "a", "dev_metric": 0.9, "trainable_params": 10, "trainable_percent": 1.0, "seconds_per_step": 0.3,
         "peak_memory_mb": 120.0, "stored_bytes": 2048, "metric": "accuracy", "history": []},
        {"method": "b", "error": "ValueError: boom"},
    ]
    table = markdown_table(summarize(records, ["a", "b"]))
    assert "| a | 85.0 ± 5.0 | 10 |" in table
    assert "| b | failed: ValueError: boom" in table
    assert list(METHODS)[0] == "head_only" and list(METHODS)[-1] == "full_fine_tuning"


def test_compile_is_passed_to_each_method_and_is_part_of_its_record_key():
    from methods.compare import child_command, command_line_parser
    args = command_line_parser().parse_args(["--task", "builtin_sentiment", "--epochs", "1", "--compile", "inductor"])
    command = child_command("p_tuning_v2", 0, args)
    assert command[command.index("--compile") + 1] == "inductor"
    plain = command_line_parser().parse_args(["--task", "builtin_sentiment", "--epochs", "1"])
    assert "--compile" not in child_command("p_tuning_v2", 0, plain), "without it the records keep their keys"
