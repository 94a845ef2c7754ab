"""Attribute switching (Choi et al. 2024, arXiv 2401.03140): sample under s0 until tau, under s1 after it.

Notation (k-diffusion convention, ``x = x0 + sigma * n``). Sampling runs on a grid ``sigma_0 > ... > sigma_S = 0``;
step ``i`` (``0 <= i < S``) evaluates the denoiser at ``sigma_i``. A switch at ``tau`` (``0 <= tau <= S``) uses s0
for the steps ``i < tau`` and s1 for ``i >= tau``: ``tau = S`` never switches, ``tau = 0`` samples under s1 only.
As a noise level the switch is ``sigma_switch = sigma_tau``: a model call at ``sigma`` uses s0 iff
``sigma > sigma_switch``, which carries tau over to other step counts and schedules.

The transition point (the paper's section 4.3 and the official ``tau_searching.ipynb``): run both conditions from
the same noise (two trajectories ``x^0``, ``x^1``, evaluated together in one batched model call per step), and let

    eps^k_i = (x^k_i - D(x^k_i, sigma_i; s_k)) / sigma_i                      (the predicted noise, = -sigma * score)
    r_i     = w_i * (eps^0_i - eps^1_i)                                        (the score difference of step i)
    J(tau)  = 1/N sum_n || sum_{i < tau} r_i^n  -  sum_{i >= tau} r_i^n ||_2   (per-sample norm, then batch mean)
    tau*    = argmin_tau J(tau)

i.e. switch where the attribute difference laid down before the switch balances what is still to come. The
notebook takes the norm of the batch-summed difference; we take each sample's norm and then the mean, so samples
whose differences point different ways cannot cancel. The step weight ``w_i`` (``weighting``):

* ``"beta"`` (default): ``w_i = log((1 + sigma_i^2) / (1 + sigma_{i+1}^2)) = log(alpha_bar(sigma_{i+1}) /
  alpha_bar(sigma_i))``, which is, to first order, the sum of the DDPM ``beta_t`` over the discrete timesteps the
  step covers: the notebook's ``beta_t`` weighting made independent of the step grid (one DDPM step gets exactly
  its ``beta_t``). Defined through sigma alone, so it applies to any model ComfyUI samples.
* ``"vp"``: ``w_i = (sigma_i - sigma_{i+1}) / sqrt(1 + sigma_i^2)``, the probability-flow step's displacement in
  VP units (``x_t = x / sqrt(1 + sigma^2)``); ``= beta / (2 sqrt(1 - alpha_bar))`` on the DDPM grid, so it weighs
  the last (low-noise) steps more than ``beta``.
* ``"ve"``: ``w_i = sigma_i - sigma_{i+1}``, the displacement in the sampler's own (VE) units: high-noise steps
  dominate (right for VE models, heavy for VP ones).
* ``"none"``: ``w_i = 1``, the unweighted difference of the predicted noises.

On the colour-conditional Colored-MNIST model (bench/bench_switching.py) ``beta`` puts tau one step from the
best-obfuscating tau of a full sweep, ``vp`` two steps later, ``ve`` far too early and ``none`` far too late.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .errors import FairSamplingError, check_choice, check_range
from .sampling import SAMPLERS, CFGDenoiser

log = logging.getLogger(__name__)

WEIGHTINGS = ("beta", "vp", "ve", "none")
DIRECTIONS = ("s0->s1", "s1->s0", "alternate")


# ----- the objective (pure functions of tensors) ------------------------------------------------------------------
def step_weights(sigmas: torch.Tensor, weighting: str = "beta") -> torch.Tensor:
    """``w_i`` for the ``S = len(sigmas) - 1`` steps of the grid ``sigmas`` (see the module docstring)."""
    check_choice("weighting", weighting, WEIGHTINGS)
    s, s_next = sigmas[:-1].double(), sigmas[1:].double()
    if weighting == "none":
        return torch.ones_like(s)
    if weighting == "beta":
        return (1 + s**2).log() - (1 + s_next**2).log()
    w = s - s_next
    return w / (1 + s**2).sqrt() if weighting == "vp" else w


def score_difference(x: torch.Tensor, denoised: torch.Tensor, sigma, weight) -> torch.Tensor:
    """``r_i = w_i (eps^0_i - eps^1_i)`` from the stacked pair ``x = [x^0; x^1]`` and its denoised ``[D^0; D^1]``."""
    eps = (x.double() - denoised.double()) / sigma
    eps0, eps1 = eps.chunk(2)
    return weight * (eps0 - eps1)


def transition_objective(r: torch.Tensor) -> torch.Tensor:
    """``J(tau)`` for ``tau = 0..S`` from the score differences ``r`` of shape (S, N, ...)."""
    if r.ndim < 2 or r.shape[0] < 1:
        raise FairSamplingError(f"r must have shape (steps, batch, ...) with steps >= 1, got {tuple(r.shape)}")
    before = torch.cat([torch.zeros_like(r[:1]), r.cumsum(0)])  # sum_{i < tau} r_i for tau = 0..S
    total = before[-1]
    return (2 * before - total).flatten(2).norm(dim=2).mean(1)  # before - (total - before)


def sigma_of_tau(sigmas: torch.Tensor, tau: int) -> float:
    """The switch noise level of step index ``tau`` on the grid ``sigmas`` (``sigmas[tau]``; 0 means never switch)."""
    check_range("tau", tau, 0, len(sigmas) - 1, integer=True)
    return float(sigmas[tau])


def tau_of_sigma(sigmas: torch.Tensor, sigma_switch: float) -> int:
    """The step index on ``sigmas`` of the switch at noise level ``sigma_switch``: the number of steps with sigma > it."""
    check_range("sigma_switch", sigma_switch, 0.0)
    return int((sigmas[:-1] > sigma_switch).sum())


@dataclass
class TauSearch:
    """Result of :func:`search_tau`: ``tau`` on the searched grid, as a sigma and a fraction of the steps, and the curve."""

    tau: int
    sigma: float  # switch when sigma <= this (0: never)
    fraction: float  # tau / steps
    objective: torch.Tensor  # J(tau), tau = 0..S (CPU, float64)
    step_difference: torch.Tensor  # mean_n ||r_i^n||, i = 0..S-1 (CPU): where the conditions disagree
    sigmas: torch.Tensor  # the grid searched (CPU)

    def as_dict(self) -> dict:
        return {"tau": self.tau, "steps": len(self.sigmas) - 1, "fraction": round(self.fraction, 4), "sigma": self.sigma,
                "objective": [round(float(v), 6) for v in self.objective]}


def tau_result(r: torch.Tensor, sigmas: torch.Tensor) -> TauSearch:
    """Argmin of ``J`` (the first one on ties) with the whole curve; warns when the curve is flat (s0 == s1)."""
    objective = transition_objective(r).cpu()
    if float(objective.max()) <= 1e-12:
        log.warning("s0 and s1 give identical predictions: the tau objective is flat (0) and any tau is as good as another")
    tau = int(objective.argmin())
    steps = len(sigmas) - 1
    return TauSearch(tau, float(sigmas[tau]), tau / steps, objective, r.flatten(2).norm(dim=2).mean(1).cpu(), sigmas.cpu())


# ----- denoisers ----------------------------------------------------------------------------------------------------
def cat_extra_args(extra0: dict, extra1: dict) -> dict | None:
    """``extra0`` and ``extra1`` concatenated along the batch, or None when they cannot be (shapes, non-tensors)."""
    if extra0.keys() != extra1.keys():
        return None
    out = {}
    for k, a in extra0.items():
        b = extra1[k]
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape[1:] != b.shape[1:]:
            return None
        out[k] = torch.cat([a, b])
    return out


class PairDenoiser(nn.Module):
    """``[x^0; x^1] -> [D(x^0; extra0); D(x^1; extra1)]``: one batched call when the conditionings concatenate,
    otherwise two calls (logged once)."""

    def __init__(self, model, extra0: dict, extra1: dict):
        super().__init__()
        self.inner, self.extra0, self.extra1 = model, extra0, extra1
        self.both = cat_extra_args(extra0, extra1)
        if self.both is None:
            log.info("s0 and s1 conditionings cannot be batched together (different shapes or types): two model calls per step")

    def forward(self, x, sigma):
        if self.both is not None:
            return self.inner(x, sigma, **self.both)
        (x0, x1), (s0, s1) = x.chunk(2), sigma.chunk(2)
        return torch.cat([self.inner(x0, s0, **self.extra0), self.inner(x1, s1, **self.extra1)])


class SwitchDenoiser(nn.Module):
    """A Denoiser that conditions on ``class_labels`` while ``sigma > sigma_switch`` and on ``class_labels_after``
    from then on; classifier-free guidance ``cfg_scale`` applies to both. Exposes the inner model's schedule, so
    :func:`fair_core.sampling.generate` samples it like any model (one condition, one model call per step)."""

    def __init__(self, model, sigma_switch: float, cfg_scale: float = 1.0):
        super().__init__()
        check_range("sigma_switch", sigma_switch, 0.0)
        self.model = model
        self.guided = CFGDenoiser(model, cfg_scale) if cfg_scale != 1.0 else model
        self.sigma_switch = float(sigma_switch)

    cfg = property(lambda self: self.model.cfg)
    sigmas = property(lambda self: self.model.sigmas)
    sigma_min = property(lambda self: self.model.sigma_min)
    sigma_max = property(lambda self: self.model.sigma_max)

    def forward(self, x, sigma, class_labels=None, class_labels_after=None):
        # One elementwise select, whatever the noise levels of the batch: no host-device sync in the sampling loop
        # (testing the mask with bool() would wait for the GPU at every step).
        sigma = torch.as_tensor(sigma, device=x.device).expand(x.shape[0])
        labels = torch.where(sigma > self.sigma_switch, torch.as_tensor(class_labels, device=x.device),
                             torch.as_tensor(class_labels_after, device=x.device))
        return self.guided(x, sigma, class_labels=labels)


def switch_labels(direction: str, s0: int, s1: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels before and after the switch for ``n`` images: ``s0->s1``, ``s1->s0``, or ``alternate`` (the first
    ``n // 2`` go s0->s1, the rest s1->s0, so the batch is balanced whatever tau does)."""
    check_choice("direction", direction, DIRECTIONS)
    a, b = torch.full((n,), s0, dtype=torch.long), torch.full((n,), s1, dtype=torch.long)
    if direction == "s1->s0":
        a, b = b, a
    elif direction == "alternate":
        first = torch.arange(n) < n // 2
        a, b = torch.where(first, a, b), torch.where(first, b, a)
    return a, b


