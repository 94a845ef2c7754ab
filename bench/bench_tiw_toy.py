"""TIW-DSM on the analytic 1-D toy, end to end: biased data 90:10, reference 50:50, finite sets, trained discriminator.

Trains one discriminator on a biased set (20,000 points) and a reference set (1,000 points, 5 %), then one small score
model per method and reports the share of samples in the minority mode (x > 0):

    none-bias   plain DSM on D_bias                       (expect ~10 %)
    none-ref    plain DSM on D_ref only                   (50 % in law, but fits 1,000 points)
    iw          time-independent importance weights w_0(x0) on D_bias (weight at sigma_min, no correction)
    weight      TIW weight w_t(x_t) only                  (pointwise minimiser = biased score)
    correction  TIW score correction only                 (pointwise minimiser = reference score)
    tiw         TIW-DSM: weight and correction            (expect 50 % +- 3)

    OMP_NUM_THREADS=1 python bench/bench_tiw_toy.py [--steps 2000] [--ratio discriminator|exact] [--out bench/out/tiw_toy.json]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import write_json  # noqa: E402
from fair_core.density_ratio import (DiscriminatorConfig, TimeDependentDiscriminator, discriminator_loss,  # noqa: E402
                                     log_ratio_and_grad, sigma_embedding, tiw_dsm_loss)
from fair_core.sampling import get_sigmas_karras, sample_heun  # noqa: E402
from fair_core.toy_gmm import GaussianMixture, true_grad_log_ratio, true_log_ratio  # noqa: E402

MEANS = ((-1.5,), (1.5,))
BIAS = GaussianMixture((0.9, 0.1), MEANS, 0.5)
REF = GaussianMixture((0.5, 0.5), MEANS, 0.5)
SIGMA_DATA = 1.5  # std of the toy data (EDM preconditioning)
METHODS = ("none-bias", "none-ref", "iw", "weight", "correction", "tiw")


class ToyDenoiser(nn.Module):
    """EDM-preconditioned MLP: D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)."""

    def __init__(self, width=128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1 + 32, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 1))

    def forward(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=torch.float32).expand(x.shape[0])[:, None]
        c_skip = SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2)
        c_out = s * SIGMA_DATA / (s**2 + SIGMA_DATA**2).sqrt()
        c_in = 1 / (s**2 + SIGMA_DATA**2).sqrt()
        return c_skip * x + c_out * self.net(torch.cat([c_in * x, sigma_embedding(s[:, 0], 32)], 1))


def draw_sigma(n, g):
    return torch.exp(torch.randn(n, generator=g) * 1.2 - 0.6)  # EDM log-normal (P_mean -1.2 in log sigma / 2 for this scale)


def train_discriminator(xb, xr, steps, g):
    disc = TimeDependentDiscriminator(DiscriminatorConfig(arch="mlp", channels=1, widths=(64, 64), embed_dim=32))
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        b, r = xb[torch.randint(len(xb), (256,), generator=g)], xr[torch.randint(len(xr), (256,), generator=g)]
        sigma = torch.exp(torch.randn(256, generator=g) * 1.6 - 0.5)
        loss = discriminator_loss(disc, r + sigma[:, None] * torch.randn(r.shape, generator=g), sigma,
                                  b + sigma[:, None] * torch.randn(b.shape, generator=g), sigma)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return disc.eval().requires_grad_(False)


class ExactRatio:
    """Stand-in for the discriminator with the closed-form ``log w_t`` (separates ratio error from training error)."""

    def __call__(self, x, sigma):
        return true_log_ratio(REF, BIAS, x, sigma).float(), true_grad_log_ratio(REF, BIAS, x, sigma).float()


def ratio_terms(disc, x, sigma):
    return disc(x, sigma) if isinstance(disc, ExactRatio) else log_ratio_and_grad(disc, x, sigma)


def train_score(method, xb, xr, disc, steps, g, batch=512):
    model = ToyDenoiser()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    data = xr if method == "none-ref" else xb
    for _ in range(steps):
        x0 = data[torch.randint(len(data), (batch,), generator=g)]
        sigma = draw_sigma(batch, g)
        x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g)
        lam = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
        if method in ("none-bias", "none-ref"):
            lw, grad, mode = torch.zeros(batch), torch.zeros_like(x), "none"
        elif method == "iw":
            lw, _ = ratio_terms(disc, x0, torch.full((batch,), 0.002))
            grad, mode = torch.zeros_like(x), "weight"
        else:
            lw, grad = ratio_terms(disc, x, sigma)
            mode = method
        loss = tiw_dsm_loss(model(x, sigma), x0, sigma, lw, grad, mode=mode, lambda_sigma=lam).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval().requires_grad_(False)


def minority_share(model, n, g):
    sigmas = get_sigmas_karras(32, 0.002, 80.0)
    x = torch.randn(n, 1, generator=g) * 80.0
    out = sample_heun(model, x, sigmas, disable=True)
    return float((out > 0).float().mean())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000, help="score-model steps per method")
    p.add_argument("--disc-steps", type=int, default=4000)
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--ratio", default="discriminator", choices=["discriminator", "exact"], help="exact: closed-form w_t (no discriminator)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/out/tiw_toy.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    xb, _ = BIAS.sample(20000, g)
    xr, _ = REF.sample(1000, g)
    t0 = time.time()
    disc = train_discriminator(xb, xr, args.disc_steps, g) if args.ratio == "discriminator" else ExactRatio()
    result = {"command": "python " + " ".join(sys.argv), "ratio": args.ratio, "bias": 0.9, "n_bias": 20000, "n_ref": 1000, "disc_s": round(time.time() - t0, 1),
              "data_minority_share": {"D_bias": round(100 * float((xb > 0).float().mean()), 2), "D_ref": round(100 * float((xr > 0).float().mean()), 2)},
              "minority_share": {}, "seconds": {}}
    print(f"discriminator: {result['disc_s']} s; minority share of the data: {result['data_minority_share']}", flush=True)
    for method in args.methods.split(","):
        t0 = time.time()
        model = train_score(method, xb, xr, disc, args.steps, g)
        share = minority_share(model, args.samples, g)
        result["minority_share"][method] = round(100 * share, 2)
        result["seconds"][method] = round(time.time() - t0, 1)
        print(f"{method:12s} minority share {100 * share:5.1f} %  (reference 50, biased 10; +-{100 * math.sqrt(share * (1 - share) / args.samples):.1f} s.e.)"
              f"  {result['seconds'][method]} s", flush=True)
    write_json(result, args.out, echo=False)


if __name__ == "__main__":
    main()
