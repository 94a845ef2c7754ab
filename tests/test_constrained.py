"""Constrained dual training (fair_core.constrained): each function on its own, then primal-dual training on a 1-D
Gaussian mixture whose optimum is known in closed form (tests/dual_toy.py). The MLP version is bench/bench_dual_toy.py."""

import pytest
import torch

import dual_toy as T
from fair_core import constrained as C
from fair_core.errors import FairSamplingError


# ------------------------------------------------------------------------------------------------ pure functions
def test_lagrangian_value_and_gradients():
    loss_data = torch.tensor(2.0, requires_grad=True)
    losses = torch.tensor([1.0, 3.0], requires_grad=True)
    lam, b = torch.tensor([0.5, 2.0]), torch.tensor([1.5, 2.5])
    L = C.lagrangian(loss_data, losses, lam, b)
    assert L.item() == pytest.approx(2.0 + 0.5 * (1.0 - 1.5) + 2.0 * (3.0 - 2.5))
    L.backward()
    assert loss_data.grad.item() == 1.0 and losses.grad.tolist() == [0.5, 2.0], "dL/dL_i = lambda_i"
    with pytest.raises(FairSamplingError, match="one entry per constraint"):
        C.lagrangian(loss_data, losses, torch.tensor([1.0]), b)


def test_dual_step_is_projected_ascent():
    lam, b = torch.tensor([0.3, 0.1, 0.0]), torch.tensor([1.0, 1.0, 1.0])
    new = C.dual_step(lam, torch.tensor([1.4, 0.5, 0.2]), b, eta=0.5)
    assert torch.allclose(new, torch.tensor([0.3 + 0.5 * 0.4, 0.0, 0.0])), "violated -> up, met -> down, clipped at 0"
    with pytest.raises(FairSamplingError, match=r"eta \(dual learning rate\) must be in \(0.0, inf\), got 0"):
        C.dual_step(lam, b, b, eta=0)


def test_resilient_relaxation_minimises_its_cost_and_is_the_dual_fixed_point():
    lam, alpha = torch.tensor([0.0, 0.4, 1.2]), 2.0
    u = C.resilient_relaxation(lam, alpha)
    grid = torch.linspace(0, 1, 10001)[:, None]
    cost = alpha / 2 * grid**2 - lam[None] * grid  # (alpha/2) u^2 - lambda u
    assert torch.allclose(grid[cost.argmin(0), 0], u, atol=1e-4)
    b = torch.tensor([1.0, 1.0, 1.0])
    # At L_i - b_i = lambda_i / alpha the relaxed slack is zero: lambda stays put.
    assert torch.allclose(C.dual_step(lam, b + u, b, eta=0.7, alpha=alpha), lam)
    assert torch.allclose(C.slack(b + u, b, u), torch.zeros(3), atol=1e-6)
    with pytest.raises(FairSamplingError, match="alpha must be in"):
        C.resilient_relaxation(lam, 0.0)


def test_paired_estimate_is_unbiased_with_far_less_noise():
    """On the toy, batches of 8 minority images: the plain batch mean of a model's loss and the paired (control
    variate) estimate against another exact denoiser on the same draws have the same mean, which is the model's
    loss; the paired one has a much smaller spread. A wrong sign or a missing reference mean moves the mean."""
    def exact(w):
        return lambda x, s: T.mixture_denoise(x, s, torch.tensor(w).log(), T.MU, torch.tensor(T.STD))

    theta, ref = exact([0.8, 0.2]), exact([0.9, 0.1])
    truth = T.ideal_loss(torch.tensor([0.8, 0.2]), T.MINORITY)
    ref_mean = torch.tensor([T.ideal_loss(torch.tensor([0.9, 0.1]), T.MINORITY)])
    g = torch.Generator().manual_seed(0)
    plain, paired = [], []
    for _ in range(400):
        x0, state = T.draw(8, T.MINORITY, g), g.get_state()
        l_theta = T.per_sample_loss(theta, x0, g).mean(0, keepdim=True)
        l_ref = T.per_sample_loss(ref, x0, torch.Generator().set_state(state)).mean(0, keepdim=True)  # same sigma, eps
        plain.append(l_theta)
        paired.append(C.paired_estimate(l_theta, l_ref, ref_mean))
    plain, paired = torch.cat(plain), torch.cat(paired)
    assert paired.mean().item() == pytest.approx(truth, abs=3 * paired.std().item() / 20)
    assert plain.mean().item() == pytest.approx(truth, abs=3 * plain.std().item() / 20)
    assert paired.std() < 0.5 * plain.std(), (paired.std(), plain.std())
    with pytest.raises(FairSamplingError, match="one entry per constraint"):
        C.paired_estimate(torch.zeros(2), torch.zeros(2), [0.1])


def test_mixture_and_component_weights():
    assert C.mixture_weights([0.0, 0.0]).tolist() == [1.0, 0.0, 0.0]
    assert torch.allclose(C.mixture_weights([1.0, 2.0]), torch.tensor([0.25, 0.25, 0.5]))
    w = C.component_weights([0.9, 0.1], [1], [0.2857142857])
    assert torch.allclose(w, torch.tensor([0.7, 0.3]), atol=1e-6)
    with pytest.raises(FairSamplingError, match="lambdas must be >= 0"):
        C.mixture_weights([-0.1])
    with pytest.raises(FairSamplingError, match="one component per lambda"):
        C.component_weights([0.9, 0.1], [1, 0], [0.5])


