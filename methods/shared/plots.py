"""The one plotting module: small figures, labelled axes, saved as PNG.

Method command lines, the compare runner and the lessons all draw through it.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib.pyplot as plt  # picks a non-interactive backend by itself on a headless machine

from methods.shared.files import atomic_path


def save(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    """Lay the figure out and write it as PNG (atomically: a kill leaves the old picture or the new one)."""
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as temporary:
            fig.savefig(temporary, dpi=120)
    return fig


def plot_learning_curves(histories: dict[str, list[dict]], metric: str, path: str | Path | None = None,
                         title: str = "") -> plt.Figure:
    """Training loss and dev metric against training step, one line per run.

    `histories` maps a label (a method, a learning rate, ...) to the history of `train`.
    """
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, history in histories.items():
        steps = [r["step"] for r in history]
        loss_ax.plot(steps, [r["loss"] for r in history], marker=".", label=label)
        if any("dev_metric" in r for r in history):
            metric_ax.plot([r["step"] for r in history if "dev_metric" in r],
                           [100 * r["dev_metric"] for r in history if "dev_metric" in r], marker=".", label=label)
    loss_ax.set(xlabel="training step", ylabel="training loss (mean since last point)", title="loss")
    metric_ax.set(xlabel="training step", ylabel=f"dev {metric} (%)", title=f"dev {metric}")
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
    if len(histories) > 1:
        metric_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def plot_template_scores(templates: list[str], scores: list[float], metric: str, path: str | Path | None = None,
                         title: str = "") -> plt.Figure:
    """One bar per template (its dev metric), the first on top, and their mean as a dashed line."""
    mean = sum(scores) / len(scores)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(templates)))
    ax.barh(range(len(templates)), [100 * value for value in scores])
    one_line = [t.replace("\n", " ") for t in templates]
    ax.set_yticks(range(len(templates)), [t if len(t) <= 60 else t[:57] + "..." for t in one_line], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(100 * mean, color="gray", linestyle="--", label=f"mean {100 * mean:.1f}")
    for row, value in enumerate(scores):
        ax.text(100 * value, row, f" {100 * value:.1f}", va="center", fontsize=8)
    ax.set(xlabel=f"dev {metric} (%)", title=title, xlim=(0, 105))
    ax.legend(fontsize=8, loc="lower right")
    fig = save(fig, path)
    plt.close(fig)
    return fig


def plot_comparison(rows: list[dict], out: Path, title: str) -> None:
    """compare's three figures: curves.png (mean dev curve per method), metric_vs_params.png, cost.png.

    Each row: method, metric, histories (one per seed), dev_mean, dev_std, trainable, step_s, memory_mb."""
    metric = rows[0]["metric"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:  # mean curve over seeds (all seeds share the evaluation steps)
        points = [[p for p in h if "dev_metric" in p] for h in r["histories"]]
        steps = [p["step"] for p in points[0]]
        means = [100 * statistics.mean(run[i]["dev_metric"] for run in points) for i in range(len(steps))]
        ax.plot(steps, means, marker=".", label=r["method"])
    ax.set(xlabel="training step", ylabel=f"dev {metric} (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save(fig, out / "curves.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.errorbar(r["trainable"], r["dev_mean"], yerr=r["dev_std"], fmt="o", capsize=3)
        ax.annotate(r["method"], (r["trainable"], r["dev_mean"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel=f"best dev {metric} (%)", title=title)
    ax.grid(alpha=0.3)
    save(fig, out / "metric_vs_params.png")

    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [r["method"] for r in rows]
    time_ax.barh(names, [r["step_s"] for r in rows])
    time_ax.set(xlabel="seconds per training step", title="time")
    memory_ax.barh(names, [r["memory_mb"] for r in rows])
    memory_ax.set(xlabel="peak memory (MB)", title="memory (process peak on CPU)")
    for ax in (time_ax, memory_ax):
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    save(fig, out / "cost.png")
    plt.close("all")
