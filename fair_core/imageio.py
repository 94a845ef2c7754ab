"""Image conversions and files: [-1, 1] tensors <-> uint8 arrays, PNG grids, sample archives (all writes atomic)."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from .checkpoints import atomic_write
from .errors import FairSamplingError


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in [-1, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise FairSamplingError(f"images must be a uint8 array of shape (N, H, W, C), got {images.dtype} {images.shape}")
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, scale: int = 3) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images into one (rows*H, cols*W, 3) image, nearest-upscaled by ``scale``."""
    n, h, w, c = images.shape
    if c == 1:
        images = np.repeat(images, 3, axis=3)
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 64, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[i, ..., :3]
    return out.repeat(scale, 0).repeat(scale, 1)


def save_png(path, image: np.ndarray) -> Path:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def save_samples(path, images: np.ndarray, labels: np.ndarray, **extra) -> Path:
    """Write ``images`` (uint8 N x H x W x C) and ``labels`` (N,) to an ``.npz`` archive."""
    if Path(path).suffix != ".npz":
        raise FairSamplingError(f"--out must end in .npz, got {str(path)!r}")
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels, **extra)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
