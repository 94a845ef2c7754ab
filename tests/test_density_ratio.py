"""TIW-DSM on analytic 1-D Gaussian mixtures: biased 90:10, reference 50:50, closed-form noised densities and scores.

(a) a time-dependent discriminator, trained by either objective, recovers w_t across noise levels; (b) the TIW-DSM
target's conditional expectation is the unbiased score, and the loss equals score matching on the reference up to a
constant (Theorem 1), while the ablations and the official code's correction do not; plus clipping and bad input.
Training a score model with TIW-DSM, (c), is in ``bench/bench_tiw_toy.py`` (about a minute).
"""
import copy
import functools
import math

import pytest
import torch

from fair_core.density_ratio import (DiscriminatorConfig, TimeDependentDiscriminator, discriminator_loss, log_ratio, log_ratio_and_grad,
                                     correction_matching_loss, ratio, tiw_dsm_loss, tiw_dsm_target,
                                     weighted_discriminator_loss)
from fair_core.errors import FairSamplingError
from fair_core.toy_gmm import GaussianMixture, true_grad_log_ratio, true_log_ratio

MEANS = ((-1.5,), (1.5,))
BIAS = GaussianMixture((0.9, 0.1), MEANS, 0.5)
REF = GaussianMixture((0.5, 0.5), MEANS, 0.5)
SIGMAS = (0.02, 0.1, 0.3, 1.0, 3.0, 10.0)


def train_discriminator(steps=500, batch=256, seed=0, objective="bce", init=None, lr=1e-2):
    """``bce``: reference vs biased samples; ``weighted``: biased samples only, with the exact clean ratio w(x0);
    ``gradient``: ``weighted`` plus 0.3 x the correction's regression with the exact biased denoiser as baseline,
    fine-tuning ``init`` (as ``training/discriminator.py`` fine-tunes the weighted discriminator)."""
    torch.manual_seed(seed)
    disc = copy.deepcopy(init) if init is not None else \
        TimeDependentDiscriminator(DiscriminatorConfig(arch="mlp", channels=1, widths=(64, 64), embed_dim=32))
    opt = torch.optim.Adam(disc.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        (xr, _), (x0, _) = REF.sample(batch, g), BIAS.sample(batch, g)
        sigma = torch.exp(torch.randn(batch, generator=g) * 1.6 - 0.5)  # wide log-normal; the same sigmas for both classes
        xr = xr + sigma[:, None] * torch.randn(xr.shape, generator=g)
        xb = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g)
        if objective in ("weighted", "gradient"):
            w0 = true_log_ratio(REF, BIAS, x0, torch.zeros(batch)).exp().float()
            loss = weighted_discriminator_loss(disc, xb, sigma, w0)
            if objective == "gradient":
                b, lam = BIAS.denoiser(xb, sigma).float(), (sigma**2 + 1) / sigma**2
                loss = loss + 0.3 * correction_matching_loss(disc, xb, sigma, x0, w0, b, lam)
        else:
            loss = discriminator_loss(disc, xr, sigma, xb, sigma)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return disc.eval()


@functools.lru_cache
def trained(objective):
    torch.set_num_threads(1)
    if objective == "gradient":
        return train_discriminator(objective="gradient", init=trained("weighted"), lr=3e-3, seed=1)
    return train_discriminator(objective=objective)


@pytest.fixture(scope="module", params=["bce", "weighted", "gradient"])
def disc(request):
    return trained(request.param)


def grid_weights(x, sigma):
    """Quadrature weights of the grid ``x`` under the pooled noised density (where the ratio matters)."""
    p = 0.5 * (REF.log_prob(x, sigma).exp() + BIAS.log_prob(x, sigma).exp())
    return p / p.sum()


