"""Samplers as small pure functions with one signature (k-diffusion style), their schedules, CFG and ``generate``.

Every sampler: ``sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)`` where
``model`` follows the Denoiser contract, ``x`` is the initial noise already scaled by ``sigmas[0]`` and ``sigmas``
ends in 0. The callback gets ``{"x", "i", "sigma", "sigma_hat", "denoised"}`` after each step; a callback that
raises stops sampling (that is how interrupting works).
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import trange

from .errors import FairSamplingError, check_choice, check_range

SCHEDULES = ("karras", "uniform")


# ----- schedules ------------------------------------------------------------------------------------------------
def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device="cpu") -> torch.Tensor:
    """Karras et al. (2022) noise levels: uniform in sigma^(1/rho); n values then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((max_inv + ramp * (min_inv - max_inv)) ** rho).float().to(device)


def get_sigmas_uniform(n: int, sigmas_table: torch.Tensor, device="cpu") -> torch.Tensor:
    """Uniform in the discrete timestep, from the last to the first (DDIM's spacing); n values then 0."""
    t = torch.linspace(len(sigmas_table) - 1, 0, n, dtype=torch.float64)
    log_sigmas = sigmas_table.double().cpu().log()
    lo, hi = t.floor().long(), t.ceil().long()
    w = t - lo
    return append_zero(((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()).float().to(device)


def get_sigmas(model, steps: int, schedule: str = "karras", device="cpu") -> torch.Tensor:
    """The schedule named ``schedule`` for a model with ``sigma_min``, ``sigma_max`` and a ``sigmas`` table."""
    check_choice("schedule", schedule, SCHEDULES)
    check_range("steps", steps, 1, integer=True)
    if schedule == "karras":
        return get_sigmas_karras(steps, model.sigma_min, model.sigma_max, device=device)
    return get_sigmas_uniform(steps, model.sigmas, device=device)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """Split a step to ``sigma_to`` into a deterministic step to ``sigma_down`` and fresh noise of std ``sigma_up``."""
    if not eta:
        return sigma_to, sigma_to * 0
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _call(model, x, sigma, extra_args):
    return model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)


def _denoise_and_report(model, x, sigmas, i, extra_args, callback):
    """D(x, sigma_i), reported to the callback (which may raise to interrupt) before the step uses it."""
    denoised = _call(model, x, sigmas[i], extra_args)
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
    return denoised


# ----- samplers -------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn)."""
    extra_args = extra_args or {}
    for i in trange(len(sigmas) - 1, disable=disable, leave=False):
        denoised = _denoise_and_report(model, x, sigmas, i, extra_args, callback)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Heun's second-order method (Karras et al. 2022, Algorithm 2 without churn); Euler on the last step to 0."""
    extra_args = extra_args or {}
    last = sigmas.tolist()  # host copy for the branches: one read before the loop, not one per step
    for i in trange(len(sigmas) - 1, disable=disable, leave=False):
        denoised = _denoise_and_report(model, x, sigmas, i, extra_args, callback)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if last[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], _call(model, x_2, sigmas[i + 1], extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, eta: float = 0.0, generator=None):
    """DDIM (Song et al. 2021) with stochasticity ``eta``, written in the sigma (VE) parameterisation.

    With ``x = x_vp * sqrt(1 + sigma^2)``, DDIM's update from sigma to sigma' is an Euler step to
    ``sigma_down = sqrt(sigma'^2 - sigma_up^2)`` plus fresh noise of std ``sigma_up = eta * sigma' *
    sqrt(sigma^2 - sigma'^2) / sigma``, which is DDIM's sigma_t(eta) divided by sqrt(alpha_bar_{t-1}). So eta = 0
    is deterministic DDIM (identical to Euler) and eta = 1 is DDPM ancestral sampling.
    """
    check_range("eta", eta, 0.0)
    extra_args = extra_args or {}
    last = sigmas.tolist()  # host copy for the branches: one read before the loop, not one per step
    for i in trange(len(sigmas) - 1, disable=disable, leave=False):
        denoised = _denoise_and_report(model, x, sigmas, i, extra_args, callback)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if eta and last[i + 1] > 0:
            x = x + torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022), multistep second order in log-sigma time, as in k-diffusion."""
    extra_args = extra_args or {}
    old_denoised = None
    last = sigmas.tolist()  # host copy for the branch: one read before the loop, not one per step
    for i in trange(len(sigmas) - 1, disable=disable, leave=False):
        denoised = _denoise_and_report(model, x, sigmas, i, extra_args, callback)
        if last[i + 1] == 0:
            x = denoised
            continue
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is None:
            denoised_d = denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "ddim": sample_ddim, "dpmpp_2m": sample_dpmpp_2m}


# ----- classifier-free guidance ---------------------------------------------------------------------------------
class CFGDenoiser(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022): ``D = D_uncond + scale * (D_cond - D_uncond)``.

    Conditional and unconditional (null label -1) evaluations share ONE batched model call; scale 1 is one
    plain conditional call.
    """

    def __init__(self, model, cfg_scale: float):
        super().__init__()
        check_range("cfg_scale", cfg_scale, 0.0)
        self.inner, self.cfg_scale = model, cfg_scale

    def forward(self, x, sigma, class_labels=None, **kwargs):
        if self.cfg_scale == 1.0 or class_labels is None:
            return self.inner(x, sigma, class_labels=class_labels, **kwargs)
        both = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]),
                          class_labels=torch.cat([class_labels, torch.full_like(class_labels, -1)]), **kwargs)
        cond, uncond = both.chunk(2)
        return uncond + self.cfg_scale * (cond - uncond)


