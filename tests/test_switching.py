"""Attribute switching: the tau objective against its definition and against a closed form on Gaussian classes.

Toy: class k has data x0 ~ N(mu_k, s^2 I) with s = 1, so its exact denoiser is D(x, sigma; k) = mu_k + (x - mu_k) /
(1 + sigma^2). Along the probability-flow ODE from a shared x_T, x^k(sigma) - mu_k = (x_T - mu_k) sqrt(1 + sigma^2) /
sqrt(1 + sigma_T^2), so eps^0 - eps^1 = sigma (mu_1 - mu_0) / (sqrt(1 + sigma^2) sqrt(1 + sigma_T^2)): the same for
every sample. Integrating w(sigma) against it gives where J(tau) has its minimum (the cumulative difference at half):
  weighting "ve" (w = d sigma):                  sqrt(1 + sigma*^2) = (sqrt(1 + sigma_T^2) + 1) / 2
  weighting "vp" (w = d sigma / sqrt(1 + s^2)):  1 + sigma*^2 = sqrt(1 + sigma_T^2)
  weighting "beta" (w = d log(1 + sigma^2)):     F(sigma*) = F(sigma_T) / 2,  F(s) = asinh(s) - s / sqrt(1 + s^2)
"""
import logging
import math
from types import SimpleNamespace

import pytest
import torch

from fair_core import sampling, switching
from fair_core.denoiser import vp_alphas_cumprod
from fair_core.errors import FairSamplingError
from fair_core.models import UNetConfig, build_unet
from fair_core.denoiser import DiscreteVPDenoiser

MU = torch.tensor([[0.7, 0.0], [-0.6, 0.5]])  # class means, 2 dims laid out as (C=2, H=1, W=1)


class GaussianClasses(torch.nn.Module):
    """Exact class-conditional denoiser of N(MU[k], s^2 I) on the DDPM linear schedule; counts its calls."""

    def __init__(self, s=1.0):
        super().__init__()
        self.s = s
        ab = vp_alphas_cumprod(UNetConfig())
        self.sigmas = ((1 - ab) / ab).sqrt().float()
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])
        self.cfg = SimpleNamespace(channels=2, sample_size=1)
        self.calls = 0

    def forward(self, x, sigma, class_labels=None):
        self.calls += 1
        mu = MU[torch.as_tensor(class_labels)].view(-1, 2, 1, 1).to(x)
        return mu + self.s**2 * (x - mu) / (self.s**2 + sigma.view(-1, 1, 1, 1) ** 2)


def F(s):
    return math.asinh(s) - s / math.sqrt(1 + s * s)


def bisect(f, lo, hi):
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return lo


def noise(n, seed=0):
    return torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(seed))


