"""Our checkpoints as a ComfyUI MODEL, checked in-process against the real ComfyUI modules."""
import pytest
import torch

from fair_core import checkpoints, evaluation


@pytest.fixture(scope="module")
def loaded(comfy_inprocess):
    from fair_pack.nodes import _comfy

    path = str(evaluation.resolve_checkpoint("colored_mnist_dsm"))
    patcher, ckpt = _comfy.load_model(path)
    return _comfy, patcher, ckpt


def test_comfy_model_matches_our_denoiser_on_the_timestep_grid(loaded):
    """ComfyUI snaps sigma to the nearest discrete timestep; on the grid itself the two must agree exactly."""
    _comfy, patcher, ckpt = loaded
    ours = ckpt.model.eval()
    sigma = ours.sigmas[[0, 100, 500, 900, 999]]
    x = torch.randn(5, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * sigma.view(-1, 1, 1, 1)
    labels = torch.tensor([0, 3, 7, -1, 9])
    with torch.no_grad():
        theirs = patcher.model.apply_model(x, sigma, y=labels)
        expected = ours(x, sigma, class_labels=labels)
    assert torch.allclose(theirs, expected, rtol=1e-4, atol=1e-4), (theirs - expected).abs().max()  # |x| reaches 500 at sigma_max
    ms = patcher.get_model_object("model_sampling")
    # diffusers builds the betas in float32, ComfyUI in float64: 1e-4 relative apart, the same schedule.
    assert torch.allclose(ms.sigmas, ours.sigmas, rtol=5e-4), "ComfyUI's schedule must be the one the model was trained on"


def test_output_block_patch_sees_h_space_and_can_change_the_output(loaded):
    _comfy, patcher, ckpt = loaded
    seen = []

    def patch(h, hsp, transformer_options):
        seen.append((transformer_options["block"], tuple(h.shape), tuple(hsp.shape)))
        return h * 0, hsp

    m = patcher.clone()
    m.set_model_output_block_patch(patch)
    x, sigma = torch.randn(2, 3, 28, 28), torch.tensor([1.0, 1.0])
    with torch.no_grad():
        plain = patcher.model.apply_model(x, sigma, y=torch.tensor([1, 2]))
        patched = m.model.apply_model(x, sigma, y=torch.tensor([1, 2]), transformer_options=m.model_options["transformer_options"])
    assert seen and seen[0][0] == ("output", 0)
    assert seen[0][1][0] == 2 and seen[0][1][2:] == (7, 7), "h is the 7x7 middle-block output"
    assert not torch.allclose(plain, patched)
    assert "output_block_patch" not in patcher.model_options["transformer_options"].get("patches", {}), "clone, never patch in place"


def test_class_label_node_and_its_errors(comfy_inprocess):
    from fair_pack.fair_core.errors import FairSamplingError
    from fair_pack.nodes.conditioning import FairClassLabel

    cond = FairClassLabel.execute("0, 1,-1").result[0]
    assert cond[0][1]["fair_class_labels"].tolist() == [0, 1, -1]
    with pytest.raises(FairSamplingError, match="labels must be comma-separated integers"):
        FairClassLabel.execute("seven")
    with pytest.raises(FairSamplingError, match=r"labels must be integers >= -1"):
        FairClassLabel.execute("-2")


def test_loader_rejects_wrong_kind_and_bad_paths(comfy_inprocess):
    from fair_pack.fair_core.errors import FairSamplingError
    from fair_pack.nodes.loaders import FairCheckpointLoader

    classifier = str(evaluation.resolve_checkpoint("eval_classifier"))
    with pytest.raises(FairSamplingError, match="eval_classifier.safetensors.*'classifier' checkpoint; expected kind"):
        FairCheckpointLoader.execute("colored_mnist_dsm.safetensors", path=classifier)
    with pytest.raises(FairSamplingError, match="absolute path to an existing"):
        FairCheckpointLoader.execute("colored_mnist_dsm.safetensors", path="relative/model.safetensors")
    with pytest.raises(FairSamplingError, match="is not in the 'fair_sampling' model folders"):
        FairCheckpointLoader.execute("nope.safetensors")


def test_empty_latent_follows_the_model(loaded, comfy_inprocess):
    from fair_pack.fair_core.errors import FairSamplingError
    from fair_pack.nodes.latent import FairEmptyLatent

    _comfy, patcher, _ = loaded
    assert FairEmptyLatent.execute(patcher, 4).result[0]["samples"].shape == (4, 3, 28, 28)

    class Other:
        def get_model_object(self, name):
            return torch.nn.Identity()

    with pytest.raises(FairSamplingError, match="model must come from Fair Checkpoint Loader"):
        FairEmptyLatent.execute(Other(), 4)


def test_fairness_audit_node_and_its_errors(comfy_inprocess):
    import json

    from fair_pack.fair_core.errors import FairSamplingError
    from fair_pack.nodes.audit import AttributeClassifierLoader, FairnessAudit

    clf = AttributeClassifierLoader.execute("eval_classifier.safetensors").result[0]
    red = torch.zeros(8, 28, 28, 3)
    red[:, 6:22, 12:16, 0] = 1.0  # IMAGE layout: (N, H, W, C) in [0, 1]
    text, report, chart = FairnessAudit.execute(red, clf, "colour", "0.5,0.5", 200).result
    report = json.loads(report)
    assert report["proportions"] == [1.0, 0.0] and report["fd"] == pytest.approx(2**0.5 / 2, abs=1e-4)
    assert text.startswith("colour (n = 8): red 1.00 [1.00, 1.00]")
    assert chart.ndim == 4 and chart.shape[0] == 1 and chart.shape[-1] == 3 and 0 <= chart.min() and chart.max() <= 1
    with pytest.raises(FairSamplingError, match="--target must be 2 non-negative proportions"):
        FairnessAudit.execute(red, clf, "colour", "0.3", 200)
    with pytest.raises(FairSamplingError, match=r"classifier input must have shape \(N, 3, 28, 28\)"):
        FairnessAudit.execute(torch.zeros(2, 32, 32, 3), clf, "colour", "", 200)
    with pytest.raises(FairSamplingError, match="classifier_name 'nope.safetensors' is not in the 'fair_sampling' model folders"):
        AttributeClassifierLoader.execute("nope.safetensors")
    with pytest.raises(FairSamplingError, match="'dsm' checkpoint; expected kind 'classifier'"):
        AttributeClassifierLoader.execute("eval_classifier.safetensors", path=str(evaluation.resolve_checkpoint("colored_mnist_dsm")))


def test_a_grey_model_samples_decodes_and_encodes_in_comfyui(comfy_inprocess, tmp_path):
    """A 1-channel model (``training dsm --data mnist``): one-channel latent, the same denoiser as ours, VAEDecode
    draws it as RGB grey and VAEEncode takes it back."""
    import dataclasses

    import comfy.sample
    import nodes as comfy_nodes

    from fair_core.models import named_config
    from fair_pack.nodes.conditioning import FairClassLabel
    from fair_pack.nodes.latent import FairEmptyLatent
    from fair_pack.nodes.loaders import FairCheckpointLoader

    cfg = dataclasses.replace(named_config("unet", "tiny"), channels=1, prediction_type="v_prediction", condition="none", num_classes=0)
    torch.manual_seed(0)
    path = checkpoints.save(tmp_path / "grey.safetensors", checkpoints.KINDS["dsm"].build(cfg), "dsm", cfg, {"steps": 1})
    model, vae, num_classes = FairCheckpointLoader.execute("", path=str(path)).result
    assert num_classes == 0
    latent = FairEmptyLatent.execute(model, 2).result[0]["samples"]
    assert latent.shape == (2, 1, 28, 28)
    ours = checkpoints.load(path).model
    sigma = ours.sigmas[[100, 900]]
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * sigma.view(-1, 1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model.model.apply_model(x, sigma), ours(x, sigma), rtol=1e-4, atol=1e-4)
    null = FairClassLabel.execute("-1").result[0]
    samples = comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 0), 4, 1.0, "euler", "karras", null, null, latent, seed=0)
    assert samples.shape == (2, 1, 28, 28) and torch.isfinite(samples).all()
    three = FairClassLabel.execute("3").result[0]
    with pytest.raises(Exception, match=r"unconditional .* the null label -1, got \[3\]"):
        comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 0), 2, 1.0, "euler", "karras", three, null, latent, seed=0)
    (image,) = comfy_nodes.VAEDecode().decode(vae, {"samples": samples})
    assert image.shape == (2, 28, 28, 3)
    assert torch.equal(image[..., 0], image[..., 1]) and torch.equal(image[..., 0], image[..., 2])
    assert torch.allclose(image[..., 0], ((samples[:, 0] + 1) / 2).clamp(0, 1), atol=1e-6)
    (back,) = comfy_nodes.VAEEncode().encode(vae, image)
    assert back["samples"].shape == (2, 1, 28, 28)
    assert torch.allclose(back["samples"], samples.clamp(-1, 1), atol=1e-5)
