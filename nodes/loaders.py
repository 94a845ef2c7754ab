"""Loader nodes: a pack checkpoint as a ComfyUI MODEL (plus the pixel-space VAE that decodes it)."""
from __future__ import annotations

from comfy_api.latest import io

from ..fair_core import checkpoints
from . import _comfy

CATEGORY = "sampling/fairness/loaders"


class FairCheckpointLoader(io.ComfyNode):
    """Any pack diffusion checkpoint (dsm, tiw, dual); the TIW and constrained loaders are variants of it."""

    KINDS = checkpoints.DIFFUSION_KINDS

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FairCheckpointLoader",
            display_name="Fair Checkpoint Loader",
            category=CATEGORY,
            description="Loads a comfyui-fair-sampling diffusion checkpoint (pixel space, class-conditional) as a MODEL.",
            inputs=[
                io.Combo.Input("ckpt_name", options=_comfy.model_files(cls.KINDS),
                               tooltip="A .safetensors file from the 'fair_sampling' model folders (ComfyUI/models/fair_sampling "
                                       "and the pack's models/, which holds the shipped colored_mnist_dsm)."),
                io.String.Input("path", default="", optional=True,
                                tooltip="Absolute path to a checkpoint; overrides ckpt_name when not empty (headless use)."),
                io.Combo.Input("weight_dtype", options=list(_comfy.DTYPES), default="default",
                               tooltip="Weight precision: default keeps the checkpoint's (float32)."),
            ],
            outputs=[
                io.Model.Output(tooltip="The diffusion model, usable by KSampler and SamplerCustomAdvanced."),
                io.Vae.Output(tooltip="Pixel-space VAE: VAEDecode turns the sampled latent into the image."),
                io.Int.Output(display_name="num_classes", tooltip="Number of class labels the model was trained with (0: unconditional)."),
            ],
        )

    @classmethod
    def execute(cls, ckpt_name, path="", weight_dtype="default") -> io.NodeOutput:
        model, ckpt = _comfy.load_model(_comfy.resolve(ckpt_name, path), kind=cls.KINDS, weight_dtype=weight_dtype)
        return io.NodeOutput(model, _comfy.pixel_vae(), ckpt.config.num_classes if ckpt.config.conditional else 0)
