"""Distribution guidance (arXiv 2402.18206): losses, reference parsing, ADP heads, the h-space step, training CLI."""
import copy
import math

import pytest
import torch

from fair_core import adp as adp_lib
from fair_core import checkpoints, guidance
from fair_core.errors import FairSamplingError
from fair_core.models import UNET_CONFIGS, CLASSIFIER_CONFIGS, EvalClassifier


# ----- losses and p_hat ------------------------------------------------------------------------------------------------
def test_p_hat_is_the_batch_mean_of_tempered_softmax():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0], [0.0, 0.0]])
    assert torch.allclose(guidance.p_hat(logits), torch.tensor([0.5, 0.5]))
    # temperature 2 halves the logits: softmax([0, log 3]/2) = [1/(1+sqrt 3), sqrt 3/(1+sqrt 3)]
    q = 1 / (1 + math.sqrt(3))
    assert torch.allclose(guidance.p_hat(logits[:1], temperature=2.0), torch.tensor([q, 1 - q]))


def test_chi2_and_kl_values_and_gradients():
    p_hat = torch.tensor([0.9, 0.1], requires_grad=True)
    p = torch.tensor([0.5, 0.5])
    chi2 = guidance.chi2_loss(p_hat, p)
    assert chi2.item() == pytest.approx(0.4**2 / 0.5 * 2)
    (g,) = torch.autograd.grad(chi2, p_hat)
    assert torch.allclose(g, 2 * (p_hat.detach() - p) / p)  # d/dp_hat sum (p_hat - p)^2 / p
    kl = guidance.kl_loss(p_hat, p)
    assert kl.item() == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2))
    assert guidance.chi2_loss(p, p).item() == 0 and abs(guidance.kl_loss(p, p).item()) < 1e-7
    assert math.isfinite(guidance.chi2_loss(p_hat, torch.tensor([0.0, 1.0])).item()), "a zero target entry stays finite"


# ----- reference parsing -----------------------------------------------------------------------------------------------
def test_parse_reference_forms_and_errors():
    classes = ["red", "green"]
    assert guidance.parse_reference("0.2,0.8", classes) == (0.2, 0.8)
    assert guidance.parse_reference("green=0.7, red=0.3", classes) == (0.3, 0.7)
    assert guidance.parse_reference("uniform", ["a", "b", "c", "d"]) == (0.25,) * 4
    assert guidance.parse_reference("1,3", classes, normalize="normalize") == (0.25, 0.75)
    with pytest.raises(FairSamplingError, match=r"must sum to 1.*'1,3'.*normalize"):
        guidance.parse_reference("1,3", classes)
    with pytest.raises(FairSamplingError, match=r"finite and >= 0"):
        guidance.parse_reference("-0.2,1.2", classes, normalize="normalize")
    with pytest.raises(FairSamplingError, match=r"3 entries but the ADP predicts 2 classes \['red', 'green'\]"):
        guidance.parse_reference("0.2,0.3,0.5", classes)
    with pytest.raises(FairSamplingError, match=r"unknown \['blue'\], missing \['green'\]"):
        guidance.parse_reference("red=0.5,blue=0.5", classes)
    with pytest.raises(FairSamplingError, match=r"2 proportions like 0.5,0.5 or red=0.5,green=0.5"):
        guidance.parse_reference("half,half", classes)
    with pytest.raises(FairSamplingError, match=r"normalize must be one of \['error', 'normalize'\]"):
        guidance.parse_reference("0.5,0.5", classes, normalize="yes")


# ----- ADP heads -------------------------------------------------------------------------------------------------------
def toy_adp(timesteps=(900.0, 500.0, 100.0), h_shape=(1, 1, 2), attributes=None):
    cfg = adp_lib.ADPConfig(h_shape=h_shape, timesteps=timesteps, attributes=attributes or {"colour": ["red", "green"]})
    return adp_lib.ADP(cfg)


