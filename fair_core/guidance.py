"""Distribution guidance in h-space ("Balancing Act", Parihar et al., arXiv 2402.18206).

At a guided step with timestep ``t`` the batch's predicted attribute distribution

    p_hat_a = 1/N sum_i softmax(ADP_a(h_i, t) / temperature)            (conditional entries i only)

is pushed towards the reference ``p_ref_a`` by a gradient step on h itself:

    h_i <- h_i - N * sum_a scale_a * grad_{h_i} L(p_hat_a, p_ref_a)

with ``L = chi2: sum_c (p_hat_c - p_c)^2 / p_c`` (the paper's loss for its ADM model) or ``L = kl: sum_c p_hat_c
log(p_hat_c / p_c)`` (its loss for Stable Diffusion). The factor ``N`` (number of guided entries) makes ``scale``
a per-sample step that needs no retuning per batch size (the reference code retunes ``scale`` instead). The
gradient touches only the ADP heads and h, never the UNet. Unconditional CFG entries (label -1 here,
``cond_or_uncond == 1`` in ComfyUI) are neither averaged into ``p_hat`` nor edited.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import hspace
from .adp import ADP, HEAD_SELECTION
from .errors import FairSamplingError, check_choice, check_range

LOSSES = ("chi2", "kl")
NORMALIZE = ("error", "normalize")
P_FLOOR = 1e-3  # floor of p_c in the chi2 denominator and the kl logarithm, so a 0 target entry stays finite


# ----- reference distributions ----------------------------------------------------------------------------------
def parse_reference(text: str, classes: list[str], normalize: str = "error") -> tuple[float, ...]:
    """``"0.5,0.5"`` (positional), ``"red=0.3,green=0.7"`` (by class name) or ``"uniform"`` -> proportions.

    ``normalize="error"`` (default): proportions that do not sum to 1 (within 1e-3) are an error;
    ``"normalize"``: they are divided by their sum. Negative entries and a class count other than the ADP's are
    always errors.
    """
    check_choice("normalize", normalize, NORMALIZE)
    k = len(classes)
    text = str(text).strip()
    example = f"{','.join(['%.3g' % (1 / k)] * k)} or {','.join(f'{c}={1 / k:.3g}' for c in classes)}"
    if text == "uniform":
        return tuple([1.0 / k] * k)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    named = parts and all("=" in p for p in parts)
    try:
        pairs = [(name.strip(), float(v)) for name, v in (p.split("=", 1) for p in parts)] if named else [("", float(p)) for p in parts]
    except ValueError as e:
        raise FairSamplingError(f"reference must be {k} proportions like {example} (or 'uniform'), got {text!r}") from e
    if named:
        given = dict(pairs)
        unknown, missing = sorted(set(given) - set(classes)), [c for c in classes if c not in given]
        if unknown or missing or len(given) != len(pairs):
            raise FairSamplingError(f"reference must name each of the ADP's classes {classes} once; unknown {unknown}, missing {missing}, got {text!r}")
        values = [given[c] for c in classes]
    else:
        values = [v for _, v in pairs]
    if len(values) != k:
        raise FairSamplingError(f"reference has {len(values)} entries but the ADP predicts {k} classes {classes}; got {text!r}")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise FairSamplingError(f"reference entries must be finite and >= 0, got {text!r}")
    total = sum(values)
    if total <= 0:
        raise FairSamplingError(f"reference must have a positive entry, got {text!r}")
    if abs(total - 1) > 1e-3:
        if normalize == "error":
            raise FairSamplingError(f"reference must sum to 1, got {text!r} (sum {total:.4g}); set normalize='normalize' to rescale it")
        values = [v / total for v in values]
    return tuple(values)


# ----- the batch distribution and its losses -----------------------------------------------------------------------
def p_hat(logits: torch.Tensor, temperature: float = 1.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """p_hat = 1/N sum_i softmax(logits_i / temperature): the batch's predicted attribute distribution (K,).

    With ``weights`` (N,) of 0/1, only the entries weighted 1 count (the guided ones): sum_i w_i softmax_i / sum_i w_i.
    """
    probs = (logits.float() / temperature).softmax(-1)
    if weights is None:
        return probs.mean(0)
    return (weights[:, None] * probs).sum(0) / weights.sum().clamp_min(1.0)


def chi2_loss(p_hat: torch.Tensor, p_ref: torch.Tensor) -> torch.Tensor:
    """Pearson chi-square divergence sum_c (p_hat_c - p_c)^2 / p_c (p_c floored at P_FLOOR)."""
    return ((p_hat - p_ref) ** 2 / p_ref.clamp_min(P_FLOOR)).sum()


def kl_loss(p_hat: torch.Tensor, p_ref: torch.Tensor) -> torch.Tensor:
    """KL(p_hat || p_ref) = sum_c p_hat_c (log p_hat_c - log p_c) (both floored at P_FLOOR inside the logs)."""
    return (p_hat * (p_hat.clamp_min(P_FLOOR).log() - p_ref.clamp_min(P_FLOOR).log())).sum()


LOSS_FNS = {"chi2": chi2_loss, "kl": kl_loss}


@dataclass(frozen=True)
class AttributeTarget:
    """One guided attribute: its ADP head name, reference distribution and guidance scale."""

    attribute: str
    p_ref: tuple[float, ...]
    scale: float


@dataclass(frozen=True)
class GuidanceConfig:
    """Distribution guidance settings; percents are of the timestep range like ComfyUI (0 = start of sampling)."""

    targets: tuple[AttributeTarget, ...]
    loss: str = "chi2"  # the paper's loss for pixel-space (ADM) models
    temperature: float = 1.0  # softmax temperature of the ADP logits inside p_hat
    start_percent: float = 0.0  # guide from the first step ...
    end_percent: float = 1.0  # ... to the last: on the shipped model late steps still move the digit balance
    head_selection: str = "nearest"  # ADP head for a t between buckets: nearest or linear interpolation

    def __post_init__(self):
        check_choice("loss", self.loss, LOSSES)
        check_choice("head_selection", self.head_selection, HEAD_SELECTION)
        check_range("temperature", self.temperature, 0.0, low_open=True)
        check_range("start_percent", self.start_percent, 0.0, 1.0)
        check_range("end_percent", self.end_percent, self.start_percent, 1.0)
        if not self.targets:
            raise FairSamplingError("targets must name at least one attribute to guide, got ()")


def check_targets(adp: ADP, cfg: GuidanceConfig) -> None:
    """Each target names an ADP attribute and has one proportion per ADP class."""
    for tg in cfg.targets:
        if tg.attribute not in adp.cfg.attributes:
            raise FairSamplingError(f"attribute must be one of the ADP's {list(adp.cfg.attributes)}, got {tg.attribute!r}")
        classes = adp.cfg.attributes[tg.attribute]
        if len(tg.p_ref) != len(classes):
            raise FairSamplingError(f"reference for {tg.attribute!r} has {len(tg.p_ref)} entries but the ADP predicts {len(classes)} classes {classes}")
        check_range(f"scale of {tg.attribute!r}", tg.scale, 0.0)


def active(t: torch.Tensor, num_timesteps: int, start_percent: float, end_percent: float) -> torch.Tensor:
    """Boolean mask: (1 - end) (T - 1) <= t <= (1 - start) (T - 1), ComfyUI's percent convention."""
    top = num_timesteps - 1
    return (t >= (1 - end_percent) * top - 1e-4) & (t <= (1 - start_percent) * top + 1e-4)


