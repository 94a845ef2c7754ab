"""Stage 1 of ``python -m training tiw``: the time-dependent discriminator that gives ``w_t`` (trained, resumed or loaded).

Two objectives (``--disc-objective``, both in ``fair_core.density_ratio``):

* ``bce`` (the paper's): noised reference images (label 1) against noised biased images (label 0), balanced batches
  (half each, both halves at the same noise levels, drawn like the score model's), so ``w_t = d / (1 - d)``.
  Exported as ``discriminator.safetensors`` in the run folder.
* ``weighted``: a ``bce`` discriminator (``--disc-teacher PATH``, else trained first in the run and exported as
  ``discriminator_teacher.safetensors``) gives each biased image its clean ratio ``w0(x0)`` (at ``sigma_min``); a
  fresh discriminator then learns ``w_t(x) = E_bias[w0(x0) | x]`` from noised biased images alone
  (``weighted_discriminator_loss``). ``w0`` is divided by its mean over D_bias (1 in law; the teacher's scale is free
  because only ``grad log w_t`` and relative weights enter TIW-DSM); the mean is recorded. Exported as
  ``discriminator.safetensors``.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from fair_core import checkpoints
from fair_core.density_ratio import (DiscriminatorConfig, TimeDependentDiscriminator, discriminator_loss, log_ratio,
                                     weighted_discriminator_loss)
from fair_core.errors import FairSamplingError
from fair_core.models import config_from_dict

from . import cli
from .runs import Loop, load_state, step_generator

DISC_WIDTHS = {"tiny": (8, 16), "small": (32, 64, 64), "medium": (64, 128, 128)}
DISC_SCHEDULES = ("constant", "cosine")


def check_discriminator_file(option: str, path, opts: dict) -> DiscriminatorConfig:
    """The config of the ``discriminator`` checkpoint at ``path``; raises naming ``option`` if it is another kind or shape."""
    meta = checkpoints.read_metadata(path)
    if meta["kind"] != "discriminator":
        raise FairSamplingError(f"{option} {str(path)!r} is a {meta['kind']!r} checkpoint; expected kind 'discriminator'")
    cfg = config_from_dict(DiscriminatorConfig, meta["config"])
    check_discriminator_shape(option, path, cfg, opts)
    return cfg


def check_discriminator_shape(option: str, path, cfg: DiscriminatorConfig, opts: dict) -> None:
    want = (3 if opts["data"] == "colored-mnist" else 1, 28)
    if cfg.arch != "cnn" or (cfg.channels, cfg.sample_size) != want:
        raise FairSamplingError(f"{option} {str(path)!r} takes {cfg.arch} input with {cfg.channels} channels and size "
                                f"{cfg.sample_size}; this data needs a cnn with {want[0]} channels and size {want[1]}")


def train_stage(opts, run_dir: Path, name: str, channels: int, loss_fn, record: dict, device) -> Path:
    """Train a fresh discriminator with ``loss_fn(disc, step)``, resumable in ``run_dir/name``; export ``name.safetensors``."""
    cfg = DiscriminatorConfig(arch="cnn", channels=channels, sample_size=28, widths=DISC_WIDTHS[opts["disc_model"]],
                              pool=opts.get("disc_pool", "mean"), prior_ref=0.5, clip=opts["clip"])
    torch.manual_seed(opts["seed"] + 1)
    disc = TimeDependentDiscriminator(cfg).to(device)
    opt = torch.optim.Adam(disc.parameters(), lr=opts["disc_lr"])
    stage_dir = run_dir / name
    stage_dir.mkdir(exist_ok=True)
    start = 0
    if (stage_dir / "state.safetensors").exists():
        start, _ = load_state(stage_dir / "state.safetensors", disc, None, opt, device)

    def step_fn(step: int) -> dict[str, float]:
        if opts.get("disc_schedule", "constant") == "cosine":
            for group in opt.param_groups:
                group["lr"] = opts["disc_lr"] * 0.5 * (1 + math.cos(math.pi * step / opts["disc_steps"]))
        loss = loss_fn(disc, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {record["objective"]: loss.item()}

    step = Loop(stage_dir, disc, opt, None, steps=opts["disc_steps"], save_every=opts["save_every"]).run(step_fn, start, name)
    record = {"command": cli.recorded_command_line(run_dir), "data": dataclasses.asdict(cli.data_config(opts)), "steps": step,
              "seed": opts["seed"], "lr": opts["disc_lr"], "lr_schedule": opts.get("disc_schedule", "constant"),
              "run": run_dir.name} | record
    checkpoints.save(run_dir / f"{name}.safetensors", disc, "discriminator", cfg, record)
    return run_dir / f"{name}.safetensors"


def noised(images, idx, sigma, g):
    x0 = images(idx)
    return x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g)


def train_bce(opts, run_dir: Path, name: str, bias, ref, schedule, device) -> Path:
    """The paper's discriminator: reference = 1, biased = 0, balanced batches at shared noise levels."""
    half = max((opts.get("disc_batch") or opts["batch"]) // 2, 1)
    sigmas = schedule.sigmas.cpu()

    def loss_fn(disc, step):
        g = step_generator(opts["seed"] + 7, step, "cpu")
        ib, ir = torch.randint(len(bias), (half,), generator=g), torch.randint(len(ref), (half,), generator=g)
        sigma = sigmas[torch.randint(0, len(sigmas), (half,), generator=g)]
        xb, xr = noised(bias.images, ib, sigma, g), noised(ref.images, ir, sigma, g)
        return discriminator_loss(disc, xr.to(device), sigma.to(device), xb.to(device), sigma.to(device))

    record = {"objective": "bce", "batch": 2 * half, "labels": "reference = 1, biased = 0, balanced batches"}
    return train_stage(opts, run_dir, name, bias.channels, loss_fn, record, device)


def clean_log_ratios(teacher, bias, sigma_min: float, device, chunk: int = 1024) -> torch.Tensor:
    """``log w0(x0)`` of every biased image: the teacher at ``sigma_min`` on the clean image, (N,) on the CPU."""
    out = []
    with torch.no_grad():
        for i in range(0, len(bias), chunk):
            idx = torch.arange(i, min(i + chunk, len(bias)))
            out.append(log_ratio(teacher, bias.images(idx).to(device), torch.full((len(idx),), sigma_min, device=device)).cpu())
    return torch.cat(out)


def train_weighted(opts, run_dir: Path, bias, ref, schedule, device) -> Path:
    """``weighted``: w0 from the teacher, then a fresh discriminator on noised biased images alone."""
    teacher_path = opts.get("disc_teacher")
    if teacher_path is None:
        teacher_path = run_dir / "discriminator_teacher.safetensors"
        if not teacher_path.exists():
            train_bce(opts, run_dir, "discriminator_teacher", bias, ref, schedule, device)
    teacher = checkpoints.load(teacher_path, kind="discriminator", device=device).model
    log_w0 = clean_log_ratios(teacher, bias, float(schedule.sigma_min), device)
    w0_mean = float(log_w0.exp().mean())
    w0 = log_w0.exp() / w0_mean
    batch = opts.get("disc_batch") or opts["batch"]
    sigmas = schedule.sigmas.cpu()

    def loss_fn(disc, step):
        g = step_generator(opts["seed"] + 13, step, "cpu")
        ib = torch.randint(len(bias), (batch,), generator=g)
        sigma = sigmas[torch.randint(0, len(sigmas), (batch,), generator=g)]
        return weighted_discriminator_loss(disc, noised(bias.images, ib, sigma, g).to(device), sigma.to(device), w0[ib].to(device))

    record = {"objective": "weighted", "batch": batch, "teacher": str(teacher_path), "teacher_w0_mean": w0_mean,
              "labels": "biased images only, weighted by w0(x0) / mean(w0) from the teacher at sigma_min"}
    return train_stage(opts, run_dir, "discriminator", bias.channels, loss_fn, record, device)


def get_discriminator(opts, run_dir: Path, bias, ref, schedule, device) -> tuple[TimeDependentDiscriminator, dict]:
    """The discriminator and what the export records about it (loaded, resumed or trained)."""
    path = Path(opts["discriminator"]) if opts["discriminator"] else run_dir / "discriminator.safetensors"
    if opts["discriminator"] is None and not path.exists():
        if opts.get("disc_objective", "bce") == "weighted":
            train_weighted(opts, run_dir, bias, ref, schedule, device)
        else:
            train_bce(opts, run_dir, "discriminator", bias, ref, schedule, device)
    ckpt = checkpoints.load(path, kind="discriminator", device=device)
    check_discriminator_shape("--discriminator", path, ckpt.config, opts)
    facts = {"path": str(path), "trained_in_run": opts["discriminator"] is None, "config": dataclasses.asdict(ckpt.config),
             "steps": ckpt.training.get("steps"), "objective": ckpt.training.get("objective", "bce"),
             "ratio": "w_t = ((1 - prior_ref) / prior_ref) * d / (1 - d)"}
    return ckpt.model, facts
