"""The main job: `python -m methods.compare --quick` trains every method and writes all its outputs."""
from __future__ import annotations

import json
import subprocess
import sys

from methods.compare import METHODS, markdown_table, summarize

OUTPUTS = ("results.json", "results.md", "curves.png", "metric_vs_params.png", "cost.png")


def test_quick_comparison_writes_every_output(minilm_dir, tmp_path):
    out = tmp_path / "compare"
    # The real default model; the built-in set keeps it offline and fast.
    cmd = [sys.executable, "-m", "methods.compare", "--quick", "--task", "builtin_sentiment", "--out", str(out)]
    completed = subprocess.run(cmd, capture_output=True, text=True, timeout=2400)  # ~4 min alone on 2 cores
    assert completed.returncode == 0, completed.stderr[-2000:]
    for name in OUTPUTS:
        assert (out / name).exists(), f"{name} missing"
    records = json.loads((out / "results.json").read_text())["records"]
    assert [r["method"] for r in records] == list(METHODS), "every default method has a record, in order"
    failed = {r["method"]: r["error"] for r in records if "error" in r}
    assert not failed, f"methods failed in quick mode: {failed}"
    assert all(r["steps"] == 20 for r in records), "quick mode gives every method the same 20 steps"
    table = (out / "results.md").read_text()
    assert all(f"| {name} |" in table for name in METHODS)


def test_resume_skips_finished_runs_and_failures_are_reported(tiny_checkpoints, tmp_path):
    model_dir = tiny_checkpoints["bert"][0]
    out = tmp_path / "compare"
    cmd = [sys.executable, "-m", "methods.compare", "--quick", "--model", str(model_dir), "--task",
           "builtin_sentiment", "--out", str(out), "--max-length", "24", "--methods", "head_only"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    first = (out / "records" / "head_only-seed0.json").read_text()
    resumed = subprocess.run(cmd + ["--resume"], check=True, capture_output=True, text=True, timeout=600)
    assert "already done, skipped" in resumed.stdout
    assert (out / "records" / "head_only-seed0.json").read_text() == first, "a finished record is never rewritten"
    (out / "results.json").unlink()
    subprocess.run(cmd + ["--resume", "--methods", "template_head,head_only"], check=True, capture_output=True,
                   timeout=600)
    summary = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in summary["records"]] == ["template_head", "head_only"], \
        "results.json holds every record, the skipped ones too"
    broken = subprocess.run(cmd[:-2] + ["--methods", "head_only", "--max-length", "0"], capture_output=True,
                            text=True, timeout=600)
    assert broken.returncode == 0, "one failing method must not stop the comparison"
    assert "failed" in broken.stdout


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
