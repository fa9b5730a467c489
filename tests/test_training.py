"""The shared training loop and runner: what trains, determinism, NaN stops, results.json and the plot."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from data import batches, load_task
from methods import fine_tuning
from methods.fine_tuning import FineTuning, FineTuningConfig
from methods.shared.training import TrainConfig, count_parameters, evaluate, train
from minitransformer import load_pretrained

MAX_LENGTH = 32  # the tiny checkpoints have 64 positions; built-in sentences are longer in their small vocabulary


@pytest.fixture(scope="module")
def sentiment():
    return load_task("builtin_sentiment")


def make_batches(examples, tokenizer, batch_size=8, shuffle=True, seed=0):
    return list(batches(examples, tokenizer, batch_size, shuffle=shuffle, seed=seed, max_length=MAX_LENGTH))


def tiny_method(tiny_checkpoints, mode="head", kind="bert"):
    torch.manual_seed(0)
    backbone, tokenizer = load_pretrained(tiny_checkpoints[kind][0])
    return FineTuning(backbone, tokenizer, 2, FineTuningConfig(mode=mode)), tokenizer


def run_loop(model, tokenizer, task, **config):
    train_examples = task.splits["train"][:48]
    steps_per_epoch = math.ceil(len(train_examples) / 8)
    config = TrainConfig(**{"epochs": 1, "lr": 1e-2, "progress": False, **config})
    return train(model, lambda epoch: make_batches(train_examples, tokenizer, seed=epoch), steps_per_epoch,
                 lambda: make_batches(task.splits["dev"][:16], tokenizer, shuffle=False), config)


def test_training_changes_only_trainable_parameters(tiny_checkpoints, sentiment):
    model, tokenizer = tiny_method(tiny_checkpoints, mode="head")
    backbone_before = {n: t.clone() for n, t in model.backbone.state_dict().items()}
    head_before = {n: t.clone() for n, t in model.head.state_dict().items()}
    run_loop(model, tokenizer, sentiment, max_steps=4, eval_every=2)
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, backbone_before[name]), f"frozen tensor {name} changed (must be bit-identical)"
    assert any(not torch.equal(t, head_before[n]) for n, t in model.head.state_dict().items()), "the head never trained"


def test_training_is_deterministic_for_a_seed_on_cpu(tiny_checkpoints, sentiment):
    runs = []
    for _ in range(2):
        model, tokenizer = tiny_method(tiny_checkpoints, mode="full")  # dropout on: the seed must cover it too
        result = run_loop(model, tokenizer, sentiment, max_steps=4, eval_every=1, seed=3)
        runs.append(([r["loss"] for r in result.history], model.state_dict()))
    (losses_a, state_a), (losses_b, state_b) = runs
    assert losses_a == losses_b, f"same seed, different losses: {losses_a} vs {losses_b} (must be exactly equal on CPU)"
    assert all(torch.equal(state_a[n], state_b[n]) for n in state_a), "same seed, different parameters after training"


def test_history_records_step_loss_metric_and_seconds(tiny_checkpoints, sentiment):
    model, tokenizer = tiny_method(tiny_checkpoints)
    result = run_loop(model, tokenizer, sentiment, max_steps=5, eval_every=2)
    assert [r["step"] for r in result.history] == [2, 4, 5], "evaluation every 2 steps and at the end"
    assert all({"step", "loss", "dev_metric", "seconds"} <= set(r) for r in result.history)
    assert result.steps == 5 and result.train_seconds > 0


def test_model_keeps_the_best_dev_state(tiny_checkpoints, sentiment):
    model, tokenizer = tiny_method(tiny_checkpoints)
    result = run_loop(model, tokenizer, sentiment, max_steps=6, eval_every=1)
    dev = make_batches(sentiment.splits["dev"][:16], tokenizer, shuffle=False)
    assert evaluate(model, dev) == result.best_metric == max(r["dev_metric"] for r in result.history), \
        "after training the model must hold the state that scored best on dev (exact: same batches, eval mode)"


class Scalar(nn.Module):
    """A one-parameter 'method' whose loss misbehaves on purpose at a chosen step."""

    def __init__(self, bad_step: int, bad: str):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(1.0))
        self.calls, self.bad_step, self.bad, self.seen = 0, bad_step, bad, []

    def forward(self, batch):
        self.calls += 1
        self.seen.append(self.weight.detach().clone())  # the state this step starts from
        value = self.weight * 1.0
        if self.calls == self.bad_step:
            # nan: the loss itself is NaN; inf-grad: a finite loss whose gradient is infinite (d sqrt(w)/dw at 0)
            value = self.weight * float("nan") if self.bad == "nan" else (self.weight - self.weight.detach()).sqrt()
        logits = torch.stack([value, torch.zeros(())])  # (2,)
        return logits.expand(len(batch["labels"]), 2)  # (B, 2)


@pytest.mark.parametrize("bad, message", [("nan", "Loss became nan at step 3"),
                                          ("inf-grad", "The gradient norm became inf")])
def test_non_finite_training_stops_with_message_and_keeps_last_good_state(capsys, bad, message):
    model = Scalar(bad_step=3, bad=bad)
    data = [{"labels": torch.tensor([1, 1])} for _ in range(10)]
    result = train(model, lambda epoch: data, len(data), None, TrainConfig(epochs=1, lr=0.1, progress=False))
    assert result.stopped and message in result.stopped and "--lr" in result.stopped, result.stopped
    assert message in capsys.readouterr().err, "the reason must be printed, not only stored"
    assert result.steps == 2 and result.outcome == "diverged", "the bad step must not count as a step"
    assert torch.equal(model.weight.detach(), model.seen[0]), \
        "nothing was evaluated yet: the state kept is the one training started from (the last evaluated one)"
    assert torch.isfinite(model.weight).all()


def test_max_steps_zero_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        fine_tuning.main(["--max-steps", "0"])
    assert "--max-steps: must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_steps must be a positive number of steps"):
        TrainConfig(max_steps=0)


def test_unknown_option_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        fine_tuning.main(["--mode", "head", "--prompt-length", "20"])
    assert "unrecognized arguments: --prompt-length 20" in capsys.readouterr().err


def test_command_line_writes_results_json_and_plot(tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "run"
    record = fine_tuning.main(["--model", str(tiny_checkpoints["bert"][0]), "--task", "builtin_sentiment",
                               "--mode", "head", "--max-steps", "3", "--eval-every", "2", "--batch-size", "8",
                               "--max-length", str(MAX_LENGTH), "--out", str(out), "--no-progress"])
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(dataclasses.asdict(record), default=str)), \
        "results.json must hold the returned record"
    for key in ("method", "run_name", "model", "task", "config", "options", "trainable_params", "total_params",
                "metric", "dev_metric", "test_metric", "history", "train_seconds", "steps", "seconds_per_step",
                "peak_memory_mb", "stored_bytes", "details"):
        assert key in saved, f"results.json lacks {key}"
    assert saved["method"] == "fine_tuning" and saved["run_name"] == "head_only"
    assert saved["task"] == "builtin_sentiment" and saved["steps"] == 3
    assert saved["config"]["mode"] == "head" and saved["options"]["lr"] == fine_tuning.DEFAULT_LR["head"]
    assert 0 < saved["trainable_params"] < saved["total_params"]
    assert [r["step"] for r in saved["history"]] == [2, 3]
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "the plot must be a PNG"
    assert "trainable of" in capsys.readouterr().out, "the parameter count must be printed"


def test_count_parameters_counts_tied_weights_once(tiny_checkpoints):
    backbone, _ = load_pretrained(tiny_checkpoints["gpt2"][0])
    trainable, total = count_parameters(backbone)
    reference = tiny_checkpoints["gpt2"][1]  # transformers' GPT-2 ties lm_head to wte as well
    assert trainable == total == sum(p.numel() for p in reference.parameters())
