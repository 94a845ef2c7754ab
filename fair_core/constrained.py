"""Constrained diffusion via dual training (Khalafi, Ding, Ribeiro, NeurIPS 2024): Lagrangian, dual updates, relaxation.

The problem, with every KL replaced by its denoising-loss (ELBO) surrogate ``L(theta; q) = E_{x0~q,t,eps} l(theta; x0, t, eps)``::

    minimise_theta  L(theta; q_data)   subject to   L(theta; q_i) <= b_i,   i = 1..m

Lagrangian and dual function::

    L(theta, lambda) = L(theta; q_data) + sum_i lambda_i (L(theta; q_i) - b_i),     lambda_i >= 0

Dual training alternates primal steps on ``theta`` (gradient of the Lagrangian at fixed ``lambda``) with projected dual
ascent ``lambda_i <- max(0, lambda_i + eta (L(theta; q_i) - b_i))``. Because the denoising loss is *linear in the data
distribution*, the primal minimiser for a fixed ``lambda`` is the score of the mixture
``(q_data + sum_i lambda_i q_i) / (1 + sum_i lambda_i)`` (:func:`mixture_weights`), whatever the loss weighting.

Resilient variant: each bound is relaxed to ``b_i + u_i`` at cost ``(alpha/2) u_i^2``; minimising over ``u`` gives
``u_i* = lambda_i / alpha`` (:func:`resilient_relaxation`), and the dual ascent uses the relaxed slack
``L(theta; q_i) - b_i - u_i``. At equilibrium ``L(theta; q_i) - b_i = lambda_i / alpha``: constraints that are too hard
are loosened in proportion to their multiplier instead of driving ``lambda_i`` to infinity.

How the bounds ``b_i`` are chosen (:func:`default_bounds`)
----------------------------------------------------------
The surrogate is ``L(theta; q_i) = KL(q_i || p_theta) + C_i`` (up to the loss weighting), where ``C_i`` depends on the
unknown entropy of ``q_i``: a bound in absolute loss units therefore means nothing by itself. The constant is
estimated by a *reference model*: the loss on ``q_i`` of a model trained on ``q_i`` alone is ``~ C_i`` (it reaches
``KL ~ 0``), so ``b_i = (1 + margin) * L(theta_ref; q_i)`` with ``margin > 0`` bounds the excess loss (the KL
surrogate) by ``margin * C_i``: scale-free across data sets, and ``margin = 0`` would ask a shared model to fit
``q_i`` as well as a specialist does, which is infeasible. When the reference is the *unconstrained* model trained on
``q_data`` (the baseline one trains anyway), the constraint must ask for an improvement over it, so ``margin < 0``
(e.g. ``-0.05``: 5 % lower loss on ``q_i`` than the unconstrained model has); a non-negative margin over the
unconstrained model is already met and leaves ``lambda = 0``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import FairSamplingError, check_range


def _vector(name: str, values, like: torch.Tensor | None = None) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32 if like is None else like.dtype,
                        device=None if like is None else like.device)
    if t.ndim != 1:
        raise FairSamplingError(f"{name} must be a 1-D sequence (one value per constraint), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise FairSamplingError(f"{name} must be finite, got {t.tolist()}")
    return t


def check_bounds(bounds) -> torch.Tensor:
    """Bounds ``b_i`` as a float tensor; negative bounds are an error (a denoising loss is never negative)."""
    b = _vector("bounds", bounds)
    if (b < 0).any():
        raise FairSamplingError(f"bounds must be >= 0 (a denoising loss is non-negative), got {b.tolist()}")
    return b


def lagrangian(loss_data: torch.Tensor, losses: torch.Tensor, lambdas: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """``L(theta, lambda) = L(theta; q_data) + sum_i lambda_i (L(theta; q_i) - b_i)``.

    ``loss_data``: scalar; ``losses``: (m,) constraint losses ``L(theta; q_i)`` (differentiable for the primal step);
    ``lambdas`` and ``bounds``: (m,), treated as constants (detached).
    """
    if losses.shape != lambdas.shape or losses.shape != bounds.shape:
        raise FairSamplingError(f"losses, lambdas and bounds need one entry per constraint, got shapes "
                                f"{tuple(losses.shape)}, {tuple(lambdas.shape)}, {tuple(bounds.shape)}")
    lam, b = lambdas.detach().to(losses), bounds.detach().to(losses)
    return loss_data + (lam * (losses - b)).sum()


def slack(losses: torch.Tensor, bounds: torch.Tensor, relaxation: torch.Tensor | None = None) -> torch.Tensor:
    """Constraint slack ``s_i = L(theta; q_i) - b_i - u_i`` (``u = 0`` without relaxation); met when ``s_i <= 0``."""
    s = losses - bounds.to(losses)
    return s if relaxation is None else s - relaxation.to(losses)


def resilient_relaxation(lambdas: torch.Tensor, alpha: float) -> torch.Tensor:
    """``u_i* = argmin_u (alpha/2) u^2 - lambda_i u = lambda_i / alpha``: the optimal relaxation of bound ``b_i``."""
    check_range("alpha", alpha, 0.0, low_open=True)
    return lambdas / alpha


def dual_step(lambdas: torch.Tensor, losses: torch.Tensor, bounds: torch.Tensor, eta: float,
              alpha: float | None = None) -> torch.Tensor:
    """Projected dual ascent ``lambda_i <- max(0, lambda_i + eta (L(theta; q_i) - b_i - u_i))``.

    ``alpha`` None: plain constraints (``u = 0``). ``alpha > 0``: resilient, ``u_i = lambda_i / alpha`` (current lambda).
    ``losses``: (m,) estimates of ``L(theta; q_i)`` (detached; e.g. :class:`ConstraintTracker` means).
    """
    check_range("eta (dual learning rate)", eta, 0.0, low_open=True)
    u = None if alpha is None else resilient_relaxation(lambdas, alpha)
    return torch.clamp(lambdas + eta * slack(losses.detach().to(lambdas), bounds.to(lambdas), u), min=0.0)


def paired_estimate(losses: torch.Tensor, reference_losses: torch.Tensor, reference_means) -> torch.Tensor:
    """Control-variate estimate of ``L(theta; q_i)``: ``l_theta - l_ref + Lbar_ref``.

    ``losses`` and ``reference_losses``: (m,) batch means of the trained and of a frozen reference model on the *same*
    images, timesteps and noise; ``reference_means``: (m,) the reference's loss on each set measured once, precisely
    (``training.dual.set_loss``). Its expectation is the plain estimate's, ``L(theta; q_i)``, exactly when
    ``reference_means`` is exact; its variance is that of ``l_theta - l_ref``. The per-image loss depends mostly on its
    timestep and image, which both models share, so on grey MNIST a batch of 8 gives a 6x smaller standard deviation
    (correlation 0.985-0.989, bench/RESULTS.md): the slacks that drive ``lambda`` stop being mostly noise.
    """
    ref_means = _vector("reference_means", reference_means).to(losses)  # checked where given (CPU): no device sync
    if losses.shape != reference_losses.shape or losses.shape != ref_means.shape:
        raise FairSamplingError(f"losses, reference_losses and reference_means need one entry per constraint, got shapes "
                                f"{tuple(losses.shape)}, {tuple(reference_losses.shape)}, {tuple(ref_means.shape)}")
    return losses.detach() - reference_losses.detach().to(losses) + ref_means


def mixture_weights(lambdas) -> torch.Tensor:
    """Weights of ``(q_data, q_1, ..., q_m)`` in the Lagrangian's primal optimum: ``(1, lambda_1, ..., lambda_m) / (1 + sum lambda)``."""
    lam = _vector("lambdas", lambdas)
    if (lam < 0).any():
        raise FairSamplingError(f"lambdas must be >= 0, got {lam.tolist()}")
    w = torch.cat([torch.ones(1, dtype=lam.dtype), lam])
    return w / w.sum()


