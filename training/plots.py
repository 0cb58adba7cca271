"""PNG figures for a training run: the loss/dev-F1 curve and the dev confusion matrix (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    return plt


def plot_training_curve(history: Sequence[dict], path: str) -> None:
    """Train loss (left axis) and dev weighted F1 (right axis) against optimiser steps, one point per evaluation."""
    plt = _pyplot()
    steps = [row["step"] for row in history]
    fig, loss_ax = plt.subplots(figsize=(7, 4))
    loss_ax.plot(steps, [row["train_loss"] for row in history], "o-", color="tab:blue", label="train loss")
    loss_ax.set_xlabel("optimiser step")
    loss_ax.set_ylabel("train loss", color="tab:blue")
    f1_ax = loss_ax.twinx()
    f1_ax.plot(steps, [row["dev_weighted_f1"] for row in history], "s-", color="tab:orange", label="dev W-F1")
    f1_ax.set_ylabel("dev weighted F1 (%)", color="tab:orange")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(report: dict, path: str, title: str = "dev confusion matrix") -> None:
    """Row-normalised confusion matrix (recall per gold class) with raw counts in the cells."""
    plt = _pyplot()
    import numpy as np

    counts = np.asarray(report["confusion"])
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    labels = report["labels"]
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(labels), 1 + 0.7 * len(labels)))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"{title} (W-F1 {report['weighted_f1']:.2f})")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
