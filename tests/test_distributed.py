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
from tests.distributed_runs import CASES

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


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_give_the_losses_and_parameters_of_one(case, runs):
    one, two = (json.loads((runs[n] / case / "results.json").read_text()) for n in ("one", "two"))
    assert [h["step"] for h in one["history"]] == [h["step"] for h in two["history"]] == [2, 4]
    for a, b in zip(one["history"], two["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), f"{case}: the loss curves differ"
        assert b["dev_metric"] == a["dev_metric"], f"{case}: the sharded, gathered dev score differs"
    weights = [load_file(str(runs[n] / case / "method.safetensors")) for n in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=1e-5, atol=1e-5,
                                   msg=f"{case}: trained parameter {name} differs between one and two processes")


def test_only_rank_0_wrote_or_printed(runs):
    assert (runs["two"] / "rank1.out").read_text() == "", "rank 1 printed (only rank 0 speaks)"
    written = sorted(p.name for p in (runs["two"] / "lora_odd_batch").iterdir())
    assert written == sorted(p.name for p in (runs["one"] / "lora_odd_batch").iterdir()), written