def test_adp_head_selection_nearest_and_linear():
    adp = toy_adp()
    with torch.no_grad():
        for k, heads in enumerate(adp.heads["colour"]):  # head k outputs the constant logits (0, k)
            heads.weight.zero_()
            heads.bias.copy_(torch.tensor([0.0, float(k)]))
    h = torch.zeros(2, 1, 1, 2)
    assert adp(h, torch.tensor([880.0, 120.0]))["colour"][:, 1].tolist() == [0.0, 2.0]
    # t = 700: between buckets 900 (k=0) and 500 (k=1), halfway -> 0.5; t = 300: between 500 (k=1) and 100 (k=2) -> 1.5
    lin = adp(h, torch.tensor([700.0, 300.0]), head_selection="linear")["colour"][:, 1]
    assert torch.allclose(lin, torch.tensor([0.5, 1.5]))
    assert adp(h, torch.tensor([999.0, 0.0]), head_selection="linear")["colour"][:, 1].tolist() == [0.0, 2.0], "clamped at the ends"


def test_adp_refuses_other_models():
    adp = toy_adp()
    with pytest.raises(FairSamplingError, match=r"trained on h of shape \(1, 1, 2\).*gives \(4, 7, 7\)"):
        adp(torch.zeros(1, 4, 7, 7), torch.tensor([500.0]))
    model = checkpoints.KINDS["dsm"].build(UNET_CONFIGS["tiny"])
    other = checkpoints.KINDS["dsm"].build(UNET_CONFIGS["tiny"])
    cfg = adp_lib.ADPConfig(h_shape=(1, 1, 2), base_model=adp_lib.base_fingerprint(model, "mine.safetensors"))
    adp_lib.check_compatible(cfg, fingerprint=adp_lib.base_fingerprint(model))
    with pytest.raises(FairSamplingError, match=r"trained on base model 'mine.safetensors' \(weights_sha256"):
        adp_lib.check_compatible(cfg, fingerprint=adp_lib.base_fingerprint(other))


def test_adp_checkpoint_round_trip(tmp_path):
    adp = toy_adp(attributes={"colour": ["red", "green"], "digit": [str(d) for d in range(10)]})
    path = checkpoints.save(tmp_path / "adp.safetensors", adp, "adp", adp.cfg, {"heldout_accuracy": {"colour": [1.0]}})
    back = checkpoints.load(path, kind="adp")
    assert back.config == adp.cfg and back.training["heldout_accuracy"] == {"colour": [1.0]}
    h, t = torch.randn(3, 1, 1, 2), torch.tensor([300.0] * 3)
    assert torch.equal(back.model(h, t)["digit"], adp(h, t)["digit"])


# ----- the guidance step on an analytic toy: two Gaussian clusters in h, a logistic head ----------------------------
def mixture_h(n=400, green=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < green).long()
    h = torch.randn(n, 1, 1, 2, generator=g) * 0.5
    h[:, 0, 0, 0] += torch.where(y == 1, 2.0, -2.0)
    return h


def logistic_adp():
    adp = toy_adp(timesteps=(500.0,))
    with torch.no_grad():  # logit_green - logit_red = 2 h_0: the Bayes classifier of the two clusters
        adp.heads["colour"][0].weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        adp.heads["colour"][0].bias.zero_()
    return adp


@pytest.mark.parametrize("loss", ["chi2", "kl"])
@pytest.mark.parametrize("target", [(0.5, 0.5), (0.2, 0.8)])
def test_guidance_steps_move_the_batch_to_the_target(loss, target):
    adp, h = logistic_adp(), mixture_h()
    t, guide = torch.full((400,), 500.0), torch.ones(400, dtype=torch.bool)
    cfg = guidance.GuidanceConfig((guidance.AttributeTarget("colour", target, 1.0),), loss=loss)
    start = guidance.p_hat(adp(h, t)["colour"])
    assert start[1] < 0.15
    for _ in range(100):
        h = guidance.guidance_step(h, t, guide, adp, cfg)
    end = guidance.p_hat(adp(h, t)["colour"])
    assert torch.allclose(end, torch.tensor(target), atol=0.01), end


