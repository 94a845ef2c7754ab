"""``python -m training classifier``: the evaluation classifier (digit head + colour head) on real Colored-MNIST.

Trained on the balanced (50:50 colour) training split with small shifts and pixel noise, so that it judges
imperfect generated digits too; held-out accuracy (val and test splits) is recorded in the export, together with
the Gaussian statistics of its features on the real test set (for the classifier-feature Frechet distance).
"""
from __future__ import annotations

import argparse
import logging

import torch
import torch.nn.functional as F

from fair_core import features, metrics
from fair_core.models import EvalClassifier, named_config

from . import cli
from .data import DataConfig
from .data import load as load_data
from .dsm import export
from .runs import Loop, load_state, pick_device, step_generator

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("classifier", help="train the evaluation classifier (digit and colour heads)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="eval", choices=["tiny", "eval"], help="named classifier config")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the colour assignment")
    cli.add_common(p, steps=3000, batch=128, lr=1e-3)
    p.set_defaults(func=main)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels, intensity scaling in [0.7, 1.1] and Gaussian pixel noise (std 0.1)."""
    n = x.shape[0]
    dx, dy = (torch.randint(-2, 3, (2,), generator=g)).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    scale = 0.7 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    x = (x + 1) * scale - 1
    return (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


@torch.no_grad()
def accuracy(model: EvalClassifier, split: str, device, seed: int = 0) -> dict[str, float]:
    data = load_data(DataConfig(dataset="colored-mnist", split=split, colour_ratio=0.5, seed=seed))
    correct = {"digit": 0, "colour": 0}
    for i in range(0, len(data), 1000):
        idx = torch.arange(i, min(i + 1000, len(data)))
        out = model(data.images(idx).to(device))
        correct["digit"] += int((out["digit"].argmax(1).cpu() == data.digits[idx]).sum())
        correct["colour"] += int((out["colour"].argmax(1).cpu() == data.colours[idx]).sum())
    return {k: v / len(data) for k, v in correct.items()}


@torch.no_grad()
def store_reference_stats(model: EvalClassifier, device) -> None:
    """Fill the classifier's feature statistics of the real test set (recoloured red), for classifier-feature FD."""
    real = load_data(DataConfig(dataset="colored-mnist", split="test", colour_ratio=0.5))
    mu, cov = metrics.gaussian_stats(features.classifier_features(model, features.recolour_red(real.images())))
    model.feature_mean.copy_(torch.as_tensor(mu, dtype=torch.float32))
    model.feature_cov.copy_(torch.as_tensor(cov, dtype=torch.float32))


def main(args: argparse.Namespace) -> None:
    opts = cli.resolve(args, "classifier")
    run_dir = cli.start_run(args, "classifier", opts, "classifier-colored-mnist")
    if run_dir is None:
        return
    device = pick_device(opts["device"])
    data = load_data(DataConfig(dataset="colored-mnist", split="train", colour_ratio=0.5, seed=opts["data_seed"]))
    cfg = named_config("classifier", opts["model"])
    torch.manual_seed(opts["seed"])
    model = EvalClassifier(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=opts["lr"])
    start = 0
    if (run_dir / "state.safetensors").exists():
        start, _ = load_state(run_dir / "state.safetensors", model, None, opt, device)

    def step_fn(step: int) -> dict[str, float]:
        g = step_generator(opts["seed"], step, "cpu")
        idx = torch.randint(len(data), (opts["batch"],), generator=g)
        x = augment(data.images(idx), g).to(device)
        for group in opt.param_groups:  # cosine decay to 5 % of the base rate
            group["lr"] = opts["lr"] * (0.05 + 0.95 * 0.5 * (1 + torch.cos(torch.tensor(step / opts["steps"] * torch.pi)).item()))
        out = model(x)
        loss = F.cross_entropy(out["digit"], data.digits[idx].to(device)) + F.cross_entropy(out["colour"], data.colours[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    step = Loop(run_dir, model, opt, None, steps=opts["steps"], save_every=opts["save_every"], time_limit_min=opts["time_limit"]).run(step_fn, start, "classifier")
    model.eval()
    acc = {"val": accuracy(model, "val", device), "test": accuracy(model, "test", device)}
    log.info("held-out accuracy: %s", acc)
    store_reference_stats(model, device)
    training = {"command": cli.recorded_command_line(run_dir), "data": "colored-mnist train, colour_ratio 0.5", "steps": step,
                "seed": opts["seed"], "batch": opts["batch"], "run": run_dir.name, "heldout_accuracy": acc}
    export(run_dir, model, "classifier", cfg, training, opts["export"])
