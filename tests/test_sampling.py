"""Samplers against an analytic data distribution, whose exact denoiser is known in closed form.

Data x0 ~ N(mu, s0^2) per dimension, so p_sigma = N(mu, s0^2 + sigma^2) and the exact denoiser is
D(x, sigma) = (s0^2 x + sigma^2 mu) / (s0^2 + sigma^2). A correct sampler maps N(0, sigma_max^2) noise to
samples whose mean and variance approach mu and s0^2 as the number of steps grows.
"""
import dataclasses

import pytest
import torch

from fair_core import checkpoints, sampling
from fair_core.denoiser import vp_alphas_cumprod
from fair_core.errors import FairSamplingError
from fair_core.models import UNET_CONFIGS, UNetConfig

MU, S0 = 0.3, 0.5
N = 40000  # Monte-Carlo std of the mean: S0/sqrt(N) = 0.0025; of the variance: S0^2*sqrt(2/N) = 0.0018


class Gaussian(torch.nn.Module):
    """Exact denoiser of N(MU, S0^2) data on the real DDPM linear schedule (sigma in [0.01, 157])."""

    def __init__(self):
        super().__init__()
        ab = vp_alphas_cumprod(UNetConfig())
        self.sigmas = ((1 - ab) / ab).sqrt().float()
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])
        self.calls = 0

    def forward(self, x, sigma, **kwargs):
        self.calls += 1
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        return (S0**2 * x + s**2 * MU) / (S0**2 + s**2)


