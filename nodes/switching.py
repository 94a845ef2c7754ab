"""Attribute switching nodes (arXiv 2401.03140): an all-in-one sampler, a GUIDER for SamplerCustomAdvanced, and the
transition point search with its curve. Thin over ``fair_core.switching`` and ``_comfy_switch``."""
from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from ..fair_core import plots, switching
from ..fair_core.errors import check_range
from . import _comfy, _comfy_switch

CATEGORY = "sampling/fairness/switching"
TIP_S0 = "Positive conditioning with the sensitive attribute s0 (e.g. Fair Class Label 0, or 'a photo of a male doctor')."
TIP_S1 = "Positive conditioning with the other attribute s1 (e.g. Fair Class Label 1, or 'a photo of a female doctor')."
TIP_NEG = "Negative conditioning, used for CFG throughout as in KSampler."
TIP_DIR = ("s0->s1: start under s0, switch to s1; s1->s0: the reverse; alternate: first half of the batch s0->s1, second "
           "half s1->s0, so the batch stays balanced whatever the attribute does.")
TIP_BATCH = "Images in the search batch (both conditions are sampled for each): 16+ gives a stable tau; costs one extra run."
TIP_WEIGHT = ("Step weight of the score difference: beta (default: the DDPM beta_t the step covers, as the paper's code), "
              "vp (displacement in VP units), ve (raw sigma units), none.")


def _conditionings():
    return [io.Conditioning.Input("positive_s0", tooltip=TIP_S0), io.Conditioning.Input("positive_s1", tooltip=TIP_S1),
            io.Conditioning.Input("negative", tooltip=TIP_NEG)]


class AttributeSwitchSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AttributeSwitchSampler",
            display_name="Attribute Switch Sampler",
            category=CATEGORY,
            description="KSampler that samples under s0 until the transition point tau and under s1 after it, so the "
                        "attribute is obfuscated while the rest of the image is kept. tau is searched automatically.",
            inputs=[
                io.Model.Input("model", tooltip="Any diffusion MODEL (SD1.x, SDXL, ... or a Fair Checkpoint Loader model)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed of the batch (the search batch uses seed + 1)."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="dpmpp_2m", tooltip="Sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="karras", tooltip="Noise schedule."),
                *_conditionings(),
                io.Latent.Input("latent_image", tooltip="The batch to sample (e.g. Fair Empty Latent or Empty Latent Image)."),
                io.Combo.Input("tau_mode", options=["auto", "manual"], default="auto",
                               tooltip="auto: search tau on this model, prompts, sampler and schedule; manual: use tau below."),
                io.Float.Input("tau", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Manual mode: the switch point as a fraction of the steps (0: s1 throughout, 1: never switch)."),
                io.Combo.Input("direction", options=list(switching.DIRECTIONS), default="alternate", tooltip=TIP_DIR),
                io.Int.Input("search_batch", default=16, min=2, max=4096, tooltip=TIP_BATCH),
            ],
            outputs=[
                io.Latent.Output(tooltip="The switched batch."),
                io.Float.Output(display_name="tau", tooltip="The switch point used, as a fraction of the steps."),
                io.Float.Output(display_name="switch_sigma", tooltip="The switch point as a noise level (transfers to other step counts)."),
            ],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive_s0, positive_s1, negative, latent_image,
                tau_mode, tau, direction, search_batch) -> io.NodeOutput:
        sigmas, sampler = _comfy_switch.schedule(model, scheduler, steps), _comfy_switch.sampler_object(sampler_name)
        conds = (positive_s0, positive_s1, negative, cfg, sampler, sigmas, latent_image, seed)
        if tau_mode == "auto":
            tau_step = _comfy_switch.search_tau(model, *conds, search_batch).tau
        else:
            tau_step = round(check_range("tau", tau, 0.0, 1.0) * steps)
        sigma = switching.sigma_of_tau(sigmas, tau_step)
        return io.NodeOutput(_comfy_switch.sample(model, *conds, sigma, direction), tau_step / steps, sigma)


class AttributeSwitchGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AttributeSwitchGuider",
            display_name="Attribute Switch Guider",
            category=CATEGORY,
            description="GUIDER for SamplerCustomAdvanced: CFG with positive s0 above switch_sigma and s1 below it.",
            inputs=[
                io.Model.Input("model", tooltip="Any diffusion MODEL."),
                *_conditionings(),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Classifier-free guidance scale."),
                io.Float.Input("switch_sigma", default=1.0, min=0.0, max=1e4, step=0.001,
                               tooltip="Switch when the noise level falls to this sigma (from Transition Point Search; 0: never)."),
                io.Combo.Input("direction", options=list(switching.DIRECTIONS), default="alternate", tooltip=TIP_DIR),
            ],
            outputs=[io.Guider.Output(tooltip="For SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, positive_s0, positive_s1, negative, cfg, switch_sigma, direction) -> io.NodeOutput:
        return io.NodeOutput(_comfy_switch.guider(model, positive_s0, positive_s1, negative, cfg, switch_sigma, direction))


class TransitionPointSearch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TransitionPointSearch",
            display_name="Transition Point Search",
            category=CATEGORY,
            description="Finds the switch point tau minimising the score-difference objective of arXiv 2401.03140 on the "
                        "given sampler and sigmas, and plots the curve.",
            inputs=[
                io.Model.Input("model", tooltip="Any diffusion MODEL."),
                *_conditionings(),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Classifier-free guidance scale."),
                io.Sampler.Input("sampler", tooltip="The sampler the switch will run with (KSamplerSelect)."),
                io.Sigmas.Input("sigmas", tooltip="The schedule the switch will run with (e.g. BasicScheduler)."),
                io.Latent.Input("latent_image", tooltip="Gives the image shape; its batch size does not matter."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip="The search batch's noise uses seed + 1."),
                io.Int.Input("search_batch", default=16, min=2, max=4096, tooltip=TIP_BATCH),
                io.Combo.Input("weighting", options=list(switching.WEIGHTINGS), default="beta", tooltip=TIP_WEIGHT),
            ],
            outputs=[
                io.Float.Output(display_name="switch_sigma", tooltip="tau as a noise level, for Attribute Switch Guider."),
                io.Int.Output(display_name="tau_step", tooltip="tau as a step index on these sigmas (steps before it use s0)."),
                io.Image.Output(display_name="curve", tooltip="The objective J(tau) with the chosen tau marked."),
            ],
        )

    @classmethod
    def execute(cls, model, positive_s0, positive_s1, negative, cfg, sampler, sigmas, latent_image, seed, search_batch,
                weighting) -> io.NodeOutput:
        found = _comfy_switch.search_tau(model, positive_s0, positive_s1, negative, cfg, sampler, sigmas.cpu(), latent_image,
                                         seed, search_batch, weighting)
        chart = plots.tau_chart(found.objective, found.step_difference, found.tau)
        return io.NodeOutput(found.sigma, found.tau, _comfy.png_to_image(chart))
