"""``python -m training tiw``: TIW-DSM (Kim et al., ICLR 2024): a time-dependent discriminator, then the score model.

Stage 1 (skipped with ``--discriminator PATH``): a :class:`fair_core.density_ratio.TimeDependentDiscriminator` learns
to tell noised reference images (label 1) from noised biased images (label 0), with balanced batches (half each,
both halves at the same noise levels, drawn like the score model's), so ``w_t = d / (1 - d)`` (``prior_ref = 0.5``).
It is exported as ``discriminator.safetensors`` (kind ``discriminator``) in the run folder.

Stage 2: the UNet trains on the union of D_bias and D_ref (indices drawn uniformly from both). Biased images get the
TIW-DSM loss (weight ``w_t(x)``, denoiser target ``x0 + sigma^2 grad log w_t(x)``); reference images get the plain
loss (``w = 1``, no correction), which is already score matching on ``p_ref``. The DSM weighting is the DDPM loss of
``training dsm`` (v- or eps-prediction), so ``--loss-mode none`` reproduces it. ``--loss-mode`` also gives the
ablations ``weight`` and ``correction`` and ``iw``: time-independent importance weights ``w(x0)`` (the
discriminator at sigma_min on clean images), no correction.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from pathlib import Path

import torch

from fair_core import checkpoints
from fair_core.density_ratio import (DISC_POOLS, DiscriminatorConfig, TimeDependentDiscriminator, discriminator_loss, log_ratio,
                                     log_ratio_and_grad, tiw_dsm_loss)
from fair_core.denoiser import DiscreteVPDenoiser
from fair_core.errors import DataError, FairSamplingError, check_range
from fair_core.models import CONDITIONS, config_from_dict

from . import cli
from .data import load as load_data
from .dsm import export, new_model, training_record
from .runs import Loop, adam_ema_resume, load_state, pick_device, step_generator

log = logging.getLogger(__name__)

DISC_WIDTHS = {"tiny": (8, 16), "small": (32, 64, 64), "medium": (64, 128, 128)}
DISC_SCHEDULES = ("constant", "cosine")
LOSS_MODES = ("tiw", "weight", "correction", "iw", "none")


def add_parser(sub) -> None:
    p = sub.add_parser("tiw", help="train a discriminator, then a diffusion model by TIW-DSM on biased + reference data",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="mnist-s", choices=["tiny", "mnist-s", "mnist-m"], help="named UNet config")
    p.add_argument("--condition", default="digit", choices=list(CONDITIONS), help="what the class label means")
    p.add_argument("--prediction", default="v_prediction", choices=["epsilon", "v_prediction"], help="network target")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights")
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    cli.add_init(p, "e.g. a model trained on D_bias, for TIW-DSM as debiasing fine-tuning")
    p.add_argument("--loss-mode", default="tiw", choices=LOSS_MODES,
                   help="tiw (paper) | weight / correction (ablations) | iw (time-independent weights w(x0)) | none (plain DSM)")
    g = p.add_argument_group("discriminator")
    g.add_argument("--discriminator", default=None, metavar="PATH", help="use this 'discriminator' checkpoint instead of training one")
    g.add_argument("--disc-model", default="small", choices=list(DISC_WIDTHS), help="discriminator CNN widths")
    g.add_argument("--disc-pool", default="mean", choices=list(DISC_POOLS),
                   help="discriminator head: global average of the last map (translation invariant) or the whole map (dense, "
                        "position-aware, as the official code's attention-pooled classifier)")
    g.add_argument("--disc-steps", type=int, default=2000, help="discriminator optimisation steps")
    g.add_argument("--disc-lr", type=float, default=1e-3, help="discriminator Adam learning rate")
    g.add_argument("--disc-schedule", default="constant", choices=DISC_SCHEDULES,
                   help="discriminator learning rate: constant, or cosine decay to 0 over --disc-steps (a finer fit at the end)")
    g.add_argument("--disc-batch", type=int, default=None,
                   help="discriminator batch, half reference and half biased (default: --batch); the ratio at high noise "
                        "is close to 1 and its gradient needs many samples")
    g.add_argument("--clip", type=float, default=1e-5, help="d is clipped to [clip, 1 - clip] (official code: 1e-5)")
    cli.add_data(p, colour_ratio=0.9)
    p.set_defaults(reference_fraction=0.05)
    cli.add_common(p, steps=6000, batch=64, lr=3e-4)
    p.set_defaults(func=main)


def check_options(opts: dict) -> None:
    check_range("--reference-fraction", opts["reference_fraction"], 0.0, 1.0, low_open=True, high_open=True)
    if opts["part"] != "biased":
        raise FairSamplingError(f"--part must be 'biased' for tiw (it loads both parts itself), got {opts['part']!r}")
    check_range("--disc-steps", opts["disc_steps"], 1, integer=True)
    check_range("--disc-lr", opts["disc_lr"], 0.0, low_open=True)
    if opts.get("disc_batch") is not None:
        check_range("--disc-batch", opts["disc_batch"], 2, integer=True)
    if opts["discriminator"] is None:
        DiscriminatorConfig(clip=opts["clip"])  # raises on a bad --clip before any work
    else:  # a wrong file fails here, before a run folder is made
        meta = checkpoints.read_metadata(opts["discriminator"])
        if meta["kind"] != "discriminator":
            raise FairSamplingError(f"--discriminator {opts['discriminator']!r} is a {meta['kind']!r} checkpoint; "
                                    "expected kind 'discriminator'")
        check_discriminator_shape(opts["discriminator"], config_from_dict(DiscriminatorConfig, meta["config"]), opts)


def check_discriminator_shape(path, cfg: DiscriminatorConfig, opts: dict) -> None:
    want = (3 if opts["data"] == "colored-mnist" else 1, 28)
    if cfg.arch != "cnn" or (cfg.channels, cfg.sample_size) != want:
        raise FairSamplingError(f"--discriminator {str(path)!r} takes {cfg.arch} input with {cfg.channels} channels and size "
                                f"{cfg.sample_size}; this data needs a cnn with {want[0]} channels and size {want[1]}")


def load_parts(opts: dict):
    bias_cfg = cli.data_config(opts)
    bias = load_data(bias_cfg)
    ref = load_data(dataclasses.replace(bias_cfg, part="reference"))
    if len(ref) >= len(bias):
        raise DataError(f"the reference set ({len(ref)} images) must be smaller than the biased set ({len(bias)}); "
                        "lower --reference-fraction")
    return bias, ref


def draw_t(model: DiscreteVPDenoiser, n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, model.cfg.num_train_timesteps, (n,), generator=g)


def train_discriminator(opts, run_dir: Path, bias, ref, schedule: DiscreteVPDenoiser, device) -> TimeDependentDiscriminator:
    """Stage 1, resumable in ``run_dir/discriminator``; exported to ``run_dir/discriminator.safetensors``."""
    cfg = DiscriminatorConfig(arch="cnn", channels=bias.channels, sample_size=28, widths=DISC_WIDTHS[opts["disc_model"]],
                              pool=opts.get("disc_pool", "mean"), prior_ref=0.5, clip=opts["clip"])
    torch.manual_seed(opts["seed"] + 1)
    disc = TimeDependentDiscriminator(cfg).to(device)
    opt = torch.optim.Adam(disc.parameters(), lr=opts["disc_lr"])
    stage_dir = run_dir / "discriminator"
    stage_dir.mkdir(exist_ok=True)
    start = 0
    if (stage_dir / "state.safetensors").exists():
        start, _ = load_state(stage_dir / "state.safetensors", disc, None, opt, device)
        log.info("discriminator resumed at step %d", start)
    half = max((opts.get("disc_batch") or opts["batch"]) // 2, 1)
    sigmas = schedule.sigmas.cpu()
    cosine = opts.get("disc_schedule", "constant") == "cosine"

    def step_fn(step: int) -> dict[str, float]:
        g = step_generator(opts["seed"] + 7, step, "cpu")
        if cosine:
            for group in opt.param_groups:
                group["lr"] = opts["disc_lr"] * 0.5 * (1 + math.cos(math.pi * step / opts["disc_steps"]))
        ib, ir = torch.randint(len(bias), (half,), generator=g), torch.randint(len(ref), (half,), generator=g)
        sigma = sigmas[draw_t(schedule, half, g)]
        s = sigma.view(-1, 1, 1, 1)
        xb = bias.images(ib) + s * torch.randn((half, bias.channels, 28, 28), generator=g)
        xr = ref.images(ir) + s * torch.randn((half, ref.channels, 28, 28), generator=g)
        loss = discriminator_loss(disc, xr.to(device), sigma.to(device), xb.to(device), sigma.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"bce": loss.item()}

    step = Loop(stage_dir, disc, opt, None, steps=opts["disc_steps"], save_every=opts["save_every"]).run(step_fn, start, "discriminator")
    record = {"command": cli.recorded_command_line(run_dir), "data": dataclasses.asdict(cli.data_config(opts)), "steps": step,
              "seed": opts["seed"], "batch": 2 * half, "lr": opts["disc_lr"],
              "lr_schedule": opts.get("disc_schedule", "constant"), "run": run_dir.name, "labels": "reference = 1, biased = 0, balanced batches"}
    checkpoints.save(run_dir / "discriminator.safetensors", disc, "discriminator", cfg, record)
    return disc.eval().requires_grad_(False)


def get_discriminator(opts, run_dir: Path, bias, ref, schedule, device) -> tuple[TimeDependentDiscriminator, dict]:
    """The discriminator and what the export records about it (loaded, resumed or trained)."""
    path = Path(opts["discriminator"]) if opts["discriminator"] else run_dir / "discriminator.safetensors"
    if opts["discriminator"] is None and not path.exists():
        train_discriminator(opts, run_dir, bias, ref, schedule, device)
    ckpt = checkpoints.load(path, kind="discriminator", device=device)
    cfg = ckpt.config
    check_discriminator_shape(path, cfg, opts)
    facts = {"path": str(path), "trained_in_run": opts["discriminator"] is None, "config": dataclasses.asdict(cfg),
             "steps": ckpt.training.get("steps"), "ratio": "w_t = ((1 - prior_ref) / prior_ref) * d / (1 - d)"}
    return ckpt.model, facts


def main(args: argparse.Namespace) -> None:
    opts = cli.resolve(args, "tiw")
    check_options(opts)
    run_dir = cli.start_run(args, "tiw", opts, f"tiw-{opts['data']}")
    if run_dir is None:
        return
    device = pick_device(opts["device"])
    bias, ref = load_parts(opts)
    cfg, model = new_model(opts, bias.channels, run_dir, device)
    disc, disc_facts = get_discriminator(opts, run_dir, bias, ref, model, device)
    log.info("%s: %d biased + %d reference images, loss mode %s, device %s", opts["model"], len(bias), len(ref), opts["loss_mode"], device)
    opt, ema, start = adam_ema_resume(model, opts, run_dir, device)
    n_bias, n_all = len(bias), len(bias) + len(ref)

    def step_fn(step: int) -> dict[str, float]:
        g = step_generator(opts["seed"], step, "cpu")
        idx = torch.randint(n_all, (opts["batch"],), generator=g)
        is_ref = idx >= n_bias
        x0 = torch.empty(opts["batch"], bias.channels, 28, 28)
        x0[~is_ref], x0[is_ref] = bias.images(idx[~is_ref]), ref.images(idx[is_ref] - n_bias)
        labels = None
        if cfg.conditional:
            labels = torch.empty(opts["batch"], dtype=torch.long)
            labels[~is_ref], labels[is_ref] = bias.labels(cfg.condition, idx[~is_ref]), ref.labels(cfg.condition, idx[is_ref] - n_bias)
            drop = torch.rand(opts["batch"], generator=g) < cfg.class_dropout
            labels = torch.where(drop, torch.full_like(labels, -1), labels).to(device)
        for group in opt.param_groups:
            group["lr"] = opts["lr"] * min(1.0, (step + 1) / max(opts["warmup"], 1))
        per_sample, log_w = tiw_loss(model, disc, opts["loss_mode"], x0.to(device), labels, (~is_ref).to(device), g)
        loss = per_sample.mean()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr or raise --clip")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return {"loss": loss.item(), "mean_w_bias": float(log_w[(~is_ref).to(device)].exp().mean()) if (~is_ref).any() else 1.0}

    loop = Loop(run_dir, model, opt, ema, steps=opts["steps"], save_every=opts["save_every"], time_limit_min=opts["time_limit"])
    step = loop.run(step_fn, start, desc="tiw")
    training = training_record(opts, run_dir, step) | {
        "method": "TIW-DSM (Kim et al. 2024, arXiv 2403.01189)", "loss_mode": opts["loss_mode"],
        "reference_fraction": opts["reference_fraction"], "bias": {"attribute": "colour", "colour_ratio": opts["colour_ratio"]},
        "n_bias": len(bias), "n_reference": len(ref), "discriminator": disc_facts,
    }
    export(run_dir, ema.model, "tiw", cfg, training, opts["export"])


def tiw_loss(model: DiscreteVPDenoiser, disc, loss_mode: str, x0, labels, is_bias, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample TIW-DSM loss of one batch (``is_bias``: rows from D_bias) and the ``log w`` used; noise from ``g`` (CPU).

    The weighting ``lambda(sigma)`` makes it the DDPM loss of ``training dsm``: (sigma^2 + 1) / sigma^2 for v-prediction
    (``|| v - v_target ||^2 = || D - D_target ||^2 (sigma^2 + 1) / sigma^2``), 1 / sigma^2 for eps-prediction.
    """
    sigma = model.sigmas[draw_t(model, x0.shape[0], g).to(x0.device)]
    x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g).to(x0.device)
    log_w, grad = tiw_terms(disc, loss_mode, x0, x, sigma, is_bias, model.sigma_min)
    lam = (sigma**2 + 1) / sigma**2 if model.cfg.prediction_type == "v_prediction" else sigma**-2
    mode = {"iw": "weight"}.get(loss_mode, loss_mode)
    return tiw_dsm_loss(model(x, sigma, class_labels=labels), x0, sigma, log_w, grad, mode=mode, lambda_sigma=lam), log_w


def tiw_terms(disc, loss_mode: str, x0, x, sigma, is_bias, sigma_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log w, grad_x log w)`` per sample: from the discriminator on the biased rows (one batched call), 0 elsewhere."""
    log_w, grad = torch.zeros(x.shape[0], device=x.device), torch.zeros_like(x)
    if loss_mode == "none" or not bool(is_bias.any()):
        return log_w, grad
    if loss_mode == "iw":  # time-independent: the ratio of the clean image, no correction
        with torch.no_grad():
            log_w[is_bias] = log_ratio(disc, x0[is_bias], torch.full((int(is_bias.sum()),), sigma_min, device=x.device))
        return log_w, grad
    log_w[is_bias], grad[is_bias] = log_ratio_and_grad(disc, x[is_bias], sigma[is_bias])
    return log_w, grad
