"""ConstrainedCheckpoint against the real ComfyUI modules: a tiny ``dual`` checkpoint written here loads as a MODEL that
matches our denoiser, its constraint report (bounds, lambdas, slacks) comes out as text, other kinds are refused."""
import dataclasses

import pytest
import torch

from fair_core import checkpoints
from fair_core.models import named_config

RECORD = {"names": ["digit4", "digit5", "digit7"], "sets": [{"digits": [4], "colours": []}, {"digits": [5], "colours": []}, {"digits": [7], "colours": []}], "source": "biased", "sizes": [486, 451, 518],
          "bounds": [0.0612, 0.0655, 0.0571], "bound_rule": "auto: (1 + -0.05) * loss of dsm.safetensors",
          "lambdas": [0.12, 0.0, 0.3], "mode": "resilient", "alpha": 10.0, "relaxation": [0.012, 0.0, 0.03],
          "losses": [0.0701, 0.0600, 0.0850], "slacks": [-0.0031, -0.0055, -0.0021], "mixture_weights": [0.704, 0.085, 0.0, 0.211]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dualloader")
    cfg = dataclasses.replace(named_config("unet", "tiny"), prediction_type="v_prediction", condition="none", num_classes=0)
    torch.manual_seed(0)
    model = checkpoints.KINDS["dual"].build(cfg)
    dual = checkpoints.save(d / "tiny_dual.safetensors", model, "dual", cfg, {"steps": 3, "constraints": RECORD})
    bare = checkpoints.save(d / "bare_dual.safetensors", model, "dual", cfg, {"steps": 3})
    dsm = checkpoints.save(d / "tiny_dsm.safetensors", model, "dsm", cfg, {"steps": 1})
    return dual, bare, dsm


def test_dual_checkpoint_loads_as_model_with_its_constraint_report(comfy_inprocess, files):
    from fair_pack.nodes.loaders import ConstrainedCheckpoint

    dual, _, _ = files
    model, vae, report = ConstrainedCheckpoint.execute("", path=str(dual)).result
    lines = report.splitlines()
    assert "3 constraint(s), relaxation=resilient (alpha=10.0)" in lines[0]
    assert lines[2].split() == ["digit4", "0.06120", "0.1200", "0.0120", "-0.00310", "yes"]
    assert lines[4].split()[:3] == ["digit7", "0.05710", "0.3000"]
    assert "0.704, 0.085, 0.000, 0.211" in lines[-1], "(1, lambda) / (1 + sum lambda)"
    ours = checkpoints.load(dual, kind="dual").model
    sigma = ours.sigmas[[10, 500, 990]]
    x = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1)) * sigma.view(-1, 1, 1, 1)
    with torch.no_grad():
        theirs = model.model.apply_model(x, sigma)
        expected = ours(x, sigma)
    assert torch.allclose(theirs, expected, rtol=1e-4, atol=1e-4)
    assert vae is not None


def test_other_kinds_and_missing_records_are_refused_clearly(comfy_inprocess, files):
    from fair_pack.fair_core.errors import FairSamplingError
    from fair_pack.nodes.loaders import ConstrainedCheckpoint

    _, bare, dsm = files
    with pytest.raises(FairSamplingError, match="needs a 'dual' checkpoint .* is a 'dsm' checkpoint: load it with Fair Checkpoint Loader"):
        ConstrainedCheckpoint.execute("", path=str(dsm))
    with pytest.raises(FairSamplingError, match="constraint record lacks 'names'"):
        ConstrainedCheckpoint.execute("", path=str(bare))


def test_schema_lists_only_dual_files(comfy_inprocess):
    from fair_pack.nodes.loaders import ConstrainedCheckpoint

    schema = ConstrainedCheckpoint.define_schema()
    assert schema.node_id == "ConstrainedCheckpoint" and schema.category == "sampling/fairness/loaders"
    assert all(i.tooltip for i in schema.inputs)
    assert "colored_mnist_dsm.safetensors" not in schema.inputs[0].options
