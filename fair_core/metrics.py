"""Metrics with one pinned definition each; the formula is in every docstring.

Fairness (over the classes of one attribute, e.g. colour or digit):

* ``fairness_discrepancy``: FD = || p - target ||_2, counting every class, empty ones included.
* ``total_variation``: TV = 0.5 * sum_k |p_k - q_k|.
* ``kl_divergence``: KL(p || q) = sum_k p_k log(p_k / q_k), in nats.
* ``total_variation_ci``: representational balance, TV to a target with a bootstrap confidence interval.
* ``balanced_error_rate`` / ``held_out_ber``: BER = mean_k P(y_pred != k | y = k), of a held-out linear probe.

Auditing scores and embeddings (arXiv 2409.09569):

* ``multi_accuracy``: max_g |E[f - y | g]|; ``multi_calibration``: max_{g, bin} |E[f - y | g, f in bin]|.
* ``embedding_bias_ratio``: cos(p, a) / cos(p, b) per prompt embedding p and attribute-word embeddings a, b.
* ``alignment_scores`` (plain, subclass-score, average-then-score) and ``group_gap`` between groups.

Quality: ``frechet_distance`` between Gaussians fitted to features; the feature extractors (evaluation
classifier, Inception-v3) and the figures built on them (``classifier_feature_fd``, ``inception_fid``) are in
``fair_core.features``.
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.linalg
import torch

from .errors import FairSamplingError, check_choice, check_range

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


# ---------------------------------------------------------------------------------------------------- representational balance
def total_variation_ci(labels, target, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Representational balance TV(p, target) of hard ``labels`` with a percentile-bootstrap confidence interval.

    ``tv`` = TV(proportions(labels), target); the interval is the [alpha/2, 1 - alpha/2] quantiles of TV over
    ``n_boot`` resamples of the N labels with replacement (seeded). Small batches are noisy: report the interval.
    ``proportions_low`` / ``proportions_high``: the same quantiles of each class proportion.
    """
    target = _prob_vector("target", target)
    check_range("n_boot", n_boot, 1, integer=True)
    check_range("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
    labels = _numpy(labels)
    p = proportions(labels, target.size)
    idx = np.random.default_rng(seed).integers(0, labels.size, size=(n_boot, labels.size))
    counts = np.stack([np.bincount(row, minlength=target.size) for row in labels[idx]]) / labels.size
    tvs = 0.5 * np.abs(counts - target).sum(1)
    low, high = np.quantile(tvs, [alpha / 2, 1 - alpha / 2])
    p_low, p_high = np.quantile(counts, [alpha / 2, 1 - alpha / 2], axis=0)
    return {"tv": float(0.5 * np.abs(p - target).sum()), "low": float(low), "high": float(high), "n": int(labels.size),
            "confidence": 1 - alpha, "proportions": p.tolist(), "proportions_low": p_low.tolist(), "proportions_high": p_high.tolist()}


# ---------------------------------------------------------------------------------------------------- BER
def balanced_error_rate(y_true, y_pred, num_classes: int) -> float:
    """BER = (1/K) sum_k P(y_pred != k | y_true = k), over the K classes present in ``y_true``.

    0: the attribute is perfectly recoverable; 1 - 1/K: no better than chance (0.5 for a binary attribute).
    """
    y_true, y_pred = _numpy(y_true), _numpy(y_pred)
    proportions(y_true, num_classes), proportions(y_pred, num_classes)  # validates both
    if y_true.shape != y_pred.shape:
        raise FairSamplingError(f"y_true and y_pred must have the same shape, got {y_true.shape} and {y_pred.shape}")
    present = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == k] != k) for k in present]))