# ----- the search -------------------------------------------------------------------------------------------------
@torch.no_grad()
def score_difference_curve(model, noise: torch.Tensor, sigmas: torch.Tensor, extra0: dict, extra1: dict,
                           sampler: str = "euler", weighting: str = "beta", disable=None) -> torch.Tensor:
    """``r`` (S, N, ...) along the two trajectories from ``noise`` (N, ...; unit variance) under s0 and s1.

    Both trajectories are sampled by ``sampler`` on ``sigmas``, the pair in one batch (one model call per step
    when the conditionings concatenate); ``r_i`` is taken at each step's first model evaluation.
    """
    check_choice("sampler", sampler, SAMPLERS)
    if noise.shape[0] < 2:
        raise FairSamplingError(f"the tau search needs a search batch of at least 2 images (16 or more for a stable tau), "
                                f"got {noise.shape[0]}")
    weights = step_weights(sigmas, weighting)
    r = []

    def record(info):
        i = info["i"]
        r.append(score_difference(info["x"], info["denoised"], info["sigma"], weights[i]).float())

    x = torch.cat([noise, noise]) * sigmas[0]
    SAMPLERS[sampler](PairDenoiser(model, extra0, extra1), x, sigmas, callback=record, disable=disable)
    return torch.stack(r)


