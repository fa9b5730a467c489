"""The one plotting helper: small figures, labelled axes, saved as PNG.

Method command lines, the compare runner and the lessons all draw through it.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # picks a non-interactive backend by itself on a headless machine


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
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