@pytest.mark.parametrize("sigma", SIGMAS)
def test_a_discriminator_recovers_the_time_dependent_ratio(disc, sigma):
    x = torch.linspace(-3.5, 3.5, 141)[:, None]
    s = torch.full((len(x),), sigma)
    lw, grad = log_ratio_and_grad(disc, x, s)
    true = true_log_ratio(REF, BIAS, x, s)
    q = grid_weights(x, s)
    err = float(((lw - true).abs() * q).sum())
    assert err < 0.12, f"mean |log w - log w_true| = {err:.3f} at sigma={sigma}"
    # at the two modes: w = 5/9 at the majority mode, 5 at the minority mode when sigma is small
    if sigma <= 0.3:
        w_modes = ratio(disc, torch.tensor([[-1.5], [1.5]]), torch.full((2,), sigma))
        true_modes = true_log_ratio(REF, BIAS, torch.tensor([[-1.5], [1.5]]), torch.full((2,), sigma)).exp()
        assert torch.allclose(w_modes.double(), true_modes, rtol=0.25), (w_modes, true_modes)
    true_grad = true_grad_log_ratio(REF, BIAS, x, s)[:, 0]
    gerr = float(((grad[:, 0] - true_grad).abs() * q).sum())
    assert gerr < 0.25 + 0.1 * float(true_grad.abs().max()), f"grad log w error {gerr:.3f} at sigma={sigma}"


def posterior_mean(data: GaussianMixture, x, sigma, x0_grid):
    """``E[x0 | x]`` by quadrature over ``x0`` (independent of the closed-form Tweedie denoiser)."""
    logp = data.log_prob(x0_grid, 0.0)[None, :] - (x - x0_grid[:, 0][None, :]) ** 2 / (2 * sigma**2)  # (N, M)
    post = torch.softmax(logp, dim=1)
    return post @ x0_grid[:, 0]


@pytest.mark.parametrize("sigma", SIGMAS)
def test_b_expected_tiw_target_is_the_unbiased_score(sigma):
    """Pointwise minimiser of the weighted loss is E_bias[x0 + sigma^2 grad log w | x]; it must equal the reference score."""
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None]
    x0_grid = torch.linspace(-6, 6, 4001, dtype=torch.float64)[:, None]
    s = torch.full((len(x),), sigma, dtype=torch.float64)
    grad = true_grad_log_ratio(REF, BIAS, x, s)
    expected_target = posterior_mean(BIAS, x[:, 0:1], sigma, x0_grid)[:, None] + tiw_dsm_target(torch.zeros_like(x), s, grad)
    implied_score = (expected_target - x) / sigma**2
    assert torch.allclose(implied_score, REF.score(x, s), atol=1e-6 / sigma**2 + 1e-6)
    plain = (posterior_mean(BIAS, x[:, 0:1], sigma, x0_grid)[:, None] - x) / sigma**2  # weighting-only / plain DSM
    assert (plain - REF.score(x, s)).abs().max() > 0.01 / max(sigma, 1) ** 2


def quadrature_losses(denoiser, sigma, mode):
    """``(L_mode on p_bias, plain DSM on p_ref)`` for ``denoiser`` at one sigma, by 2-D quadrature over (x0, x)."""
    x0 = torch.linspace(-5, 5, 401, dtype=torch.float64)
    x = torch.linspace(-5 - 4 * sigma, 5 + 4 * sigma, 401, dtype=torch.float64)
    X0, X = torch.meshgrid(x0, x, indexing="ij")
    X0, X = X0.reshape(-1, 1), X.reshape(-1, 1)
    s = torch.full((len(X),), sigma, dtype=torch.float64)
    kernel = torch.exp(-((X - X0)[:, 0] ** 2) / (2 * sigma**2)) / math.sqrt(2 * math.pi * sigma**2)
    cell = (x0[1] - x0[0]) * (x[1] - x[0])
    lw, grad = true_log_ratio(REF, BIAS, X, s), true_grad_log_ratio(REF, BIAS, X, s)
    D = denoiser(X)
    pb = BIAS.log_prob(X0, 0.0).exp() * kernel * cell
    pr = REF.log_prob(X0, 0.0).exp() * kernel * cell
    l_tiw = (tiw_dsm_loss(D, X0, s, lw, grad, mode=mode).double() * pb).sum()
    l_ref = (tiw_dsm_loss(D, X0, s, lw, grad, mode="none").double() * pr).sum()
    return float(l_tiw), float(l_ref)


