"""A 1-D Gaussian-mixture world for checking constrained dual training against its closed-form optimum.

Data ``q_data = 0.9 N(-2, 0.4^2) + 0.1 N(+2, 0.4^2)`` (component 1 under-represented); constraint set
``q_1 = N(+2, 0.4^2)``. Noise ``x = x0 + sigma * eps`` (VE/EDM convention), loss = EDM-weighted x0 error.

For a fixed ``lambda`` the Lagrangian's primal minimiser is the denoiser of the mixture
``(q_data + lambda q_1) / (1 + lambda)``, i.e. component weights ``((0.9, 0.1) + (0, lambda)) / (1 + lambda)``
(:func:`fair_core.constrained.component_weights`). Two denoiser families:

* :class:`MixtureDenoiser`: the exact posterior-mean denoiser of a two-Gaussian mixture with *learnable* weights, means
  and spread; the optimum is inside the family, so dual training must reproduce it to Monte-Carlo accuracy;
* :class:`MLPDenoiser`: a small MLP with EDM preconditioning, where the match is only as good as the network.
"""
from __future__ import annotations

import math

import torch

from fair_core import constrained as C
from fair_core.sampling import get_sigmas_karras, sample_heun

MU = torch.tensor([-2.0, 2.0])
STD = 0.4
PI = torch.tensor([0.9, 0.1])
SIGMA_DATA = 2.0
SIGMA_MIN, SIGMA_MAX = 0.02, 200.0
MINORITY = torch.tensor([0.0, 1.0])  # q_1 = component 1 alone


def stratified_uniform(n: int, g: torch.Generator) -> torch.Tensor:
    """One uniform draw in each slice ``[i/n, (i+1)/n)``, shuffled: unbiased, with far less batch-to-batch variance."""
    return ((torch.arange(n) + torch.rand(n, generator=g)) / n)[torch.randperm(n, generator=g)]


def draw(n: int, weights: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Samples of the mixture with component ``weights`` (component counts stratified)."""
    k = (stratified_uniform(n, g) < weights[1]).long()
    return (MU[k] + STD * torch.randn(n, generator=g))[:, None]


def draw_sigma(n: int, g: torch.Generator) -> torch.Tensor:
    """Half log-normal around 1 (where the component weights are decided), half log-uniform over the whole range.

    Stratified within each half (:func:`stratified_uniform`).
    """
    half = n // 2
    u = torch.cat([stratified_uniform(half, g), stratified_uniform(n - half, g)])
    lognormal = math.sqrt(2) * torch.erfinv(2 * u[:half] - 1) * 1.2
    loguniform = math.log(SIGMA_MIN) + u[half:] * (math.log(SIGMA_MAX) - math.log(SIGMA_MIN))
    return torch.exp(torch.cat([lognormal, loguniform])).clamp(SIGMA_MIN, SIGMA_MAX)[:, None]


def per_sample_loss(D, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """EDM-weighted denoising loss ``(sigma^2 + sd^2) / (sigma sd)^2 * |D(x0 + sigma eps, sigma) - x0|^2`` per sample."""
    sigma = draw_sigma(len(x0), g)
    eps = torch.randn(x0.shape, generator=g)
    w = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    return (w * (D(x0 + sigma * eps, sigma) - x0) ** 2).mean(1)


def mixture_denoise(x, sigma, log_w, mu, std):
    """Posterior mean ``E[x0 | x]`` of a Gaussian mixture (weights ``softmax(log_w)``) under ``x = x0 + sigma eps``."""
    sigma = sigma.reshape(-1, 1)
    v = std**2 + sigma**2
    r = torch.softmax(torch.log_softmax(log_w, 0)[None] - (x - mu[None]) ** 2 / (2 * v) - 0.5 * torch.log(v), 1)
    return (r * (mu[None] + std**2 / v * (x - mu[None]))).sum(1, keepdim=True)


class MixtureDenoiser(torch.nn.Module):
    """Exact mixture denoiser with learnable weights, means and spread (initialised away from the truth)."""

    def __init__(self):
        super().__init__()
        self.log_w = torch.nn.Parameter(torch.zeros(2))
        self.mu = torch.nn.Parameter(torch.tensor([-1.0, 1.0]))
        self.log_std = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, x, sigma):
        return mixture_denoise(x, sigma, self.log_w, self.mu, self.log_std.exp())

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.log_w.detach(), 0)


class MLPDenoiser(torch.nn.Module):
    """``D = c_skip x + c_out F([c_in x, log(sigma)/4])`` (EDM preconditioning), F a 2-hidden-layer MLP."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Linear(2, width), torch.nn.SiLU(), torch.nn.Linear(width, width), torch.nn.SiLU(),
                                     torch.nn.Linear(width, 1))

    def forward(self, x, sigma):
        sigma = sigma.reshape(-1, 1)
        s2 = sigma**2 + SIGMA_DATA**2
        return SIGMA_DATA**2 / s2 * x + sigma * SIGMA_DATA / s2.sqrt() * self.f(torch.cat([x / s2.sqrt(), sigma.log() / 4], 1))

    @torch.no_grad()
    def weights(self, n: int = 8000, steps: int = 60) -> torch.Tensor:
        """Component weights of the model's samples (Heun ODE from sigma_max; a sample belongs to the nearer mean)."""
        x = torch.randn(n, 1, generator=torch.Generator().manual_seed(7)) * SIGMA_MAX
        x = sample_heun(self, x, get_sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX))
        p1 = (x[:, 0] > 0).float().mean()
        return torch.stack([1 - p1, p1])


def ideal_loss(weights: torch.Tensor, on: torch.Tensor, n: int = 200_000, seed: int = 1) -> float:
    """``L(D*_w; q_on)``: loss on the mixture with weights ``on`` of the exact denoiser of the mixture with ``weights``."""
    g = torch.Generator().manual_seed(seed)
    x0 = draw(n, on, g)
    return per_sample_loss(lambda x, s: mixture_denoise(x, s, weights.log(), MU, torch.tensor(STD)), x0, g).mean().item()


@torch.no_grad()
def measured_loss(D, on: torch.Tensor, n: int = 200_000, seed: int = 2) -> float:
    g = torch.Generator().manual_seed(seed)
    return per_sample_loss(D, draw(n, on, g), g).mean().item()


def train_dual(D, bound: float, steps: int, eta: float, every: int, alpha: float | None = None, batch: int = 256,
               lr: float = 3e-3, seed: int = 0) -> dict:
    """Primal-dual training: Adam on the Lagrangian, projected dual ascent every ``every`` primal steps."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(D.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.0)
    lam, b = torch.zeros(1), torch.tensor([bound])
    tracker = C.ConstraintTracker.new(1)
    history = []
    for step in range(steps):
        loss_data = per_sample_loss(D, draw(batch, PI, g), g).mean()
        losses = per_sample_loss(D, draw(batch, MINORITY, g), g).mean()[None]
        opt.zero_grad(set_to_none=True)
        C.lagrangian(loss_data, losses, lam, b).backward()
        opt.step()
        sched.step()
        tracker.add(losses)
        if (step + 1) % every == 0:
            lam = C.dual_step(lam, tracker.take_mean(), b, eta, alpha)
            history.append(lam.item())
    return {"lambda": lam, "history": torch.tensor(history), "bound": b}
