"""Bounds and reference losses of ``python -m training dual``: ``L(theta; q_i)`` at fixed draws, and the bounds set from it.

A bound ``b_i`` is a loss level, relative to the unknown entropy of ``q_i``; ``auto`` bounds take the scale from a reference
model's loss on each set (``b_i = (1 + margin_i) L(theta_ref; q_i)``, ``fair_core.constrained.default_bounds``). The
same fixed-draw estimate (:func:`set_loss`) measures the final slacks and the paired slack estimate's reference means.
"""
from __future__ import annotations

import logging

import torch

from fair_core import checkpoints
from fair_core import constrained as C
from fair_core.errors import FairSamplingError, check_range

from .data import ImageSet

log = logging.getLogger(__name__)


def parse_margins(text, m: int) -> list[float]:
    """``--bound-margin``: one margin (for every set) or one per set, each > -1 (a float from an older options file too)."""
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError as e:
        raise FairSamplingError(f"--bound-margin must be a number or comma-separated numbers, got {text!r}") from e
    if len(values) not in (1, m):
        raise FairSamplingError(f"--bound-margin needs one value or one per constraint set ({m}), got {len(values)}: {text!r}")
    for v in values:
        check_range("--bound-margin", v, -1.0, low_open=True)
    return values * m if len(values) == 1 else values


def parse_bounds(text: str, m: int) -> torch.Tensor | None:
    """None for 'auto', else one non-negative bound per constraint set."""
    if text.strip() == "auto":
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as e:
        raise FairSamplingError(f"--bounds must be 'auto' or comma-separated numbers, got {text!r}") from e
    if len(values) != m:
        raise FairSamplingError(f"--bounds needs one value per constraint set ({m}), got {len(values)}: {text!r}")
    return C.check_bounds(values)


def stratified_timesteps(n: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` timesteps, one uniform in each n-th of [0, steps), in random order (drawn on the CPU)."""
    t = ((torch.arange(n) + torch.rand(n, generator=generator)) * steps / n).long().clamp_max(steps - 1)
    return t[torch.randperm(n, generator=generator)]


@torch.no_grad()
def set_loss(model, images: ImageSet, condition: str, n: int, seed: int, device) -> float:
    """``L(theta; q)`` on the first ``n`` images (cycled) of a set, at fixed timesteps and noise: comparable across
    models and the same on every device.

    The per-image loss depends mostly on its timestep, so the timesteps are stratified (one in each n-th of [0, T),
    assigned to the images at random): with plain uniform draws, 512 images give an estimate that moves by 2-3 %
    with the seed, as much as the bound margins. Timesteps and noise are drawn on the CPU (the CPU and CUDA
    generators draw different numbers from one seed).
    """
    was_training = model.training
    model.eval()
    idx = torch.arange(n) % len(images)
    g = torch.Generator().manual_seed(seed)
    steps = model.cfg.num_train_timesteps
    t = stratified_timesteps(n, steps, g)
    g_dev = torch.Generator(device=device).manual_seed(seed)  # class dropout of conditional models only
    total = 0.0
    for chunk, t_chunk in zip(idx.split(256), t.split(256)):
        x0, labels = images.images(chunk), images.labels(condition, chunk)
        noise = torch.randn(x0.shape, generator=g)
        total += model.loss(x0.to(device), None if labels is None else labels.to(device), t=t_chunk.to(device),
                            noise=noise.to(device), generator=g_dev).sum().item()
    model.train(was_training)
    return total / n


def load_reference(path: str, option: str, cons: list[ImageSet], condition: str, device):
    """A diffusion checkpoint that must model the constraint sets' images under this run's condition."""
    ref = checkpoints.load(path, kind=checkpoints.DIFFUSION_KINDS, device=device).model
    if ref.cfg.channels != cons[0].channels or ref.cfg.sample_size != cons[0].images([0]).shape[-1]:
        raise FairSamplingError(f"{option} {path!r} models {ref.cfg.channels}x{ref.cfg.sample_size}px images; "
                                f"the constraint sets are {cons[0].channels}x{cons[0].images([0]).shape[-1]}px")
    if ref.cfg.condition != condition:
        raise FairSamplingError(f"{option} {path!r} has condition={ref.cfg.condition!r}, this run {condition!r}")
    return ref


def reference_losses(ref, cons: list[ImageSet], condition: str, opts: dict, device) -> torch.Tensor:
    """``L(theta_ref; q_i)`` of every set, ``--bound-eval`` images each at fixed draws (:func:`set_loss`)."""
    return torch.tensor([set_loss(ref, c, condition, opts["bound_eval"], 12345 + i, device) for i, c in enumerate(cons)])


def resolve_bounds(opts: dict, cons: list[ImageSet], condition: str, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The bounds, and the reference's set losses they were set from (None for explicit bounds)."""
    explicit = parse_bounds(opts["bounds"], len(cons))
    if explicit is not None:
        return explicit, None
    ref = load_reference(opts["bound_reference"], "--bound-reference", cons, condition, device)
    reference = reference_losses(ref, cons, condition, opts, device)
    log.info("reference losses %s", reference.tolist())
    return C.default_bounds(reference, parse_margins(opts["bound_margin"], len(cons))), reference