@pytest.mark.parametrize("sigma", (0.3, 1.0))
def test_b_theorem_1_tiw_loss_is_reference_score_matching_plus_a_constant(sigma):
    models = [lambda X: 0.5 * X, lambda X: torch.tanh(2 * X) * 1.4, lambda X: REF.denoiser(X, sigma), lambda X: BIAS.denoiser(X, sigma)]
    tiw, ref = zip(*(quadrature_losses(m, sigma, "tiw") for m in models))
    consts = [a - b for a, b in zip(tiw, ref)]
    assert max(consts) - min(consts) < 1e-6 * max(ref), consts  # same constant for every model
    assert min(ref) == pytest.approx(ref[2])  # the reference denoiser is the best of these under the TIW loss too
    assert min(tiw) == pytest.approx(tiw[2])
    for mode in ("weight", "correction"):  # the ablations are not score matching on p_ref
        abl, _ = zip(*(quadrature_losses(m, sigma, mode) for m in models))
        gaps = [a - b for a, b in zip(abl, ref)]
        assert max(gaps) - min(gaps) > 1e-3 * max(ref), (mode, gaps)


@pytest.mark.parametrize("share", (0.05, 0.5, 0.9))
def test_any_share_of_reference_rows_keeps_the_minimiser(share):
    """``training tiw --reference-share A``: ``A`` plain DSM on p_ref plus ``1 - A`` TIW-DSM on p_bias is score matching
    on p_ref plus a constant, for any ``A``; the same share of plain DSM on p_bias is not."""
    sigma = 1.0
    models = [lambda X: 0.5 * X, lambda X: torch.tanh(2 * X) * 1.4, lambda X: REF.denoiser(X, sigma), lambda X: BIAS.denoiser(X, sigma)]
    mixed, plain = [], []
    for m in models:
        l_tiw, l_ref = quadrature_losses(m, sigma, "tiw")
        l_dsm_bias, _ = quadrature_losses(m, sigma, "none")
        mixed.append(share * l_ref + (1 - share) * l_tiw - l_ref)
        plain.append(share * l_ref + (1 - share) * l_dsm_bias - l_ref)
    assert max(mixed) - min(mixed) < 1e-6 * abs(max(mixed, key=abs)), mixed  # the same constant for every model
    assert max(plain) - min(plain) > 1e-3, plain


@pytest.mark.parametrize("sigma", (0.3, 1.0))
def test_official_code_correction_is_not_the_unbiased_score(sigma):
    """Official TIW_EDMLoss on the 50:50 pool of D_bias and D_ref: weight 2d, target x0 - sigma^2 grad_x d.

    With d = p_ref / (p_ref + p_bias) its minimiser is E_pool[x0 | x] - sigma^2 grad d; the paper's form
    E_pool[x0 | x] + sigma^2 grad log(2d) is the reference score. We check both and measure the gap.
    """
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None].requires_grad_(True)
    s = torch.full((61,), sigma, dtype=torch.float64)
    d = torch.sigmoid(true_log_ratio(REF, BIAS, x, s))
    (grad_d,) = torch.autograd.grad(d.sum(), x)
    x, d = x.detach(), d.detach()
    pool = GaussianMixture((0.7, 0.3), MEANS, 0.5)  # (p_bias + p_ref) / 2
    e_x0 = pool.denoiser(x, s)
    paper = (e_x0 + sigma**2 * grad_d / d[:, None] - x) / sigma**2
    official = (e_x0 - sigma**2 * grad_d - x) / sigma**2
    truth = REF.score(x, s)
    assert torch.allclose(paper, truth, atol=1e-8)
    paper_c, official_c = sigma**2 * grad_d / d[:, None], -(sigma**2) * grad_d
    assert torch.allclose(official_c, -d[:, None] * paper_c)  # the relation stated in fair_core/density_ratio.py
    q = grid_weights(x, s)[:, None]
    gap_official = float(((official - truth).abs() * q).sum())
    gap_uncorrected = float(((e_x0 - x) / sigma**2 - truth).abs().mul(q).sum())  # plain DSM on the pool
    assert gap_official > gap_uncorrected > 0.01, (gap_official, gap_uncorrected)  # worse than no correction at all


