"""Attribute switching nodes against ComfyUI's own sampling, in-process (the shipped digit model: s0 = 1, s1 = 7)."""
import pytest
import torch

from fair_core import evaluation


@pytest.fixture(scope="module")
def setup(comfy_inprocess):
    import comfy.sample

    from fair_pack.nodes import _comfy
    from fair_pack.nodes.conditioning import FairClassLabel

    patcher, ckpt = _comfy.load_model(str(evaluation.resolve_checkpoint("colored_mnist_dsm")))
    conds = [FairClassLabel.execute(text).result[0] for text in ("1", "7", "-1")]
    latent = {"samples": torch.zeros(4, 3, 28, 28)}

    def ksampler(positive, steps=8):  # what KSampler does (nodes.common_ksampler), denoise 1
        noise = comfy.sample.prepare_noise(latent["samples"], 0)
        return comfy.sample.sample(patcher, noise, steps, 1.5, "euler", "karras", positive, conds[2], latent["samples"], seed=0)

    return patcher, ckpt, conds, latent, ksampler


def run(setup, tau_mode="manual", tau=1.0, direction="s0->s1", steps=8, search_batch=4):
    from fair_pack.nodes.switching import AttributeSwitchSampler

    patcher, _, (c0, c1, neg), latent, _ = setup
    return AttributeSwitchSampler.execute(patcher, 0, steps, 1.5, "euler", "karras", c0, c1, neg, latent, tau_mode, tau,
                                          direction, search_batch).result


def test_manual_endpoints_equal_plain_ksampler_runs(setup):
    *_, ksampler = setup
    c0, c1 = setup[2][:2]
    only_s0, only_s1 = ksampler(c0), ksampler(c1)
    never, tau, sigma = run(setup, tau=1.0)
    assert tau == 1.0 and sigma == 0.0
    assert torch.allclose(never["samples"], only_s0, atol=1e-5)
    always, tau, _ = run(setup, tau=0.0)
    assert tau == 0.0 and torch.allclose(always["samples"], only_s1, atol=1e-5)
    reverse, *_ = run(setup, tau=1.0, direction="s1->s0")
    assert torch.allclose(reverse["samples"], only_s1, atol=1e-5)
    halves, *_ = run(setup, tau=1.0, direction="alternate")
    assert torch.allclose(halves["samples"][:2], only_s0[:2], atol=1e-5)
    assert torch.allclose(halves["samples"][2:], only_s1[2:], atol=1e-5)
    middle, *_ = run(setup, tau=0.5)
    assert not torch.allclose(middle["samples"], only_s0, atol=1e-3) and not torch.allclose(middle["samples"], only_s1, atol=1e-3)


def test_comfy_search_agrees_with_fair_core_search(setup):
    """The ComfyUI search (ComfyUI's sampler, guider, timestep snapping) finds the tau that fair_core finds."""
    import comfy.sample

    from fair_pack.fair_core import switching as fc_switching
    from fair_pack.nodes import _comfy_switch

    patcher, ckpt, (c0, c1, neg), latent, _ = setup
    sigmas = _comfy_switch.schedule(patcher, "karras", 8)
    found = _comfy_switch.search_tau(patcher, c0, c1, neg, 1.5, _comfy_switch.sampler_object("euler"), sigmas, latent, 0, 8)
    noise = comfy.sample.prepare_noise(torch.zeros(8, 3, 28, 28), 1)
    ours = fc_switching.search_tau(ckpt.model.eval(), noise, sigmas, 1, 7, cfg_scale=1.5, sampler="euler", disable=True)
    assert abs(found.tau - ours.tau) <= 1, (found.objective, ours.objective)
    assert torch.allclose(found.objective.float(), ours.objective.float(), rtol=0.05, atol=0.05 * float(ours.objective.max()))
    latent_out, tau, sigma = run(setup, tau_mode="auto", search_batch=8)
    assert tau == found.tau / 8 and sigma == pytest.approx(found.sigma)


def test_search_node_plots_and_guider_samples(setup):
    import comfy.samplers

    from fair_pack.nodes import _comfy_switch
    from fair_pack.nodes.switching import AttributeSwitchGuider, TransitionPointSearch

    patcher, _, (c0, c1, neg), latent, _ = setup
    sigmas = _comfy_switch.schedule(patcher, "karras", 8)
    sampler = comfy.samplers.sampler_object("euler")
    sigma, tau, curve = TransitionPointSearch.execute(patcher, c0, c1, neg, 1.5, sampler, sigmas, latent, 0, 4, "vp").result
    assert 0 <= tau <= 8 and sigma == pytest.approx(float(sigmas[tau]))
    assert curve.ndim == 4 and curve.shape[0] == 1 and curve.shape[-1] == 3
    guider = AttributeSwitchGuider.execute(patcher, c0, c1, neg, 1.5, sigma, "s0->s1").result[0]
    noise = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    out = guider.sample(noise, latent["samples"], sampler, sigmas, seed=0)
    assert out.shape == (4, 3, 28, 28) and torch.isfinite(out).all()


def test_bad_input_is_named(setup):
    from fair_pack.fair_core.errors import FairSamplingError

    with pytest.raises(FairSamplingError, match="search_batch must be at least 2"):
        run(setup, tau_mode="auto", search_batch=1)
    with pytest.raises(FairSamplingError, match=r"tau must be in \[0.0, 1.0\], got 1.5"):
        run(setup, tau=1.5)
    with pytest.raises(FairSamplingError, match="direction must be one of"):
        run(setup, direction="both")
