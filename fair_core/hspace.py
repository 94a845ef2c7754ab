"""h-space: the UNet's middle-block output, read and edited where the decoder picks it up.

For a diffusers ``UNet2DModel`` the point is the input of ``up_blocks[0]``: its positional arguments are
``(h, skips, temb)`` with ``h`` the middle-block output and ``skips[-1]`` the deepest skip connection. That is
exactly what ComfyUI hands an ``output_block_patch`` at ``transformer_options["block"] == ("output", 0)``
(``h`` and ``hsp``), so one mechanism serves our library (guidance, predictors) and ComfyUI's patches.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from .errors import FairSamplingError

# fn(h, hsp) -> (h, hsp); h: (N, C, H', W') middle-block output, hsp: the skip tensor concatenated with it next.
HSpacePatch = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def first_up_block(unet: nn.Module) -> nn.Module:
    blocks = getattr(unet, "up_blocks", None)
    if not blocks:
        raise FairSamplingError(f"h-space needs a UNet with up_blocks (diffusers UNet2DModel), got {type(unet).__name__}")
    return blocks[0]


def check_mid_block(unet: nn.Module) -> None:
    """h-space is the middle-block output: a UNet built without a middle block (``mid_block=None``) has none."""
    if getattr(unet, "mid_block", None) is None:
        raise FairSamplingError(f"h-space needs a UNet with a middle block (mid_block), {type(unet).__name__} has none")


@contextmanager
def patched(unet: nn.Module, fn: HSpacePatch) -> Iterator[None]:
    """Within the context every forward of ``unet`` passes its h-space through ``fn(h, hsp) -> (h, hsp)``."""

    def pre_hook(module, args):
        h, skips, *rest = args
        h, hsp = fn(h, skips[-1])
        return (h, (*skips[:-1], hsp), *rest)

    handle = first_up_block(unet).register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def captured(unet: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the context, the h of each forward of ``unet`` is appended to the yielded list (not detached)."""
    seen: list[torch.Tensor] = []

    def keep(h, hsp):
        seen.append(h)
        return h, hsp

    with patched(unet, keep):
        yield seen