def held_out_ber(features, attribute, num_classes: int, folds: int = 5, steps: int = 300, seed: int = 0) -> float:
    """BER of a linear (softmax) probe predicting ``attribute`` from ``features`` (N, D), on held-out folds.

    Each of ``folds`` seeded folds is predicted by a probe trained (Adam, ``steps`` full-batch steps, standardised
    features, classes weighted equally) on the other folds; BER is computed on the pooled held-out predictions.
    A high BER means the attribute is hard to read off the generations (or their features).
    """
    x, y = np.asarray(_numpy(features), dtype=np.float64), _numpy(attribute)
    proportions(y, num_classes)
    check_range("folds", folds, 2, integer=True)
    if x.ndim != 2 or x.shape[0] != y.size or y.size < folds:
        raise FairSamplingError(f"features must be (N, D) with N = len(attribute) >= folds={folds}, got {x.shape} and {y.size} labels")
    fold = np.random.default_rng(seed).permutation(y.size) % folds
    pred = np.empty_like(y)
    for f in range(folds):
        train, test = fold != f, fold == f
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-8
        xt, yt = torch.tensor((x[train] - mu) / sd, dtype=torch.float32), torch.tensor(y[train], dtype=torch.long)
        weight = torch.tensor(1.0 / np.maximum(np.bincount(y[train], minlength=num_classes), 1), dtype=torch.float32)
        torch.manual_seed(seed + f)
        probe = torch.nn.Linear(x.shape[1], num_classes)
        opt = torch.optim.Adam(probe.parameters(), lr=0.05)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(probe(xt), yt, weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred[test] = probe(torch.tensor((x[test] - mu) / sd, dtype=torch.float32)).argmax(1).numpy()
    return balanced_error_rate(y, pred, num_classes)


# ---------------------------------------------------------------------------------------------------- multi-accuracy / -calibration
def _scores_and_groups(scores, truth, groups):
    s, t, g = (np.asarray(_numpy(v)) for v in (scores, truth, groups))
    if not (s.ndim == t.ndim == g.ndim == 1 and s.size == t.size == g.size and s.size > 0):
        raise FairSamplingError(f"scores, truth and groups must be 1-d of one length N > 0, got {s.shape}, {t.shape}, {g.shape}")
    if (s < 0).any() or (s > 1).any():
        raise FairSamplingError(f"scores must be in [0, 1], got values in [{s.min():.3g}, {s.max():.3g}]")
    return s.astype(np.float64), t.astype(np.float64), g


def multi_accuracy(scores, truth, groups) -> dict:
    """MA = max_g | E[f(x) - y | x in g] |: the largest mean error of the scores f over the groups (arXiv 2409.09569).

    ``scores`` f(x) in [0, 1], ``truth`` y (0/1 labels or true scores), ``groups`` a group id per sample.
    Returns the max and the per-group mean errors.
    """
    s, t, g = _scores_and_groups(scores, truth, groups)
    per_group = {str(k): float(np.mean(s[g == k] - t[g == k])) for k in np.unique(g)}
    return {"max": max(abs(v) for v in per_group.values()), "per_group": per_group}


def multi_calibration(scores, truth, groups, bins: int = 10) -> dict:
    """MC = max_{g, v} | E[f(x) - y | x in g, f(x) in bin v] | over groups x ``bins`` equal-width score bins.

    Empty (group, bin) cells are skipped. Returns the max and the cell where it occurs.
    """
    s, t, g = _scores_and_groups(scores, truth, groups)
    check_range("bins", bins, 1, integer=True)
    b = np.minimum((s * bins).astype(int), bins - 1)
    worst, cell = 0.0, None
    for k in np.unique(g):
        for v in np.unique(b[g == k]):
            m = (g == k) & (b == v)
            err = abs(float(np.mean(s[m] - t[m])))
            if cell is None or err > worst:
                worst, cell = err, {"group": str(k), "bin": [v / bins, (v + 1) / bins], "n": int(m.sum())}
    return {"max": worst, "cell": cell}


# ---------------------------------------------------------------------------------------------------- embeddings
def _unit(name: str, e) -> np.ndarray:
    e = np.asarray(_numpy(e), dtype=np.float64)
    e = e[None] if e.ndim == 1 else e
    norms = np.linalg.norm(e, axis=-1, keepdims=True)
    if e.ndim != 2 or (norms == 0).any():
        raise FairSamplingError(f"{name} must be non-zero embedding vectors (D,) or (N, D), got shape {e.shape}")
    return e / norms


def embedding_bias_ratio(prompts, attribute_a, attribute_b) -> np.ndarray:
    """Per prompt embedding p: cos(p, a) / cos(p, b), the cosine-similarity bias ratio (1 = no preference).

    ``prompts`` (N, D), ``attribute_a``/``attribute_b`` (D,) embeddings of the attribute words (e.g. "male",
    "female") from the same text encoder; > 1 leans towards a. Both cosines must be positive (as for CLIP text).
    """
    p, a, b = _unit("prompts", prompts), _unit("attribute_a", attribute_a)[0], _unit("attribute_b", attribute_b)[0]
    ca, cb = p @ a, p @ b
    if (ca <= 0).any() or (cb <= 0).any():
        raise FairSamplingError("embedding_bias_ratio needs positive cosine similarities to both attributes; "
                                f"got cos(p, a) in [{ca.min():.3g}, {ca.max():.3g}], cos(p, b) in [{cb.min():.3g}, {cb.max():.3g}]")
    return ca / cb


ALIGNMENT_METHODS = ("plain", "subclass", "average")


def alignment_scores(images, prompt, subclass_prompts=None, method: str = "plain") -> np.ndarray:
    """Alignment of image embeddings (N, D) with a prompt, by one of three auditing functions (arXiv 2409.09569):

    * ``plain``: cos(i, t) with t the prompt embedding;
    * ``subclass`` (subclass-score): max_s cos(i, t_s) over the subclass prompt embeddings (e.g. "a female doctor",
      "a male doctor"), so an image is scored against the subclass it depicts;
    * ``average`` (average-then-score): cos(i, mean_s t_s / ||mean_s t_s||).
    """
    check_choice("method", method, ALIGNMENT_METHODS)
    i = _unit("images", images)
    if method == "plain":
        return i @ _unit("prompt", prompt)[0]
    if subclass_prompts is None:
        raise FairSamplingError(f"method={method!r} needs subclass_prompts (one embedding per subclass), got None")
    subs = _unit("subclass_prompts", subclass_prompts)
    if method == "subclass":
        return (i @ subs.T).max(1)
    return i @ _unit("mean of subclass_prompts", subs.mean(0))[0]


def group_gap(values, groups) -> dict:
    """max_g mean(values | g) - min_g mean(values | g): how much a score differs between groups."""
    v, g = np.asarray(_numpy(values), dtype=np.float64), np.asarray(_numpy(groups))
    if v.ndim != 1 or v.shape != g.shape or v.size == 0:
        raise FairSamplingError(f"values and groups must be 1-d of one length N > 0, got {v.shape} and {g.shape}")
    means = {str(k): float(v[g == k].mean()) for k in np.unique(g)}
    return {"gap": max(means.values()) - min(means.values()), "per_group": means}