def test_clipping_bounds_the_ratio_and_zeroes_its_gradient():
    cfg = DiscriminatorConfig(arch="mlp", channels=1, widths=(8,), embed_dim=8, clip=1e-2)
    disc = TimeDependentDiscriminator(cfg)
    with torch.no_grad():
        disc.head.bias.fill_(50.0)  # saturated: d = sigmoid(~50)
    x = torch.randn(16, 1)
    lw, grad = log_ratio_and_grad(disc, x, torch.ones(16))
    assert torch.allclose(lw, torch.full((16,), math.log(0.99 / 0.01)))
    assert torch.equal(grad, torch.zeros_like(grad))
    with torch.no_grad():
        disc.head.bias.fill_(float("nan"))
    with pytest.raises(FairSamplingError, match="non-finite"):
        log_ratio(disc, x, torch.ones(16))


def test_prior_turns_the_logit_into_the_ratio():
    cfg = DiscriminatorConfig(arch="mlp", channels=1, widths=(8,), embed_dim=8, prior_ref=0.05)  # unbalanced batches
    disc = TimeDependentDiscriminator(cfg)
    x = torch.randn(4, 1)
    f = disc(x, torch.ones(4))
    d = torch.sigmoid(f)
    assert torch.allclose(ratio(disc, x, torch.ones(4)), (0.95 / 0.05) * d / (1 - d), rtol=1e-5)


def test_bad_input_is_refused():
    with pytest.raises(FairSamplingError, match="prior_ref"):
        DiscriminatorConfig(prior_ref=1.0)
    with pytest.raises(FairSamplingError, match="clip"):
        DiscriminatorConfig(clip=0.0)
    disc = TimeDependentDiscriminator(DiscriminatorConfig(arch="cnn", channels=3, sample_size=28, widths=(8, 8), embed_dim=8))
    with pytest.raises(FairSamplingError, match=r"\(N, 3, 28, 28\)"):
        disc(torch.randn(2, 3, 32, 32), torch.ones(2))
    with pytest.raises(FairSamplingError, match="mode"):
        tiw_dsm_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.ones(2), torch.zeros(2), torch.zeros(2, 1), mode="iw")
    with pytest.raises(FairSamplingError, match=r"pool must be one of .*mean.*dense.*got 'max'"):
        DiscriminatorConfig(pool="max")
    with pytest.raises(FairSamplingError, match=r"film must be one of .*shift.*scale_shift.*got 'gain'"):
        DiscriminatorConfig(film="gain")


