"""A kernel ("oracle") time-dependent ratio for Colored-MNIST, to measure what an exact-ish correction does.

It uses what TIW-DSM may not: the colour labels and the data's structure (the colour is independent of the grey
digit). With ``M`` grey training digits ``g_j`` per class,

    p_t(x | c) ~ mean_j N(x; colorize(g_j, c), sigma^2 I)        (c = red, green)
    w_t(x) = sum_c rho_ref(c) p_t(x | c) / sum_c rho_bias(c) p_t(x | c)

and ``w_t(x | y)`` takes only the digits of class ``y`` (``mode="conditional"``). At the sigmas where the colour is
decided (3-20) the kernel sums over 10 000 digits per colour are smooth; below sigma ~1 they are nearest-neighbour
estimates (the colour is then plain and the correction no longer moves it). ``bench_tiw_discriminator.py --oracle``
adds ``gamma sigma^2 grad_x log w_t`` to a biased model at sampling time, as ``--guide`` does with a discriminator.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from training.data import DataConfig, colorize, load

ORACLE_MODES = ("marginal", "conditional")


class KernelRatio(torch.nn.Module):
    """``forward(x, sigma, class_labels) -> log w_t`` with ``cfg`` as a discriminator's (no prior odds, no clipping
    within reach), so ``fair_core.density_ratio.log_ratio_and_grad`` takes it."""

    def __init__(self, mode: str = "marginal", per_digit: int = 1000, rho_bias: float = 0.1, rho_ref: float = 0.5, seed: int = 0):
        super().__init__()
        if mode not in ORACLE_MODES:
            raise SystemExit(f"--oracle must be one of {list(ORACLE_MODES)}, got {mode!r}")
        data = load(DataConfig(dataset="colored-mnist", colour_ratio=0.5))
        g = torch.Generator().manual_seed(seed)
        keep = torch.cat([idx[torch.randperm(len(idx), generator=g)[:per_digit]]
                          for idx in (torch.nonzero(data.digits == d).flatten() for d in range(10))])
        gray, self.digits = data.gray[keep], data.digits[keep]
        self.centres = [colorize(gray, torch.full((len(gray),), c)).flatten(1) for c in (0, 1)]
        self.log_bias = torch.tensor([math.log(1 - rho_bias), math.log(rho_bias)])
        self.log_ref = torch.tensor([math.log(1 - rho_ref), math.log(rho_ref)])
        self.mode = mode
        self.cfg = SimpleNamespace(clip=1e-30, log_prior_odds=0.0, num_classes=10 if mode == "conditional" else 0)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        x, s2 = x.flatten(1).float(), sigma.float().view(-1, 1) ** 2
        log_pc = []
        for centres in self.centres:
            d2 = (x * x).sum(1, keepdim=True) - 2 * x @ centres.T + (centres * centres).sum(1)[None]
            lp = -d2 / (2 * s2)
            if self.mode == "conditional" and class_labels is not None:  # label -1 (or none): the marginal sum
                y = class_labels.view(-1, 1)
                lp = lp.masked_fill((y >= 0) & (y != self.digits[None]), -math.inf)
            log_pc.append(torch.logsumexp(lp, 1))
        log_pc = torch.stack(log_pc, 1)  # log p_t(x | c) up to a constant shared by both colours
        return torch.logsumexp(log_pc + self.log_ref, 1) - torch.logsumexp(log_pc + self.log_bias, 1)