def component_weights(data_weights, constraint_components: Sequence[int], lambdas) -> torch.Tensor:
    """Predicted weights of the *components* of the optimum mixture when ``q_data = sum_k pi_k c_k`` and ``q_i = c_{k_i}``.

    ``w_k = (pi_k + sum_{i: k_i = k} lambda_i) / (1 + sum_i lambda_i)``.
    """
    pi = _vector("data_weights", data_weights)
    lam = _vector("lambdas", lambdas)
    if len(constraint_components) != len(lam):
        raise FairSamplingError(f"constraint_components needs one component per lambda ({len(lam)}), got {list(constraint_components)}")
    w = pi.clone()
    for k, l in zip(constraint_components, lam):
        w[k] += l
    return w / (1 + lam.sum())


def default_bounds(reference_losses, margin) -> torch.Tensor:
    """``b_i = (1 + margin_i) * L(theta_ref; q_i)``; ``margin``: one number for every set or one per set (see the
    module docstring for the choice of reference and sign of margin)."""
    ref = _vector("reference_losses", reference_losses)
    margins = torch.as_tensor(margin, dtype=ref.dtype).reshape(-1)
    if margins.numel() not in (1, ref.numel()):
        raise FairSamplingError(f"margin needs one value or one per set ({ref.numel()}), got {margins.numel()}")
    margins = margins.expand_as(ref)
    for m in margins.tolist():
        check_range("margin", m, -1.0, low_open=True)
    return check_bounds(ref * (1 + margins))


