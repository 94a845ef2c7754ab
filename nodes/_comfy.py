"""The only module that knows ComfyUI internals: our checkpoints as a ComfyUI MODEL, label conditioning, folders.

A pack checkpoint (``fair_core.checkpoints``) becomes a ``ModelPatcher`` around a ``comfy.model_base.BaseModel``
whose ``diffusion_model`` is :class:`PixelUNet`. ComfyUI then does what it does for any discrete-VP model:
``x_vp = x / sqrt(sigma^2 + 1)``, nearest discrete timestep, ``eps`` or ``v`` to x0. The latent format is the
identity (pixel space, 3 channels, values in [-1, 1]) and the matching VAE is ComfyUI's pixel-space VAE.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base
import folder_paths

from ..fair_core import checkpoints, hspace
from ..fair_core.errors import FairSamplingError

log = logging.getLogger(__name__)

FOLDER = "fair_sampling"  # ComfyUI/models/fair_sampling, plus the pack's own models/ with the shipped default
PACK_MODELS = Path(__file__).resolve().parent.parent / "models"
LABELS_KEY = "fair_class_labels"  # conditioning dict key carrying class labels to the model (-1: unconditional)
# diffusers' beta_schedule names -> ComfyUI's make_beta_schedule names (ComfyUI "linear" is sqrt-linear).
COMFY_BETA_SCHEDULE = {"linear": "sqrt_linear", "squaredcos_cap_v2": "squaredcos_cap_v2"}
DTYPES = {"default": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def register_model_folder() -> None:
    """Add the ``fair_sampling`` model folder (ComfyUI's models dir and the pack's ``models/``), .safetensors only."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    folder_paths.add_model_folder_path(FOLDER, str(PACK_MODELS))
    folder_paths.folder_names_and_paths[FOLDER][1].add(".safetensors")


def model_files(kinds=checkpoints.DIFFUSION_KINDS) -> list[str]:
    """Files in the ``fair_sampling`` folders whose recorded kind is one of ``kinds`` (others are skipped, logged)."""
    names = []
    for name in folder_paths.get_filename_list(FOLDER):
        try:
            kind = checkpoints.read_metadata(folder_paths.get_full_path(FOLDER, name))["kind"]
        except FairSamplingError as e:
            log.warning("fair_sampling model folder: skipping %s: %s", name, e)
            continue
        if kind in kinds:
            names.append(name)
    return names


def resolve(name: str, path: str = "", param: str = "ckpt_name") -> str:
    """``path`` when given (absolute, for headless use), else ``name`` looked up in the ``fair_sampling`` folders."""
    if path.strip():
        p = Path(path.strip()).expanduser()
        if not p.is_absolute() or not p.is_file():
            raise FairSamplingError(f"path must be an absolute path to an existing .safetensors file, got {path!r}")
        return str(p)
    full = folder_paths.get_full_path(FOLDER, name)
    if full is None:
        raise FairSamplingError(f"{param} {name!r} is not in the '{FOLDER}' model folders {folder_paths.get_folder_paths(FOLDER)}; "
                                f"found {folder_paths.get_filename_list(FOLDER)}")
    return full


class PixelUNet(torch.nn.Module):
    """ComfyUI's ``diffusion_model`` slot over our Denoiser: (x_vp, t, y) -> eps or v.

    ``y`` carries class labels (-1 = unconditional). ComfyUI ``output_block_patch`` functions are applied at
    ``("output", 0)`` to the middle-block output and the deepest skip, as in ComfyUI's own UNet.
    """

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options={}, **kwargs):
        patches = transformer_options.get("patches", {}).get("output_block_patch", [])
        if not patches:
            return self.denoiser.network(x, timesteps, y)
        options = {**transformer_options, "block": ("output", 0)}

        def apply(h, hsp):
            for patch in patches:
                h, hsp = patch(h, hsp, options)
            return h, hsp

        with hspace.patched(self.denoiser.unet, apply):
            return self.denoiser.network(x, timesteps, y)


class PixelModel(comfy.model_base.BaseModel):
    """BaseModel that passes the conditioning's class labels to :class:`PixelUNet` as ``y``."""

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        labels = kwargs.get(LABELS_KEY)
        if labels is not None:
            out["y"] = comfy.conds.CONDRegular(labels)
        return out


def _model_config(cfg) -> comfy.supported_models_base.BASE:
    config = comfy.supported_models_base.BASE({"disable_unet_model_creation": True})
    config.sampling_settings = {"beta_schedule": COMFY_BETA_SCHEDULE[cfg.beta_schedule], "linear_start": cfg.beta_start,
                                "linear_end": cfg.beta_end, "timesteps": cfg.num_train_timesteps}
    config.latent_format = comfy.latent_formats.ChromaRadiance()  # identity, 3 channels: pixel space
    config.memory_usage_factor = 1.0
    return config


def load_model(path: str, kind=checkpoints.DIFFUSION_KINDS, weight_dtype: str = "default"):
    """A pack diffusion checkpoint as ``(ModelPatcher, Checkpoint)``; raises FairSamplingError naming the file."""
    if weight_dtype not in DTYPES:
        raise FairSamplingError(f"weight_dtype must be one of {list(DTYPES)}, got {weight_dtype!r}")
    offload = comfy.model_management.unet_offload_device()
    with torch.inference_mode(False):  # weights usable by autograd (h-space guidance) even inside the executor
        ckpt = checkpoints.load(path, kind=kind, device=offload, dtype=DTYPES[weight_dtype])
    cfg = ckpt.config
    if cfg.channels != 3:
        raise FairSamplingError(f"{path}: ComfyUI needs a 3-channel (RGB) pixel model, this checkpoint has channels={cfg.channels}")
    model_type = comfy.model_base.ModelType.EPS if cfg.prediction_type == "epsilon" else comfy.model_base.ModelType.V_PREDICTION
    model = PixelModel(_model_config(cfg), model_type=model_type, device=offload)
    model.diffusion_model = PixelUNet(ckpt.model)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(), offload_device=offload)
    log.info("loaded %s (%s, %s, condition=%s)", path, ckpt.kind, cfg.prediction_type, cfg.condition)
    return patcher, ckpt


def pixel_vae():
    """ComfyUI's pixel-space 'VAE': VAEDecode maps [-1, 1] model space to [0, 1] images, VAEEncode back."""
    return comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})


def label_conditioning(labels: list[int]):
    """CONDITIONING carrying class labels; a list shorter than the batch is repeated cyclically, -1 = unconditional."""
    return [[torch.zeros(1, 1, 1), {LABELS_KEY: torch.tensor(labels, dtype=torch.long)}]]


def image_shape(model) -> tuple[int, int]:
    """(channels, size) of a MODEL made by :func:`load_model`; a clear error for any other MODEL."""
    unet = model.get_model_object("diffusion_model")
    if not isinstance(unet, PixelUNet):
        raise FairSamplingError(f"model must come from Fair Checkpoint Loader (a pack pixel model), got a {type(unet).__name__} model")
    cfg = unet.denoiser.cfg
    return cfg.channels, cfg.sample_size


def load_classifier(path: str):
    """A pack classifier checkpoint, in eval mode (usable by autograd: loaded outside inference mode)."""
    with torch.inference_mode(False):
        return checkpoints.load(path, kind="classifier", device=comfy.model_management.get_torch_device()).model.eval()


def png_to_image(png: bytes) -> torch.Tensor:
    """PNG bytes -> ComfyUI IMAGE (1, H, W, 3) float in [0, 1]."""
    import io

    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb)[None]
