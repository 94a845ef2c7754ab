"""ComfyUI internals for attribute switching (with ``_comfy.py``, the only modules that know ComfyUI's insides).

Works for any MODEL (SD1.x, SDXL, ... and the pack's pixel models): only the positive conditioning changes, CFG
and the negative prompt stay as in ``CFGGuider``. The maths (score differences, tau objective) is
``fair_core.switching``; here are the guiders and the search run through ComfyUI's own samplers and schedules.
"""
from __future__ import annotations

import logging

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..fair_core import switching
from ..fair_core.errors import FairSamplingError, check_choice

log = logging.getLogger(__name__)


class SwitchGuider(comfy.samplers.CFGGuider):
    """CFG whose positive is s0 while ``sigma > sigma_switch`` and s1 from then on (per ``direction``; with
    ``alternate`` the first half of the batch goes s0->s1 and the second half s1->s0)."""

    def set_conds(self, positive0, positive1, negative):
        self.inner_set_conds({"s0": positive0, "s1": positive1, "negative": negative})

    def set_switch(self, sigma_switch: float, direction: str):
        check_choice("direction", direction, switching.DIRECTIONS)
        self.sigma_switch, self.direction = float(sigma_switch), direction

    def _cfg(self, x, timestep, name, model_options, seed):
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"), self.conds.get(name),
                                                self.cfg, model_options=model_options, seed=seed)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        before = float(timestep.max()) > self.sigma_switch
        first, second = ("s0", "s1") if before else ("s1", "s0")
        if self.direction == "s1->s0":
            first = second
        if self.direction != "alternate" or x.shape[0] < 2:
            return self._cfg(x, timestep, first, model_options, seed)
        n = x.shape[0] // 2
        return torch.cat([self._cfg(x[:n], timestep[:n], first, model_options, seed),
                          self._cfg(x[n:], timestep[n:], second, model_options, seed)])


class PairGuider(SwitchGuider):
    """The search's guider: the batch is ``[x^0; x^1]``, the first half conditioned on s0, the second on s1, at
    every step. ComfyUI applies a conditioning to a whole batch, so the halves go through ``sampling_function``
    one after the other: the same work as one batched call of both (each half also carries its CFG batch)."""

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        n = x.shape[0] // 2
        return torch.cat([self._cfg(x[:n], timestep[:n], "s0", model_options, seed),
                          self._cfg(x[n:], timestep[n:], "s1", model_options, seed)])


def _guider(cls, model, positive0, positive1, negative, cfg):
    guider = cls(model)
    guider.set_conds(positive0, positive1, negative)
    guider.set_cfg(cfg)
    return guider


def search_tau(model, positive0, positive1, negative, cfg: float, sampler, sigmas: torch.Tensor, latent: dict, seed: int,
               search_batch: int, weighting: str = "beta") -> switching.TauSearch:
    """tau* on ``sigmas`` from ``search_batch`` noise images (seed ``seed + 1``) of the latent's shape."""
    if search_batch < 2:
        raise FairSamplingError(f"search_batch must be at least 2 (16 or more for a stable tau), got {search_batch}")
    weights = switching.step_weights(sigmas.cpu(), check_choice("weighting", weighting, switching.WEIGHTINGS))
    shape_of = comfy.sample.fix_empty_latent_channels(model, latent["samples"][:1])
    empty = torch.zeros((search_batch, *shape_of.shape[1:]), dtype=shape_of.dtype)
    noise = comfy.sample.prepare_noise(empty, seed + 1)
    pbar = comfy.utils.ProgressBar(len(sigmas) - 1)  # also where POST /interrupt stops the search
    r = []

    def record(i, denoised, x, total):
        if i != len(r) or i >= len(weights):
            raise FairSamplingError("the tau search needs a sampler that reports each step of the sigmas once, in order "
                                    f"(fixed-step samplers such as euler or dpmpp_2m); this one reported step {i} of {len(weights)}")
        r.append(switching.score_difference(x.cpu(), denoised.cpu(), float(sigmas[i]), weights[i]).float())
        pbar.update_absolute(i + 1, total)

    pair = _guider(PairGuider, model, positive0, positive1, negative, cfg)
    pair.sample(torch.cat([noise, noise]), torch.cat([empty, empty]), sampler, sigmas, callback=record, disable_pbar=True, seed=seed)
    return switching.tau_result(torch.stack(r), sigmas.cpu())


def sample(model, positive0, positive1, negative, cfg: float, sampler, sigmas: torch.Tensor, latent: dict, seed: int,
           sigma_switch: float, direction: str) -> dict:
    """The switched batch as a LATENT dict (noise from ``seed`` as KSampler draws it; previews and progress)."""
    switched = guider(model, positive0, positive1, negative, cfg, sigma_switch, direction)
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
    samples = switched.sample(noise, latent_image, sampler, sigmas, denoise_mask=latent.get("noise_mask"), callback=callback,
                            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return {**latent, "samples": samples.to(comfy.model_management.intermediate_device())}


def schedule(model, scheduler: str, steps: int) -> torch.Tensor:
    """The sigmas KSampler would use (denoise 1)."""
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


def sampler_object(name: str):
    return comfy.samplers.sampler_object(name)


def guider(model, positive0, positive1, negative, cfg: float, sigma_switch: float, direction: str) -> SwitchGuider:
    """The switching GUIDER (Attribute Switch Guider, and what Attribute Switch Sampler samples with)."""
    g = _guider(SwitchGuider, model, positive0, positive1, negative, cfg)
    g.set_switch(sigma_switch, direction)
    return g
