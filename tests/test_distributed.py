"""Several processes (torchrun, gloo on CPU) give the numbers of one: same global batch, same seed, same losses."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import build_checkpoint
from tests.distributed_runs import CASES, RESUMED

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case of tests/distributed_runs.py in one process and in two, on a tiny BERT, dropout off (each
    process draws its own dropout masks, so only without dropout can the two be equal number for number)."""
    root = tmp_path_factory.mktemp("distributed")
    checkpoint = root / "bert"
    build_checkpoint("bert", checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (checkpoint / "config.json").write_text(json.dumps(config))
    outs = {"one": root / "one", "two": root / "two"}
    for out in outs.values():
        out.mkdir()
    script = str(ROOT / "tests" / "distributed_runs.py")
    single = subprocess.run([sys.executable, script, str(checkpoint), str(outs["one"])], capture_output=True, text=True,
                            timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             "29517", script, str(checkpoint), str(outs["two"])], capture_output=True, text=True,
                            timeout=900)
    assert double.returncode == 0, double.stderr[-3000:]
    return outs


def same_run(first: Path, second: Path, what: str) -> None:
    """The loss curves, dev scores and trained parameters of two runs agree (to 1e-5)."""
    one, two = (json.loads((run / "results.json").read_text()) for run in (first, second))
    assert [h["step"] for h in one["history"]] == [h["step"] for h in two["history"]] == [2, 4]
    for a, b in zip(one["history"], two["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), f"{what}: the loss curves differ"
        assert b["dev_metric"] == a["dev_metric"], f"{what}: the dev scores differ"
    weights = [load_file(str(run / "method.safetensors")) for run in (first, second)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=1e-5, atol=1e-5,
                                   msg=f"{what}: trained parameter {name} differs")


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_give_the_losses_and_parameters_of_one(case, runs):
    same_run(runs["one"] / case, runs["two"] / case, f"{case}, one process against two")


@pytest.mark.parametrize("processes", ["one", "two"])
def test_a_run_interrupted_and_resumed_equals_the_uninterrupted_one(processes, runs):
    assert json.loads((runs[processes] / RESUMED / "results.json").read_text())["outcome"] == "finished"
    same_run(runs[processes] / "prompt_tuning", runs[processes] / RESUMED, f"resumed on {processes} process(es)")


def test_only_rank_0_wrote_or_printed(runs):
    assert (runs["two"] / "rank1.out").read_text() == "", "rank 1 printed (only rank 0 speaks)"
    written = sorted(p.name for p in (runs["two"] / "lora_odd_batch").iterdir())
    assert written == sorted(p.name for p in (runs["one"] / "lora_odd_batch").iterdir()), written
