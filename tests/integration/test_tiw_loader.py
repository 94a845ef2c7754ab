"""TIWScoreLoader against the real ComfyUI modules: a tiny ``tiw`` checkpoint written here loads as a MODEL that
matches our denoiser, its recorded training facts come out as text, and other kinds are refused with a clear message."""
import dataclasses

import pytest
import torch

from fair_core import checkpoints
from fair_core.models import named_config

FACTS = {"command": "python -m training tiw --model tiny", "steps": 3, "seed": 0, "batch": 4, "method": "TIW-DSM", "loss_mode": "tiw",
         "reference_fraction": 0.05, "bias": {"attribute": "colour", "colour_ratio": 0.9}, "n_bias": 47620, "n_reference": 2380,
         "discriminator": {"path": "runs/00000-tiw/discriminator.safetensors", "trained_in_run": True, "steps": 4, "config": {"clip": 1e-5}}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiwloader")
    cfg = dataclasses.replace(named_config("unet", "tiny"), prediction_type="v_prediction")
    torch.manual_seed(0)
    model = checkpoints.KINDS["tiw"].build(cfg)
    tiw = checkpoints.save(d / "tiny_tiw.safetensors", model, "tiw", cfg, FACTS)
    dsm = checkpoints.save(d / "tiny_dsm.safetensors", model, "dsm", cfg, {"steps": 1})
    return tiw, dsm


def test_tiw_checkpoint_loads_as_model_with_its_training_facts(comfy_inprocess, files):
    from fair_pack.nodes.loaders import TIWScoreLoader

    tiw, _ = files
    model, vae, facts = TIWScoreLoader.execute("", path=str(tiw)).result
    assert "reference fraction: 0.05" in facts and "colour ratio 0.9" in facts and "discriminator: runs/00000-tiw/discriminator" in facts
    assert "loss mode tiw" in facts and "clip 1e-05" in facts
    ours = checkpoints.load(tiw, kind="tiw").model
    sigma = ours.sigmas[[10, 500, 990]]
    x = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1)) * sigma.view(-1, 1, 1, 1)
    labels = torch.tensor([1, 5, -1])
    with torch.no_grad():
        theirs = model.model.apply_model(x, sigma, y=labels)
        expected = ours(x, sigma, class_labels=labels)
    assert torch.allclose(theirs, expected, rtol=1e-4, atol=1e-4)
    assert vae is not None


def test_other_kinds_are_refused_clearly(comfy_inprocess, files):
    from fair_pack.fair_core.errors import FairSamplingError
    from fair_pack.nodes.loaders import TIWScoreLoader

    _, dsm = files
    with pytest.raises(FairSamplingError, match="needs a 'tiw' checkpoint .* is a 'dsm' checkpoint: load it with Fair Checkpoint Loader"):
        TIWScoreLoader.execute("", path=str(dsm))


def test_schema_lists_only_tiw_files(comfy_inprocess):
    from fair_pack.nodes.loaders import TIWScoreLoader

    schema = TIWScoreLoader.define_schema()
    assert schema.node_id == "TIWScoreLoader" and schema.category == "sampling/fairness/loaders"
    assert all(i.tooltip for i in schema.inputs)
    assert "colored_mnist_dsm.safetensors" not in schema.inputs[0].options  # a dsm model is not offered
