"""Importance-sampled biased rows for TIW-DSM (``training tiw --bias-sampling ratio``): the same loss, less variance.

TIW-DSM's loss on D_bias is ``E_{x0 ~ p_bias}[ w_t(x_t) l(x0, x_t) ]``. With 90:10 data and a balanced reference
the clean ratio ``w0`` is about 5 on the minority and 0.56 on the majority, so a uniformly drawn batch holds a few heavy
rows among many light ones: ``E[w0^2] = 2.8``, an effective batch of about a third. Drawing ``x0`` from

    q_rho(x0) = p_bias(x0) w0(x0)^rho / Z_rho,    Z_rho = E_bias[w0^rho],

and multiplying each drawn row's loss by ``Z_rho / w0(x0)^rho`` leaves the expected loss unchanged for any ``rho``
(over the N images of D_bias: ``sum_i (1/N)(w0_i^rho / Z_rho)(Z_rho / w0_i^rho) w_t l = E_bias[w_t l]``), so the
minimiser, and with it Theorem 1, is the same; only the gradient's variance changes. ``rho = 1`` cancels the weight
where ``w_t ~ w0`` (low noise), but at high noise ``w_t -> 1`` and it would leave a factor ``Z / w0`` instead. So
``rho`` depends on the noise level: at each of :data:`LEVELS` log-spaced levels of the schedule's sigmas it is the
least-squares slope of ``log w_t(x_t)`` on ``log w0(x0)`` over biased images noised to that level, clamped to [0, 1];
each training timestep uses its nearest level. ``w0`` is the discriminator itself at ``sigma_min`` on the clean image
(given each image's label when it is class-conditional), as the ``iw`` loss mode reads it.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import torch

from fair_core.density_ratio import log_ratio
from fair_core.errors import check_choice

from .discriminator import clean_log_ratios

log = logging.getLogger(__name__)

BIAS_SAMPLINGS = ("uniform", "ratio")
LEVELS = 16  # noise levels at which rho is fitted
WEIGHTS = ("time_dependent", "time_independent")  # build_proposal's weight: w_t (tiw, weight) or w0 (iw)
FIT_IMAGES = 1024  # biased images per level for the fit


@dataclasses.dataclass(frozen=True)
class RatioProposal:
    """Per noise level ``k``: ``rho[k]``, the CDF of ``q_rho`` over D_bias (in ``cdf``, offset by ``k``) and ``log Z[k]``.

    ``level_of_t`` maps each training timestep to its level. Everything lives on the CPU, where batches are drawn."""
    log_w0: torch.Tensor  # (N,) float64
    rho: torch.Tensor  # (LEVELS,)
    level_sigma: torch.Tensor  # (LEVELS,)
    level_of_t: torch.Tensor  # (T,) long
    cdf: torch.Tensor  # (LEVELS * N,) float64: level k's CDF plus k, so the levels sort one after another
    log_z: torch.Tensor  # (LEVELS,) float64

    def draw(self, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One index into D_bias per timestep in ``t``, drawn from ``q_rho(t)`` (uniforms from ``g``)."""
        k, n = self.level_of_t[t], self.log_w0.shape[0]
        u = torch.rand(t.shape[0], generator=g, dtype=torch.float64)
        idx = torch.searchsorted(self.cdf, k.double() + u) - k * n
        return idx.clamp_(0, n - 1)

    def log_factor(self, idx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log(Z_rho / w0(x0)^rho)`` of each drawn row: the factor that keeps its loss's expectation."""
        k = self.level_of_t[t]
        return (self.log_z[k] - self.rho[k].double() * self.log_w0[idx]).float()

    def record(self) -> dict:
        w0 = self.log_w0.exp()
        return {"mode": "ratio", "w0": "the discriminator at sigma_min on the clean image",
                "w0_mean": float(w0.mean()), "w0_ess_fraction": float(w0.mean() ** 2 / (w0 ** 2).mean()),
                "rho": [round(float(r), 4) for r in self.rho], "sigma": [round(float(s), 4) for s in self.level_sigma]}


def fit_rho(log_w0: torch.Tensor, log_wt: torch.Tensor) -> float:
    """Least-squares slope of ``log w_t`` on ``log w0``, clamped to [0, 1] (0 where ``log w0`` does not vary)."""
    a, b = log_w0.double() - log_w0.double().mean(), log_wt.double() - log_wt.double().mean()
    var = float((a * a).mean())
    return 0.0 if var < 1e-12 else min(1.0, max(0.0, float((a * b).mean()) / var))


def level_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The :data:`LEVELS` noise levels at which ``rho`` is fitted: log-spaced over the schedule's ``sigmas`` (CPU)."""
    return torch.logspace(math.log10(float(sigmas.min())), math.log10(float(sigmas.max())), LEVELS)


def proposal_tables(log_w0: torch.Tensor, rho: torch.Tensor, level_sigma: torch.Tensor, sigmas: torch.Tensor) -> RatioProposal:
    """The proposal for given ``log w0`` (N,) and per-level ``rho``; ``sigmas`` (T,): the schedule's, by timestep."""
    lw0 = log_w0.double().cpu()
    logits = rho.double().view(-1, 1) * lw0.view(1, -1)  # (K, N): log w0^rho
    log_z = torch.logsumexp(logits, 1) - math.log(lw0.shape[0])
    p = (logits - logits.max(1, keepdim=True).values).exp()
    cdf = p.cumsum(1) / p.sum(1, keepdim=True) + torch.arange(len(rho), dtype=torch.float64).view(-1, 1)
    level_of_t = (sigmas.double().cpu().log().view(-1, 1) - level_sigma.double().log().view(1, -1)).abs().argmin(1)
    return RatioProposal(lw0, rho.float().cpu(), level_sigma.float().cpu(), level_of_t, cdf.flatten(), log_z)


@torch.no_grad()
def build_proposal(disc, bias, sigmas: torch.Tensor, device, condition: str | None, seed: int = 0,
                   weight: str = "time_dependent", chunk: int = 1024) -> RatioProposal:
    """``w0`` of every biased image, then ``rho`` fitted at :data:`LEVELS` noise levels (seeded, so a resume rebuilds
    the same tables). ``sigmas``: the score model's, by timestep; ``condition``: the label a conditional disc reads.
    ``weight``: ``time_dependent`` (``w_t``: ``rho`` fitted) or ``time_independent`` (``w0`` itself at every level, the
    ``iw`` loss mode: ``rho = 1``, no fit)."""
    check_choice("weight", weight, WEIGHTS)
    sigma_min = float(sigmas.min())
    log_w0 = clean_log_ratios(disc, bias, sigma_min, device, chunk=chunk, condition=condition)  # finite: log_ratio clips
    g = torch.Generator().manual_seed(seed)
    level_sigma = level_sigmas(sigmas)
    rows = torch.randperm(len(bias), generator=g)[:FIT_IMAGES]
    x0 = bias.images(rows)
    y = bias.labels(condition, rows).to(device) if condition and disc.cfg.num_classes else None

    def slope(s: float) -> float:
        x = x0 + s * torch.randn(x0.shape, generator=g)
        return fit_rho(log_w0[rows], log_ratio(disc, x.to(device), torch.full((len(rows),), s, device=device), y).cpu())

    rho = [1.0] * LEVELS if weight == "time_independent" else [slope(s) for s in level_sigma.tolist()]
    proposal = proposal_tables(log_w0, torch.tensor(rho), level_sigma, sigmas)
    log.info("bias sampling: w0 mean %.3f, rho %s at sigma %s", float(log_w0.exp().mean()),
             [f"{r:.2f}" for r in rho], [f"{s:.3g}" for s in level_sigma.tolist()])
    return proposal