def search_tau(model, noise: torch.Tensor, sigmas: torch.Tensor, s0: int, s1: int, cfg_scale: float = 1.0,
               sampler: str = "euler", weighting: str = "beta", disable=None) -> TauSearch:
    """tau* for a class-conditional fair_core Denoiser: labels ``s0`` and ``s1`` from the search batch ``noise``."""
    if s0 == s1:
        log.warning("s0 == s1 (%d): switching changes nothing and the tau curve is flat", s0)
    n = noise.shape[0]
    labels = {k: torch.full((n,), v, dtype=torch.long, device=noise.device) for k, v in (("s0", s0), ("s1", s1))}
    guided = CFGDenoiser(model, cfg_scale) if cfg_scale != 1.0 else model
    r = score_difference_curve(guided, noise, sigmas, {"class_labels": labels["s0"]}, {"class_labels": labels["s1"]},
                               sampler, weighting, disable)
    return tau_result(r, sigmas)


def sample_switched(model, n: int, steps: int, s0: int, s1: int, tau="auto", direction: str = "alternate",
                    sampler: str = "dpmpp_2m", schedule: str = "karras", seed: int = 0, cfg_scale: float = 1.0,
                    search_n: int = 64, weighting: str = "beta", batch_size: int = 64, device=None,
                    disable=None) -> tuple[torch.Tensor, TauSearch | None, float]:
    """``n`` images of a class-conditional Denoiser switched between labels ``s0`` and ``s1`` per ``direction``.

    ``tau``: ``"auto"`` (searched on ``search_n`` images whose noise is drawn from ``seed + 1``, on this call's
    own grid and sampler) or a step index in ``[0, steps]``. After the search, sampling costs what vanilla
    sampling costs: one condition, one model call per step. Returns (images, search or None, sigma_switch).
    """
    from .sampling import generate, get_sigmas

    check_choice("direction", direction, DIRECTIONS)
    check_range("steps", steps, 1, integer=True)
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    sigmas = get_sigmas(model, steps, schedule, device=device)
    search = None
    if tau == "auto":
        cfg = model.cfg
        noise = torch.randn((search_n, cfg.channels, cfg.sample_size, cfg.sample_size), generator=torch.Generator().manual_seed(seed + 1))
        search = search_tau(model, noise.to(device), sigmas, s0, s1, cfg_scale, sampler if sampler != "ddim" else "euler",
                            weighting, disable)
        tau = search.tau
    elif not isinstance(tau, int) or isinstance(tau, bool):
        raise FairSamplingError(f"tau must be 'auto' or a step index in [0, {steps}], got {tau!r}")
    sigma_switch = sigma_of_tau(sigmas, tau)
    before, after = switch_labels(direction, s0, s1, n)
    images = generate(SwitchDenoiser(model, sigma_switch, cfg_scale), n, steps, sampler, schedule, class_labels=before,
                      seed=seed, batch_size=batch_size, device=device, disable=disable,
                      extra_args={"class_labels_after": after})
    return images, search, sigma_switch