def test_the_lagrangian_optimum_is_the_lambda_mixture():
    """L(D_w; q_data) + lambda L(D_w; q_1), over exact mixture denoisers D_w, is smallest at w = component_weights(lambda)."""
    lam = 0.2857142857  # predicted minority weight 0.3
    grid = [0.2, 0.25, 0.3, 0.35, 0.4]
    values = [T.ideal_loss(torch.tensor([1 - w, w]), T.PI, n=100_000) + lam * T.ideal_loss(torch.tensor([1 - w, w]), T.MINORITY, n=100_000)
              for w in grid]
    assert grid[min(range(len(grid)), key=values.__getitem__)] == pytest.approx(C.component_weights(T.PI, [1], [lam])[1].item(), abs=1e-6)


def test_bounds_and_default_rule():
    assert torch.allclose(C.default_bounds([1.0, 2.0], 0.1), torch.tensor([1.1, 2.2]))
    assert torch.allclose(C.default_bounds([1.0], -0.05), torch.tensor([0.95]))
    assert torch.allclose(C.default_bounds([1.0, 2.0], [-0.05, 0.1]), torch.tensor([0.95, 2.2]))  # one margin per set
    with pytest.raises(FairSamplingError, match=r"margin needs one value or one per set \(2\), got 3"):
        C.default_bounds([1.0, 2.0], [0.1, 0.1, 0.1])
    with pytest.raises(FairSamplingError, match=r"margin must be in \(-1.0, inf\)"):
        C.default_bounds([1.0], -1.0)
    with pytest.raises(FairSamplingError, match="bounds must be >= 0"):
        C.check_bounds([0.5, -0.1])
    with pytest.raises(FairSamplingError, match="bounds must be finite"):
        C.check_bounds([float("nan")])


def test_constraint_tracker_means_running_estimate_and_state():
    tr = C.ConstraintTracker.new(2, beta=0.5)
    with pytest.raises(FairSamplingError, match="no constraint losses accumulated"):
        tr.take_mean()
    tr.add(torch.tensor([1.0, 2.0]))
    tr.add(torch.tensor([3.0, 4.0]))
    assert tr.running.tolist() == [2.0, 3.0]  # first value, then (1 - beta) r + beta v
    again = C.ConstraintTracker.from_state(tr.state(), beta=0.5)
    assert tr.take_mean().tolist() == [2.0, 3.0] and tr.count.item() == 0
    assert again.take_mean().tolist() == [2.0, 3.0], "the state round-trips (resume keeps the partial sums)"


def test_constraint_report_names_everything():
    text = C.constraint_report({"names": ["digit4", "digit5"], "bounds": [0.1, 0.2], "lambdas": [0.5, 0.0],
                                "slacks": [-0.001, 0.02], "mode": "resilient", "alpha": 10.0, "relaxation": [0.05, 0.0]})
    assert "digit4" in text and "resilient" in text and "alpha=10.0" in text
    assert "0.667, 0.333, 0.000" in text, "weights (1, 0.5, 0) / 1.5"
    lines = text.splitlines()
    assert lines[2].split()[-1] == "yes" and lines[3].split()[-1] == "no"
    with pytest.raises(FairSamplingError, match="lacks 'slacks'"):
        C.constraint_report({"names": [], "bounds": [], "lambdas": []})


# ------------------------------------------------------------------------------------------------ analytic check
TARGET_W = 0.3  # the bound is the exact loss on q_1 of the mixture with minority weight 0.3
LAMBDA_STAR = (TARGET_W - 0.1) / (1 - TARGET_W)  # (0.1 + lambda) / (1 + lambda) = 0.3


@pytest.fixture(scope="module")
def bound():
    return T.ideal_loss(torch.tensor([1 - TARGET_W, TARGET_W]), T.MINORITY)


def averaged(history: torch.Tensor) -> tuple[float, float]:
    """Mean and std of lambda over the last quarter of the dual steps (primal-dual iterates converge on average)."""
    tail = history[-len(history) // 4:]
    return tail.mean().item(), tail.std().item()


def test_dual_training_meets_the_constraint_and_learns_the_predicted_mixture(bound):
    D = T.MixtureDenoiser()
    r = T.train_dual(D, bound, steps=800, eta=0.1, every=5, lr=0.05)
    lam, spread = averaged(r["history"])
    assert spread < 0.03 and abs(r["lambda"].item() - lam) < 0.06, f"lambda converged: {lam:.3f} +/- {spread:.3f}"
    assert lam == pytest.approx(LAMBDA_STAR, abs=0.03)
    slack = T.measured_loss(D, T.MINORITY) - bound
    assert slack <= 0.01, f"constraint met at the end: slack {slack:.4f}"
    predicted = C.component_weights(T.PI, [1], [lam])
    assert torch.allclose(D.weights(), predicted, atol=0.015), (D.weights(), predicted)
    unconstrained_w = 0.1
    assert D.weights()[1] > unconstrained_w + 0.15


def test_resilient_dual_training_relaxes_by_lambda_over_alpha(bound):
    alpha = 2.0
    D = T.MixtureDenoiser()
    r = T.train_dual(D, bound, steps=800, eta=0.1, every=5, lr=0.05, alpha=alpha)
    lam, spread = averaged(r["history"])
    assert spread < 0.03 and 0.05 < lam < LAMBDA_STAR, "a relaxed constraint needs a smaller multiplier"
    relaxation = T.measured_loss(D, T.MINORITY) - bound  # the amount by which the bound ended up exceeded
    assert relaxation == pytest.approx(lam / alpha, abs=0.02), f"u = {relaxation:.4f}, lambda/alpha = {lam / alpha:.4f}"
    assert torch.allclose(D.weights(), C.component_weights(T.PI, [1], [lam]), atol=0.015)