def test_guidance_step_matches_the_closed_form_and_spares_unguided_rows():
    adp, h = logistic_adp(), mixture_h(n=6, green=0.3)
    t, guide = torch.full((6,), 500.0), torch.tensor([True, True, True, True, False, False])
    p = torch.tensor([0.5, 0.5])
    cfg = guidance.GuidanceConfig((guidance.AttributeTarget("colour", (0.5, 0.5), 0.3),))
    out = guidance.guidance_step(h, t, guide, adp, cfg)
    assert torch.equal(out[4:], h[4:]), "unguided (unconditional / out-of-range) rows are untouched"
    # closed form: s_i = softmax(W h_i); dL/dp_hat = 2 (p_hat - p) / p; dp_hat/dh_i = (1/N) J_i with J_i = (diag s_i - s_i s_i^T) W
    W = adp.heads["colour"][0].weight
    s = (h[:4].flatten(1) @ W.T).softmax(1)
    dl = 2 * (s.mean(0) - p) / p
    grads = torch.stack([(torch.diag(si) - si[:, None] * si[None]) @ W for si in s]).transpose(1, 2) @ dl / 4
    expected = h[:4].flatten(1) - 0.3 * 4 * grads
    assert torch.allclose(out[:4].flatten(1), expected, atol=1e-6)
    balanced = torch.zeros(2, 1, 1, 2)  # p_hat = (0.5, 0.5) = p: zero gradient, h unchanged
    assert torch.equal(guidance.guidance_step(balanced, t[:2], guide[:2], adp, cfg), balanced)


def test_guidance_runs_inside_inference_mode():
    adp, h = logistic_adp(), mixture_h(n=8)
    cfg = guidance.GuidanceConfig((guidance.AttributeTarget("colour", (0.5, 0.5), 1.0),))
    with torch.inference_mode():
        hi = h.clone()
        out = guidance.guidance_step(hi, torch.full((8,), 500.0), torch.ones(8, dtype=torch.bool), adp, cfg)
    assert not torch.allclose(out, h)


def test_guidance_config_and_target_errors():
    adp = logistic_adp()
    target = (guidance.AttributeTarget("colour", (0.5, 0.5), 1.0),)
    with pytest.raises(FairSamplingError, match=r"loss must be one of \['chi2', 'kl'\], got 'l2'"):
        guidance.GuidanceConfig(target, loss="l2")
    with pytest.raises(FairSamplingError, match=r"end_percent must be in \[0.6, 1.0\]"):
        guidance.GuidanceConfig(target, start_percent=0.6, end_percent=0.5)
    with pytest.raises(FairSamplingError, match=r"attribute must be one of the ADP's \['colour'\], got 'gender'"):
        guidance.targets_from(adp, {"gender": ("0.5,0.5", 1.0)})
    with pytest.raises(FairSamplingError, match=r"3 entries but the ADP predicts 2 classes"):
        guidance.check_targets(adp, guidance.GuidanceConfig((guidance.AttributeTarget("colour", (0.2, 0.3, 0.5), 1.0),)))


def test_active_follows_comfy_percents():
    t = torch.tensor([999.0, 600.0, 499.5, 400.0, 0.0])
    assert guidance.active(t, 1000, 0.0, 0.5).tolist() == [True, True, True, False, False]
    assert guidance.active(t, 1000, 0.5, 1.0).tolist() == [False, False, True, True, True]


# ----- on a real (tiny) diffusers UNet ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = checkpoints.KINDS["dsm"].build(UNET_CONFIGS["tiny"]).eval()
    cfg = adp_lib.ADPConfig(h_shape=(32, 14, 14), timesteps=(999.0, 500.0, 0.0))
    torch.manual_seed(1)
    return model, adp_lib.ADP(cfg)


def test_guided_denoiser_edits_only_conditional_entries_in_range(tiny):
    model, adp = tiny
    x, sigma = torch.randn(4, 3, 28, 28) * 5, torch.full((4,), 5.0)
    labels = torch.tensor([1, 2, -1, -1])  # a CFG batch: two conditional, two unconditional entries
    cfg = guidance.GuidanceConfig((guidance.AttributeTarget("colour", (0.0, 1.0), 50.0),), start_percent=0.0, end_percent=1.0)
    with torch.no_grad():
        plain = model(x, sigma, class_labels=labels)
        guided = guidance.DistributionGuidedDenoiser(model, adp, cfg)(x, sigma, class_labels=labels)
        off = guidance.DistributionGuidedDenoiser(model, adp, guidance.GuidanceConfig(cfg.targets, start_percent=0.99, end_percent=1.0))
        late = off(x, sigma, class_labels=labels)
    assert not torch.allclose(guided[:2], plain[:2]) and torch.equal(guided[2:], plain[2:])
    assert torch.equal(late, plain), "sigma = 5 (t ~ 600) is outside the last 1 % of the timestep range"


