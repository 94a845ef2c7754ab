#!/usr/bin/env python3
"""Tile the PNG images of a folder (sorted by name) into one grid PNG:  python scripts/image_grid.py DIR OUT.png"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fair_core.imageio import grid, save_png  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("folder", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--nrow", type=int, default=None, help="images per row (default: square)")
    p.add_argument("--scale", type=int, default=3, help="nearest-neighbour upscaling")
    args = p.parse_args(argv)
    files = sorted(args.folder.glob("*.png"))
    if not files:
        p.error(f"folder must contain .png images, found none in {args.folder}")
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    print(save_png(args.out, grid(images, nrow=args.nrow, scale=args.scale)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
