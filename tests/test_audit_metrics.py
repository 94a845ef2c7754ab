"""Audit metrics on cases with known answers (representational balance, BER, multi-accuracy/-calibration,
embedding bias, alignment auditing)."""
import numpy as np
import pytest

from fair_core import metrics
from fair_core.errors import FairSamplingError


def test_tv_ci_brackets_the_truth_and_narrows_with_n():
    all_red = metrics.total_variation_ci(np.zeros(20, int), [0.5, 0.5])
    assert (all_red["tv"], all_red["low"], all_red["high"], all_red["n"]) == (0.5, 0.5, 0.5, 20)
    assert all_red["proportions"] == all_red["proportions_low"] == all_red["proportions_high"] == [1, 0]
    rng = np.random.default_rng(0)
    small = metrics.total_variation_ci(rng.integers(0, 2, 40), [0.5, 0.5], seed=1)
    large = metrics.total_variation_ci(rng.integers(0, 2, 4000), [0.5, 0.5], seed=1)
    assert small["low"] <= small["tv"] <= small["high"] and large["low"] <= large["tv"] <= large["high"]
    assert large["high"] - large["low"] < (small["high"] - small["low"]) / 4  # ~1/sqrt(100) of the width
    assert 0.02 < large["proportions_high"][0] - large["proportions_low"][0] < 0.04  # 2 * 1.96 * sqrt(0.25 / 4000) = 0.031
    with pytest.raises(FairSamplingError, match=r"alpha must be in \(0.0, 1.0\)"):
        metrics.total_variation_ci([0, 1], [0.5, 0.5], alpha=1.0)
    with pytest.raises(FairSamplingError, match="labels must be in"):
        metrics.total_variation_ci([0, 2], [0.5, 0.5])


def test_balanced_error_rate():
    assert metrics.balanced_error_rate([0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0], 2) == pytest.approx((1 / 4 + 1 / 2) / 2)
    assert metrics.balanced_error_rate([0, 1, 2], [0, 1, 2], 3) == 0
    with pytest.raises(FairSamplingError, match="same shape"):
        metrics.balanced_error_rate([0, 1], [0], 2)


def test_held_out_ber_reads_a_visible_attribute_and_not_an_invisible_one():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 400)
    visible = np.c_[a + 0.1 * rng.standard_normal(400), rng.standard_normal((400, 3))]
    invisible = rng.standard_normal((400, 4))
    assert metrics.held_out_ber(visible, a, 2) < 0.02
    assert abs(metrics.held_out_ber(invisible, a, 2) - 0.5) < 0.1
    with pytest.raises(FairSamplingError, match="features must be"):
        metrics.held_out_ber(invisible[:10], a, 2)


def test_multi_accuracy_and_calibration():
    truth = np.array([0.4, 0.4, 0.6, 0.6, 0.4, 0.6])
    groups = np.array(["a", "a", "a", "a", "b", "b"])
    exact = metrics.multi_accuracy(truth, truth, groups)
    assert exact["max"] == 0
    shifted = metrics.multi_accuracy(np.where(groups == "b", truth + 0.1, truth), truth, groups)
    assert shifted["max"] == pytest.approx(0.1) and shifted["per_group"]["a"] == 0
    # group a: right on average (MA 0) but over-confident in every bin (MC 0.2)
    scores = np.array([0.2, 0.2, 0.8, 0.8, 0.4, 0.6])
    assert metrics.multi_accuracy(scores, truth, groups)["per_group"]["a"] == pytest.approx(0)
    mc = metrics.multi_calibration(scores, truth, groups, bins=10)
    assert mc["max"] == pytest.approx(0.2) and mc["cell"]["group"] == "a"
    with pytest.raises(FairSamplingError, match=r"scores must be in \[0, 1\]"):
        metrics.multi_accuracy([1.5], [1], [0])


def test_embedding_bias_ratio():
    a, b = np.array([1.0, 0.0]), np.array([0.6, 0.8])
    between = (a + b) / np.linalg.norm(a + b)
    ratio = metrics.embedding_bias_ratio(np.stack([a, between, b]), a, b)
    assert ratio == pytest.approx([1 / 0.6, 1.0, 0.6])
    with pytest.raises(FairSamplingError, match="positive cosine"):
        metrics.embedding_bias_ratio(np.array([[-1.0, 0.0]]), a, b)


def test_subclass_and_average_scores_remove_a_biased_prompts_gap():
    """Prompt 'a doctor' leans to the male direction; female / male images score unequally with it (plain), but
    equally against subclass prompts (subclass-score) or their average (average-then-score)."""
    female, male = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    images, groups = np.stack([female, female, male, male]), np.array(["f", "f", "m", "m"])
    prompt = np.array([0.4, 1.0])
    plain = metrics.group_gap(metrics.alignment_scores(images, prompt), groups)
    assert plain["gap"] == pytest.approx((1.0 - 0.4) / np.hypot(0.4, 1.0))
    for method in ("subclass", "average"):
        scores = metrics.alignment_scores(images, prompt, np.stack([female, male]), method=method)
        assert metrics.group_gap(scores, groups)["gap"] == pytest.approx(0, abs=1e-12)
    with pytest.raises(FairSamplingError, match="needs subclass_prompts"):
        metrics.alignment_scores(images, prompt, method="subclass")
    with pytest.raises(FairSamplingError, match="method must be one of"):
        metrics.alignment_scores(images, prompt, method="best")
