"""Checks for lesson 7 (which method when?): questions asked of the comparison runner's records.

The records have the shape of methods/compare.py's results.json ("records": one dict per method
and seed, with method, seed, dev_metric, trainable_params, history; a failed run has "error"
instead). Each check builds a small synthetic list whose answer is known, including the traps:
several seeds (use their mean), failed runs (skip them), evaluation-free history entries.
"""
from __future__ import annotations


def record(method: str, dev: float, params: int, seed: int = 0, history: list | None = None) -> dict:
    return {"method": method, "seed": seed, "dev_metric": dev, "trainable_params": params, "metric": "accuracy",
            "history": history or [{"step": 100, "loss": 0.5, "dev_metric": dev}]}


def synthetic_records() -> list[dict]:
    return [
        record("full_fine_tuning", 0.90, 22_000_000), record("full_fine_tuning", 0.88, 22_000_000, seed=1),
        record("lora", 0.87, 74_000), record("lora", 0.85, 74_000, seed=1),            # mean 0.86 >= 0.95 * 0.89
        record("prompt_tuning", 0.86, 8_000), record("prompt_tuning", 0.80, 8_000, seed=1),  # mean 0.83: too low
        record("p_tuning_v2", 0.85, 93_000),                                           # 0.85 >= 0.8455, more params
        record("head_only", 0.70, 770),
        {"method": "bitfit", "seed": 0, "error": "RuntimeError: out of memory"},         # failed: never an answer
    ]


def check_fewest_params_within(fewest_params_within) -> None:
    records = synthetic_records()
    got = fewest_params_within(records, 0.95)
    assert got == "lora", (
        f"expected 'lora', got {got!r}. Average each method's dev_metric over its seeds (full fine-tuning: 0.89, "
        "so the bar is 0.95 x 0.89 = 0.8455); prompt_tuning's mean is 0.83 (one lucky seed is not enough); "
        "among those at or above the bar, lora has the fewest trainable parameters; skip records with 'error'.")
    got = fewest_params_within(records, 0.5)
    assert got == "head_only", f"with fraction 0.5 every method qualifies: the fewest parameters is head_only, got {got!r}"
    got = fewest_params_within(records, 0.99)
    assert got == "full_fine_tuning", (f"with fraction 0.99 only full fine-tuning itself qualifies (0.89 >= 0.8811 but "
                                       f"lora's 0.86 does not): got {got!r}")
    bitfit_wins = records + [{"method": "adapters", "seed": 0, "error": "failed"},
                             record("bitfit", 0.89, 100, seed=1)]  # bitfit: one failed seed, one good one
    got = fewest_params_within(bitfit_wins, 0.95)
    assert got == "bitfit", f"bitfit has one good run (0.89, 100 parameters) besides a failed one: expected it, got {got!r}"


def check_steps_to_reach(steps_to_reach) -> None:
    history = [{"step": 50, "loss": 0.7, "dev_metric": 0.60}, {"step": 75, "loss": 0.6},  # no evaluation at 75
               {"step": 100, "loss": 0.5, "dev_metric": 0.82}, {"step": 150, "loss": 0.4, "dev_metric": 0.80},
               {"step": 200, "loss": 0.3, "dev_metric": 0.85}]
    cases = [(0.80, 100), (0.60, 50), (0.85, 200), (0.83, 200), (0.90, None), (0.0, 50)]
    for target, expected in cases:
        got = steps_to_reach(history, target)
        assert got == expected, (
            f"target {target}: expected {expected}, got {got!r}. Return the first step whose dev_metric is at "
            "least the target (entries without 'dev_metric' were not evaluated), or None if it never gets there.")
    assert steps_to_reach([], 0.5) is None, "an empty history never reaches anything: return None"


def check_pareto_front(pareto_front) -> None:
    records = synthetic_records()
    got = pareto_front(records)
    expected = ["head_only", "prompt_tuning", "lora", "full_fine_tuning"]
    assert isinstance(got, list), f"return a list of method names, got {type(got).__name__}"
    assert got == expected, (
        f"expected {expected}, got {got}. A method is on the front when no other method has at most as many "
        "trainable parameters and at least as high a mean dev_metric (better in one of the two). p_tuning_v2 "
        "(0.85, 93k) is beaten by lora (0.86, 74k); sort the front by trainable parameters; skip failed runs.")
    tie = [record("a", 0.80, 1000), record("b", 0.80, 2000), record("c", 0.90, 2000)]
    got = pareto_front(tie)
    assert got == ["a", "c"], (f"b has as many parameters as c but lower accuracy, and the same accuracy as a with "
                               f"more parameters: it is dominated. Expected ['a', 'c'], got {got}")


EXERCISES = {
    "fewest_params_within": check_fewest_params_within,
    "steps_to_reach": check_steps_to_reach,
    "pareto_front": check_pareto_front,
}
