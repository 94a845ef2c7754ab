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
