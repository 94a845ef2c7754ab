"""Model factories: typed configs that are saved with the weights, so a checkpoint rebuilds itself.

Two families live here:

* ``UNetConfig`` -> a diffusers ``UNet2DModel`` (pixel space, optional class labels) wrapped in the
  :class:`fair_core.denoiser.DiscreteVPDenoiser` adapter. Used by the kinds ``dsm``, ``tiw`` and ``dual``.
* ``ClassifierConfig`` -> :class:`EvalClassifier`, a small CNN with one head per attribute
  (``digit``: 10 classes, ``colour``: 2 classes) used to measure what a generator produces.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import ConfigError, FairSamplingError, check_choice


@dataclass(frozen=True)
class UNetConfig:
    """Architecture, conditioning and noise schedule of a pixel-space class-conditional UNet."""

    sample_size: int = 28
    channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, False, True)  # self-attention only at the 7x7 level: cheap
    norm_num_groups: int = 8
    # Conditioning: ``condition`` names what the class label means; ``num_classes`` real classes plus one
    # null label (index ``num_classes``) that training drops to with ``class_dropout``, enabling CFG.
    condition: str = "digit"  # "none" | "digit" | "colour" | "digit+colour"
    num_classes: int = 10
    class_dropout: float = 0.1
    # Discrete VP schedule (DDPM): betas linear from beta_start to beta_end over num_train_timesteps.
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction"
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # "linear" | "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self):
        check_choice("condition", self.condition, CONDITIONS)
        check_choice("prediction_type", self.prediction_type, ("epsilon", "v_prediction"))
        check_choice("beta_schedule", self.beta_schedule, ("linear", "squaredcos_cap_v2"))
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ConfigError(
                f"attention_levels must have one entry per block_out_channels level "
                f"({len(self.block_out_channels)}), got {len(self.attention_levels)}"
            )
        expected = CONDITIONS[self.condition]
        if expected is not None and self.num_classes != expected:
            raise ConfigError(f"num_classes must be {expected} for condition={self.condition!r}, got {self.num_classes}")

    @property
    def conditional(self) -> bool:
        return self.condition != "none"


# condition -> number of classes it implies (None: free)
CONDITIONS = {"none": 0, "digit": 10, "colour": 2, "digit+colour": 20}


@dataclass(frozen=True)
class ClassifierConfig:
    """Evaluation classifier: a CNN trunk with one linear head per attribute."""

    sample_size: int = 28
    channels: int = 3
    widths: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = 128
    heads: dict = field(default_factory=lambda: {"digit": 10, "colour": 2})


def build_unet(cfg: UNetConfig) -> nn.Module:
    """A diffusers ``UNet2DModel`` for ``cfg`` (imported lazily: diffusers is slow to import)."""
    from diffusers import UNet2DModel

    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    return UNet2DModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=cfg.norm_num_groups,
        num_class_embeds=cfg.num_classes + 1 if cfg.conditional else None,
    )


class EvalClassifier(nn.Module):
    """Small CNN: images in [-1, 1], shape (N, C, H, W) -> ``{head: logits}``; ``features`` gives the trunk."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        layers, c_in = [], cfg.channels
        for w in cfg.widths:
            layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, w, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2)]
            c_in = w
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, cfg.feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(cfg.feature_dim, n) for name, n in cfg.heads.items()})
        # Gaussian statistics of the trunk features of the real test set (recoloured red, see
        # ``features.classifier_feature_fd``), filled by ``python -m training classifier``: they let a
        # classifier-feature Frechet distance to real data be computed with no data set at hand.
        self.register_buffer("feature_mean", torch.zeros(cfg.feature_dim))
        self.register_buffer("feature_cov", torch.zeros(cfg.feature_dim, cfg.feature_dim))

    @property
    def has_reference_stats(self) -> bool:
        return bool(self.feature_cov.abs().sum() > 0)

    def check_input(self, x: torch.Tensor) -> None:
        want = (self.cfg.channels, self.cfg.sample_size, self.cfg.sample_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise FairSamplingError(f"classifier input must have shape (N, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise FairSamplingError("classifier input is an empty batch (N=0)")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}


# Named configurations. ``mnist-s`` is the shipped default (1.1M parameters, ~1 s per batch-64 step on 2 CPU cores).
UNET_CONFIGS = {
    "tiny": UNetConfig(block_out_channels=(16, 32), attention_levels=(False, False), layers_per_block=1, norm_num_groups=8),
    "mnist-s": UNetConfig(),
    "mnist-m": UNetConfig(block_out_channels=(64, 128, 128), layers_per_block=2, attention_levels=(False, True, True), norm_num_groups=16),
}
CLASSIFIER_CONFIGS = {
    "tiny": ClassifierConfig(widths=(8, 16), feature_dim=32),
    "eval": ClassifierConfig(),
}


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(cls, data: dict):
    """Rebuild a config dataclass from JSON data; unknown or ill-typed fields raise ``ConfigError``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} config must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields {sorted(unknown)}; allowed: {sorted(names)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**fixed)
    except TypeError as e:
        raise ConfigError(f"cannot build {cls.__name__} from {data}: {e}") from e


def named_config(family: str, name: str):
    table = {"unet": UNET_CONFIGS, "classifier": CLASSIFIER_CONFIGS}[family]
    check_choice(f"{family} config", name, table)
    return table[name]