def reference_tensors(cfg: GuidanceConfig, device) -> tuple[torch.Tensor, ...]:
    """Each target's ``p_ref`` as a float32 tensor on ``device``: made once per device by the callers, since copying
    a host list to a GPU makes the host wait for it."""
    return tuple(torch.tensor(tg.p_ref, dtype=torch.float32, device=device) for tg in cfg.targets)


def guidance_step(h: torch.Tensor, t: torch.Tensor, guide: torch.Tensor, adp: ADP, cfg: GuidanceConfig,
                  p_refs: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """h_i <- h_i - N sum_a scale_a grad_{h_i} L(p_hat_a, p_ref_a) for the entries where ``guide`` (N,) is True.

    ``t`` (N,): continuous timesteps selecting the ADP heads; ``p_refs``: :func:`reference_tensors` on h's device
    (made here if not given). Entries outside ``guide`` count neither in ``p_hat`` nor in ``N`` and get a zero
    gradient, so they come back unchanged. Nothing here reads a tensor value on the host (no ``.item()``, no
    data-dependent indexing): on a GPU the step queues behind the UNet without waiting for it. Runs its own autograd
    (also inside ``torch.no_grad`` / ``torch.inference_mode``): only the ADP and h see the gradient.
    """
    if p_refs is None:
        p_refs = reference_tensors(cfg, h.device)
    with torch.inference_mode(False), torch.enable_grad():
        weights = guide.detach().to(torch.float32).clone()
        hh = h.detach().float().clone().requires_grad_(True)
        logits = adp(hh, t.detach().float().clone(), cfg.head_selection, [tg.attribute for tg in cfg.targets])
        total = hh.new_zeros(())
        for tg, p_ref in zip(cfg.targets, p_refs):
            total = total + tg.scale * LOSS_FNS[cfg.loss](p_hat(logits[tg.attribute], cfg.temperature, weights), p_ref)
        (grad,) = torch.autograd.grad(total, hh)
    return h - (weights.sum() * grad).to(h.dtype)


class DistributionGuidedDenoiser(nn.Module):
    """A :class:`~fair_core.denoiser.DiscreteVPDenoiser` whose h-space is distribution-guided at every call.

    Same contract and schedule as the inner model; class label -1 marks the CFG unconditional half (not guided).
    """

    def __init__(self, model, adp: ADP, cfg: GuidanceConfig):
        super().__init__()
        hspace.first_up_block(model.unet)
        hspace.check_mid_block(model.unet)
        check_targets(adp, cfg)
        self.inner, self.adp, self.guidance = model, adp, cfg
        self._p_refs: dict[torch.device, tuple[torch.Tensor, ...]] = {}  # reference_tensors per device

    cfg = property(lambda self: self.inner.cfg)
    sigmas = property(lambda self: self.inner.sigmas)
    sigma_min = property(lambda self: self.inner.sigma_min)
    sigma_max = property(lambda self: self.inner.sigma_max)

    def forward(self, x, sigma, class_labels=None, **kwargs):
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).expand(x.shape[0])
        t = self.inner.sigma_to_t(sigma)
        guide = active(t, self.cfg.num_train_timesteps, self.guidance.start_percent, self.guidance.end_percent)
        if class_labels is not None:
            guide = guide & (torch.as_tensor(class_labels, device=x.device) >= 0)
        if x.device not in self._p_refs:
            self._p_refs[x.device] = reference_tensors(self.guidance, x.device)

        def fn(h, hsp):  # no host branch on ``guide``: an all-False mask costs one small autograd pass, a sync costs more
            return guidance_step(h, t, guide, self.adp, self.guidance, self._p_refs[x.device]), hsp

        with hspace.patched(self.inner.unet, fn):
            return self.inner(x, sigma, class_labels=class_labels, **kwargs)


def targets_from(adp: ADP, spec: dict[str, tuple[str, float]], normalize: str = "error") -> tuple[AttributeTarget, ...]:
    """``{attribute: (reference text, scale)}`` -> targets, each reference parsed against the ADP's class names."""
    out = []
    for attribute, (text, scale) in spec.items():
        if attribute not in adp.cfg.attributes:
            raise FairSamplingError(f"attribute must be one of the ADP's {list(adp.cfg.attributes)}, got {attribute!r}")
        out.append(AttributeTarget(attribute, parse_reference(text, adp.cfg.attributes[attribute], normalize), scale))
    return tuple(out)

