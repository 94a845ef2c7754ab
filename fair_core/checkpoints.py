"""Checkpoints: ``.safetensors`` weights with the config travelling inside as JSON metadata.

Metadata (all values are strings, as safetensors requires)::

    format          "fair-sampling"
    format_version  "1"
    kind            "dsm" | "tiw" | "dual" | "classifier" | ...   (see KINDS)
    config          JSON of the model config dataclass
    training        JSON: {"command": ..., "data": ..., "steps": ..., "seed": ..., ...}

``load`` rebuilds the model from the metadata and loads it ``strict=True``; every failure is a
:class:`CheckpointError` naming the file and what was expected. Pickles are never loaded.
Writes go to a temporary file in the same folder that is renamed into place, so no file is half-written.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from .adp import ADP, ADPConfig
from .density_ratio import DiscriminatorConfig, TimeDependentDiscriminator
from .errors import CheckpointError, ConfigError, FairSamplingError
from .models import ClassifierConfig, EvalClassifier, UNetConfig, build_unet, config_from_dict, config_to_dict

FORMAT = "fair-sampling"
FORMAT_VERSION = "1"


def _build_denoiser(cfg: UNetConfig) -> nn.Module:
    from .denoiser import DiscreteVPDenoiser

    return DiscreteVPDenoiser(build_unet(cfg), cfg)


@dataclass(frozen=True)
class Kind:
    config_cls: type
    build: Callable[[object], nn.Module]
    description: str


# The one table of checkpoint kinds. Later methods add their kind here.
KINDS: dict[str, Kind] = {
    "dsm": Kind(UNetConfig, _build_denoiser, "diffusion model trained by plain denoising score matching"),
    "tiw": Kind(UNetConfig, _build_denoiser, "diffusion model trained by TIW-DSM (time-dependent importance reweighting)"),
    "dual": Kind(UNetConfig, _build_denoiser, "diffusion model trained by constrained dual training"),
    "classifier": Kind(ClassifierConfig, EvalClassifier, "evaluation classifier (digit and colour heads)"),
    "adp": Kind(ADPConfig, ADP, "attribute distribution predictor: per-timestep linear heads on h-space (distribution guidance)"),
    "discriminator": Kind(DiscriminatorConfig, TimeDependentDiscriminator, "time-dependent discriminator: density ratio w_t for TIW-DSM"),
}
DIFFUSION_KINDS = ("dsm", "tiw", "dual")


@dataclass
class Checkpoint:
    model: nn.Module
    kind: str
    config: object
    training: dict
    path: Path

    @property
    def metadata(self) -> dict:
        return {"kind": self.kind, "config": config_to_dict(self.config), "training": self.training}


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``; on failure nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the result is an ordinary, readable file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save(path, model: nn.Module, kind: str, config, training: dict | None = None) -> Path:
    """Write ``model``'s weights and metadata to ``path`` (atomic)."""
    from safetensors.torch import save_file

    if kind not in KINDS:
        raise FairSamplingError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if not isinstance(config, KINDS[kind].config_cls):
        raise FairSamplingError(f"kind {kind!r} needs a {KINDS[kind].config_cls.__name__}, got {type(config).__name__}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": json.dumps(config_to_dict(config)),
        "training": json.dumps(training or {}),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_metadata(path) -> dict:
    """The checked metadata of ``path`` (kind, config as dict, training as dict) without loading weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for garbage and truncated files
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({type(e).__name__}: {e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} has metadata format={meta.get('format')!r}; expected {FORMAT!r} (not a fair-sampling checkpoint)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} has format_version={meta.get('format_version')!r}; this version reads {FORMAT_VERSION!r}")
    kind = meta.get("kind")
    if kind not in KINDS:
        raise CheckpointError(f"{str(path)!r} has unknown kind {kind!r}; known kinds: {sorted(KINDS)}")
    try:
        config = json.loads(meta.get("config", ""))
        training = json.loads(meta.get("training", "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{str(path)!r} has metadata that is not valid JSON: {e}") from e
    return {"kind": kind, "config": config, "training": training}


def load(path, kind: str | tuple[str, ...] | None = None, device=None, dtype=None) -> Checkpoint:
    """Rebuild the model recorded in ``path`` and load its weights strictly.

    ``kind``: the kind(s) the caller accepts; another kind is a :class:`CheckpointError`.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    accepted = (kind,) if isinstance(kind, str) else kind
    if accepted is not None and meta["kind"] not in accepted:
        raise CheckpointError(f"{str(path)!r} is a {meta['kind']!r} checkpoint; expected kind {' or '.join(map(repr, accepted))}")
    spec = KINDS[meta["kind"]]
    try:
        config = config_from_dict(spec.config_cls, meta["config"])
        model = spec.build(config)
    except (ConfigError, FairSamplingError, TypeError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r}: its config does not build a {meta['kind']!r} model: {e}") from e
    try:
        state = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{str(path)!r}: cannot read tensors ({type(e).__name__}: {e})") from e
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        def few(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = [f"missing keys: {few(missing)}" if missing else "", f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"shape mismatch: {few(wrong)}" if wrong else ""]
        raise CheckpointError(f"{str(path)!r} does not match its {meta['kind']!r} config; " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return Checkpoint(model=model, kind=meta["kind"], config=config, training=meta["training"], path=path)
