"""Stage 1 of ``python -m training tiw``: the time-dependent discriminator that gives ``w_t`` (trained, resumed or loaded).

Three objectives (``--disc-objective``, their losses in ``fair_core.density_ratio``):

* ``bce`` (the paper's): noised reference images (label 1) against noised biased images (label 0), balanced batches
  (half each, both halves at the same noise levels, drawn like the score model's), so ``w_t = d / (1 - d)``.
  Exported as ``discriminator.safetensors`` in the run folder.
* ``weighted``: a ``bce`` discriminator (``--disc-teacher PATH``, else trained first in the run and exported as
  ``discriminator_teacher.safetensors``) gives each biased image its clean ratio ``w0(x0)`` (at ``sigma_min``); a
  fresh discriminator then learns ``w_t(x) = E_bias[w0(x0) | x]`` from noised biased images alone
  (``weighted_discriminator_loss``). ``w0`` is divided by its mean over D_bias (1 in law; the teacher's scale is free
  because only ``grad log w_t`` and relative weights enter TIW-DSM); the mean is recorded. ``--disc-w0-sigma S``
  reads the teacher at noise level ``S`` instead (the mean of two noise draws), where a bce teacher that has
  memorised the few reference images is no longer over-confident. Exported as ``discriminator.safetensors``.
* ``gradient``: the ``weighted`` discriminator (exported as ``discriminator_values.safetensors``) is then fine-tuned,
  for ``--disc-steps`` more steps, on the same loss plus ``--disc-grad-weight`` (0.3) times the regression of its correction
  ``sigma^2 grad log w_t`` (``correction_matching_loss``), with the denoiser of ``--disc-baseline`` (a diffusion model
  of D_bias) as the control variate, weighted like the score model's v-loss. Exported as ``discriminator.safetensors``.

With a class-conditional score model the discriminator is conditional on the same label (``--disc-condition model``,
the default): each image comes with its label, dropped to -1 (the marginal ratio) as often as the score model's
class dropout drops it, so ``w_t(x | y)`` and ``w_t(x)`` are both learned. A marginal ``weighted`` teacher is
enough where the label is a function of the clean image (digits, colours): then ``p(y | x0)`` is the same in both
sets and the joint clean ratio of ``(x0, y)`` is ``w0(x0)``. A conditional teacher is read given each image's label.
``--disc-condition none`` learns ``w_t(x)`` alone.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from fair_core import checkpoints
from fair_core.density_ratio import (DiscriminatorConfig, TimeDependentDiscriminator, correction_matching_loss, discriminator_loss,
                                     log_ratio, weighted_discriminator_loss)
from fair_core.denoiser import drop_labels
from fair_core.errors import FairSamplingError
from fair_core.models import CONDITIONS, config_from_dict

from . import cli
from .runs import Loop, load_state, step_generator

# CNN widths per level (the first at full size, then stride 2); "deep" reaches a 2x2 map (receptive field 33 pixels)
DISC_WIDTHS = {"tiny": (8, 16), "small": (32, 64, 64), "medium": (64, 128, 128), "deep": (32, 64, 64, 128, 128)}
DISC_SCHEDULES = ("constant", "cosine")
DISC_CONDITIONS = ("model", "none")  # --disc-condition: the score model's label (w_t(x | y)), or none (w_t(x))
GRAD_WEIGHT = 0.3  # --disc-grad-weight's default


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


def check_discriminator_classes(option: str, path, cfg: DiscriminatorConfig, classes: int, opts: dict) -> None:
    """A discriminator conditional on as many classes as ``--disc-condition`` asks (0: unconditional)."""
    if cfg.num_classes != classes:
        have = f"conditional on {cfg.num_classes} classes" if cfg.num_classes else "unconditional"
        want = f"one conditional on the score model's {classes} classes" if classes else "an unconditional one"
        raise FairSamplingError(f"{option} {str(path)!r} is {have}; --disc-condition {opts.get('disc_condition', 'none')!r} with "
                                f"--condition {opts.get('condition')!r} needs {want} (--disc-condition none: the marginal ratio)")


def check_baseline_file(path, opts: dict) -> None:
    """``--disc-baseline`` must be a diffusion checkpoint of this data's image shape."""
    meta = checkpoints.read_metadata(path)
    if meta["kind"] not in checkpoints.DIFFUSION_KINDS:
        raise FairSamplingError(f"--disc-baseline {str(path)!r} is a {meta['kind']!r} checkpoint; expected one of "
                                f"{list(checkpoints.DIFFUSION_KINDS)} (a diffusion model of D_bias)")
    cfg, want = meta["config"], (3 if opts["data"] == "colored-mnist" else 1, 28)
    if (cfg.get("channels"), cfg.get("sample_size")) != want:
        raise FairSamplingError(f"--disc-baseline {str(path)!r} makes {cfg.get('channels')}-channel images of size "
                                f"{cfg.get('sample_size')}; this data needs {want[0]} channels and size {want[1]}")
    if cfg.get("condition", "none") != "none" and not cfg.get("class_dropout", 0) > 0:
        raise FairSamplingError(f"--disc-baseline {str(path)!r} is class-conditional ({cfg['condition']!r}) without class "
                                "dropout, so it has no unconditional denoiser; give an unconditional model or one trained with "
                                "class dropout")
    if cfg.get("condition", "none") not in ("none", opts["condition"]):
        raise FairSamplingError(f"--disc-baseline {str(path)!r} is conditional on {cfg['condition']!r}, the score model on "
                                f"{opts['condition']!r}; give a model with the same condition or an unconditional one")