def test_weighted_objective_is_minimised_at_the_mean_clean_ratio():
    """At one noised point with clean ratios w0 of its possible origins, argmin_f L_w = log E[w0] = log w_t."""
    w0 = torch.tensor([0.5, 0.5, 5.0, 0.5, 2.0], dtype=torch.float64)

    def slope(f0):
        f = torch.tensor(f0, dtype=torch.float64, requires_grad=True)
        weighted_discriminator_loss(lambda x, s, y=None: f.expand(len(x)), torch.zeros(5, 1), torch.ones(5), w0).backward()
        return float(f.grad)

    best = math.log(float(w0.mean()))
    assert abs(slope(best)) < 1e-12 and slope(best - 0.1) < 0 < slope(best + 0.1)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_correction_target_has_the_exact_correction_as_its_conditional_mean(sigma):
    """E_bias[(w0 / w_t - 1)(x0 - b(x)) | x] = sigma^2 grad log w_t(x) by quadrature over x0, for b = D_bias and b = 0;
    with w off by a factor 2 in place of w_t it is not."""
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None]
    x0_grid = torch.linspace(-6, 6, 4001, dtype=torch.float64)[:, None]
    s = torch.full((len(x),), sigma, dtype=torch.float64)
    post = torch.softmax(BIAS.log_prob(x0_grid, 0.0)[None, :] - (x - x0_grid[:, 0][None, :]) ** 2 / (2 * sigma**2), dim=1)
    w0 = true_log_ratio(REF, BIAS, x0_grid, torch.zeros(len(x0_grid), dtype=torch.float64)).exp()
    w_t = true_log_ratio(REF, BIAS, x, s).exp()
    truth = sigma**2 * true_grad_log_ratio(REF, BIAS, x, s)[:, 0]
    scale = float(truth.abs().max())
    for b in (BIAS.denoiser(x, s)[:, 0], torch.zeros(len(x), dtype=torch.float64)):
        mean_target = ((w0[None, :] / w_t[:, None] - 1) * (x0_grid[:, 0][None, :] - b[:, None]) * post).sum(1)
        assert torch.allclose(mean_target, truth, atol=1e-6 * max(scale, 1)), (sigma, float((mean_target - truth).abs().max()))
    if sigma <= 3:  # w off by 2, b = 0: off by D_ref / 2 (which vanishes at high noise, where D_ref -> 0)
        wrong = ((w0[None, :] / (2 * w_t[:, None]) - 1) * x0_grid[:, 0][None, :] * post).sum(1)
        assert float((wrong - truth).abs().max()) > 0.1 * scale


def test_correction_matching_loss_is_the_stated_regression():
    """By hand on a tiny MLP: lambda * mean((sigma^2 grad log w - (w0 / w - 1)(x0 - b))^2), and it trains the parameters."""
    torch.manual_seed(0)
    disc = TimeDependentDiscriminator(DiscriminatorConfig(arch="mlp", channels=2, widths=(8,), embed_dim=8))
    x, x0, b = torch.randn(5, 2), torch.randn(5, 2), torch.randn(5, 2)
    sigma, w0, lam = torch.tensor([0.1, 0.5, 1.0, 2.0, 4.0]), torch.tensor([0.5, 5.0, 0.5, 1.0, 2.0]), torch.rand(5)
    loss = correction_matching_loss(disc, x, sigma, x0, w0, b, lam)
    lw, grad = log_ratio_and_grad(disc, x, sigma)
    target = (w0 / lw.exp() - 1)[:, None] * (x0 - b)
    by_hand = (lam * (sigma[:, None] ** 2 * grad - target).pow(2).mean(1)).mean()
    assert torch.allclose(loss, by_hand, rtol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in disc.body.parameters()) and float(disc.body[0].weight.grad.abs().sum()) > 0


def gradient_error(disc, sigma):
    """Mean |grad log w - true| under the pooled noised density, relative to the mean |true|."""
    x = torch.linspace(-3.5, 3.5, 141)[:, None]
    s = torch.full((len(x),), sigma)
    true, q = true_grad_log_ratio(REF, BIAS, x, s)[:, 0], grid_weights(x, s)
    return float(((log_ratio_and_grad(disc, x, s)[1][:, 0] - true).abs() * q).sum() / (true.abs() * q).sum())


def test_gradient_objective_fits_the_correction_the_values_alone_do_not():
    """At sigma 3, where the two noised mixtures overlap and w_t is close to 1, fitting values leaves the gradient
    about 30 % off; fine-tuning on the correction cuts that to about 8 %. (Not everywhere: at sigma 1 / 10 / 30 these
    two go 28 -> 22, 5 -> 14 and 80 -> 31 %, and at sigma 10 both are seed-dependent.)"""
    before, after = gradient_error(trained("weighted"), 3.0), gradient_error(trained("gradient"), 3.0)
    assert after < 0.5 * before and after < 0.12, (before, after)


