"""``python -m fair_core``: sample, eval and the demo (the main job) on the shipped default."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fair_core import checkpoints, evaluation
from fair_core.cli import main
from fair_core.models import CLASSIFIER_CONFIGS, UNET_CONFIGS, EvalClassifier

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    checkpoints.save(d / "dsm.safetensors", checkpoints.KINDS["dsm"].build(UNET_CONFIGS["tiny"]), "dsm", UNET_CONFIGS["tiny"])
    checkpoints.save(d / "clf.safetensors", EvalClassifier(CLASSIFIER_CONFIGS["tiny"]), "classifier", CLASSIFIER_CONFIGS["tiny"])
    return d


def test_sample_writes_uint8_images_and_labels(tiny, tmp_path):
    out = tmp_path / "s.npz"
    main(["sample", str(tiny / "dsm.safetensors"), "--n", "5", "--steps", "2", "--seed", "1", "--out", str(out)])
    data = np.load(out)
    assert data["images"].shape == (5, 28, 28, 3) and data["images"].dtype == np.uint8
    assert data["labels"].tolist() == [0, 1, 2, 3, 4]
    main(["sample", str(tiny / "dsm.safetensors"), "--n", "5", "--steps", "2", "--seed", "1", "--out", str(tmp_path / "t.npz")])
    assert np.array_equal(np.load(tmp_path / "t.npz")["images"], data["images"]), "same seed, same images"


@pytest.mark.parametrize("args, message", [
    (["--n", "0"], r"--n must be in \[1, inf\), got 0"),
    (["--sampler", "plms"], "sampler must be one of"),
    (["--steps", "0"], "steps"),
    (["--label", "cat"], "--label must be 'uniform'"),
])
def test_sample_bad_input(tiny, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["sample", str(tiny / "dsm.safetensors"), "--out", str(tmp_path / "s.npz"), "--steps", "2", *args])
    assert e.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "s.npz").exists()


def test_sample_refuses_a_classifier_and_a_missing_file(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sample", str(tiny / "clf.safetensors"), "--out", str(tmp_path / "s.npz")])
    assert "is a 'classifier' checkpoint; expected kind 'dsm' or 'tiw' or 'dual'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "s.npz")])
    assert "must be an existing file or one of the shipped names" in capsys.readouterr().err


def test_eval_json(tiny, capsys):
    main(["eval", str(tiny / "dsm.safetensors"), "--classifier", str(tiny / "clf.safetensors"), "--n", "6", "--steps", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    colour = report["colour"]
    assert len(colour["proportions"]) == 2 and abs(sum(colour["proportions"]) - 1) < 1e-6
    assert colour["target"] == [0.5, 0.5] and colour["fd"] >= 0
    assert all(lo <= v <= hi for lo, v, hi in zip(colour["proportions_low"], colour["proportions"], colour["proportions_high"]))
    assert colour["tv"]["low"] <= colour["tv"]["tv"] <= colour["tv"]["high"] and colour["tv"]["confidence"] == 0.95
    assert report["kind"] == "dsm" and report["n"] == 6


def test_eval_rejects_bad_target(tiny, capsys):
    with pytest.raises(SystemExit):
        main(["eval", str(tiny / "dsm.safetensors"), "--classifier", str(tiny / "clf.safetensors"), "--target", "0.7,0.7"])
    assert "summing to 1" in capsys.readouterr().err




SHIPPED = {"colored_mnist_dsm": "dsm", "colored_mnist_tiw": "tiw", "colour_cond_dsm": "dsm", "colored_mnist_adp": "adp", "mnist457_dual": "dual",
           "eval_classifier": "classifier"}  # each is in the README's table of shipped models


def test_shipped_models_load_and_record_their_training_command():
    assert {p.stem for p in (ROOT / "models").glob("*.safetensors")} == set(SHIPPED) == set(evaluation.SHIPPED)
    for name, kind in SHIPPED.items():
        ckpt = checkpoints.load(evaluation.resolve_checkpoint(name), kind=kind)
        assert ckpt.training["command"].startswith(f"python -m training {kind} "), name
        assert f"`{name}.safetensors`" in (ROOT / "README.md").read_text(), f"{name} is missing from the README's table"
    assert checkpoints.load(evaluation.resolve_checkpoint("eval_classifier")).model.has_reference_stats
    record = checkpoints.load(evaluation.resolve_checkpoint("mnist457_dual")).training["constraints"]
    assert record["names"] == ["digit4", "digit5", "digit7"] and len(record["lambdas"]) == len(record["slacks"]) == 3


def test_demo_shows_the_bias_of_the_default(tmp_path, capsys):
    main(["demo", "--n", "32", "--steps", "10", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert (tmp_path / "grid.png").stat().st_size > 1000 and (tmp_path / "colour_distribution.png").stat().st_size > 1000
    red = float(out.split("red ")[1].split(" ")[0])
    assert red >= 0.7, f"the default model was trained on 90:10 red:green data and should show it; got red {red}"
    tiw = next(line for line in out.splitlines() if line.startswith("TIW-DSM (5% balanced reference set)"))
    green = float(out.split("green ")[1].split(",")[0])
    assert float(tiw.split("green ")[1].split(",")[0]) > green, f"TIW-DSM should draw more green than the default (green {green}): {tiw}"
    switched = next(line for line in out.splitlines() if line.startswith("attribute switching (tau "))
    assert "BER of the starting colour" in switched
    assert float(switched.split("FD to 50:50 = ")[1].split(",")[0]) <= 0.2, switched  # half the batch starts red, half green
    constrained = next(line for line in out.splitlines() if line.startswith("constrained dual training (grey MNIST, digits 4/5/7"))
    shares = [float(v) for v in constrained.split("their share ")[1].split(" ")[0].split("/")]
    assert sum(shares) >= 0.09, f"4, 5, 7 are 1.3 % each of the data (3 images of 32 would be chance-level luck): {constrained}"


def test_audit_of_saved_samples_and_of_a_folder(tiny, tmp_path, capsys):
    from PIL import Image

    red = np.zeros((6, 28, 28, 3), np.uint8)
    red[:, 8:20, 12:16, 0] = 255
    np.savez(tmp_path / "s.npz", images=red, labels=np.zeros(6))
    main(["audit", str(tmp_path / "s.npz"), "--classifier", str(tiny / "clf.safetensors"), "--json", "--png", str(tmp_path / "a.png")])
    report = json.loads(capsys.readouterr().out)
    p = report["proportions"]
    assert report["n"] == 6 and len(p) == 2 and report["tv"]["low"] <= report["tv"]["tv"] <= report["tv"]["high"]
    assert all(lo <= v <= hi for lo, v, hi in zip(report["proportions_low"], p, report["proportions_high"]))
    assert (tmp_path / "a.png").stat().st_size > 1000
    (tmp_path / "dir").mkdir()
    for i, img in enumerate(red):
        Image.fromarray(img).save(tmp_path / "dir" / f"{i}.png")
    main(["audit", str(tmp_path / "dir"), "--classifier", str(tiny / "clf.safetensors"), "--json"])
    assert json.loads(capsys.readouterr().out)["proportions"] == p


@pytest.mark.parametrize("make, message", [
    (lambda d: np.savez(d / "x.npz", images=np.zeros((2, 32, 32, 3), np.uint8)), r"classifier input must have shape \(N, 3, 28, 28\)"),
    (lambda d: np.savez(d / "x.npz", other=np.zeros(2)), "must hold an 'images' array"),
    (lambda d: None, "source must be an .npz file or a folder of images"),
])
def test_audit_bad_input(tiny, tmp_path, capsys, make, message):
    make(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["audit", str(tmp_path / "x.npz"), "--classifier", str(tiny / "clf.safetensors")])
    assert e.value.code == 2 and __import__("re").search(message, capsys.readouterr().err)
