"""The Denoiser contract and its adapter for diffusers UNets on a discrete VP (DDPM) schedule.

Contract (k-diffusion / EDM): ``denoised = model(x, sigma, **extra_args)`` where ``x = x0 + sigma * n`` lives in
the variance-exploding parameterisation, ``sigma`` has one entry per sample and ``denoised`` estimates ``x0``.

A VP model sees ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``; with
``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` we have ``x_t = x / sqrt(sigma^2 + 1)``, hence
``c_in = 1 / sqrt(sigma^2 + 1)`` and (Karras et al. 2022, table 1; k-diffusion ``external.py``)

* eps-prediction:  ``D(x, sigma) = x - sigma * eps_theta(c_in x, t(sigma))``
* v-prediction:    ``D(x, sigma) = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * v_theta(c_in x, t(sigma))``

``t(sigma)`` interpolates the discrete timestep linearly in log-sigma, so any sigma in
``[sigma_min, sigma_max]`` is accepted (needed by Karras schedules).
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import FairSamplingError
from .models import UNetConfig


def vp_alphas_cumprod(cfg: UNetConfig) -> torch.Tensor:
    """alpha_bar_t of the discrete schedule, reusing diffusers' DDPM beta schedules (float64)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
    )
    return sched.alphas_cumprod.to(torch.float64)


def drop_labels(labels: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``labels`` with each one replaced by the null label -1 with probability ``p`` (classifier-free training);
    one uniform draw per label from ``generator`` on the labels' device."""
    drop = torch.rand(labels.shape[0], device=labels.device, generator=generator) < p
    return torch.where(drop, torch.full_like(labels, -1), labels)


class DiscreteVPDenoiser(nn.Module):
    """Wraps a diffusers ``UNet2DModel`` (eps or v prediction, discrete timesteps) as a Denoiser.

    Extra args: ``class_labels`` (LongTensor (N,), ``None`` or ``-1`` entries mean unconditional: the null label).
    """

    def __init__(self, unet: nn.Module, cfg: UNetConfig):
        super().__init__()
        self.unet = unet
        self.cfg = cfg
        alphas_cumprod = vp_alphas_cumprod(cfg)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
        # Not persistent: the schedule is rebuilt from the config, the checkpoint holds weights only.
        self.register_buffer("sigmas", sigmas.float(), persistent=False)
        self.register_buffer("log_sigmas", sigmas.log().float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)

    # ----- schedule ---------------------------------------------------------------------------------------
    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep for ``sigma`` by linear interpolation of log-sigma (k-diffusion)."""
        log_sigma = sigma.float().log().clamp(self.log_sigmas[0], self.log_sigmas[-1])
        idx = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, len(self.log_sigmas) - 1)
        lo, hi = self.log_sigmas[idx - 1], self.log_sigmas[idx]
        w = (log_sigma - lo) / (hi - lo)
        return (idx - 1).float() + w

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float().clamp(0, len(self.sigmas) - 1)
        lo = t.floor().long()
        hi = t.ceil().long()
        w = t - lo.float()
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()

    # ----- denoiser -----------------------------------------------------------------------------------------
    def check_labels(self, class_labels: torch.Tensor) -> None:
        """Clear errors for labels this model cannot take. Reads the values, so callers run it on the host copy."""
        if not self.cfg.conditional:  # only the null label -1 means anything to it (ComfyUI's KSampler needs some label)
            if not bool((class_labels == -1).all()):
                raise FairSamplingError(f"this model is unconditional (condition='none'): give no class_labels or the null "
                                        f"label -1, got {sorted(set(class_labels.tolist()))}")
            return
        null = self.cfg.num_classes
        if bool(((class_labels < -1) | (class_labels >= null)).any()):
            raise FairSamplingError(f"class_labels must be in [0, {null - 1}] or -1 (unconditional), got {class_labels.tolist()}")

    def labels_or_null(self, class_labels: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
        """Labels for the UNet, -1 mapped to the null label. Values are checked here when the labels are on the CPU;
        labels already on an accelerator were checked where they were made (``sampling.generate``, ComfyUI's
        ``extra_conds``): reading them at every call would make each step wait for the device."""
        if class_labels is not None and class_labels.device.type == "cpu":
            self.check_labels(class_labels)
        if not self.cfg.conditional:
            return None
        null = self.cfg.num_classes
        if class_labels is None:
            return torch.full((n,), null, dtype=torch.long, device=device)
        labels = class_labels.to(device=device, dtype=torch.long)
        if labels.shape != (n,):
            raise FairSamplingError(f"class_labels must have shape ({n},), got {tuple(labels.shape)}")
        return torch.where(labels < 0, torch.full_like(labels, null), labels)

    def network(self, x_vp: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """Raw network output (eps or v) for VP inputs at (continuous) timesteps ``t``."""
        labels = self.labels_or_null(class_labels, x_vp.shape[0], x_vp.device)
        dtype = next(self.unet.parameters()).dtype
        return self.unet(x_vp.to(dtype), t.to(dtype), class_labels=labels).sample.to(x_vp.dtype)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if kwargs:
            raise FairSamplingError(f"unexpected extra_args {sorted(kwargs)}; this denoiser takes class_labels only")
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).expand(x.shape[0])
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        c_in = (s**2 + 1).rsqrt()
        out = self.network((x.float() * c_in).to(x.dtype), self.sigma_to_t(sigma), class_labels).float()
        if self.cfg.prediction_type == "epsilon":
            denoised = x.float() - s * out
        else:
            denoised = x.float() / (s**2 + 1) - s * c_in * out
        return denoised.to(x.dtype)

    # ----- training -----------------------------------------------------------------------------------------
    def loss(
        self,
        x0: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-sample DDPM loss ``|| target - net(x_t, t) ||^2`` (mean over pixels), target eps or v.

        ``t`` (discrete, uniform in [0, T)) and ``noise`` are drawn when not given. Class dropout to the null
        label (probability ``cfg.class_dropout``) is applied here, so classifier-free guidance works later.
        """
        n = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.cfg.num_train_timesteps, (n,), device=x0.device, generator=generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        if class_labels is not None and self.cfg.conditional and self.cfg.class_dropout > 0:
            class_labels = drop_labels(class_labels, self.cfg.class_dropout, generator)
        ab = self.alphas_cumprod[t].view(-1, *([1] * (x0.ndim - 1)))
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        target = noise if self.cfg.prediction_type == "epsilon" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
        pred = self.network(x_t, t.float(), class_labels)
        return (pred.float() - target.float()).pow(2).flatten(1).mean(1)
