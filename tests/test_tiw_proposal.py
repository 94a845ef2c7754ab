"""``training tiw --bias-sampling ratio``: biased rows drawn in proportion to ``w0^rho`` keep the loss's expectation
exactly, follow each row's level, cancel the weight where ``w_t = w0``, and ``rho`` is the fitted slope."""
import math

import pytest
import torch
from torch import nn

from fair_core.density_ratio import DiscriminatorConfig
from fair_core.errors import FairSamplingError
from fair_core.models import named_config
from training.tiw import draw_batch
from training.tiw_proposal import build_proposal, fit_rho, proposal_tables

# a 90:10 biased set against a 50:50 reference: w0 = 0.5 / 0.9 on the majority, 0.5 / 0.1 on the minority
W0 = torch.tensor([0.5 / 0.9] * 9 + [5.0])


def two_level_proposal(log_w0=W0.log()):
    return proposal_tables(log_w0, torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.01, 1.0, 10.0]), torch.tensor([0.01, 1.0, 10.0, 9.0]))


def probabilities(p, level: int) -> torch.Tensor:
    n = p.log_w0.shape[0]
    cdf = p.cdf[level * n:(level + 1) * n] - level
    return torch.diff(cdf, prepend=torch.zeros(1, dtype=cdf.dtype))


@pytest.mark.parametrize("level", [0, 1, 2])
def test_the_factor_keeps_every_expectation_exactly(level):
    """sum_i q_i * (Z / w0_i^rho) * f_i = mean_i f_i for any f: the same loss in expectation, any rho."""
    torch.manual_seed(level)
    log_w0 = torch.randn(50, dtype=torch.float64) * 1.5
    p = two_level_proposal(log_w0)
    q = probabilities(p, level)
    idx, t = torch.arange(50), torch.full((50,), level)
    f = torch.randn(50, dtype=torch.float64)
    assert torch.allclose((q * p.log_factor(idx, t).double().exp() * f).sum(), f.mean(), atol=1e-5)
    rho = float(p.rho[level])
    assert torch.allclose(q, (rho * log_w0).exp() / (rho * log_w0).exp().sum())  # q proportional to w0^rho


def test_draws_follow_each_row_s_level():
    p = two_level_proposal()
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 1, 2, 3] * 25_000)  # timestep 3 (sigma 9) is nearest to the sigma-10 level
    idx = p.draw(t, g)
    minority = idx == 9
    share = [float(minority[t == k].double().mean()) for k in range(4)]
    want = [0.1, 5**0.5 / (5**0.5 + 9 * (0.5 / 0.9) ** 0.5), 5 / (5 + 5), 0.5]
    assert all(abs(s - w) < 0.012 for s, w in zip(share, want)), share
    assert int(idx.min()) >= 0 and int(idx.max()) <= 9


def test_rho_one_makes_the_weighted_row_constant():
    """Where w_t = w0 the weighted loss of every drawn row carries the same factor Z: no heavy rows left."""
    p = two_level_proposal()
    idx, t = torch.arange(10), torch.full((10,), 2)
    weight = (p.log_factor(idx, t) + W0.log()).exp()
    assert torch.allclose(weight, torch.full((10,), float(W0.mean())), atol=1e-5)
    second_moment = [float((probabilities(p, k).float() * ((p.log_factor(idx, torch.full((10,), k)) + W0.log()).exp()) ** 2).sum())
                     for k in (0, 2)]  # rho = 0 is the uniform draw
    assert second_moment[0] == pytest.approx(float((W0**2).mean()), rel=1e-4)  # 2.78
    assert second_moment[1] == pytest.approx(float(W0.mean()) ** 2, rel=1e-4) and second_moment[1] < second_moment[0] / 2.5


@pytest.mark.parametrize("slope, want", [(0.4, 0.4), (2.0, 1.0), (-1.0, 0.0)])
def test_rho_is_the_slope_of_log_wt_on_log_w0_clamped(slope, want):
    log_w0 = torch.linspace(-1, 2, 40)
    assert fit_rho(log_w0, slope * log_w0 + 0.3) == pytest.approx(want, abs=1e-6)


def test_rho_is_zero_where_w0_does_not_vary():
    assert fit_rho(torch.zeros(8), torch.randn(8)) == 0.0


