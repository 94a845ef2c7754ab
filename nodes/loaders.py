"""Loader nodes: a pack checkpoint as a ComfyUI MODEL (plus the pixel-space VAE that decodes it)."""
from __future__ import annotations

from comfy_api.latest import io

from ..fair_core import checkpoints, constrained
from ..fair_core.density_ratio import describe_tiw_training
from ..fair_core.errors import FairSamplingError
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
        return io.NodeOutput(model, _comfy.pixel_vae(ckpt.config.channels), ckpt.config.num_classes if ckpt.config.conditional else 0)


class _RecordedKindLoader(io.ComfyNode):
    """A loader for one method's checkpoint kind: the MODEL, the VAE, and what the training recorded, as text.
    Subclasses set the class attributes below; other kinds are refused with a pointer to Fair Checkpoint Loader."""

    KIND = NODE_ID = DISPLAY = DESCRIPTION = COMMAND = MODEL_TIP = REPORT_NAME = REPORT_TIP = ""

    @staticmethod
    def report(training: dict) -> str:
        raise NotImplementedError

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description=cls.DESCRIPTION,
            inputs=[
                io.Combo.Input("ckpt_name", options=_comfy.model_files((cls.KIND,)),
                               tooltip=f"A '{cls.KIND}' .safetensors file from the 'fair_sampling' model folders (made by {cls.COMMAND})."),
                io.String.Input("path", default="", optional=True,
                                tooltip=f"Absolute path to a {cls.KIND} checkpoint; overrides ckpt_name when not empty (headless use)."),
                io.Combo.Input("weight_dtype", options=list(_comfy.DTYPES), default="default",
                               tooltip="Weight precision: default keeps the checkpoint's (float32)."),
            ],
            outputs=[
                io.Model.Output(tooltip=cls.MODEL_TIP),
                io.Vae.Output(tooltip="Pixel-space VAE: VAEDecode turns the sampled latent into the image."),
                io.String.Output(display_name=cls.REPORT_NAME, tooltip=cls.REPORT_TIP),
            ],
        )

    @classmethod
    def execute(cls, ckpt_name, path="", weight_dtype="default") -> io.NodeOutput:
        file = _comfy.resolve(ckpt_name, path)
        kind = checkpoints.read_metadata(file)["kind"]
        if kind != cls.KIND:
            raise FairSamplingError(f"{cls.DISPLAY} needs a {cls.KIND!r} checkpoint ({cls.COMMAND}); {file!r} is a {kind!r} "
                                    f"checkpoint: load it with Fair Checkpoint Loader instead")
        model, ckpt = _comfy.load_model(file, kind=(cls.KIND,), weight_dtype=weight_dtype)
        return io.NodeOutput(model, _comfy.pixel_vae(ckpt.config.channels), cls.report(ckpt.training))


class TIWScoreLoader(_RecordedKindLoader):
    """A ``tiw`` checkpoint (TIW-DSM, Kim et al. 2024) as a MODEL, plus the facts of its training as text."""

    KIND, NODE_ID, DISPLAY, COMMAND = "tiw", "TIWScoreLoader", "TIW Score Loader", "python -m training tiw"
    DESCRIPTION = ("Loads a diffusion model trained by TIW-DSM (python -m training tiw) from a biased data set plus a small "
                   "balanced reference set, and reports the reference fraction, the bias and the discriminator it used.")
    MODEL_TIP = "The TIW-DSM diffusion model, usable by KSampler and SamplerCustomAdvanced."
    REPORT_NAME, REPORT_TIP = "training_facts", "Reference fraction, bias, discriminator and command recorded in the checkpoint."
    report = staticmethod(describe_tiw_training)


class ConstrainedCheckpoint(_RecordedKindLoader):
    """A ``dual`` checkpoint (constrained dual training, Khalafi et al. 2024) as a MODEL, plus its constraint report."""

    KIND, NODE_ID, DISPLAY, COMMAND = "dual", "ConstrainedCheckpoint", "Constrained Checkpoint", "python -m training dual"
    DESCRIPTION = ("Loads a diffusion model trained under distribution constraints by dual training (python -m training dual) "
                   "and reports its constraints: bounds b_i, final multipliers lambda_i, relaxations and measured slacks.")
    MODEL_TIP = "The constrained diffusion model, usable by KSampler and SamplerCustomAdvanced."
    REPORT_NAME = "constraint_report"
    REPORT_TIP = ("Per constraint set: bound, final lambda, relaxation u, measured slack (<= 0: met), and the mixture weights the "
                  "final lambdas predict.")

    @staticmethod
    def report(training: dict) -> str:
        return constrained.constraint_report(training.get("constraints", {}))
