"""The checkpoint contract: round trips, and one clear CheckpointError for every way a file can be wrong."""
import json

import pytest
import torch
from safetensors.torch import save_file

from fair_core import checkpoints
from fair_core.checkpoints import CheckpointError
from fair_core.models import CLASSIFIER_CONFIGS, UNET_CONFIGS, EvalClassifier, config_to_dict


@pytest.fixture(scope="module")
def tiny_denoiser():
    torch.manual_seed(0)
    return checkpoints.KINDS["dsm"].build(UNET_CONFIGS["tiny"])


@pytest.fixture
def saved(tmp_path, tiny_denoiser):
    path = tmp_path / "m.safetensors"
    checkpoints.save(path, tiny_denoiser, "dsm", UNET_CONFIGS["tiny"], {"command": "test", "steps": 0, "seed": 0})
    return path


def metadata(kind="dsm", config=None, **override):
    meta = {"format": "fair-sampling", "format_version": "1", "kind": kind,
            "config": json.dumps(config if config is not None else config_to_dict(UNET_CONFIGS["tiny"])), "training": "{}"}
    meta.update(override)
    return meta


def test_roundtrip_rebuilds_the_same_model(saved, tiny_denoiser):
    ckpt = checkpoints.load(saved)
    assert ckpt.kind == "dsm" and ckpt.config == UNET_CONFIGS["tiny"] and ckpt.training["command"] == "test"
    x, sigma, labels = torch.randn(2, 3, 28, 28), torch.tensor([1.0, 5.0]), torch.tensor([3, -1])
    with torch.no_grad():
        assert torch.equal(ckpt.model(x, sigma, class_labels=labels), tiny_denoiser.eval()(x, sigma, class_labels=labels))
    assert not any(p.requires_grad for p in ckpt.model.parameters())


def test_classifier_roundtrip(tmp_path):
    model = EvalClassifier(CLASSIFIER_CONFIGS["tiny"])
    checkpoints.save(tmp_path / "c.safetensors", model, "classifier", CLASSIFIER_CONFIGS["tiny"])
    ckpt = checkpoints.load(tmp_path / "c.safetensors", kind="classifier")
    x = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x)["digit"], model.eval()(x)["digit"])


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoints.load(tmp_path / "nope.safetensors")


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_text("definitely not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        checkpoints.load(path)


def test_truncated_file(tmp_path, saved):
    data = saved.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        checkpoints.load(path)


@pytest.mark.parametrize("meta, message", [
    (None, "format=None"),
    ({"format": "other"}, "format='other'"),
    (metadata(format_version="9"), "format_version='9'"),
    (metadata(kind="banana"), "unknown kind 'banana'"),
    (metadata() | {"config": "{not json"}, "not valid JSON"),
    (metadata(config=[1, 2]), "config must be a JSON object"),
])
def test_bad_metadata(tmp_path, tiny_denoiser, meta, message):
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_denoiser.state_dict().items()}, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=message):
        checkpoints.load(path)


def test_missing_and_unexpected_keys(tmp_path, tiny_denoiser):
    state = {k: v.contiguous() for k, v in tiny_denoiser.state_dict().items()}
    dropped = sorted(state)[0]
    del state[dropped]
    state["surprise.weight"] = torch.zeros(2)
    path = tmp_path / "m.safetensors"
    save_file(state, str(path), metadata=metadata())
    with pytest.raises(CheckpointError, match="missing keys: " + dropped.replace(".", r"\.")) as e:
        checkpoints.load(path)
    assert "unexpected keys: surprise.weight" in str(e.value)


def test_weights_of_another_config(tmp_path, tiny_denoiser):
    path = tmp_path / "m.safetensors"
    other = config_to_dict(UNET_CONFIGS["mnist-s"])
    save_file({k: v.contiguous() for k, v in tiny_denoiser.state_dict().items()}, str(path), metadata=metadata(config=other))
    with pytest.raises(CheckpointError, match="does not match its 'dsm' config"):
        checkpoints.load(path)


@pytest.mark.parametrize("config, message", [
    ({"condition": "bogus"}, "condition must be one of"),
    ({"no_such_field": 1}, "unknown UNetConfig fields"),
    ({"condition": "colour", "num_classes": 10}, "num_classes must be 2"),
])
def test_config_that_does_not_build(tmp_path, tiny_denoiser, config, message):
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_denoiser.state_dict().items()}, str(path),
              metadata=metadata(config=config_to_dict(UNET_CONFIGS["tiny"]) | config))
    with pytest.raises(CheckpointError, match=f"does not build a 'dsm' model: .*{message}"):
        checkpoints.load(path)


def test_wrong_kind_for_the_caller(saved):
    with pytest.raises(CheckpointError, match="is a 'dsm' checkpoint; expected kind 'classifier'"):
        checkpoints.load(saved, kind="classifier")


def test_save_is_atomic(tmp_path, tiny_denoiser, monkeypatch):
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save(tmp_path / "m.safetensors", tiny_denoiser, "dsm", UNET_CONFIGS["tiny"])
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_mismatched_kind_and_config(tmp_path, tiny_denoiser):
    with pytest.raises(ValueError, match="kind 'classifier' needs a ClassifierConfig"):
        checkpoints.save(tmp_path / "m.safetensors", tiny_denoiser, "classifier", UNET_CONFIGS["tiny"])
    with pytest.raises(ValueError, match="kind must be one of"):
        checkpoints.save(tmp_path / "m.safetensors", tiny_denoiser, "pickle", UNET_CONFIGS["tiny"])
