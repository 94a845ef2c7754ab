"""Time-dependent density ratio and the TIW-DSM loss (Kim et al., ICLR 2024, arXiv 2403.01189).

Conventions (the Denoiser contract of ``fair_core.denoiser``): ``x = x0 + sigma * n`` (variance exploding),
``denoised = D(x, sigma)`` estimates ``x0`` and the score is ``grad_x log p_t(x) = (D(x, sigma) - x) / sigma^2``.

**Discriminator -> ratio.** ``d(x, sigma) = sigmoid(f(x, sigma))`` is trained by binary cross-entropy to output 1 on
noised reference samples (``D_ref``) and 0 on noised biased samples (``D_bias``), both noised at the same sigma.
If a training batch holds reference samples with probability ``pi = prior_ref`` (``n_ref / (n_ref + n_bias)``),
the Bayes-optimal output is ``d* = pi p_ref,t / (pi p_ref,t + (1 - pi) p_bias,t)``, hence

    w_t(x) = p_ref,t(x) / p_bias,t(x) = ((1 - pi) / pi) * d / (1 - d)
    log w_t(x) = f(x, sigma) + log((1 - pi) / pi)                     (f = logit d)

With balanced batches (``pi = 0.5``, what ``training/tiw.py`` does) ``w_t = d / (1 - d)``; with the whole
unbalanced sets in each batch it is ``(n_bias / n_ref) * d / (1 - d)``.

**Or from clean ratios** (``DISC_OBJECTIVES`` ``"weighted"``, :func:`weighted_discriminator_loss`): given the clean
images' ratio ``w0(x0)`` (easy at ``sigma ~ 0``, where the attribute is plainly visible), the same ``d`` is learned
from noised *biased* images alone, because ``w_t(x) = E_bias[w0(x0) | x]``.

**And its gradient** (``"gradient"``, :func:`correction_matching_loss`): TIW-DSM uses ``grad_x log w_t``, not only
``w_t``, and a classifier fitted on values alone can have the right values and a too-weak input gradient. Since
``sigma^2 grad_x log w_t(x) = E_bias[(w0(x0) / w_t(x) - 1) (x0 - b(x)) | x]`` for any ``b(x)``, the correction itself
is regressed on biased images too, with ``b = D_bias(x)`` (a diffusion model of the biased data) as a control variate.

**Clipping** (``DiscriminatorConfig.clip``, default ``1e-5`` as in the official code): ``d`` is clipped to
``[clip, 1 - clip]``, i.e. the logit ``f`` to ``[logit(clip), -logit(clip)]`` (+-11.5 by default), so
``|log w_t| <= 11.5 + |log((1 - pi) / pi)|``. Where the clip is active ``grad_x log w_t`` is 0 (the gradient of a
clamp). Working on logits keeps a saturated discriminator finite; a non-finite logit raises ``FairSamplingError``.

**TIW-DSM** (paper eq. 9 and Theorem 1). On ``x0 ~ p_bias``, ``x = x0 + sigma n``:

    L_TIW = E[ lambda(sigma) w_t(x) || s_theta(x, sigma) - grad log p(x | x0) - grad log w_t(x) ||^2 ]
          = L_SM(theta; p_ref) + C.

Its pointwise minimiser is ``grad log p_bias,t + grad log w_t = grad log p_ref,t``. In denoiser space
``s = (D - x) / sigma^2`` and ``grad log p(x | x0) = (x0 - x) / sigma^2``, so

    || s - grad log p(x|x0) - g ||^2 = sigma^-4 || D(x, sigma) - (x0 + sigma^2 g) ||^2,    g = grad_x log w_t(x)

i.e. the **denoiser target is x0 + sigma^2 grad_x log w_t(x)** (``tiw_dsm_target``) and the loss weight is ``w_t(x)``.

**The official code** (alsdudrla10/TIW-DSM at 51af8d4: ``training/loss.py`` TIW_EDMLoss and
``classifier_lib.get_weight_correction``) uses the weight ``2 d`` and the target ``y + c`` with
``c = -sigma^2 * alpha * grad_{x_vp} d``, where ``x_vp = alpha x`` is the VP-scaled input and
``alpha = 1 / sqrt(1 + sigma^2)``; by the chain rule ``alpha grad_{x_vp} d = grad_x d``, so ``c = -sigma^2 grad_x d``.
Its discriminator is trained with reference = label 1 and equal batch halves, so its ``d`` is ours with ``pi = 0.5``.
The paper's correction is ``+sigma^2 grad_x log w`` with ``grad_x log w = grad_x d / (d (1 - d))`` (or
``grad_x d / d`` against a 50:50 pool of both sets, where ``w = 2 d``), hence

    c_official = -d (1 - d) * sigma^2 grad_x log w      (= -d * sigma^2 grad_x log(2 d) in the pool form)

i.e. the opposite sign, scaled by ``d (1 - d) <= 1/4`` (by ``d`` in the pool form). A weight that depends on ``x``
only does not move the pointwise minimiser, so the official optimum is ``D* = E[x0 | x] - sigma^2 grad_x d``, not the
reference score: ``tests/test_density_ratio.py::test_official_code_correction_is_not_the_unbiased_score`` checks the
relation above and finds it further from the reference score than no correction at all on a Gaussian mixture.
We implement the paper's form.

Ablations (``TIW_MODES``): ``"tiw"`` weight and correction; ``"weight"`` weight only (pointwise minimiser stays
the biased score); ``"correction"`` correction only (same minimiser as TIW, different weighting of the error);
``"none"`` plain DSM.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, FairSamplingError, check_choice, check_range

TIW_MODES = ("tiw", "weight", "correction", "none")
DISC_POOLS = ("mean", "dense")
DISC_OBJECTIVES = ("bce", "weighted", "gradient")  # how the time-dependent discriminator is trained (see the loss functions)
DISC_FILMS = ("shift", "scale_shift")  # how the noise (and label) embedding enters each layer


@dataclass(frozen=True)
class DiscriminatorConfig:
    """A small network ``f(x, sigma)`` (logit of d) conditioned on the noise level; saved with the weights."""

    arch: str = "cnn"  # "cnn" (images, (N, C, H, W)) | "mlp" (vectors, (N, dim))
    channels: int = 3  # cnn: image channels; mlp: vector dimension
    sample_size: int = 28  # cnn: image side; ignored by the mlp
    widths: tuple[int, ...] = (32, 64, 64)  # cnn: channels per stride-2 level; mlp: hidden widths
    pool: str = "mean"  # cnn: "mean" (global average, translation invariant) | "dense" (the whole last map, position-aware)
    film: str = "shift"  # "shift": h = silu(norm(conv h) + a(emb)); "scale_shift": silu(norm(conv h) (1 + b(emb)) + a(emb))
    embed_dim: int = 64  # sinusoidal embedding of log(sigma)
    prior_ref: float = 0.5  # share of reference samples in the discriminator's training batches (pi)
    clip: float = 1e-5  # d is clipped to [clip, 1 - clip]; official TIW-DSM code: 1e-5
    num_classes: int = 0  # 0: unconditional, w_t(x); k: conditional on a label 0..k-1, w_t(x | y) (-1: the marginal w_t(x))

    def __post_init__(self):
        check_choice("arch", self.arch, ("cnn", "mlp"))
        check_choice("pool", self.pool, DISC_POOLS)
        check_choice("film", self.film, DISC_FILMS)
        check_range("prior_ref", self.prior_ref, 0.0, 1.0, low_open=True, high_open=True)
        check_range("clip", self.clip, 0.0, 0.5, low_open=True, high_open=True)
        check_range("channels", self.channels, 1, integer=True)
        check_range("num_classes", self.num_classes, 0, integer=True)
        if not self.widths:
            raise ConfigError("widths must name at least one layer width, got ()")

    @property
    def log_prior_odds(self) -> float:
        """``log((1 - pi) / pi)``: what turns the logit into ``log w_t``."""
        return math.log((1 - self.prior_ref) / self.prior_ref)


def sigma_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features (frequencies 10 .. 0.01) of ``c_noise = log(sigma) / 4`` (EDM's noise conditioning), (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
    arg = (sigma.float().log() / 4)[:, None] * freqs[None] * 10
    return torch.cat([arg.sin(), arg.cos()], dim=1)


class TimeDependentDiscriminator(nn.Module):
    """``f(x, sigma)``: logit that ``x`` is a noised reference sample. Input scaled by ``c_in = 1/sqrt(1+sigma^2)``.

    Each layer reads the embedding of ``sigma`` (and of the label) through ``film``: ``"shift"`` adds a per-channel
    bias after the normalisation; ``"scale_shift"`` also multiplies by ``1 + b(emb)`` (ADM's scale-shift norm), so
    how steep ``f`` is in ``x`` can change with ``sigma`` by a gain, not only by moving the SiLUs' operating points.

    The CNN's head reads either the global average of its last feature map (``pool="mean"``) or the whole map
    (``"dense"``). The average makes ``f`` translation invariant, and so is its input gradient: at high noise, where
    the ratio is close to linear in ``x``, that gradient is nearly uniform over the image, while the exact
    ``grad log w_t`` is shaped like the posterior mean stroke (bench/RESULTS.md, issue 4). The dense head can place it.

    **Class-conditional** (``num_classes = k > 0``): ``f(x, sigma, y)`` gives ``w_t(x | y) = p_ref,t(x | y) /
    p_bias,t(x | y)``; a learned embedding of ``y`` (``k`` classes and a null one for ``y = -1``) is added to the
    noise embedding. A class-conditional score model needs this one: on ``(x0, y)`` pairs TIW-DSM's pointwise minimiser
    is ``grad_x log p_bias,t(x | y) + grad_x log w``, the reference score ``grad_x log p_ref,t(x | y)`` only when
    ``w = w_t(x | y)`` (the joint ratio of ``(x, y)``, whose ``y``-marginal factor does not depend on ``x``). With the
    marginal ``w_t(x)`` it is too weak wherever the label sharpens the attribute's posterior (bench/RESULTS.md,
    issue 4). An unconditional discriminator (``k = 0``) ignores ``class_labels``.
    """

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        e, k = cfg.embed_dim, 2 if cfg.film == "scale_shift" else 1
        self.embed = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        if cfg.arch == "mlp":
            dims = (cfg.channels + e, *cfg.widths)
            self.body = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
            self.film = nn.ModuleList(nn.Linear(e, k * b) for b in cfg.widths)
        else:
            chans = (cfg.channels, *cfg.widths)
            self.body = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2 if i else 1, padding=1)
                                      for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])))
            self.film = nn.ModuleList(nn.Linear(e, k * b) for b in cfg.widths)
            self.norms = nn.ModuleList(nn.GroupNorm(min(8, b), b) for b in cfg.widths)
        self.head = nn.Linear(cfg.widths[-1] * (self.last_side() ** 2 if cfg.pool == "dense" else 1), 1)
        self.label_embed = nn.Embedding(cfg.num_classes + 1, e) if cfg.num_classes else None

    def label_index(self, class_labels: torch.Tensor | None, n: int, device) -> torch.Tensor:
        """Embedding rows of ``class_labels`` (N,) in ``[-1, k - 1]``; -1 and None are the null row ``k``."""
        k = self.cfg.num_classes
        if class_labels is None:
            return torch.full((n,), k, dtype=torch.long, device=device)
        labels = torch.as_tensor(class_labels, device=device).long()
        if labels.shape != (n,):
            raise FairSamplingError(f"class_labels must have shape ({n},), got {tuple(labels.shape)}")
        if labels.device.type == "cpu" and bool(((labels < -1) | (labels >= k)).any()):
            raise FairSamplingError(f"class_labels must be in [0, {k - 1}] or -1 (the marginal ratio), got {sorted(set(labels.tolist()))}")
        return torch.where(labels < 0, torch.full_like(labels, k), labels)

    def last_side(self) -> int:
        """Side of the last CNN feature map: each stride-2 3x3 convolution (padding 1) maps ``n`` to ``(n + 1) // 2``."""
        side = self.cfg.sample_size
        for _ in self.cfg.widths[1:]:
            side = (side + 1) // 2
        return side

    def check_input(self, x: torch.Tensor) -> None:
        want = (self.cfg.channels,) if self.cfg.arch == "mlp" else (self.cfg.channels, self.cfg.sample_size, self.cfg.sample_size)
        if tuple(x.shape[1:]) != want:
            raise FairSamplingError(f"discriminator input must have shape (N, {', '.join(map(str, want))}), got {tuple(x.shape)} "
                                    f"(a discriminator trained for another data shape?)")

    def modulate(self, h: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """``h + a`` (``film = a``) or ``h (1 + b) + a`` (``film = [a, b]`` along the channels), per ``cfg.film``."""
        if self.cfg.film == "shift":
            return h + film
        shift, scale = film.chunk(2, dim=1)
        return h * (1 + scale) + shift

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        dtype = self.head.weight.dtype
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).expand(x.shape[0])
        c_in = (sigma**2 + 1).rsqrt().view(-1, *([1] * (x.ndim - 1)))
        emb = self.embed(sigma_embedding(sigma, self.cfg.embed_dim).to(dtype))
        if self.label_embed is not None:
            emb = emb + self.label_embed(self.label_index(class_labels, x.shape[0], x.device))
        h = (x.float() * c_in).to(dtype)
        if self.cfg.arch == "mlp":
            h = torch.cat([h, emb], dim=1)
            for layer, film in zip(self.body, self.film):
                h = F.silu(self.modulate(layer(h), film(emb)))
        else:
            for layer, film, norm in zip(self.body, self.film, self.norms):
                h = F.silu(self.modulate(norm(layer(h)), film(emb)[:, :, None, None]))
            h = h.flatten(1) if self.cfg.pool == "dense" else h.mean(dim=(2, 3))
        return self.head(h).squeeze(1).float()