def run(name, schedule, steps, **options):
    model = Gaussian()
    sigmas = sampling.get_sigmas(model, steps, schedule)
    x = torch.randn(N, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float() * sigmas[0]
    if name == "ddim" and options.get("eta"):
        options["generator"] = torch.Generator().manual_seed(1)
    out = sampling.SAMPLERS[name](model, x, sigmas, disable=True, **options)
    return out.mean().item(), out.var().item()


# (sampler, steps per schedule, relative tolerance on the variance). First-order methods need more steps for the
# same error, and the uniform (DDIM) spacing puts few steps at small sigma, where this narrow distribution is
# resolved. Each tolerance is above the discretisation error measured at that step count (dpmpp_2m + uniform:
# +3.9 % at 100 steps, +13 % at 50) and well above Monte-Carlo noise.
CASES = [("euler", {"karras": 200, "uniform": 200}, 0.05), ("heun", {"karras": 50, "uniform": 50}, 0.03),
         ("ddim", {"karras": 200, "uniform": 200}, 0.05), ("dpmpp_2m", {"karras": 50, "uniform": 100}, 0.05)]


@pytest.mark.parametrize("schedule", sampling.SCHEDULES)
@pytest.mark.parametrize("name, steps, rtol", CASES)
def test_sampler_reproduces_mean_and_variance(name, steps, rtol, schedule):
    mean, var = run(name, schedule, steps[schedule])
    assert abs(mean - MU) < 0.012, mean  # ~4 Monte-Carlo stds
    assert abs(var - S0**2) / S0**2 < rtol, var


def test_ddim_eta_one_is_ancestral_and_still_correct():
    mean, var = run("ddim", "karras", 400, eta=1.0)
    assert abs(mean - MU) < 0.012 and abs(var - S0**2) / S0**2 < 0.06


def test_convergence_order():
    """Euler's variance error shrinks ~2x per doubling of steps (order 1); Heun's faster (order 2: measured 3.4x
    from 20 to 40 steps, where the last, first-order step to sigma = 0 starts to dominate)."""
    err = {name: [abs(run(name, "karras", n)[1] - S0**2) for n in (20, 40)] for name in ("euler", "heun")}
    assert 1.6 < err["euler"][0] / err["euler"][1] < 2.6, err
    assert err["heun"][0] / err["heun"][1] > 3.0, err
    assert err["heun"][1] < err["euler"][1] / 3


def test_ddim_eta_zero_is_euler():
    model = Gaussian()
    sigmas = sampling.get_sigmas(model, 10, "karras")
    x = torch.randn(100, 1, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    assert torch.allclose(sampling.sample_ddim(model, x, sigmas, disable=True), sampling.sample_euler(model, x, sigmas, disable=True))


def test_schedules():
    model = Gaussian()
    k = sampling.get_sigmas(model, 10, "karras")
    u = sampling.get_sigmas(model, 10, "uniform")
    for s in (k, u):
        assert len(s) == 11 and s[-1] == 0 and (s[:-1].diff() < 0).all()
        assert s[0] == pytest.approx(model.sigma_max, rel=1e-5) and s[-2] == pytest.approx(model.sigma_min, rel=1e-5)


def test_callback_sees_every_step_and_can_interrupt():
    model, seen = Gaussian(), []
    sigmas = sampling.get_sigmas(model, 5, "karras")
    sampling.sample_dpmpp_2m(model, torch.randn(4, 1) * sigmas[0], sigmas, callback=lambda d: seen.append(d["i"]), disable=True)
    assert seen == [0, 1, 2, 3, 4]

    class Stop(Exception):
        pass

    def stop(d):
        if d["i"] == 2:
            raise Stop

    with pytest.raises(Stop):
        sampling.sample_heun(model, torch.randn(4, 1) * sigmas[0], sigmas, callback=stop, disable=True)


class TwoClass(torch.nn.Module):
    """Toy conditional denoiser: label 0 -> +1, 1 -> -1, null (-1) -> 0; counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, sigma, class_labels=None):
        self.calls += 1
        value = torch.where(class_labels == 0, 1.0, torch.where(class_labels == 1, -1.0, 0.0))
        return x * 0 + value.view(-1, 1)


def test_cfg_is_one_batched_call_and_extrapolates():
    toy, x, sigma, labels = TwoClass(), torch.zeros(3, 1), torch.ones(3), torch.tensor([0, 1, 0])
    assert torch.equal(sampling.CFGDenoiser(toy, 1.0)(x, sigma, class_labels=labels), toy(x, sigma, class_labels=labels))
    toy.calls = 0
    out = sampling.CFGDenoiser(toy, 3.0)(x, sigma, class_labels=labels)
    assert toy.calls == 1
    assert out.flatten().tolist() == [3.0, -3.0, 3.0]  # uncond 0 + 3 * (cond - 0)


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return checkpoints.KINDS["dsm"].build(UNET_CONFIGS["tiny"]).eval()


def test_generate_is_seeded_and_independent_of_batch_size():
    model = Gaussian()
    a = sampling.generate(model, 5, 8, seed=7, batch_size=5, disable=True, channels=1, size=2)
    b = sampling.generate(model, 5, 8, seed=7, batch_size=2, disable=True, channels=1, size=2)
    c = sampling.generate(model, 5, 8, seed=8, batch_size=5, disable=True, channels=1, size=2)
    assert a.shape == (5, 1, 2, 2)
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c)


def test_generate_with_a_unet(tiny_unet):
    labels = torch.arange(5) % 10
    a = sampling.generate(tiny_unet, 5, 3, class_labels=labels, seed=7, disable=True)
    assert a.shape == (5, 3, 28, 28) and a.abs().max() <= 1 and torch.isfinite(a).all()
    cfg = sampling.generate(tiny_unet, 5, 3, class_labels=labels, seed=7, cfg_scale=2.0, disable=True)
    assert cfg.shape == a.shape and not torch.allclose(a, cfg)


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "plms"}, "sampler must be one of"),
    ({"schedule": "cosine"}, "schedule must be one of"),
    ({"steps": 0}, r"steps must be in \[1, inf\), got 0"),
    ({"n": 0}, r"n must be in \[1, inf\), got 0"),
    ({"batch_size": 0}, "batch_size must be"),
    ({"eta": -1.0}, "eta must be"),
    ({"eta": 0.5}, "eta applies to sampler='ddim' only"),
    ({"cfg_scale": -2.0}, "cfg_scale must be"),
    ({"class_labels": torch.tensor([1, 2])}, r"class_labels must have shape \(3,\)"),
    ({"class_labels": torch.tensor([1, 2, 10])}, r"class_labels must be in \[0, 9\] or -1 \(unconditional\), got \[1, 2, 10\]"),
])
def test_generate_bad_input(tiny_unet, kwargs, message):
    args = {"n": 3, "steps": 2} | kwargs
    with pytest.raises(FairSamplingError, match=message):
        sampling.generate(tiny_unet, disable=True, **args)


def test_generate_checks_labels_of_wrapped_models_before_sampling(tiny_unet):
    """Label values are checked once on the host (the denoiser skips the check for labels on a GPU): also the
    after-switch labels of a switching model, which reach the model through extra_args."""
    from fair_core.switching import SwitchDenoiser

    switched = SwitchDenoiser(sampling.CFGDenoiser(tiny_unet, 2.0), sigma_switch=1.0)
    message = r"class_labels must be in \[0, 9\] or -1 \(unconditional\), got \[0, 12\]"
    with pytest.raises(FairSamplingError, match=message):  # through both wrappers, without calling the model
        sampling.check_label_values(switched, {"class_labels": torch.tensor([0, 1]), "class_labels_after": torch.tensor([0, 12])})
    sampling.check_label_values(switched, {"class_labels": torch.tensor([0, -1]), "other": torch.tensor([99])})
    switched = SwitchDenoiser(tiny_unet, sigma_switch=1.0)
    with pytest.raises(FairSamplingError, match=message):
        sampling.generate(switched, 2, 2, class_labels=torch.tensor([0, 1]), extra_args={"class_labels_after": torch.tensor([0, 12])},
                          disable=True)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_adapter_recovers_x0_from_an_exact_network(prediction):
    """With a network that outputs the exact eps (or v) for a known x0, the Denoiser must return that x0."""
    cfg = dataclasses.replace(UNET_CONFIGS["tiny"], prediction_type=prediction)
    model = checkpoints.KINDS["dsm"].build(cfg)
    x0, eps = torch.randn(4, 3, 28, 28), torch.randn(4, 3, 28, 28)
    sigma = torch.tensor([0.05, 0.7, 3.0, 60.0])
    s = sigma.view(-1, 1, 1, 1)
    alpha, sig_vp = (1 + s**2).rsqrt(), s * (1 + s**2).rsqrt()  # x_vp = alpha x0 + sig_vp eps

    def oracle(x_vp, t, labels):
        return eps if prediction == "epsilon" else alpha * eps - sig_vp * x0

    model.network = oracle
    assert torch.allclose(model(x0 + s * eps, sigma), x0, atol=1e-4)


def test_sigma_timestep_round_trip(tiny_unet):
    s = torch.logspace(torch.log10(torch.tensor(tiny_unet.sigma_min)), torch.log10(torch.tensor(tiny_unet.sigma_max)), 50)
    assert torch.allclose(tiny_unet.t_to_sigma(tiny_unet.sigma_to_t(s)), s, rtol=1e-4)
    assert torch.allclose(tiny_unet.sigma_to_t(tiny_unet.sigmas[[0, 10, 999]]), torch.tensor([0.0, 10.0, 999.0]), atol=1e-3)


def test_unconditional_model_takes_only_the_null_label():
    model = checkpoints.KINDS["dsm"].build(dataclasses.replace(UNET_CONFIGS["tiny"], condition="none", num_classes=0))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        plain = model(x, torch.ones(2))
        assert plain.shape == (2, 3, 28, 28)
        assert torch.equal(model(x, torch.ones(2), class_labels=torch.tensor([-1, -1])), plain)  # -1 = no condition
    with pytest.raises(FairSamplingError, match=r"unconditional .* the null label -1, got \[-1, 2\]"):
        model(x, torch.ones(2), class_labels=torch.tensor([2, -1]))
