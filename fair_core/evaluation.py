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
    "colored_mnist_tiw": "Colored-MNIST, digit-conditional, colored_mnist_dsm fine-tuned by TIW-DSM with a 5 % balanced reference set",
    "colour_cond_dsm": "Colored-MNIST, colour-conditional (0 = red, 1 = green), trained on a 50:50 split: attribute switching",
    "eval_classifier": "evaluation classifier: digit (10) and colour (red, green) heads",
    "colored_mnist_adp": "ADP (h-space attribute heads: colour, digit) for colored_mnist_dsm, distribution guidance",
    "mnist457_dual": "grey MNIST, unconditional, digits 4, 5, 7 kept at 10 %, fine-tuned by constrained dual training",
}
# Class names per classifier head: the pack's evaluation classifier (colour, digit) and the optional face-gender
# model of ``fair_core.face_classifier`` (gender, in the order of its outputs).
CLASS_NAMES = {"colour": ["red", "green"], "digit": [str(d) for d in range(10)], "gender": ["female", "male"]}


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
    if attribute not in CLASS_NAMES:
        raise FairSamplingError(f"attribute must be one of {list(CLASS_NAMES)}, got {attribute!r}")
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


def check_attribute(classifier, attribute: str) -> list[str]:
    """The class names of ``attribute`` after checking that ``classifier`` has a head for it."""
    heads = list(getattr(classifier, "heads", {}))
    if attribute not in heads:
        raise FairSamplingError(f"attribute must be one of this classifier's heads {heads}, got {attribute!r}")
    return CLASS_NAMES[attribute]


def balance_report(probs: np.ndarray, classes: list[str], target, n_boot: int = 1000, seed: int = 0) -> dict:
    """Representational balance of hard labels ``argmax(probs)`` (N, K): the one report of ``eval`` and ``audit``.

    ``proportions`` p_k with 95 % percentile-bootstrap intervals ``proportions_low``/``proportions_high``,
    ``fd`` = ||p - target||_2 and ``tv`` = {"tv": TV(p, target), "low", "high", "confidence"} (TV with the same
    bootstrap interval), all from ``metrics.total_variation_ci``. ``target`` must have one proportion per class.
    """
    target = np.asarray(target, dtype=np.float64)
    if target.shape != (len(classes),):
        raise FairSamplingError(f"target must have {len(classes)} proportions, one per class {classes}, got {target.tolist()}")
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise FairSamplingError(f"probs must be (N, {len(classes)}) for classes {classes}, got shape {probs.shape}")
    ci = metrics.total_variation_ci(probs.argmax(1), target, n_boot=n_boot, seed=seed)
    return {"n": ci["n"], "classes": list(classes), "target": target.round(4).tolist(),
            **{k: np.round(ci[k], 4).tolist() for k in ("proportions", "proportions_low", "proportions_high")},
            "fd": round(metrics.fairness_discrepancy(ci["proportions"], target), 4),
            "tv": {"tv": round(ci["tv"], 4), "low": round(ci["low"], 4), "high": round(ci["high"], 4), "confidence": ci["confidence"]}}


def attribute_report(classifier, images: torch.Tensor, target: np.ndarray, attribute: str, n_boot: int = 1000, seed: int = 0) -> dict:
    """``balance_report`` of ``attribute`` (a head of ``classifier``) among ``images`` against ``target``."""
    classes = check_attribute(classifier, attribute)
    return {"attribute": attribute, **balance_report(features.classify(classifier, images)[attribute], classes, target, n_boot, seed)}


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
            attribute: attribute_report(classifier, images, target, attribute, seed=seed),
            "quality": quality_report(classifier, images)}, images
