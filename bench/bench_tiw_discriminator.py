"""Does the image discriminator of ``python -m training tiw`` recover w_t on Colored-MNIST?

With a 90:10 red:green biased set and a 50:50 reference set, the clean-image ratio is known per colour:
w(red) = 0.5 / 0.9 = 0.556 and w(green) = 0.5 / 0.1 = 5 (digits are balanced in both sets); as sigma grows the
two noised distributions merge and w_t -> 1. This script reports the median w_t of held-out red and green test
images at several sigmas for a trained discriminator checkpoint.

    python -m training tiw --model tiny --steps 1 --disc-steps 800 --threads 1 --outdir /tmp/tiwdisc
    python bench/bench_tiw_discriminator.py /tmp/tiwdisc/00000-tiw-colored-mnist/discriminator.safetensors
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fair_core import checkpoints  # noqa: E402
from fair_core.density_ratio import ratio  # noqa: E402
from training.data import DataConfig, load  # noqa: E402

SIGMAS = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("discriminator")
    p.add_argument("--n", type=int, default=500, help="test images per colour")
    args = p.parse_args()
    torch.set_num_threads(1)
    disc = checkpoints.load(args.discriminator, kind="discriminator").model
    test = load(DataConfig(dataset="colored-mnist", split="test", colour_ratio=0.5))
    g = torch.Generator().manual_seed(0)
    out = {"discriminator": args.discriminator, "expected_clean": {"red": round(0.5 / 0.9, 3), "green": 5.0}, "median_w": {}}
    for colour, c in (("red", 0), ("green", 1)):
        idx = torch.nonzero(test.colours == c).flatten()[: args.n]
        x0 = test.images(idx)
        out["median_w"][colour] = {}
        for s in SIGMAS:
            x = x0 + s * torch.randn(x0.shape, generator=g)
            with torch.no_grad():
                w = ratio(disc, x, torch.full((len(x),), s))
            out["median_w"][colour][s] = round(float(w.median()), 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