@dataclass
class ConstraintTracker:
    """Constraint bookkeeping between dual steps: sums of the per-step losses, and their running (EMA) estimates.

    ``add`` accumulates the losses seen by each primal step; ``take_mean`` returns their mean since the last dual step
    (the ``L(theta; q_i)`` estimate fed to :func:`dual_step`) and resets the sums; ``running`` is an exponential
    moving average ``r <- (1 - beta) r + beta * L`` of the same losses for progress reports.
    """

    total: torch.Tensor  # (m,) sum of losses since the last dual step
    count: torch.Tensor  # () number of steps summed
    running: torch.Tensor  # (m,) EMA of the losses; NaN until the first step
    beta: float = 0.05

    @classmethod
    def new(cls, m: int, beta: float = 0.05) -> "ConstraintTracker":
        check_range("beta", beta, 0.0, 1.0, low_open=True)
        return cls(torch.zeros(m), torch.zeros(()), torch.full((m,), float("nan")), beta)

    def add(self, losses: torch.Tensor) -> None:
        v = losses.detach().float().cpu()
        self.total = self.total + v
        self.count = self.count + 1
        self.running = torch.where(torch.isnan(self.running), v, (1 - self.beta) * self.running + self.beta * v)

    def take_mean(self) -> torch.Tensor:
        if self.count.item() == 0:
            raise FairSamplingError("no constraint losses accumulated since the last dual step")
        mean = self.total / self.count
        self.total, self.count = torch.zeros_like(self.total), torch.zeros_like(self.count)
        return mean

    def state(self) -> dict[str, torch.Tensor]:
        return {"total": self.total, "count": self.count, "running": self.running}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], beta: float = 0.05) -> "ConstraintTracker":
        return cls(state["total"].float().cpu(), state["count"].float().cpu(), state["running"].float().cpu(), beta)


def constraint_report(record: dict) -> str:
    """Human-readable table of a ``dual`` checkpoint's ``training["constraints"]`` record (names, bounds, lambdas, slacks)."""
    try:
        names, bounds, lambdas, slacks = record["names"], record["bounds"], record["lambdas"], record["slacks"]
    except (KeyError, TypeError) as e:
        raise FairSamplingError(f"constraint record lacks {e}; expected names, bounds, lambdas and slacks") from e
    relax = record.get("relaxation") or [0.0] * len(names)
    weights = mixture_weights(lambdas).tolist()
    lines = [f"constrained dual training: {len(names)} constraint(s), relaxation={record.get('mode', 'none')}"
             + (f" (alpha={record['alpha']})" if record.get("alpha") else ""),
             f"{'constraint':>12} {'bound b':>10} {'lambda':>9} {'u':>8} {'slack':>10} {'met':>4}"]
    for name, b, lam, u, s in zip(names, bounds, lambdas, relax, slacks):
        lines.append(f"{name:>12} {b:>10.5f} {lam:>9.4f} {u:>8.4f} {s:>+10.5f} {'yes' if s <= 0 else 'no':>4}")
    lines.append("predicted optimum mixture weights (q_data, " + ", ".join(names) + "): "
                 + ", ".join(f"{w:.3f}" for w in weights))
    return "\n".join(lines)