def disc_classes(opts) -> int:
    """The discriminator's number of classes: the score model's (``--condition``) with ``--disc-condition model``
    (0 if it is unconditional), 0 with ``none``."""
    return CONDITIONS[opts["condition"]] if opts.get("disc_condition", "none") == "model" else 0  # runs older than the option: none


def draw_labels(data, idx, schedule, classes: int, g) -> torch.Tensor | None:
    """The images' labels for a class-conditional discriminator, dropped to -1 (the marginal ratio) with the score
    model's class-dropout probability, as the TIW-DSM step drops them; None for an unconditional one."""
    if not classes:
        return None
    return drop_labels(data.labels(schedule.cfg.condition, idx), schedule.cfg.class_dropout, g)


def to(t, device):
    return None if t is None else t.to(device)


def train_stage(opts, run_dir: Path, name: str, channels: int, loss_fn, record: dict, device, init: Path | None = None,
                classes: int = 0) -> Path:
    """Train a discriminator (fresh, or from the ``init`` export) with ``loss_fn(disc, step)``, resumable in
    ``run_dir/name``; export ``name.safetensors``."""
    cfg = DiscriminatorConfig(arch="cnn", channels=channels, sample_size=28, widths=DISC_WIDTHS[opts["disc_model"]],
                              pool=opts.get("disc_pool", "mean"), film=opts.get("disc_film", "shift"), prior_ref=0.5,
                              clip=opts["clip"], num_classes=classes)
    torch.manual_seed(opts["seed"] + 1)
    disc = TimeDependentDiscriminator(cfg).to(device)
    if init is not None:
        disc.load_state_dict(checkpoints.load(init, kind="discriminator", device=device).model.state_dict())
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


def noised(x0, sigma, g):
    """``x0 + sigma n`` with ``n`` from ``g`` (CPU)."""
    return x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g)


