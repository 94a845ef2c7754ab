"""Measure a generator: attribute proportions by the evaluation classifier, FD to a target, and quality.

Quality figures, both against the real Colored-MNIST test set:

* ``classifier_feature_fd``: Frechet distance of the evaluation classifier's trunk features, with every image
  recoloured red so that the colour ratio does not enter (fairness is measured by FD, quality by this). The real
  statistics travel inside the classifier checkpoint, so no data set is needed. Fast; MNIST-specific; not FID.
* ``inception_fid`` (optional, ``fid=True``): standard Inception FID, needs real images (``reference_images``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import features, metrics
from .errors import FairSamplingError
from .sampling import generate

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
SHIPPED = {
    "colored_mnist_dsm": "Colored-MNIST, digit-conditional, trained on the 90:10 red:green biased split (plain DSM)",
    "eval_classifier": "evaluation classifier: digit (10) and colour (red, green) heads",
}
CLASS_NAMES = {"colour": ["red", "green"], "digit": [str(d) for d in range(10)]}


def resolve_checkpoint(name_or_path: str) -> Path:
    """A checkpoint path, or the name of a shipped one (``colored_mnist_dsm``, ``eval_classifier``)."""
    if name_or_path in SHIPPED:
        return MODELS_DIR / f"{name_or_path}.safetensors"
    path = Path(name_or_path)
    if not path.is_file():
        raise FairSamplingError(f"checkpoint must be an existing file or one of the shipped names {sorted(SHIPPED)}, got {name_or_path!r}")
    return path


def uniform_labels(model, n: int) -> torch.Tensor | None:
    """Class labels cycling through every class (so each digit is asked for equally often); None if unconditional."""
    cfg = model.cfg
    return torch.arange(n) % cfg.num_classes if cfg.conditional else None


def parse_target(text: str | None, attribute: str) -> np.ndarray:
    """``None`` -> uniform; else comma-separated proportions like ``0.5,0.5`` that must sum to 1."""
    k = len(CLASS_NAMES[attribute])
    if text is None:
        return np.full(k, 1 / k)
    try:
        target = np.array([float(v) for v in text.split(",")])
    except ValueError as e:
        raise FairSamplingError(f"--target must be {k} comma-separated proportions like {','.join(['%.2g' % (1 / k)] * k)}, got {text!r}") from e
    if len(target) != k or (target < 0).any() or abs(target.sum() - 1) > 1e-6:
        raise FairSamplingError(f"--target must be {k} non-negative proportions for {attribute} {CLASS_NAMES[attribute]} summing to 1, got {text!r}")
    return target


def attribute_report(classifier, images: torch.Tensor, target: np.ndarray, attribute: str) -> dict:
    """Hard-label proportions of ``attribute`` among ``images``, their FD and TV distance to ``target``."""
    probs = features.classify(classifier, images)[attribute]
    p = metrics.proportions(probs.argmax(1), len(CLASS_NAMES[attribute]))
    return {"classes": CLASS_NAMES[attribute], "proportions": p.round(4).tolist(), "target": target.round(4).tolist(),
            "fd": round(float(metrics.fairness_discrepancy(p, target)), 4),
            "tv": round(float(metrics.total_variation(p, target)), 4)}


def quality_report(classifier, images: torch.Tensor, reference_images: torch.Tensor | None = None, fid: bool = False) -> dict:
    out = {}
    if classifier.has_reference_stats:
        out["classifier_feature_fd"] = round(features.classifier_feature_fd(classifier, images), 3)
    if fid:
        if reference_images is None:
            raise FairSamplingError("inception FID needs reference_images (real images), none were given")
        out["inception_fid"] = round(float(features.inception_fid(images, reference_images)), 3)
    return out


def evaluate(model, classifier, n: int, steps: int, seed: int = 0, attribute: str = "colour", target: np.ndarray | None = None,
             sampler: str = "dpmpp_2m", schedule: str = "karras", cfg_scale: float = 1.0, device=None, disable=None) -> dict:
    """Sample ``n`` images with uniform class labels and report attribute balance and quality."""
    target = parse_target(None, attribute) if target is None else target
    images = generate(model, n, steps, sampler=sampler, schedule=schedule, class_labels=uniform_labels(model, n), seed=seed,
                      cfg_scale=cfg_scale, device=device, disable=disable)
    return {"n": n, "steps": steps, "seed": seed, "sampler": sampler, "schedule": schedule, "cfg_scale": cfg_scale,
            attribute: attribute_report(classifier, images, target, attribute),
            "quality": quality_report(classifier, images)}, images