def test_guided_step_reads_no_tensor_value_on_the_host(tiny):
    """On a GPU every host read of a tensor (.item(), bool(), .cpu(), nonzero indexing) makes Python wait for the
    device. On the meta device each of those raises, so a guided forward that runs there has none."""
    model, adp = tiny
    cfg = guidance.GuidanceConfig((guidance.AttributeTarget("colour", (0.2, 0.8), 50.0),), start_percent=0.2, end_percent=0.9)
    guided = guidance.DistributionGuidedDenoiser(copy.deepcopy(model), copy.deepcopy(adp), cfg).to("meta")
    with pytest.raises(RuntimeError, match="meta"):
        bool(torch.ones(2, device="meta").any())
    with torch.no_grad():
        out = guided(torch.randn(4, 3, 28, 28, device="meta"), torch.full((4,), 5.0, device="meta"),
                     class_labels=torch.tensor([1, 2, -1, -1], device="meta"))
    assert out.device.type == "meta" and out.shape == (4, 3, 28, 28)


def test_model_without_mid_block_is_refused(tiny):
    from diffusers import UNet2DModel

    _, adp = tiny
    model = checkpoints.KINDS["dsm"].build(UNET_CONFIGS["tiny"])
    model.unet = UNet2DModel(sample_size=28, in_channels=3, out_channels=3, block_out_channels=(16, 32), norm_num_groups=8,
                             down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, mid_block_type=None)
    cfg = guidance.GuidanceConfig((guidance.AttributeTarget("colour", (0.5, 0.5), 1.0),))
    with pytest.raises(FairSamplingError, match="h-space needs a UNet with a middle block"):
        guidance.DistributionGuidedDenoiser(model, adp, cfg)


# ----- python -m training adp ----------------------------------------------------------------------------------------------
def test_training_cli_exports_a_checked_adp(tmp_path, capsys):
    from training.__main__ import main

    torch.manual_seed(0)
    base = checkpoints.KINDS["dsm"].build(UNET_CONFIGS["tiny"])
    base_path = checkpoints.save(tmp_path / "base.safetensors", base, "dsm", UNET_CONFIGS["tiny"])
    clf_path = checkpoints.save(tmp_path / "clf.safetensors", EvalClassifier(CLASSIFIER_CONFIGS["tiny"]), "classifier", CLASSIFIER_CONFIGS["tiny"])
    out = tmp_path / "adp.safetensors"
    main(["adp", "--base", str(base_path), "--classifier", str(clf_path), "--attributes", "colour,digit", "--n-samples", "10",
          "--sample-steps", "3", "--steps", "4", "--batch", "8", "--outdir", str(tmp_path / "runs"), "--export", str(out)])
    ckpt = checkpoints.load(out, kind="adp")
    cfg = ckpt.config
    assert cfg.h_shape == (32, 14, 14) and len(cfg.timesteps) == 3 and cfg.timesteps[0] > cfg.timesteps[-1]
    assert cfg.attributes["digit"] == [str(d) for d in range(10)]
    assert cfg.base_model == adp_lib.base_fingerprint(base, "base.safetensors")
    acc = ckpt.training["heldout_accuracy"]
    assert set(acc) == {"colour", "digit"} and len(acc["colour"]) == 3 and all(0 <= a <= 1 for a in acc["colour"])
    assert ckpt.training["holdout"] == 2 and ckpt.training["source"] == "generated"
    with pytest.raises(SystemExit):
        main(["adp", "--base", str(base_path), "--classifier", str(clf_path), "--attributes", "gender", "--n-samples", "4",
              "--outdir", str(tmp_path / "runs")])
    assert "--attributes must be heads of the classifier ['digit', 'colour'], got ['gender']" in capsys.readouterr().err
    assert len(list((tmp_path / "runs").iterdir())) == 1, "bad options fail before a run folder is made"
