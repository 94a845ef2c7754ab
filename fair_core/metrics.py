"""Metrics with one pinned definition each; the formula is in every docstring.

Fairness (over the classes of one attribute, e.g. colour or digit):

* ``fairness_discrepancy``: FD = || p - target ||_2, counting every class, empty ones included.
* ``total_variation``: TV = 0.5 * sum_k |p_k - q_k|.
* ``kl_divergence``: KL(p || q) = sum_k p_k log(p_k / q_k), in nats.

Quality: ``frechet_distance`` between Gaussians fitted to features; the feature extractors (evaluation
classifier, Inception-v3) and the figures built on them (``classifier_feature_fd``, ``inception_fid``) are in
``fair_core.features``.
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.linalg
import torch

from .errors import FairSamplingError, check_range

log = logging.getLogger(__name__)

PROB_ATOL = 1e-6  # tolerance on "sums to 1" for proportion vectors


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ---------------------------------------------------------------------------------------------------- proportions
def proportions(labels, num_classes: int) -> np.ndarray:
    """p_k = #{i : labels_i = k} / N for k = 0..num_classes-1; empty classes get p_k = 0 (never dropped)."""
    check_range("num_classes", num_classes, 1, integer=True)
    labels = _numpy(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise FairSamplingError(f"labels must be a non-empty 1-d array of integers, got shape {labels.shape} dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise FairSamplingError(f"labels must be in [0, {num_classes - 1}] for num_classes={num_classes}, "
                                f"got values in [{labels.min()}, {labels.max()}]")
    return np.bincount(labels, minlength=num_classes).astype(np.float64) / labels.size


def soft_proportions(probs) -> np.ndarray:
    """p_k = (1/N) sum_i probs_ik: the batch mean of the probability rows (N, K)."""
    probs = _numpy(probs)
    probs = probs.astype(np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise FairSamplingError(f"probs must be a non-empty (N, K) array of probability rows, got shape {probs.shape}")
    rows = probs.sum(1)
    if (probs < 0).any() or np.abs(rows - 1).max() > 1e-4:  # float32 softmax rows are only 1 within ~1e-7 * K
        raise FairSamplingError(f"probs rows must be non-negative and sum to 1, got min {probs.min():.3g} "
                                f"and row sums in [{rows.min():.6g}, {rows.max():.6g}]")
    return probs.mean(0)


def _prob_vector(name: str, v) -> np.ndarray:
    v = _numpy(v)
    try:
        v = v.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise FairSamplingError(f"{name} must be a vector of proportions, got {v!r}") from e
    if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all() or (v < 0).any() or abs(v.sum() - 1) > PROB_ATOL:
        raise FairSamplingError(f"{name} must be a non-empty 1-d vector of non-negative proportions summing to 1 "
                                f"(within {PROB_ATOL:g}), got {v.tolist()}")
    return v


def _prob_pair(p, q, names=("p", "q")) -> tuple[np.ndarray, np.ndarray]:
    p, q = _prob_vector(names[0], p), _prob_vector(names[1], q)
    if p.shape != q.shape:
        raise FairSamplingError(f"{names[0]} and {names[1]} must have the same number of classes, got {p.size} and {q.size}")
    return p, q


def fairness_discrepancy(p, target) -> float:
    """FD = || p - target ||_2 = sqrt(sum_k (p_k - target_k)^2) over ALL classes, empty ones included.

    ``p``: observed class proportions (e.g. ``proportions(...)``); ``target``: the wished-for proportions (a
    sequence is fine). Both must be probability vectors of the same length. 0 is perfectly fair; the largest value,
    sqrt(2), is all mass on one class while the target puts all mass on another.
    """
    p, target = _prob_pair(p, target, ("p", "target"))
    return float(np.linalg.norm(p - target))


def total_variation(p, q) -> float:
    """TV(p, q) = 0.5 * sum_k |p_k - q_k|, in [0, 1]."""
    p, q = _prob_pair(p, q)
    return float(0.5 * np.abs(p - q).sum())


def kl_divergence(p, q) -> float:
    """KL(p || q) = sum_k p_k log(p_k / q_k) in nats, with 0 log(0/q) = 0; +inf if q_k = 0 for some p_k > 0."""
    p, q = _prob_pair(p, q)
    support = p > 0
    if (q[support] == 0).any():
        return float("inf")
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


# ---------------------------------------------------------------------------------------------------- Frechet distance
def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """mu = mean_i f_i, sigma = 1/(N-1) sum_i (f_i - mu)(f_i - mu)^T of features (N, D), in float64; needs N > 1."""
    f = _numpy(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise FairSamplingError(f"features must be an (N, D) array with N > 1 to estimate a covariance, got shape {f.shape}")
    f = f.astype(np.float64)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), the Frechet (2-Wasserstein) distance of two Gaussians.

    Computed in float64 with ``scipy.linalg.sqrtm`` as pytorch-fid does: if the product S1 S2 is singular (the
    square root is not finite), ``eps`` is added to both diagonals; imaginary parts of the square root coming from
    round-off (diagonal |imag| <= 1e-3) are discarded, larger ones raise.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise FairSamplingError(f"means must be (D,) and covariances (D, D) with one D, got mu1 {mu1.shape}, "
                                f"sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        log.warning("Frechet distance: singular product S1 S2; adding %g to the covariance diagonals", eps)
        offset = np.eye(d) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise FairSamplingError(f"Frechet distance: the square root of S1 S2 has an imaginary part of "
                                    f"{np.abs(covmean.imag).max():.3g}; use more samples (N well above D={d})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_distance_features(f1, f2) -> float:
    """``frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))`` for feature arrays (N1, D) and (N2, D).

    When both sets are smaller than D (e.g. a few hundred Inception features, D = 2048) the trace term is computed
    exactly in sample space instead of with a D x D ``sqrtm`` (~20 s for D = 2048 on one CPU core): with centred
    features A_j (N_j, D) and S_j = A_j^T A_j / (N_j - 1), the eigenvalues of S1 S2 are those of C C^T with
    C = A1 A2^T / sqrt((N1 - 1)(N2 - 1)), so Tr (S1 S2)^{1/2} = sum of the singular values of C.
    """
    (mu1, s1), (mu2, s2) = gaussian_stats(f1), gaussian_stats(f2)
    n1, n2, d = len(f1), len(f2), mu1.shape[0]
    if mu2.shape != mu1.shape or max(n1, n2) >= d:
        return frechet_distance(mu1, s1, mu2, s2)
    a1, a2 = _numpy(f1).astype(np.float64) - mu1, _numpy(f2).astype(np.float64) - mu2
    tr_covmean = np.linalg.svd(a1 @ a2.T / np.sqrt((n1 - 1) * (n2 - 1)), compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