def test_objective_is_its_definition():
    r = torch.randn(7, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = [sum((r[:tau].sum(0) - r[tau:].sum(0))[n].norm() for n in range(3)) / 3 for tau in range(8)]
    assert torch.allclose(switching.transition_objective(r), torch.tensor(want, dtype=torch.float64))


def test_constant_difference_switches_halfway():
    r = torch.ones(10, 4, 3)
    j = switching.transition_objective(r)
    assert int(j.argmin()) == 5 and float(j[5]) == 0.0 and float(j[0]) == pytest.approx(10 * math.sqrt(3))


@pytest.mark.parametrize("weighting, closed_form", [
    ("ve", lambda s_t: math.sqrt(((math.sqrt(1 + s_t**2) + 1) / 2) ** 2 - 1)),
    ("vp", lambda s_t: math.sqrt(math.sqrt(1 + s_t**2) - 1)),
    ("beta", lambda s_t: bisect(lambda s: F(s) - F(s_t) / 2, 1e-6, s_t)),
])
def test_searched_sigma_matches_closed_form(weighting, closed_form):
    model = GaussianClasses()
    sigmas = sampling.get_sigmas(model, 400, "karras")
    found = switching.search_tau(model, noise(8), sigmas, 0, 1, weighting=weighting, disable=True)
    want = closed_form(float(sigmas[0]))
    # the grid's spacing in log sigma near sigma* is ~0.02; Euler's trajectory error adds a little
    assert abs(math.log(found.sigma) - math.log(want)) < 0.06, (found.sigma, want)
    assert found.objective.shape == (401,) and found.step_difference.shape == (400,)
    assert found.fraction == found.tau / 400


def test_batched_and_two_call_pairs_agree(caplog):
    model, sigmas, z = GaussianClasses(), sampling.get_sigmas(GaussianClasses(), 12, "karras"), noise(4)
    labels = {k: torch.full((4,), k) for k in (0, 1)}
    batched = switching.score_difference_curve(model, z, sigmas, {"class_labels": labels[0]}, {"class_labels": labels[1]}, disable=True)
    assert model.calls == 12  # one call per step for both conditions
    with caplog.at_level(logging.INFO, logger="fair_core.switching"):
        split = switching.score_difference_curve(model, z, sigmas, {"class_labels": labels[0]}, {"class_labels": [1, 1, 1, 1]}, disable=True)
    assert "two model calls per step" in caplog.text and model.calls == 12 + 24
    assert torch.allclose(batched, split)


def test_switch_endpoints_and_alternate_direction():
    model = GaussianClasses(s=0.1)  # narrow, so generate's clamp to [-1, 1] does not move the means
    kw = dict(n=400, steps=30, s0=0, s1=1, sampler="euler", disable=True)
    never, _, sigma_never = switching.sample_switched(model, tau=30, direction="s0->s1", **kw)
    always, _, sigma_always = switching.sample_switched(model, tau=0, direction="s0->s1", **kw)
    assert sigma_never == 0.0 and sigma_always == pytest.approx(model.sigma_max)
    assert torch.allclose(never.mean(0).flatten(), MU[0], atol=0.03)
    assert torch.allclose(always.mean(0).flatten(), MU[1], atol=0.03)
    both, _, _ = switching.sample_switched(model, tau=30, direction="alternate", **kw)
    assert torch.allclose(both[:200].mean(0).flatten(), MU[0], atol=0.03)
    assert torch.allclose(both[200:].mean(0).flatten(), MU[1], atol=0.03)
    before, after = switching.switch_labels("alternate", 3, 7, 5)
    assert before.tolist() == [3, 3, 7, 7, 7] and after.tolist() == [7, 7, 3, 3, 3]


def test_tau_transfers_between_grids_as_a_sigma():
    model = GaussianClasses()
    a, b = sampling.get_sigmas(model, 20, "karras"), sampling.get_sigmas(model, 50, "karras")
    for tau in (0, 7, 20):
        assert switching.tau_of_sigma(a, switching.sigma_of_tau(a, tau)) == tau
    moved = switching.tau_of_sigma(b, switching.sigma_of_tau(a, 7))
    assert b[moved - 1] > a[7] >= b[moved]  # the same noise level on the finer grid


def test_switching_costs_one_call_per_step():
    """After the search, switched sampling evaluates one condition per step: exactly vanilla's model calls."""
    cfg = UNetConfig(block_out_channels=(8, 16), layers_per_block=1, attention_levels=(False, False), num_classes=2,
                     condition="colour", sample_size=8)
    model = DiscreteVPDenoiser(build_unet(cfg), cfg)
    calls = []
    model.unet.register_forward_hook(lambda *a: calls.append(1))
    sampling.generate(model, 6, 5, class_labels=torch.zeros(6, dtype=torch.long), cfg_scale=2.0, disable=True)
    vanilla, calls[:] = len(calls), []
    switching.sample_switched(model, 6, 5, 0, 1, tau=2, cfg_scale=2.0, disable=True)
    assert len(calls) == vanilla == 5
    calls[:] = []
    _, search, _ = switching.sample_switched(model, 6, 5, 0, 1, tau="auto", search_n=4, cfg_scale=2.0, disable=True)
    assert len(calls) == 10 and 0 <= search.tau <= 5  # 5 batched search calls (both conditions), then 5


def test_bad_input_is_named():
    model = GaussianClasses()
    sigmas = sampling.get_sigmas(model, 10, "karras")
    with pytest.raises(FairSamplingError, match="search batch of at least 2"):
        switching.search_tau(model, noise(1), sigmas, 0, 1)
    with pytest.raises(FairSamplingError, match=r"tau must be in \[0, 10\], got 11"):
        switching.sample_switched(model, 4, 10, 0, 1, tau=11)
    with pytest.raises(FairSamplingError, match="tau must be 'auto' or a step index"):
        switching.sample_switched(model, 4, 10, 0, 1, tau="middle")
    with pytest.raises(FairSamplingError, match="direction must be one of"):
        switching.sample_switched(model, 4, 10, 0, 1, tau=3, direction="both")
    with pytest.raises(FairSamplingError, match="weighting must be one of"):
        switching.step_weights(sigmas, "sqrt")


def test_identical_conditions_warn_of_a_flat_curve(caplog):
    model = GaussianClasses()
    with caplog.at_level(logging.WARNING, logger="fair_core.switching"):
        found = switching.search_tau(model, noise(4), sampling.get_sigmas(model, 10, "karras"), 1, 1, disable=True)
    assert "flat" in caplog.text and float(found.objective.abs().max()) == 0.0


def test_switch_denoiser_conditions_each_sample_by_its_own_noise_level():
    seen = []

    class Recorder(torch.nn.Module):
        cfg = sigmas = sigma_min = sigma_max = None

        def forward(self, x, sigma, class_labels=None):
            seen.append(class_labels.tolist())
            return x

    d = switching.SwitchDenoiser(Recorder(), sigma_switch=1.0)
    x, before, after = torch.zeros(3, 1, 2, 2), torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1])
    d(x, torch.tensor(5.0), class_labels=before, class_labels_after=after)  # all above the switch: s0
    d(x, torch.tensor([5.0, 1.0, 0.5]), class_labels=before, class_labels_after=after)  # sigma == switch is after
    d(x, torch.tensor(0.2), class_labels=before, class_labels_after=after)
    assert seen == [[0, 0, 0], [0, 1, 1], [1, 1, 1]]
