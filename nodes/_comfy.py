"""The only module that knows ComfyUI internals: our checkpoints as a ComfyUI MODEL, label conditioning, folders.

A pack checkpoint (``fair_core.checkpoints``) becomes a ``ModelPatcher`` around a ``comfy.model_base.BaseModel``
whose ``diffusion_model`` is :class:`PixelUNet`. ComfyUI then does what it does for any discrete-VP model:
``x_vp = x / sqrt(sigma^2 + 1)``, nearest discrete timestep, ``eps`` or ``v`` to x0. The latent format is the
identity (pixel space, 3 channels or 1 for grey models, values in [-1, 1]) and the matching VAE is ComfyUI's pixel-space VAE.
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
            self.diffusion_model.denoiser.check_labels(labels.cpu())  # once per sampling, on the host (not per step on the GPU)
            out["y"] = comfy.conds.CONDRegular(labels)
        return out


class GreyPixels(comfy.latent_formats.LatentFormat):
    """One-channel pixel space (grey models, e.g. ``python -m training dsm --data mnist``): identity in and out;
    previews draw the channel as grey."""

    latent_channels = 1

    def __init__(self):
        self.latent_rgb_factors = [[1.0, 1.0, 1.0]]


def _model_config(cfg) -> comfy.supported_models_base.BASE:
    config = comfy.supported_models_base.BASE({"disable_unet_model_creation": True})
    config.sampling_settings = {"beta_schedule": COMFY_BETA_SCHEDULE[cfg.beta_schedule], "linear_start": cfg.beta_start,
                                "linear_end": cfg.beta_end, "timesteps": cfg.num_train_timesteps}
    config.latent_format = comfy.latent_formats.ChromaRadiance() if cfg.channels == 3 else GreyPixels()  # identity: pixel space
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
    if cfg.channels not in (1, 3):
        raise FairSamplingError(f"{path}: ComfyUI needs a 1-channel (grey) or 3-channel (RGB) pixel model, this checkpoint has "
                                f"channels={cfg.channels}")
    model_type = comfy.model_base.ModelType.EPS if cfg.prediction_type == "epsilon" else comfy.model_base.ModelType.V_PREDICTION
    model = PixelModel(_model_config(cfg), model_type=model_type, device=offload)
    model.diffusion_model = PixelUNet(ckpt.model)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(), offload_device=offload)
    log.info("loaded %s (%s, %s, condition=%s)", path, ckpt.kind, cfg.prediction_type, cfg.condition)
    return patcher, ckpt


def pixel_vae(channels: int = 3):
    """ComfyUI's pixel-space 'VAE': VAEDecode maps [-1, 1] model space to [0, 1] images, VAEEncode back. For a grey
    model (``channels=1``) VAEDecode draws the channel as an RGB grey image, and VAEEncode takes the channel mean."""
    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    if channels == 1:
        vae.latent_channels = 1
        vae.process_input = lambda image: image.mean(1, keepdim=True) * 2.0 - 1.0
        vae.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0).expand(-1, 3, *image.shape[2:])
    return vae


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


def clip_text_encoder(clip):
    """``encode(texts) -> (N, D)`` float32 CPU tensor of a ComfyUI CLIP's pooled outputs, one text at a time
    (``clip.tokenize`` + ``clip.encode_from_tokens(..., return_pooled=True)``)."""

    def encode(texts):
        rows = []
        for text in texts:
            _, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
            if pooled is None:
                raise FairSamplingError("clip must be a text encoder with a pooled output (CLIP-L/G); this one returned none")
            rows.append(pooled.detach().float().reshape(-1).cpu())
        return torch.stack(rows)

    return encode


# ----- h-space distribution guidance (issue 7) -------------------------------------------------------------------
def load_adp(path: str):
    """A pack ``adp`` checkpoint (loaded outside inference mode: its weights take part in autograd during sampling)."""
    with torch.inference_mode(False):
        return checkpoints.load(path, kind="adp", device=comfy.model_management.get_torch_device()).model.eval()


def check_adp_fits(model, adp) -> None:
    """The MODEL has a middle block (h-space) and, for pack models, is the base model the ADP was trained on."""
    from ..fair_core import adp as adp_lib

    unet = model.get_model_object("diffusion_model")
    if isinstance(unet, PixelUNet):
        hspace.check_mid_block(unet.denoiser.unet)
        cfg = unet.denoiser.cfg
        h_shape = (cfg.block_out_channels[-1], *[cfg.sample_size // 2 ** (len(cfg.block_out_channels) - 1)] * 2)
        adp_lib.check_compatible(adp.cfg, h_shape=h_shape, fingerprint=adp_lib.base_fingerprint(unet.denoiser))
    elif getattr(unet, "middle_block", None) is None:
        raise FairSamplingError(f"distribution guidance needs a UNet with a middle block (h-space); this MODEL's "
                                f"{type(unet).__name__} has none (DiT/flow models have no h-space)")


def distribution_guidance_patch(model, adp, cfg):
    """``model.clone()`` with an output_block_patch running :func:`fair_core.guidance.guidance_step` at ("output", 0).

    Only conditional chunks (``cond_or_uncond == 0``) between ``cfg.start_percent`` and ``cfg.end_percent`` (ComfyUI's
    ``percent_to_sigma``) are guided; the ADP head is chosen by ``model_sampling.timestep(sigma)``.
    """
    from ..fair_core import guidance

    check_adp_fits(model, adp)
    guidance.check_targets(adp, cfg)
    ms = model.get_model_object("model_sampling")
    sigma_hi, sigma_lo = ms.percent_to_sigma(cfg.start_percent), ms.percent_to_sigma(cfg.end_percent)

    p_refs = {}  # guidance.reference_tensors per device, made once

    def patch(h, hsp, transformer_options):
        chunks = transformer_options.get("cond_or_uncond") or [0]
        if transformer_options.get("block") != ("output", 0) or 0 not in chunks:
            return h, hsp
        if next(adp.parameters()).device != h.device:
            with torch.inference_mode(False):
                adp.to(h.device)
        if h.device not in p_refs:
            p_refs[h.device] = guidance.reference_tensors(cfg, h.device)
        sigma = transformer_options["sigmas"].to(h.device, torch.float32).reshape(-1)  # one per image of a chunk
        sigma = sigma.repeat(len(chunks)) if sigma.numel() * len(chunks) == h.shape[0] else sigma.expand(h.shape[0])
        per_chunk = h.shape[0] // len(chunks)
        cond = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)  # filled by slices: no host list copied to the GPU
        for i, c in enumerate(chunks):
            if c == 0:
                cond[i * per_chunk:(i + 1) * per_chunk] = True
        guide = cond & (sigma <= sigma_hi * (1 + 1e-5)) & (sigma >= sigma_lo * (1 - 1e-5))
        t = ms.timestep(sigma).float()
        return guidance.guidance_step(h, t, guide, adp, cfg, p_refs[h.device]), hsp

    m = model.clone()
    m.set_model_output_block_patch(patch)
    return m


def sample_recording_h(model, positive, negative, latent: torch.Tensor, seed: int, steps: int, sampler_name: str, scheduler: str):
    """Sample ``latent``'s batch at cfg 1 (conditional only) recording h at ("output", 0) once per step.

    Returns ``(samples, h (steps, N, C, H, W) float16 on the CPU, t (steps,))``; a sampler that calls the model more
    than once per step is refused (the i-th h must belong to step i).
    """
    import comfy.sample

    seen: list[tuple[torch.Tensor, float]] = []

    def record(h, hsp, transformer_options):
        if transformer_options.get("block") == ("output", 0):
            seen.append((h.detach().to("cpu", torch.float16).clone(), float(transformer_options["sigmas"].reshape(-1)[0])))
        return h, hsp

    m = model.clone()
    m.set_model_output_block_patch(record)
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(m, noise, steps, 1.0, sampler_name, scheduler, positive, negative, latent, seed=seed)
    if len(seen) != steps:
        raise FairSamplingError(f"sampler_name {sampler_name!r} called the model {len(seen)} times for {steps} steps; "
                                "use a one-evaluation-per-step sampler (euler, euler_ancestral, ddim, dpmpp_2m)")
    ms = model.get_model_object("model_sampling")
    t = ms.timestep(torch.tensor([s for _, s in seen])).float()
    return samples, torch.stack([h for h, _ in seen]), t


def fingerprint_of(model, name: str = "") -> dict:
    """The base-model record an ADP keeps: hashes for pack models, just a name for other UNets."""
    from ..fair_core import adp as adp_lib

    unet = model.get_model_object("diffusion_model")
    return adp_lib.base_fingerprint(unet.denoiser, name) if isinstance(unet, PixelUNet) else {"name": name or type(unet).__name__}


def save_adp(adp, name: str, training: dict) -> str:
    """Write ``adp`` to ComfyUI/models/fair_sampling/NAME.safetensors (atomic); returns the path."""
    if not name.strip() or "/" in name or "\\" in name or name.startswith("."):
        raise FairSamplingError(f"save_as must be a plain file name like 'my_adp', got {name!r}")
    folder = Path(folder_paths.models_dir) / FOLDER
    path = folder / (name.strip().removesuffix(".safetensors") + ".safetensors")
    return str(checkpoints.save(path, adp, "adp", adp.cfg, training))
