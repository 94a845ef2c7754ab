"""Audit a batch of images: attribute balance with bootstrap confidence intervals, FD and quality, as a report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import evaluation, features, metrics
from .errors import FairSamplingError
from .imageio import from_uint8
from .plots import distribution_chart

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_images(source) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] from an ``.npz`` with ``images`` (uint8 N x H x W x C) or a folder of images."""
    path = Path(source)
    if path.is_file() and path.suffix == ".npz":
        with np.load(path) as data:
            if "images" not in data:
                raise FairSamplingError(f"{path} must hold an 'images' array (as written by python -m fair_core sample), has {list(data)}")
            return from_uint8(data["images"])
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FairSamplingError(f"folder {path} must contain images ({', '.join(IMAGE_SUFFIXES)}), found none")
        arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        if len({a.shape for a in arrays}) != 1:
            raise FairSamplingError(f"images in {path} must all have one size, got {sorted({a.shape for a in arrays})}")
        return from_uint8(np.stack(arrays))
    raise FairSamplingError(f"source must be an .npz file or a folder of images, got {str(source)!r}")


def audit(images: torch.Tensor, classifier, attribute: str = "colour", target=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Proportions of ``attribute`` by the classifier's head, FD and TV to ``target`` with a bootstrap interval,
    and the classifier-feature quality figure when the classifier carries reference statistics."""
    names = evaluation.CLASS_NAMES[attribute]
    target = np.full(len(names), 1 / len(names)) if target is None else np.asarray(target, dtype=np.float64)
    if target.shape != (len(names),):
        raise FairSamplingError(f"target must have {len(names)} proportions for {attribute} {names}, got {target.tolist()}")
    labels = features.classify(classifier, images)[attribute].argmax(1)
    balance = metrics.total_variation_ci(labels, target, n_boot=n_boot, seed=seed)
    return {"n": int(images.shape[0]), "attribute": attribute, "classes": names, "target": target.round(4).tolist(),
            "fd": round(metrics.fairness_discrepancy(balance["proportions"], target), 4),
            "tv": {k: balance[k] for k in ("tv", "low", "high", "confidence")},
            "proportions": {k: np.round(balance[k], 4).tolist() for k in ("proportions", "proportions_low", "proportions_high")},
            "quality": evaluation.quality_report(classifier, images)}


def report_text(report: dict) -> str:
    """The audit in a few readable lines (proportions with intervals, FD, TV with interval, quality)."""
    p, tv = report["proportions"], report["tv"]
    classes = ", ".join(f"{c} {v:.2f} [{lo:.2f}, {hi:.2f}]" for c, v, lo, hi in
                        zip(report["classes"], p["proportions"], p["proportions_low"], p["proportions_high"]))
    lines = [f"{report['attribute']} (n = {report['n']}): {classes}",
             f"FD {report['fd']:.3f}, TV {tv['tv']:.3f} [{tv['low']:.3f}, {tv['high']:.3f}] to target {report['target']}"]
    lines += [f"{k}: {v}" for k, v in report["quality"].items()]
    return "\n".join(lines)


def chart(report: dict, name: str = "batch") -> bytes:
    """PNG bytes: the audited proportions with their intervals as error bars, against the dashed target."""
    p, tv = report["proportions"], report["tv"]
    return distribution_chart({name: p["proportions"]}, report["target"], report["classes"],
                              f"{report['attribute']} audit, n = {report['n']}",
                              {name: f"FD {report['fd']:.3f}, TV {tv['tv']:.3f} [{tv['low']:.3f}, {tv['high']:.3f}]"},
                              intervals={name: (p["proportions_low"], p["proportions_high"])})