def discriminator_loss(disc: nn.Module, x_ref: torch.Tensor, sigma_ref: torch.Tensor, x_bias: torch.Tensor,
                       sigma_bias: torch.Tensor, labels_ref: torch.Tensor | None = None,
                       labels_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy, reference = 1, biased = 0 (noised inputs ``x = x0 + sigma n`` given). One batched call.
    ``labels_*``: the images' class labels, for a class-conditional discriminator (both or neither)."""
    labels = None if labels_ref is None else torch.cat([labels_ref, labels_bias])
    logits = disc(torch.cat([x_ref, x_bias]), torch.cat([sigma_ref, sigma_bias]), labels)
    labels = torch.cat([torch.ones(len(x_ref), device=logits.device), torch.zeros(len(x_bias), device=logits.device)])
    return F.binary_cross_entropy_with_logits(logits, labels)


def weighted_discriminator_loss(disc: nn.Module, x_bias: torch.Tensor, sigma: torch.Tensor, w0: torch.Tensor,
                                class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy with the reference half replaced by importance-weighted biased samples (``DISC_OBJECTIVES`` "weighted").

    ``x_bias = x0 + sigma n`` with ``x0 ~ p_bias`` and ``w0 = w(x0) = p_ref(x0) / p_bias(x0)`` (the clean images'
    ratio, e.g. a first discriminator's at ``sigma_min``). Since ``E_ref[g(x0)] = E_bias[w0(x0) g(x0)]``, the balanced
    cross-entropy ``-E_ref[log d] - E_bias[log(1 - d)]`` equals

        L_w = -E_bias[ w0(x0) log d(x, sigma) + log(1 - d(x, sigma)) ],

    whose minimiser is ``d / (1 - d) = E_bias[w0(x0) | x] = p_ref,t(x) / p_bias,t(x) = w_t(x)``, the same ratio as the
    balanced discriminator's (``prior_ref = 0.5``). Both terms see the *same* noised image, so the label noise of
    "which set did it come from" is replaced by its expectation given ``x0`` (a Rao-Blackwellised target), and every
    image of the large biased set is used, not the few reference images.
    """
    f = disc(x_bias, sigma, class_labels)
    return (w0.to(f.dtype) * F.softplus(-f) + F.softplus(f)).mean()


def correction_matching_loss(disc: nn.Module, x: torch.Tensor, sigma: torch.Tensor, x0: torch.Tensor, w0: torch.Tensor,
                             baseline: torch.Tensor, lambda_sigma: torch.Tensor | None = None,
                             class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Regression of the TIW correction ``sigma^2 grad_x log w(x)`` on its per-sample estimate (``DISC_OBJECTIVES`` "gradient").

    On ``x = x0 + sigma n``, ``x0 ~ p_bias``: ``w_t(x) = E_bias[w0(x0) | x]`` and the posterior's gradient is
    ``grad_x p_bias(x0 | x) = p_bias(x0 | x) (x0 - D_bias(x)) / sigma^2`` (``D_bias = E_bias[x0 | x]``), so

        sigma^2 grad_x w_t(x) = E_bias[w0(x0) (x0 - D_bias(x)) | x]
        sigma^2 grad_x log w_t(x) = E_bias[(w0(x0) / w_t(x) - 1) (x0 - b(x)) | x]      for any b(x)

    (which is ``D_ref(x) - D_bias(x)``, the denoisers' difference), because ``E_bias[w0 / w_t - 1 | x] = 0``. The
    per-sample target ``T = (w0 / w - 1) (x0 - b)`` is therefore unbiased when ``w = w_t``, and the least-squares
    minimiser of ``lambda(sigma) || sigma^2 grad_x log w(x) - T ||^2`` is the exact correction. The ``w`` inside ``T``
    is the discriminator's own value, detached (exact at the joint optimum with the value loss). With ``w = w_t``,
    ``b`` (``baseline``, no graph) only changes the variance: ``b = D_bias(x)`` leaves the residual of a denoiser,
    ``b = x`` would leave ``sigma n``. With ``w != w_t`` the target's mean is
    ``(w_t / w) C(x) + (w_t / w - 1) (D_bias(x) - b(x))`` (``C`` the exact correction), so ``b = D_bias`` also removes
    the error's first-order term.

    Returns the batch mean of ``lambda(sigma) * mean_pixels (sigma^2 grad_x log w(x) - T)^2`` (``lambda`` None = 1);
    it is differentiable in the discriminator's parameters (double backpropagation).
    """
    with torch.enable_grad():
        xx = x.detach().float().requires_grad_(True)
        lw = log_ratio(disc, xx, sigma, class_labels)
        (grad,) = torch.autograd.grad(lw.sum(), xx, create_graph=True)
    shape = (-1, *([1] * (x.ndim - 1)))
    s2 = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).expand(x.shape[0]).pow(2).view(shape)
    target = (w0.float() / lw.detach().exp() - 1).view(shape) * (x0.float() - baseline.detach().float())
    err = (s2 * grad - target).pow(2).flatten(1).mean(1)
    if lambda_sigma is not None:
        err = err * lambda_sigma.float()
    return err.mean()


def log_ratio(disc: nn.Module, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """``log w_t(x) = clamp(f, logit(clip), -logit(clip)) + log((1 - pi) / pi)``, shape (N,). Raises on NaN/inf.
    ``class_labels`` (N,): ``y`` of ``w_t(x | y)`` for a class-conditional discriminator (ignored by an unconditional one)."""
    cfg = disc.cfg
    f = disc(x, sigma, class_labels)
    if not bool(torch.isfinite(f).all()):
        raise FairSamplingError(f"the discriminator returned non-finite logits ({int((~torch.isfinite(f)).sum())} of {f.numel()}); "
                                "it is broken (retrain it with a lower learning rate)")
    bound = math.log((1 - cfg.clip) / cfg.clip)
    return f.clamp(-bound, bound) + cfg.log_prior_odds


def ratio(disc: nn.Module, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """``w_t(x) = p_ref,t(x) / p_bias,t(x)`` (clipped, see the module docstring), shape (N,)."""
    return log_ratio(disc, x, sigma, class_labels).exp()


def log_ratio_and_grad(disc: nn.Module, x: torch.Tensor, sigma: torch.Tensor,
                       class_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log w_t(x), grad_x log w_t(x))`` from one batched forward and one input-gradient; both detached.

    Works under ``torch.no_grad`` callers (gradients are enabled locally); the discriminator's own parameters get
    no gradient.
    """
    with torch.enable_grad():
        xx = x.detach().float().requires_grad_(True)
        lw = log_ratio(disc, xx, sigma, class_labels)
        (grad,) = torch.autograd.grad(lw.sum(), xx, only_inputs=True)
    return lw.detach(), grad.detach().to(x.dtype)


def tiw_dsm_target(x0: torch.Tensor, sigma: torch.Tensor, grad_log_w: torch.Tensor) -> torch.Tensor:
    """Denoiser target of TIW-DSM: ``x0 + sigma^2 grad_x log w_t(x)`` (derivation in the module docstring)."""
    s = torch.as_tensor(sigma, device=x0.device, dtype=torch.float32).expand(x0.shape[0]).view(-1, *([1] * (x0.ndim - 1)))
    return (x0.float() + s**2 * grad_log_w.float()).to(x0.dtype)


def tiw_dsm_loss(denoised: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, log_w: torch.Tensor, grad_log_w: torch.Tensor,
                 mode: str = "tiw", lambda_sigma: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample TIW-DSM loss ``w_t(x) lambda(sigma) mean|| D(x, sigma) - (x0 + sigma^2 grad log w_t(x)) ||^2``.

    ``mode``: ``"tiw"`` (paper), ``"weight"`` (no correction), ``"correction"`` (weight 1), ``"none"`` (plain DSM).
    ``lambda_sigma`` (N,): the DSM weighting; ``None`` = 1. ``(sigma^2 + 1) / sigma^2`` gives the DDPM v-loss of
    ``DiscreteVPDenoiser.loss`` and ``1 / sigma^2`` its eps-loss. ``log_w`` / ``grad_log_w`` come from
    :func:`log_ratio_and_grad` at the same ``x`` and must carry no graph.
    """
    check_choice("mode", mode, TIW_MODES)
    target = tiw_dsm_target(x0, sigma, grad_log_w) if mode in ("tiw", "correction") else x0
    err = (denoised.float() - target.float()).pow(2).flatten(1).mean(1)
    if lambda_sigma is not None:
        err = err * lambda_sigma.float()
    if mode in ("tiw", "weight"):
        err = err * log_w.float().exp()
    return err


def describe_tiw_training(training: dict) -> str:
    """One line per recorded training fact of a ``tiw`` checkpoint (its ``training`` metadata), for display."""
    disc = training.get("discriminator") or {}
    cfg, bias = disc.get("config") or {}, training.get("bias") or {}
    film = "" if cfg.get("film", "shift") == "shift" else f"{cfg['film']} film, "
    lines = [
        f"method: {training.get('method', 'TIW-DSM')} (loss mode {training.get('loss_mode', '?')})",
        f"bias: {bias.get('attribute', '?')} ratio {bias.get('colour_ratio', '?')} in D_bias ({training.get('n_bias', '?')} images)",
        f"reference fraction: {training.get('reference_fraction', '?')} (D_ref {training.get('n_reference', '?')} images, balanced)",
        f"discriminator: {disc.get('path', '?')} ({'trained in the run' if disc.get('trained_in_run') else 'given'}, "
        f"{disc.get('steps', '?')} steps, widths {tuple(cfg.get('widths', ())) or '?'}, clip {cfg.get('clip', '?')}, "
        f"{cfg.get('pool', 'mean')} pool, {film}objective {disc.get('objective', 'bce')}, "
        f"{disc.get('condition', 'marginal w_t(x)')})",
        *([f"correction: only where sigma >= {training['correction_sigma_min']}"] if training.get("correction_sigma_min") else []),
        *([f"bias sampling: rows drawn in proportion to w0^rho(sigma), weight divided by it (rho "
           f"{min(sampling['rho']):.2f}-{max(sampling['rho']):.2f})"] if (sampling := training.get("bias_sampling")) else []),
        *([f"reference share: {training['reference_share']:g} of each batch from D_ref (the union's: "
           f"{training.get('n_reference', 0) / max(training.get('n_reference', 0) + training.get('n_bias', 0), 1):.3f})"]
          if training.get("reference_share") else []),
        f"score model: {training.get('steps', '?')} steps, batch {training.get('batch', '?')}, seed {training.get('seed', '?')}, "
        f"started from {training.get('init') or 'scratch'}",
        f"command: {training.get('command', '?')}",
        *(f"resumed with: {c}" for c in training.get("resumed_with") or []),
    ]
    return "\n".join(lines)
