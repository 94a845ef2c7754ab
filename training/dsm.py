"""``python -m training dsm``: plain denoising score matching (DDPM loss), the baseline every method is compared to."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shutil
from pathlib import Path

import torch

from fair_core import checkpoints
from fair_core.denoiser import DiscreteVPDenoiser
from fair_core.models import CONDITIONS, build_unet, named_config

from . import cli
from .data import load as load_data
from .runs import Loop, adam_ema_resume, init_from, pick_device, step_generator

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("dsm", help="train a diffusion model by plain denoising score matching",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="mnist-s", choices=["tiny", "mnist-s", "mnist-m"], help="named UNet config")
    p.add_argument("--condition", default="digit", choices=list(CONDITIONS), help="what the class label means")
    p.add_argument("--prediction", default="v_prediction", choices=["epsilon", "v_prediction"],
                   help="network target; v keeps the x0 error bounded at high noise (see README, Training)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights")
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    cli.add_init(p, "e.g. to continue a model on other data, or as the matched control of a fine-tuning run")
    cli.add_data(p, colour_ratio=0.9)
    cli.add_common(p, steps=6000, batch=64, lr=3e-4)
    p.set_defaults(func=main)


def model_config(opts: dict, channels: int):
    cfg = named_config("unet", opts["model"])
    return dataclasses.replace(cfg, channels=channels, condition=opts["condition"], num_classes=CONDITIONS[opts["condition"]],
                               prediction_type=opts["prediction"])


def new_model(opts: dict, channels: int, run_dir: Path, device):
    """``(cfg, model)``: the run's denoiser, seeded, with ``--init``'s weights on a fresh run (a resumed run loads its
    state afterwards)."""
    cfg = model_config(opts, channels)
    torch.manual_seed(opts["seed"])
    model = DiscreteVPDenoiser(build_unet(cfg), cfg).to(device)
    if opts.get("init") and not (run_dir / "state.safetensors").exists():
        init_from(model, opts["init"], cfg)
    return cfg, model


def training_record(opts: dict, run_dir: Path, step: int) -> dict:
    """The ``training`` metadata of an export: the command, the data, the steps and the seed."""
    return {"command": cli.recorded_command_line(run_dir), "data": dataclasses.asdict(cli.data_config(opts)), "steps": step,
            "seed": opts["seed"], "batch": opts["batch"], "run": run_dir.name, "init": opts.get("init"),
            "resumed_with": cli.recorded_resumes(run_dir)}


def export(run_dir: Path, model, kind: str, cfg, training: dict, extra_path: str | None) -> Path:
    path = checkpoints.save(run_dir / "export.safetensors", model, kind, cfg, training)
    if extra_path:
        tmp = Path(extra_path).with_name(f".{Path(extra_path).name}.tmp")
        Path(extra_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, tmp)
        tmp.replace(extra_path)
    log.info("exported %s%s", path, f" and {extra_path}" if extra_path else "")
    return path


def main(args: argparse.Namespace) -> None:
    opts = cli.resolve(args, "dsm")
    data_cfg = cli.data_config(opts)
    run_dir = cli.start_run(args, "dsm", opts, f"dsm-{opts['data']}")
    if run_dir is None:
        return
    device = pick_device(opts["device"])
    data = load_data(data_cfg)
    cfg, model = new_model(opts, data.channels, run_dir, device)
    log.info("%s: %d parameters, %d training images, device %s", opts["model"], sum(p.numel() for p in model.parameters()), len(data), device)
    opt, ema, start = adam_ema_resume(model, opts, run_dir, device)

    def step_fn(step: int) -> dict[str, float]:
        g = step_generator(opts["seed"], step, "cpu")
        idx = torch.randint(len(data), (opts["batch"],), generator=g)
        x0 = data.images(idx).to(device)
        labels = data.labels(cfg.condition, idx)
        for group in opt.param_groups:
            group["lr"] = opts["lr"] * min(1.0, (step + 1) / max(opts["warmup"], 1))
        loss = model.loss(x0, None if labels is None else labels.to(device), generator=step_generator(opts["seed"], step, device)).mean()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return {"loss": loss.item()}

    loop = Loop(run_dir, model, opt, ema, steps=opts["steps"], save_every=opts["save_every"], time_limit_min=opts["time_limit"])
    step = loop.run(step_fn, start, desc="dsm")
    export(run_dir, ema.model, "dsm", cfg, training_record(opts, run_dir, step), opts["export"])
