"""Reference solutions for lesson 7 (try the exercises first!)."""
from __future__ import annotations

from statistics import mean


def mean_by_method(records):
    """{method: (mean dev_metric over its successful seeds, trainable parameters)}; failed runs are skipped."""
    runs = {}
    for r in records:
        if "error" not in r:
            runs.setdefault(r["method"], []).append(r)
    return {name: (mean(r["dev_metric"] for r in good), good[0]["trainable_params"]) for name, good in runs.items()}


def fewest_params_within(records, fraction=0.95, reference="full_fine_tuning"):
    """The method with the fewest trainable parameters whose mean dev metric is >= fraction x the reference's."""
    methods = mean_by_method(records)
    bar = fraction * methods[reference][0]
    good_enough = [(params, name) for name, (dev, params) in methods.items() if dev >= bar]
    return min(good_enough)[1] if good_enough else None


def steps_to_reach(history, target):
    """The first evaluated step whose dev_metric is at least target; None if never."""
    return next((point["step"] for point in history if point.get("dev_metric", float("-inf")) >= target), None)


def pareto_front(records):
    """Methods that no other method beats on both accuracy and trainable parameters, by parameters."""
    methods = mean_by_method(records)
    dominated = lambda a: any(db >= methods[a][0] and pb <= methods[a][1] and (db, pb) != methods[a]
                              for b, (db, pb) in methods.items() if b != a)
    return sorted((name for name in methods if not dominated(name)), key=lambda name: methods[name][1])