class Images:
    """A biased set whose images are constants u * 1: the stub discriminator below reads u back."""
    channels = 1

    def __init__(self, n: int):
        self.u = torch.randn(n, generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return len(self.u)

    def images(self, idx):
        return self.u[idx].view(-1, 1, 1, 1).expand(-1, 1, 28, 28).clone()


class StubDiscriminator(nn.Module):
    """``log w_t(x) = a(sigma) mean(x)`` with ``a = 1 / (1 + sigma^2)``: the slope of log w_t on log w0 is a(sigma)."""
    cfg = DiscriminatorConfig(arch="cnn", channels=1, widths=(4,))

    def forward(self, x, sigma, class_labels=None):
        return x.flatten(1).mean(1) / (1 + sigma**2)


@pytest.mark.parametrize("mode", ["fit", "time_independent"])
def test_build_proposal_reads_w0_at_sigma_min_and_fits_rho_per_level(mode):
    sigmas = torch.logspace(-2, 2, 1000)
    weight = "time_dependent" if mode == "fit" else "time_independent"
    p = build_proposal(StubDiscriminator(), Images(3000), sigmas, "cpu", None, seed=0, weight=weight)
    assert torch.allclose(p.log_w0.float(), Images(3000).u / (1 + 1e-4), atol=1e-5)
    a = 1 / (1 + p.level_sigma**2)
    want = a / a[0] if mode == "fit" else torch.ones_like(a)  # w0 itself is read at sigma_min
    assert torch.allclose(p.rho, want, atol=0.03), (p.rho, want)
    assert p.level_of_t.shape == (1000,) and int(p.level_of_t[0]) == 0 and int(p.level_of_t[-1]) == len(a) - 1
    assert float(p.level_sigma[0]) == pytest.approx(0.01) and float(p.level_sigma[-1]) == pytest.approx(100.0)
    record = p.record()
    assert record["mode"] == "ratio" and len(record["rho"]) == len(a) and 0 < record["w0_ess_fraction"] <= 1
    assert math.isclose(record["w0_mean"], float(p.log_w0.exp().mean()), rel_tol=1e-6)


def test_build_proposal_refuses_an_unknown_weight():
    with pytest.raises(FairSamplingError, match=r"weight must be one of \['time_dependent', 'time_independent'\], got 'iw'"):
        build_proposal(StubDiscriminator(), Images(10), torch.logspace(-2, 2, 10), "cpu", None, weight="iw")


class Part:
    """A training set's interface whose image ``i`` is the constant ``i + offset`` and whose label is ``i % 10``."""

    channels = 3

    def __init__(self, n, offset):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def images(self, idx):
        return (idx + self.offset).float().view(-1, 1, 1, 1).expand(-1, 3, 28, 28)

    def labels(self, condition, idx):
        return idx % 10


class Model:
    cfg = named_config("unet", "tiny")


def drawn(batch, share, proposal, seed):
    """``draw_batch`` from 90 biased and 10 reference images (offset 1000): ``(value, labels, is_bias, t, log_factor)``."""
    x0, labels, is_bias, t, log_factor = draw_batch(batch, Part(90, 0), Part(10, 1000), Model.cfg, proposal, Model(),
                                                    torch.Generator().manual_seed(seed), share)
    value = x0[:, 0, 0, 0]
    assert bool((value[is_bias] < 90).all()) and bool((value[~is_bias] >= 1000).all())
    kept = labels >= 0  # the rest dropped to the null label (class dropout)
    assert torch.equal(labels[kept], value[kept].long() % 10) and float(kept.double().mean()) > 0.8
    return value, labels, is_bias, t, log_factor


def test_draw_batch_keeps_the_union_s_share_and_reads_the_drawn_images():
    sigmas = torch.logspace(-2, 2, Model.cfg.num_train_timesteps)
    flat = proposal_tables(torch.zeros(90), torch.ones(2), torch.tensor([0.01, 100.0]), sigmas)
    _, _, is_bias, t, log_factor = drawn(4000, "union", flat, 0)
    assert abs(float(is_bias.double().mean()) - 0.9) < 0.02 and t.shape == (4000,)
    assert torch.allclose(log_factor, torch.zeros(4000), atol=1e-6)  # w0 = 1 everywhere: Z / w0^rho = 1


@pytest.mark.parametrize("with_proposal", [False, True])
def test_draw_batch_draws_the_reference_share_asked_for(with_proposal):
    """``--reference-share``: that share of reference rows, every image of both parts drawn, and with a proposal each
    biased row carries its own factor (``w0`` varies here), the reference rows none."""
    sigmas = torch.logspace(-2, 2, Model.cfg.num_train_timesteps)
    log_w0 = torch.linspace(-1.5, 1.5, 90)
    proposal = proposal_tables(log_w0, torch.tensor([1.0, 0.0]), torch.tensor([0.01, 100.0]), sigmas) if with_proposal else None
    for share in (0.25, 0.5):
        value, _, is_bias, t, log_factor = drawn(4000, share, proposal, 1)
        assert abs(float((~is_bias).double().mean()) - share) < 0.025 and (t is None) == (proposal is None)
        assert len(value[is_bias].unique()) == 90 and len(value[~is_bias].unique()) == 10
        assert bool((log_factor[~is_bias] == 0).all())
        if proposal is None:
            assert bool((log_factor == 0).all())
        else:
            want = proposal.log_factor(value[is_bias].long(), t[is_bias])
            assert torch.allclose(log_factor[is_bias], want) and float(want.std()) > 0.1
