"""Charts people would rather look at than read: attribute distributions of several methods against a target."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .checkpoints import atomic_write


def distribution_chart(results: dict[str, np.ndarray], target: np.ndarray, class_names: list[str], title: str,
                       subtitles: dict[str, str] | None = None,
                       intervals: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> bytes:
    """PNG bytes: one bar panel per method, bars = generated proportions, dashed line = target proportion,
    error bars = ``intervals[name]`` (low, high) per class when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def save_chart(path, png: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))