def train_bce(opts, run_dir: Path, name: str, bias, ref, schedule, device, classes: int = 0) -> Path:
    """The paper's discriminator: reference = 1, biased = 0, balanced batches at shared noise levels."""
    half = max((opts.get("disc_batch") or opts["batch"]) // 2, 1)
    sigmas = schedule.sigmas.cpu()

    def loss_fn(disc, step):
        g = step_generator(opts["seed"] + 7, step, "cpu")
        ib, ir = torch.randint(len(bias), (half,), generator=g), torch.randint(len(ref), (half,), generator=g)
        sigma = sigmas[torch.randint(0, len(sigmas), (half,), generator=g)]
        xb, xr = noised(bias.images(ib), sigma, g), noised(ref.images(ir), sigma, g)
        yr, yb = draw_labels(ref, ir, schedule, classes, g), draw_labels(bias, ib, schedule, classes, g)
        return discriminator_loss(disc, xr.to(device), sigma.to(device), xb.to(device), sigma.to(device), to(yr, device), to(yb, device))

    record = {"objective": "bce", "batch": 2 * half, "labels": "reference = 1, biased = 0, balanced batches"}
    return train_stage(opts, run_dir, name, bias.channels, loss_fn, record, device, classes=classes)


def clean_log_ratios(teacher, bias, sigma_min: float, device, chunk: int = 1024, w0_sigma: float | None = None,
                     seed: int = 0, condition: str | None = None) -> torch.Tensor:
    """``log w0(x0)`` of every biased image, (N,) on the CPU: the teacher at ``sigma_min`` on the clean image, or with
    ``w0_sigma`` the log of its mean ratio over two noise draws ``x0 + w0_sigma n``. A class-conditional teacher is
    read given each image's ``condition`` label (without one, its marginal row)."""
    out, g = [], torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(0, len(bias), chunk):
            idx = torch.arange(i, min(i + chunk, len(bias)))
            x0 = bias.images(idx)
            y = bias.labels(condition, idx).to(device) if condition and teacher.cfg.num_classes else None
            if w0_sigma is None:
                out.append(log_ratio(teacher, x0.to(device), torch.full((len(idx),), sigma_min, device=device), y).cpu())
                continue
            s = torch.full((len(idx),), w0_sigma, device=device)
            draws = [log_ratio(teacher, (x0 + w0_sigma * torch.randn(x0.shape, generator=g)).to(device), s, y).exp()
                     for _ in range(2)]
            out.append((sum(draws) / 2).log().cpu())
    return torch.cat(out)


def train_weighted(opts, run_dir: Path, bias, ref, schedule, device) -> Path:
    """``weighted`` (and the first stage of ``gradient``): w0 from the teacher, then a fresh discriminator on noised
    biased images alone; ``gradient`` then fine-tunes it on its correction too."""
    teacher_path = opts.get("disc_teacher")
    if teacher_path is None:
        teacher_path = run_dir / "discriminator_teacher.safetensors"
        if not teacher_path.exists():
            train_bce(opts, run_dir, "discriminator_teacher", bias, ref, schedule, device)
    teacher = checkpoints.load(teacher_path, kind="discriminator", device=device).model
    seed = (opts["seed"] + 17) * 1_000_003  # a stream no step_generator(seed, step) of the run uses
    log_w0 = clean_log_ratios(teacher, bias, float(schedule.sigma_min), device, w0_sigma=opts.get("disc_w0_sigma"), seed=seed,
                              condition=schedule.cfg.condition)
    w0_mean = float(log_w0.exp().mean())
    w0 = log_w0.exp() / w0_mean
    batch = opts.get("disc_batch") or opts["batch"]
    sigmas = schedule.sigmas.cpu()

    classes = disc_classes(opts)

    def draw(step, seed):
        g = step_generator(opts["seed"] + seed, step, "cpu")
        ib = torch.randint(len(bias), (batch,), generator=g)
        sigma = sigmas[torch.randint(0, len(sigmas), (batch,), generator=g)]
        x0 = bias.images(ib)
        x = noised(x0, sigma, g)
        return x0.to(device), x.to(device), sigma.to(device), w0[ib].to(device), to(draw_labels(bias, ib, schedule, classes, g), device)

    def loss_fn(disc, step):
        _, x, sigma, w, y = draw(step, 13)
        return weighted_discriminator_loss(disc, x, sigma, w, y)

    record = {"objective": "weighted", "batch": batch, "teacher": str(teacher_path), "teacher_w0_mean": w0_mean,
              "w0_sigma": opts.get("disc_w0_sigma"),
              "w0": (f"the teacher at sigma_min {float(schedule.sigma_min):.4g} on the clean image"
                     if opts.get("disc_w0_sigma") is None else
                     f"the teacher's mean ratio over 2 noise draws at sigma {opts['disc_w0_sigma']:g}"),
              "labels": "biased images only, weighted by w0(x0) / mean(w0) from the teacher"}
    if opts.get("disc_objective") != "gradient":
        return train_stage(opts, run_dir, "discriminator", bias.channels, loss_fn, record, device, classes=classes)
    values = train_stage(opts, run_dir, "discriminator_values", bias.channels, loss_fn, record, device, classes=classes)
    baseline = load_baseline(opts["disc_baseline"], device)
    beta = GRAD_WEIGHT if opts.get("disc_grad_weight") is None else opts["disc_grad_weight"]
    half = max(batch // 2, 1)

    def gradient_loss_fn(disc, step):
        x0, x, sigma, w, y = draw(step, 19)
        y_half = None if y is None else y[:half]
        with torch.no_grad():
            b = baseline(x[:half], sigma[:half], y_half)
        lam = (sigma[:half] ** 2 + 1) / sigma[:half] ** 2  # the score model's v-loss weighting (training/tiw.py)
        matching = correction_matching_loss(disc, x[:half], sigma[:half], x0[:half], w[:half], b, lam, y_half)
        return weighted_discriminator_loss(disc, x, sigma, w, y) + beta * matching

    record |= {"objective": "gradient", "values": str(values), "values_steps": opts["disc_steps"],
               "baseline": str(opts["disc_baseline"]), "grad_weight": beta, "grad_batch": half,
               "grad_weighting": "(sigma^2 + 1) / sigma^2 (the v-loss), whatever --prediction"}
    return train_stage(opts, run_dir, "discriminator", bias.channels, gradient_loss_fn, record, device, init=values, classes=classes)


def load_baseline(path, device):
    """``x, sigma, y -> D_bias(x, sigma | y)``: the denoiser of a diffusion checkpoint, unconditional (the null class
    of a conditional one, checked by :func:`check_baseline_file`) where ``y`` is None or -1."""
    model = checkpoints.load(path, kind=checkpoints.DIFFUSION_KINDS, device=device).model.eval().requires_grad_(False)

    def denoise(x, sigma, y=None):
        if not model.cfg.conditional:
            return model(x, sigma)
        labels = torch.full((len(x),), -1, device=x.device, dtype=torch.long) if y is None else y
        return model(x, sigma, class_labels=labels)

    return denoise


def get_discriminator(opts, run_dir: Path, bias, ref, schedule, device) -> tuple[TimeDependentDiscriminator, dict]:
    """The discriminator and what the export records about it (loaded, resumed or trained)."""
    path = Path(opts["discriminator"]) if opts["discriminator"] else run_dir / "discriminator.safetensors"
    if opts["discriminator"] is None and not path.exists():
        if opts.get("disc_objective", "bce") in ("weighted", "gradient"):
            train_weighted(opts, run_dir, bias, ref, schedule, device)
        else:
            train_bce(opts, run_dir, "discriminator", bias, ref, schedule, device, classes=disc_classes(opts))
    ckpt = checkpoints.load(path, kind="discriminator", device=device)
    check_discriminator_shape("--discriminator", path, ckpt.config, opts)
    check_discriminator_classes("--discriminator", path, ckpt.config, disc_classes(opts), opts)
    facts = {"path": str(path), "trained_in_run": opts["discriminator"] is None, "config": dataclasses.asdict(ckpt.config),
             "condition": "marginal w_t(x)" if not ckpt.config.num_classes else f"w_t(x | y), y = the {schedule.cfg.condition} label",
             "steps": ckpt.training.get("steps"), "objective": ckpt.training.get("objective", "bce"),
             "command": ckpt.training.get("command"), "teacher": ckpt.training.get("teacher"),
             "ratio": "w_t = ((1 - prior_ref) / prior_ref) * d / (1 - d)"}
    return ckpt.model, facts