# A class-conditional model: labels y in {0, 1}, equal shares in both sets. Given y = 0 the minority attribute sits at
# +1.5, given y = 1 at -1.5, so the *marginal* noised densities of both sets are equal (w_t(x) = 1 everywhere) while
# each conditional one is 90:10 against 50:50.
BIAS_Y = (GaussianMixture((0.9, 0.1), MEANS, 0.5), GaussianMixture((0.1, 0.9), MEANS, 0.5))


def test_a_class_conditional_score_model_needs_the_conditional_ratio():
    """TIW-DSM's pointwise minimiser on (x0, y) pairs is ``D_bias(x | y) + sigma^2 grad log w``: the reference denoiser
    ``D_ref(x | y)`` with ``w = w_t(x | y)``, and still the biased one with the marginal ``w_t(x)`` (here 1). A
    discriminator conditional on y (``num_classes``) learns ``w_t(x | y)`` from labelled biased samples."""
    x = torch.linspace(-3.5, 3.5, 141)[:, None]
    for sigma in (0.3, 1.0, 3.0):
        s = torch.full((len(x),), sigma)
        marginal_bias = GaussianMixture((0.25, 0.25, 0.25, 0.25), MEANS + MEANS, 0.5)  # = the marginal of BIAS_Y
        assert torch.allclose(true_log_ratio(REF, marginal_bias, x, s), torch.zeros(len(x), dtype=torch.float64), atol=1e-9)
        for bias in BIAS_Y:
            minimiser = bias.denoiser(x, s) + sigma**2 * true_grad_log_ratio(REF, bias, x, s)
            assert torch.allclose(minimiser, REF.denoiser(x, s), atol=1e-6)
            assert float((bias.denoiser(x, s) - REF.denoiser(x, s)).abs().max()) > 0.1  # the marginal ratio's minimiser
    torch.manual_seed(0)
    disc = TimeDependentDiscriminator(DiscriminatorConfig(arch="mlp", channels=1, widths=(64, 64), embed_dim=32, num_classes=2))
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 500)
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        y = torch.randint(2, (256,), generator=g)
        x0 = torch.where(y[:, None] == 0, BIAS_Y[0].sample(256, g)[0], BIAS_Y[1].sample(256, g)[0])
        w0 = torch.where(y == 0, true_log_ratio(REF, BIAS_Y[0], x0, torch.zeros(256)), true_log_ratio(REF, BIAS_Y[1], x0, torch.zeros(256)))
        sigma = torch.exp(torch.randn(256, generator=g) * 1.6 - 0.5)
        xb = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g)
        loss = weighted_discriminator_loss(disc, xb, sigma, w0.exp().float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    for sigma in (0.1, 1.0, 3.0):
        s = torch.full((len(x),), sigma)
        for label, bias in enumerate(BIAS_Y):
            lw, grad = log_ratio_and_grad(disc, x, s, torch.full((len(x),), label))
            q = 0.5 * (REF.log_prob(x, s).exp() + bias.log_prob(x, s).exp())
            q = q / q.sum()
            err = float(((lw - true_log_ratio(REF, bias, x, s)).abs() * q).sum())
            assert err < 0.15, f"mean |log w - log w_true(x | y={label})| = {err:.3f} at sigma={sigma}"
            true_grad = true_grad_log_ratio(REF, bias, x, s)[:, 0]
            gerr = float(((grad[:, 0] - true_grad).abs() * q).sum())
            assert gerr < 0.25 + 0.1 * float(true_grad.abs().max()), f"grad log w error {gerr:.3f} at sigma={sigma}, y={label}"


def test_a_marginal_teacher_gives_the_conditional_ratio_when_the_label_is_a_function_of_the_image():
    """training/discriminator.py reads a *marginal* teacher's w0(x0) for a conditional discriminator, whose weighted
    objective is minimised at E_bias[w0(x0) | x_t, y] (test_weighted_objective_is_minimised_at_the_mean_clean_ratio).
    That is the conditional ratio w_t(x | y) when y is a function of x0 (y = the side of 0 here, as the digit is of
    the image) and both sets hold each label equally often; it is not the marginal w_t(x), which mixes both sides."""
    m4 = ((-4.5,), (-1.5,), (1.5,), (4.5,))
    bias_y = (GaussianMixture((0.1, 0.9), m4[:2], 0.5), GaussianMixture((0.9, 0.1), m4[2:], 0.5))
    ref_y = (GaussianMixture((0.5, 0.5), m4[:2], 0.5), GaussianMixture((0.5, 0.5), m4[2:], 0.5))
    bias, ref = GaussianMixture((0.05, 0.45, 0.45, 0.05), m4, 0.5), GaussianMixture((0.25,) * 4, m4, 0.5)
    x0 = torch.linspace(-9, 9, 7201, dtype=torch.float64)[:, None]
    log_w0 = true_log_ratio(ref, bias, x0, torch.zeros(len(x0)))  # the marginal teacher, exact
    x = torch.linspace(-6, 6, 121, dtype=torch.float64)[:, None]
    for sigma in (0.3, 1.0, 3.0):
        s = torch.full((len(x),), sigma)
        marginal = true_log_ratio(ref, bias, x, s)
        for y in (0, 1):
            # E_bias[w0(x0) | x_t = x, y] by quadrature over x0: p_bias(x0 | y) N(x; x0, sigma^2) w0(x0), normalised
            log_post = bias_y[y].log_prob(x0, torch.zeros(len(x0)))[None, :] - (x - x0.T) ** 2 / (2 * sigma**2)
            mean_w0 = torch.logsumexp(log_post + log_w0[None, :], 1) - torch.logsumexp(log_post, 1)
            conditional = true_log_ratio(ref_y[y], bias_y[y], x, s)
            q = bias_y[y].log_prob(x, s).exp()
            q = q / q.sum()
            assert float(((mean_w0 - conditional).abs() * q).sum()) < 1e-3, (sigma, y)
            if sigma == 3.0:
                assert float(((marginal - conditional).abs() * q).sum()) > 0.1, (sigma, y)


def test_class_labels_of_a_discriminator():
    cond = TimeDependentDiscriminator(DiscriminatorConfig(arch="mlp", channels=1, widths=(8,), embed_dim=8, num_classes=3))
    torch.nn.init.normal_(cond.label_embed.weight)
    x, s = torch.zeros(3, 1), torch.ones(3)
    with torch.no_grad():
        by_label = cond(x, s, torch.tensor([0, 1, 2]))
        assert len(set(by_label.tolist())) == 3  # the label enters
        assert torch.equal(cond(x, s, torch.tensor([-1, -1, -1])), cond(x, s))  # -1 and None: the null (marginal) row
    with pytest.raises(FairSamplingError, match=r"class_labels must be in \[0, 2\] or -1 \(the marginal ratio\), got \[3\]"):
        cond(x, s, torch.tensor([3, 3, 3]))
    with pytest.raises(FairSamplingError, match=r"class_labels must have shape \(3,\), got \(2,\)"):
        cond(x, s, torch.tensor([0, 1]))
    plain = TimeDependentDiscriminator(DiscriminatorConfig(arch="mlp", channels=1, widths=(8,), embed_dim=8))
    with torch.no_grad():
        assert torch.equal(plain(x, s, torch.tensor([0, 1, 2])), plain(x, s))  # unconditional: the labels are not read
    with pytest.raises(FairSamplingError, match="num_classes must be in"):
        DiscriminatorConfig(num_classes=-1)
