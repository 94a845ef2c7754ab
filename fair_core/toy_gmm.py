"""Isotropic Gaussian mixtures with closed-form noised densities, scores and denoisers: the analytic toy problems
that pin the formulas of the fairness methods (biased vs reference mixture weights).

``p(x0) = sum_k pi_k N(x0; mu_k, s0^2 I)``; noised by ``x = x0 + sigma n`` it stays a mixture,
``p_t(x) = sum_k pi_k N(x; mu_k, (s0^2 + sigma^2) I)``, so

* score ``grad log p_t(x) = sum_k r_k(x) (mu_k - x) / (s0^2 + sigma^2)`` with responsibilities ``r_k``;
* ideal denoiser ``E[x0 | x] = x + sigma^2 grad log p_t(x)`` (Tweedie).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import FairSamplingError


@dataclass(frozen=True)
class GaussianMixture:
    weights: tuple[float, ...]
    means: tuple[tuple[float, ...], ...]  # (K, D)
    std: float = 0.5

    def __post_init__(self):
        if len(self.weights) != len(self.means) or abs(sum(self.weights) - 1) > 1e-9 or min(self.weights) <= 0:
            raise FairSamplingError(f"weights must be K positive numbers summing to 1 (K = {len(self.means)} means), got {self.weights}")

    @property
    def dim(self) -> int:
        return len(self.means[0])

    def _mu(self, device) -> torch.Tensor:
        return torch.tensor(self.means, dtype=torch.float64, device=device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0 (n, D) float32, component (n,) long)``."""
        comp = torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), n, replacement=True, generator=generator)
        x = self._mu("cpu")[comp] + self.std * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return x.float(), comp

    def responsibilities(self, x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p_t(x) (N,), r (N, K))`` in float64."""
        x = x.double()
        var = self.std**2 + torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0]) ** 2
        d2 = (x[:, None, :] - self._mu(x.device)[None]).pow(2).sum(-1)  # (N, K)
        logw = torch.tensor(self.weights, dtype=torch.float64, device=x.device).log()
        logc = logw[None] - d2 / (2 * var[:, None]) - 0.5 * self.dim * torch.log(2 * math.pi * var)[:, None]
        lp = torch.logsumexp(logc, dim=1)
        return lp, (logc - lp[:, None]).exp()

    def log_prob(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return self.responsibilities(x, sigma)[0]

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        x = x.double()
        var = self.std**2 + torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0]) ** 2
        _, r = self.responsibilities(x, sigma)
        return (r @ self._mu(x.device) - x) / var[:, None]

    def denoiser(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Ideal ``E[x0 | x]`` at noise level ``sigma`` (Tweedie)."""
        s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])[:, None]
        return x.double() + s**2 * self.score(x, sigma)


def true_log_ratio(ref: GaussianMixture, bias: GaussianMixture, x: torch.Tensor, sigma) -> torch.Tensor:
    """``log w_t(x) = log p_ref,t(x) - log p_bias,t(x)``."""
    return ref.log_prob(x, sigma) - bias.log_prob(x, sigma)


def true_grad_log_ratio(ref: GaussianMixture, bias: GaussianMixture, x: torch.Tensor, sigma) -> torch.Tensor:
    return ref.score(x, sigma) - bias.score(x, sigma)