# ----- the high-level entry point ---------------------------------------------------------------------------------
def check_label_values(model, args: dict) -> None:
    """Check every ``class_labels*`` tensor of ``args`` against the innermost denoiser (through the guidance, switching
    and CFG wrappers' ``inner`` / ``model``), on the host and once: the denoiser skips that check for labels already
    on a GPU, where it would make every step wait."""
    base = model
    while base is not None and not hasattr(base, "check_labels"):
        base = getattr(base, "inner", None) or getattr(base, "model", None)
    for key, value in args.items():
        if base is not None and value is not None and key.startswith("class_labels"):
            base.check_labels(torch.as_tensor(value).cpu())


def generate(model, n: int, steps: int, sampler: str = "dpmpp_2m", schedule: str = "karras", class_labels=None,
             seed: int = 0, cfg_scale: float = 1.0, eta: float = 0.0, batch_size: int = 64, device=None, dtype=None,
             callback=None, disable=None, channels: int | None = None, size: int | None = None,
             extra_args: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``n`` samples (N, C, H, W) in [-1, 1] from a Denoiser.

    ``extra_args``: further per-image model inputs (tensors with first dimension ``n``), sliced with the batches.

    The initial noise for all ``n`` images is drawn once on the CPU from ``seed``, so a sample does not depend on
    the device or on ``batch_size``. Stochastic samplers (ddim with eta > 0) draw further noise per batch from
    ``seed + 1 + batch index``.
    """
    check_choice("sampler", sampler, SAMPLERS)
    check_range("n", n, 1, integer=True)
    check_range("steps", steps, 1, integer=True)
    check_range("batch_size", batch_size, 1, integer=True)
    check_range("eta", eta, 0.0)
    if eta and sampler != "ddim":
        raise FairSamplingError(f"eta applies to sampler='ddim' only, got eta={eta} with sampler={sampler!r}")
    cfg = getattr(model, "cfg", None)
    channels = channels or cfg.channels
    size = size or cfg.sample_size
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    dtype = dtype or torch.float32
    if class_labels is not None:
        class_labels = torch.as_tensor(class_labels, dtype=torch.long)
        if class_labels.shape != (n,):
            raise FairSamplingError(f"class_labels must have shape ({n},) (one per image), got {tuple(class_labels.shape)}")
    for k, v in (extra_args or {}).items():
        if not isinstance(v, torch.Tensor) or v.shape[:1] != (n,):
            raise FairSamplingError(f"extra_args[{k!r}] must be a tensor with first dimension n={n}, got {getattr(v, 'shape', type(v))}")
    check_label_values(model, {"class_labels": class_labels, **(extra_args or {})})
    denoiser = CFGDenoiser(model, cfg_scale) if cfg_scale != 1.0 else model
    sigmas = get_sigmas(model, steps, schedule, device=device)
    noise = torch.randn((n, channels, size, size), generator=torch.Generator().manual_seed(seed))
    out = []
    for b, start in enumerate(range(0, n, batch_size)):
        x = (noise[start:start + batch_size].to(device) * sigmas[0]).to(dtype)
        extra = {k: v[start:start + batch_size].to(device) for k, v in (extra_args or {}).items()}
        if class_labels is not None:
            extra["class_labels"] = class_labels[start:start + batch_size].to(device)
        options = {}
        if sampler == "ddim":
            gen = torch.Generator(device=device).manual_seed(seed + 1 + b)
            options = {"eta": eta, "generator": gen}
        x = SAMPLERS[sampler](denoiser, x, sigmas, extra, callback, disable, **options)
        out.append(x.float().clamp(-1, 1).cpu())
    return torch.cat(out)
