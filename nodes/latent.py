"""An empty pixel-space latent of the size a pack model was trained at."""
from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management

from . import _comfy


class FairEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FairEmptyLatent",
            display_name="Fair Empty Latent",
            category="sampling/fairness/latent",
            description="Zeros of the model's own image size and channels (28x28 RGB for the shipped model), "
                        "where EmptyLatentImage would divide by 8.",
            inputs=[
                io.Model.Input("model", tooltip="A model from Fair Checkpoint Loader; its training resolution is used."),
                io.Int.Input("batch_size", default=10, min=1, max=4096, tooltip="Number of images."),
            ],
            outputs=[io.Latent.Output(tooltip="Empty latent for KSampler's latent_image.")],
        )

    @classmethod
    def execute(cls, model, batch_size) -> io.NodeOutput:
        channels, size = _comfy.image_shape(model)
        samples = torch.zeros((batch_size, channels, size, size), device=comfy.model_management.intermediate_device())
        return io.NodeOutput({"samples": samples})
