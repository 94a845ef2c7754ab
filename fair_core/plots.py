"""Charts people would rather look at than read: attribute distributions of several methods against a target."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .checkpoints import atomic_write


def _pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (charts are written to files, never shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def distribution_chart(results: dict[str, np.ndarray], target: np.ndarray, class_names: list[str], title: str,
                       subtitles: dict[str, str] | None = None,
                       intervals: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> bytes:
    """PNG bytes: one bar panel per method, bars = generated proportions, dashed line = target proportion,
    error bars = ``intervals[name]`` (low, high) per class when given."""
    plt = _pyplot()

    k = len(results)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k + 0.6, 3.2), squeeze=False, sharey=True)
    colours = ["#d62728", "#2ca02c"] if class_names == ["red", "green"] else None
    for ax, (name, p) in zip(axes[0], results.items()):
        p, x = np.asarray(p, dtype=float), np.arange(len(class_names))
        ax.bar(x, p, color=colours or "#4c72b0", edgecolor="black", linewidth=0.5)
        if intervals and name in intervals:
            low, high = (np.asarray(v, dtype=float) for v in intervals[name])
            ax.errorbar(x, p, yerr=[np.maximum(p - low, 0), np.maximum(high - p, 0)], fmt="none", ecolor="black", capsize=4)
        for xi, t in zip(x, target):
            ax.hlines(t, xi - 0.4, xi + 0.4, colors="black", linestyles="--", linewidth=1.2)
        for xi, v in zip(x, p):  # beside the error bar when there is one
            ax.text(xi + (0.22 if intervals else 0), v + 0.02, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, class_names, rotation=0 if len(class_names) <= 4 else 90)
        ax.set_ylim(0, 1.08)
        ax.set_title(name + ("\n" + subtitles[name] if subtitles and name in subtitles else ""), fontsize=9)
    axes[0][0].set_ylabel("proportion of generated images")
    fig.suptitle(f"{title}  (dashed: target)", fontsize=10)
    return _png(fig)


def tau_chart(objective, step_difference, tau: int, title: str = "Transition point search") -> bytes:
    """PNG bytes: the tau objective J(tau) over the step grid with the chosen tau marked, and below it how much
    the two conditions disagree at each step (mean ||r_i||)."""
    plt = _pyplot()

    j, r = np.asarray(objective, dtype=float), np.asarray(step_difference, dtype=float)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 4.4), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    top.plot(np.arange(len(j)), j, marker="o", markersize=3, color="#4c72b0")
    top.axvline(tau, color="#d62728", linestyle="--", linewidth=1.2)
    top.annotate(f"tau = {tau} of {len(j) - 1} steps", (tau, j[tau]), textcoords="offset points", xytext=(6, 10), fontsize=8,
                 color="#d62728")
    top.set_ylabel("J(tau)")
    top.set_title(f"{title}\n(steps before tau use s0, from tau on s1)", fontsize=9)
    bottom.bar(np.arange(len(r)) + 0.5, r, width=0.9, color="#8c8c8c")
    bottom.axvline(tau, color="#d62728", linestyle="--", linewidth=1.2)
    bottom.set_ylabel("mean ||r_i||", fontsize=8)
    bottom.set_xlabel("step index (0 = pure noise)")
    return _png(fig)


def save_chart(path, png: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))


def ratio_chart(labels: list[str], ratios, title: str, left: str, right: str) -> bytes:
    """PNG bytes: one horizontal bar per label of log2(ratio) around 0 (ratio 1), annotated with the ratio;
    bars to the right lean towards ``right``, to the left towards ``left``."""
    plt = _pyplot()

    r = np.asarray(ratios, dtype=float)
    v = np.log2(r)
    y = np.arange(len(labels))[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(labels) + 1.4))
    ax.barh(y, v, color=np.where(v >= 0, "#4c72b0", "#dd8452"), edgecolor="black", linewidth=0.5)
    ax.axvline(0, color="black", linewidth=1)
    lim = max(float(np.abs(v).max()), 1e-3) * 1.35
    for yi, vi, ri in zip(y, v, r):
        ax.text(vi + (0.02 * lim if vi >= 0 else -0.02 * lim), yi, f"{ri:.3f}", va="center", ha="left" if vi >= 0 else "right", fontsize=8)
    ax.set_xlim(-lim, lim)
    ax.set_yticks(y, [t if len(t) <= 40 else t[:37] + "..." for t in labels], fontsize=8)
    ax.set_xlabel(f"log2 ratio   (<- {left}   |   {right} ->)")
    ax.set_title(title, fontsize=10)
    return _png(fig)
