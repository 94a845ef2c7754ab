"""Audit a batch of images: attribute balance with bootstrap confidence intervals, FD and quality, and, given
per-image labels, BER of a held-out probe and the classifier's multi-accuracy / multi-calibration, as a report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import checkpoints, evaluation, face_classifier, features, metrics
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


CLASSIFIER_CHOICES = ("eval_classifier", face_classifier.NAME)  # shipped / optional; any classifier checkpoint path works too


def load_classifier(name_or_path: str, device=None):
    """An audit classifier: ``face_gender`` (the optional ONNX face-gender model), a shipped classifier name, or a
    classifier checkpoint path."""
    if name_or_path == face_classifier.NAME:
        return face_classifier.FaceGenderClassifier()
    return checkpoints.load(evaluation.resolve_checkpoint(name_or_path), kind="classifier", device=device).model


def load_labels(source, key: str = "labels") -> np.ndarray | None:
    """Integer per-image labels stored under ``key`` in an ``.npz`` source; None for a folder, a missing key, or
    ``labels`` that are all -1 (what ``python -m fair_core sample`` writes for unconditional samples)."""
    path = Path(source)
    if not (path.is_file() and path.suffix == ".npz"):
        return None
    with np.load(path) as data:
        if key not in data:
            return None
        labels = data[key]
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or np.all(np.mod(labels, 1) == 0)):
        raise FairSamplingError(f"'{key}' in {path} must be a 1-d array of integer labels, got shape {labels.shape} dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    return None if (labels == -1).all() else labels


def parse_labels(text: str, name: str) -> np.ndarray | None:
    """Comma-separated integer labels such as ``"0,1,1,0"``; None for an empty string."""
    if not text.strip():
        return None
    try:
        return np.array([int(v) for v in text.replace("\n", ",").split(",") if v.strip()], dtype=np.int64)
    except ValueError as e:
        raise FairSamplingError(f"{name} must be comma-separated integers, one per image, like '0,1,1,0', got {text!r}") from e


def _check_labels(name: str, labels, n: int, num_classes: int | None = None) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise FairSamplingError(f"{name} must be {n} non-negative integer labels, one per image, got shape {y.shape} "
                                f"dtype {y.dtype}" + (f" and values in [{y.min()}, {y.max()}]" if y.size else ""))
    if num_classes is not None and y.max() >= num_classes:
        raise FairSamplingError(f"{name} must be class indices in [0, {num_classes - 1}], got values up to {y.max()}")
    return y


def audit(images: torch.Tensor, classifier, attribute: str = "colour", target=None, n_boot: int = 1000, seed: int = 0,
          groups=None, truth=None, folds: int = 5, bins: int = 10) -> dict:
    """Audit a batch: ``evaluation.balance_report`` of ``attribute`` (proportions with bootstrap intervals, FD, TV)
    and the quality figure, plus what the optional labels make meaningful.

    * ``groups`` (N,) a sensitive label per image, e.g. the class each image was generated for (the ``labels`` of
      ``python -m fair_core sample``): ``group_ber`` = BER of a linear probe predicting the group from the
      classifier's trunk features on ``folds`` held-out folds (``metrics.held_out_ber``), with its chance level
      1 - 1/G. Near 0: the images show their group clearly; near chance: the group cannot be read off them.
      Needs a classifier with ``features`` (not the ONNX face model, whose only output is its probabilities).
    * ``truth`` (N,) the true class of ``attribute`` per image (real images, or a generator whose attribute is
      known): how far the audit itself can be trusted. ``classifier_ber`` = BER of the classifier's hard labels;
      ``multi_accuracy`` = max_k max_g |E[f_k(x) - 1[y = k] | g]| and ``multi_calibration`` = the same over
      groups x ``bins`` score bins (arXiv 2409.09569), with f_k = the classifier's probability of class k and
      groups g = ``groups`` when given, else the whole batch as one group (then MA_k = |soft proportion_k -
      true proportion_k|, the classifier's over- or under-count of class k).

    Without ground truth there is nothing to be accurate or calibrated against, so MA/MC are not reported.
    """
    target = evaluation.parse_target(None, attribute) if target is None else target
    classes = evaluation.check_attribute(classifier, attribute)
    n = features.check_images("images", images).shape[0]
    g = None if groups is None else _check_labels("groups", groups, n)
    y = None if truth is None else _check_labels("truth", truth, n, len(classes))
    probs = features.classify(classifier, images)
    report = {"attribute": attribute, **evaluation.balance_report(probs[attribute], classes, target, n_boot, seed),
              "quality": evaluation.quality_report(classifier, images)}
    if g is not None:
        if not hasattr(classifier, "features"):
            report["group_ber"] = {"skipped": "the classifier exposes no features to probe"}
        elif np.unique(g).size < 2:
            report["group_ber"] = {"skipped": f"one group only ({int(g[0])}): nothing to tell apart"}
        elif n < 2 * folds:
            report["group_ber"] = {"skipped": f"{n} images are too few for {folds} held-out folds (need {2 * folds})"}
        else:
            num = int(g.max()) + 1
            ber = metrics.held_out_ber(features.classifier_features(classifier, images), g, num, folds=folds, seed=seed)
            report["group_ber"] = {"ber": round(ber, 4), "chance": round(1 - 1 / np.unique(g).size, 4),
                                   "groups": int(np.unique(g).size), "folds": folds}
    if y is not None:
        p = probs[attribute].astype(np.float64)
        g = np.zeros(n, int) if g is None else g
        report["classifier_ber"] = round(metrics.balanced_error_rate(y, p.argmax(1), len(classes)), 4)
        ma = [metrics.multi_accuracy(p[:, k].clip(0, 1), y == k, g) for k in range(len(classes))]
        mc = [metrics.multi_calibration(p[:, k].clip(0, 1), y == k, g, bins=bins) for k in range(len(classes))]
        k_ma, k_mc = int(np.argmax([m["max"] for m in ma])), int(np.argmax([m["max"] for m in mc]))
        report["multi_accuracy"] = {"max": round(ma[k_ma]["max"], 4), "class": classes[k_ma],
                                    "per_group": {k: round(v, 4) for k, v in ma[k_ma]["per_group"].items()},
                                    "groups": "groups" if groups is not None else "all"}
        report["multi_calibration"] = {"max": round(mc[k_mc]["max"], 4), "class": classes[k_mc], "cell": mc[k_mc]["cell"], "bins": bins}
    return report


def report_text(report: dict) -> str:
    """The audit in a few readable lines (proportions with intervals, FD, TV with interval, quality, label audits)."""
    tv = report["tv"]
    classes = ", ".join(f"{c} {v:.2f} [{lo:.2f}, {hi:.2f}]" for c, v, lo, hi in
                        zip(report["classes"], report["proportions"], report["proportions_low"], report["proportions_high"]))
    lines = [f"{report['attribute']} (n = {report['n']}): {classes}",
             f"FD {report['fd']:.3f}, TV {tv['tv']:.3f} [{tv['low']:.3f}, {tv['high']:.3f}] to target {report['target']}"]
    lines += [f"{k}: {v}" for k, v in report["quality"].items()]
    if "group_ber" in report:
        b = report["group_ber"]
        lines.append(f"group BER (probe on classifier features): {b['skipped']}" if "skipped" in b else
                     f"group BER (probe on classifier features, {b['groups']} groups): {b['ber']:.3f} (chance {b['chance']:.3f})")
    if "classifier_ber" in report:
        ma, mc = report["multi_accuracy"], report["multi_calibration"]
        lines.append(f"classifier BER against the true {report['attribute']}: {report['classifier_ber']:.3f}")
        lines.append(f"multi-accuracy {ma['max']:.3f} (class {ma['class']}, over {ma['groups']}), "
                     f"multi-calibration {mc['max']:.3f} (class {mc['class']}, group {mc['cell']['group']}, "
                     f"scores in [{mc['cell']['bin'][0]:.1f}, {mc['cell']['bin'][1]:.1f}])")
    return "\n".join(lines)


def chart(report: dict, name: str = "batch") -> bytes:
    """PNG bytes: the audited proportions with their intervals as error bars, against the dashed target."""
    tv = report["tv"]
    return distribution_chart({name: report["proportions"]}, report["target"], report["classes"],
                              f"{report['attribute']} audit, n = {report['n']}",
                              {name: f"FD {report['fd']:.3f}, TV {tv['tv']:.3f} [{tv['low']:.3f}, {tv['high']:.3f}]"},
                              intervals={name: (report["proportions_low"], report["proportions_high"])})
