"""``python -m training tiw``: TIW-DSM (Kim et al., ICLR 2024): a time-dependent discriminator, then the score model.

Stage 1 (skipped with ``--discriminator PATH``; ``training/discriminator.py``): a
:class:`fair_core.density_ratio.TimeDependentDiscriminator` learns ``w_t``, by default (``--disc-objective bce``) by
telling noised reference images (label 1) from noised biased images (label 0) in balanced batches, so
``w_t = d / (1 - d)``; ``weighted`` and ``gradient`` learn it from the biased images (see that module). It is
exported as ``discriminator.safetensors`` (kind ``discriminator``) in the run folder. For a class-conditional score
model it learns ``w_t(x | y)`` and each row's correction is read given that row's label (``--disc-condition``).

Stage 2: the UNet trains on the union of D_bias and D_ref (indices drawn uniformly from both). Biased images get the
TIW-DSM loss (weight ``w_t(x)``, denoiser target ``x0 + sigma^2 grad log w_t(x)``); reference images get the plain
loss (``w = 1``, no correction), which is already score matching on ``p_ref``. The DSM weighting is the DDPM loss of
``training dsm`` (v- or eps-prediction), so ``--loss-mode none`` reproduces it. ``--loss-mode`` also gives the
ablations ``weight`` and ``correction`` and ``iw``: time-independent importance weights ``w(x0)`` (the
discriminator at sigma_min on clean images), no correction.

``--bias-sampling ratio`` draws the biased rows in proportion to ``w0(x0)^rho(sigma)`` and divides their weight by it
(``training/tiw_proposal.py``): the same expected loss, so the same minimiser, without the few heavy rows of a
uniform draw (at 90:10, ``w0`` is 5 on the minority and 0.56 on the majority).

``--reference-share A`` draws each row from D_ref with probability ``A`` instead of the union's ``N_ref / N_all``, so
the loss is ``A L_ref + (1 - A) L_bias``. Both terms are minimised by the score of ``p_ref`` (plain DSM on D_ref;
Theorem 1 on D_bias, or importance sampling for ``iw``), so any ``A`` in (0, 1) keeps the minimiser and only moves how
much of each batch is the small exact set (``tests/test_density_ratio.py`` checks the minimiser on the 1-D mixture).
The ablations ``weight`` and ``correction``, and ``none``, are refused with it: their biased term has another minimiser.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math

import torch

from fair_core.density_ratio import DISC_FILMS, DISC_OBJECTIVES, DISC_POOLS, DiscriminatorConfig, log_ratio, log_ratio_and_grad, tiw_dsm_loss
from fair_core.denoiser import DiscreteVPDenoiser, drop_labels
from fair_core.errors import DataError, FairSamplingError, check_range
from fair_core.models import CONDITIONS

from . import cli
from .data import load as load_data
from .dsm import export, new_model, training_record
from .discriminator import (DISC_CONDITIONS, DISC_SCHEDULES, DISC_WIDTHS, GRAD_WEIGHT, check_baseline_file,
                            check_discriminator_classes, check_discriminator_file, disc_classes, get_discriminator)
from .runs import Loop, adam_ema_resume, pick_device, step_generator
from .tiw_proposal import BIAS_SAMPLINGS, build_proposal

log = logging.getLogger(__name__)

LOSS_MODES = ("tiw", "weight", "correction", "iw", "none")
WEIGHTED_MODES = ("tiw", "weight", "iw")  # the loss modes whose biased rows carry a weight (--bias-sampling ratio)
SHARE_MODES = ("tiw", "iw")  # the loss modes minimised by the reference score on D_bias alone (--reference-share)
W0_SIGMA_MAX = 10.0  # --disc-w0-sigma: w0 must be read where the attribute is still plain (Colored-MNIST: sigma <= ~1)


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
    g.add_argument("--disc-condition", default="model", choices=list(DISC_CONDITIONS),
                   help="model: a class-conditional score model gets a discriminator conditional on the same label, "
                        "w_t(x | y), whose correction is the one its TIW-DSM target needs; none: the marginal w_t(x) "
                        "(too weak a correction for a conditional model, see fair_core.density_ratio)")
    g.add_argument("--disc-model", default="small", choices=list(DISC_WIDTHS),
                   help="discriminator CNN widths: tiny, small (3 levels, to a 7x7 map), medium (small, twice as wide), "
                        "deep (5 levels, to a 2x2 map: a receptive field of 33 pixels)")
    g.add_argument("--disc-pool", default="mean", choices=list(DISC_POOLS),
                   help="discriminator head: global average of the last map (translation invariant) or the whole map (dense, "
                        "position-aware, as the official code's attention-pooled classifier)")
    g.add_argument("--disc-film", default="shift", choices=list(DISC_FILMS),
                   help="how the noise level enters each discriminator layer: shift (an added bias) or scale_shift (also "
                        "a gain, so the ratio's steepness in x can follow sigma)")
    g.add_argument("--disc-objective", default="bce", choices=list(DISC_OBJECTIVES),
                   help="bce: reference vs biased images (paper); weighted: biased images alone, weighted by the clean ratio "
                        "w0(x0) of a bce teacher, so w_t = E_bias[w0 | x_t] is learned from the large set; gradient: weighted, "
                        "then fine-tuned so that its correction sigma^2 grad log w_t also fits (needs --disc-baseline)")
    g.add_argument("--disc-teacher", default=None, metavar="PATH",
                   help="with --disc-objective weighted or gradient: the 'discriminator' checkpoint that gives w0 "
                        "(default: train a bce one first)")
    g.add_argument("--disc-w0-sigma", type=float, default=None, metavar="S",
                   help="weighted / gradient: read the teacher's w0 at noise level S (mean of 2 noise draws) instead of on "
                        "the clean image at sigma_min, where a teacher that memorised D_ref is over-confident")
    g.add_argument("--disc-baseline", default=None, metavar="PATH",
                   help="gradient: a diffusion model of D_bias (e.g. the --init model or a DSM run on D_bias); its denoiser "
                        "is the control variate of the correction's regression")
    g.add_argument("--disc-grad-weight", type=float, default=None, help=f"gradient: weight of the correction's regression "
                   f"(default {GRAD_WEIGHT})")
    g.add_argument("--disc-steps", type=int, default=2000, help="discriminator optimisation steps")
    g.add_argument("--disc-lr", type=float, default=1e-3, help="discriminator Adam learning rate")
    g.add_argument("--disc-schedule", default="constant", choices=DISC_SCHEDULES,
                   help="discriminator learning rate: constant, or cosine decay to 0 over --disc-steps (a finer fit at the end)")
    g.add_argument("--disc-batch", type=int, default=None,
                   help="discriminator batch, half reference and half biased (default: --batch); the ratio at high noise "
                        "is close to 1 and its gradient needs many samples")
    g.add_argument("--clip", type=float, default=1e-5, help="d is clipped to [clip, 1 - clip] (official code: 1e-5)")
    g.add_argument("--correction-sigma-min", type=float, default=0.0, metavar="S",
                   help="apply the score correction only where sigma >= S (the weight stays): below the noise level at "
                        "which the attribute is plainly decided the exact correction is ~0, and a learned one is only error "
                        "(0: everywhere, the paper's loss)")
    p.add_argument("--bias-sampling", default="uniform", choices=list(BIAS_SAMPLINGS),
                   help="uniform: biased rows drawn uniformly, each loss weighted by w_t (paper); ratio: drawn in proportion "
                        "to w0(x0)^rho(sigma) and the weight divided by it, the same expected loss with less variance "
                        "(training/tiw_proposal.py)")
    p.add_argument("--reference-share", default="union", metavar="union|A",
                   help="union: each row drawn uniformly from D_bias + D_ref (paper), so N_ref / N_all of a batch is "
                        "reference; A in (0, 1): that share instead, the same minimiser (loss modes tiw and iw; see the "
                        "module docstring)")
    cli.add_data(p, colour_ratio=0.9)
    p.set_defaults(reference_fraction=0.05)
    cli.add_common(p, steps=6000, batch=64, lr=3e-4)
    p.set_defaults(func=main)


def reference_share(value) -> str | float:
    """``--reference-share``: ``"union"`` or a float in (0, 1); anything else is refused, naming both."""
    if value == "union":
        return value
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = math.nan
    if not 0.0 < share < 1.0:
        raise FairSamplingError(f"--reference-share must be 'union' or a number in (0, 1), got {value!r}")
    return share


def check_options(opts: dict) -> None:
    if reference_share(opts.get("reference_share", "union")) != "union" and opts["loss_mode"] not in SHARE_MODES:
        raise FairSamplingError(f"--reference-share keeps the minimiser only where the biased rows' loss is itself score "
                                f"matching on p_ref; give it with --loss-mode {' / '.join(SHARE_MODES)}, not "
                                f"{opts['loss_mode']!r}, or drop it")
    check_range("--reference-fraction", opts["reference_fraction"], 0.0, 1.0, low_open=True, high_open=True)
    if opts["part"] != "biased":
        raise FairSamplingError(f"--part must be 'biased' for tiw (it loads both parts itself), got {opts['part']!r}")
    check_range("--disc-steps", opts["disc_steps"], 1, integer=True)
    check_range("--disc-lr", opts["disc_lr"], 0.0, low_open=True)
    check_range("--correction-sigma-min", opts.get("correction_sigma_min", 0.0), 0.0)
    if opts.get("correction_sigma_min", 0.0) > 0 and opts["loss_mode"] not in ("tiw", "correction"):
        raise FairSamplingError(f"--correction-sigma-min limits the score correction, which --loss-mode {opts['loss_mode']!r} "
                                "does not use; give it with --loss-mode tiw or correction, or drop it")
    if opts.get("bias_sampling", "uniform") != "uniform" and opts["loss_mode"] not in WEIGHTED_MODES:
        raise FairSamplingError(f"--bias-sampling {opts['bias_sampling']} draws the biased rows in proportion to their weight, "
                                f"which --loss-mode {opts['loss_mode']!r} does not use; give it with --loss-mode "
                                f"{' / '.join(WEIGHTED_MODES)}, or drop it")
    if opts.get("disc_batch") is not None:
        check_range("--disc-batch", opts["disc_batch"], 2, integer=True)
    if opts["discriminator"] is None:
        DiscriminatorConfig(clip=opts["clip"])  # raises on a bad --clip before any work
    else:  # a wrong file fails here, before a run folder is made
        cfg = check_discriminator_file("--discriminator", opts["discriminator"], opts)
        check_discriminator_classes("--discriminator", opts["discriminator"], cfg, disc_classes(opts), opts)
    if opts["discriminator"] is not None and opts.get("disc_objective", "bce") != "bce":
        raise FairSamplingError(f"--disc-objective {opts['disc_objective']} trains a discriminator, but --discriminator PATH means "
                                "none is trained; drop one of them (a discriminator made earlier is given with --discriminator alone)")
    check_weighted_options(opts)


def check_weighted_options(opts: dict) -> None:
    """The options of the ``weighted`` and ``gradient`` objectives: each refused with the others, files checked early."""
    objective = opts.get("disc_objective", "bce")
    for option, key, allowed in (("--disc-teacher", "disc_teacher", ("weighted", "gradient")),
                                 ("--disc-w0-sigma", "disc_w0_sigma", ("weighted", "gradient")),
                                 ("--disc-baseline", "disc_baseline", ("gradient",)),
                                 ("--disc-grad-weight", "disc_grad_weight", ("gradient",))):
        if opts.get(key) is not None and objective not in allowed:
            raise FairSamplingError(f"{option} is for --disc-objective {' or '.join(allowed)}, got --disc-objective {objective!r}")
    if opts.get("disc_teacher") is not None:
        teacher = check_discriminator_file("--disc-teacher", opts["disc_teacher"], opts)
        if teacher.num_classes not in (0, CONDITIONS[opts["condition"]]):
            raise FairSamplingError(f"--disc-teacher {str(opts['disc_teacher'])!r} is conditional on {teacher.num_classes} classes; "
                                    f"--condition {opts['condition']!r} has {CONDITIONS[opts['condition']]} (or give a marginal one)")
    if opts.get("disc_w0_sigma") is not None:
        check_range("--disc-w0-sigma", opts["disc_w0_sigma"], 0.0, W0_SIGMA_MAX, low_open=True)
    if objective == "gradient":
        if opts.get("disc_baseline") is None:
            raise FairSamplingError("--disc-objective gradient needs --disc-baseline PATH, a diffusion model of D_bias "
                                    "(e.g. the --init model, or a 'training dsm' run on the biased data)")
        if opts.get("disc_grad_weight") is not None:
            check_range("--disc-grad-weight", opts["disc_grad_weight"], 0.0, low_open=True)
        check_baseline_file(opts["disc_baseline"], opts)


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
    proposal = None
    if opts.get("bias_sampling", "uniform") == "ratio":
        proposal = build_proposal(disc, bias, model.sigmas, device, cfg.condition if cfg.conditional else None, opts["seed"],
                                  weight="time_independent" if opts["loss_mode"] == "iw" else "time_dependent")
    opt, ema, start = adam_ema_resume(model, opts, run_dir, device)
    share = reference_share(opts.get("reference_share", "union"))

    def step_fn(step: int) -> dict[str, float]:
        g = step_generator(opts["seed"], step, "cpu")
        x0, labels, is_bias, t, log_factor = draw_batch(opts["batch"], bias, ref, cfg, proposal, model, g, share)
        for group in opt.param_groups:
            group["lr"] = opts["lr"] * min(1.0, (step + 1) / max(opts["warmup"], 1))
        per_sample, log_w = tiw_loss(model, disc, opts["loss_mode"], x0.to(device), None if labels is None else labels.to(device),
                                     is_bias.to(device), g, opts.get("correction_sigma_min", 0.0), t)
        log_factor = log_factor.to(device)
        log_w = log_w + log_factor  # the weight each biased row carries, after the proposal's factor
        loss = (per_sample * log_factor.exp()).mean()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr or raise --clip")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return {"loss": loss.item(), "mean_w_bias": float(log_w[is_bias.to(device)].exp().mean()) if is_bias.any() else 1.0}

    loop = Loop(run_dir, model, opt, ema, steps=opts["steps"], save_every=opts["save_every"], time_limit_min=opts["time_limit"])
    step = loop.run(step_fn, start, desc="tiw")
    training = training_record(opts, run_dir, step) | {
        "method": "TIW-DSM (Kim et al. 2024, arXiv 2403.01189)", "loss_mode": opts["loss_mode"],
        "reference_fraction": opts["reference_fraction"], "bias": {"attribute": "colour", "colour_ratio": opts["colour_ratio"]},
        "n_bias": len(bias), "n_reference": len(ref), "discriminator": disc_facts,
    } | ({"correction_sigma_min": opts["correction_sigma_min"]} if opts.get("correction_sigma_min") else {}) \
      | ({"bias_sampling": proposal.record()} if proposal is not None else {}) \
      | ({"reference_share": share} if share != "union" else {})
    export(run_dir, ema.model, "tiw", cfg, training, opts["export"])


def draw_batch(batch: int, bias, ref, cfg, proposal, model: DiscreteVPDenoiser, g: torch.Generator,
               share: str | float = "union"):
    """One batch from D_bias and D_ref (CPU): ``(x0, labels, is_bias, t, log_factor)``.

    Each row is a reference row with probability ``share`` (``"union"``: ``N_ref / N_all``, uniform over the union).
    Without a proposal the biased images are uniform, ``t`` is ``None`` (``tiw_loss`` draws it) and every
    ``log_factor`` is 0. With one, the timestep is drawn first and a biased row's image comes from the proposal at that
    timestep, whose ``log_factor`` it carries."""
    n_bias, n_all = len(bias), len(bias) + len(ref)
    t, log_factor = None, torch.zeros(batch)
    if proposal is None and share == "union":  # one index over the union (the draws of every run before the options)
        idx = torch.randint(n_all, (batch,), generator=g)
        is_ref = idx >= n_bias
        i_bias, i_ref = idx[~is_ref], idx[is_ref] - n_bias
    else:
        is_ref = torch.rand(batch, generator=g) >= (n_bias / n_all if share == "union" else 1.0 - share)
        if proposal is None:
            i_bias = torch.randint(n_bias, (int((~is_ref).sum()),), generator=g)
        else:
            t = draw_t(model, batch, g)
            i_bias = proposal.draw(t[~is_ref], g)
            log_factor[~is_ref] = proposal.log_factor(i_bias, t[~is_ref])
        i_ref = torch.randint(len(ref), (int(is_ref.sum()),), generator=g)
    x0 = torch.empty(batch, bias.channels, 28, 28)
    x0[~is_ref], x0[is_ref] = bias.images(i_bias), ref.images(i_ref)
    labels = None
    if cfg.conditional:
        labels = torch.empty(batch, dtype=torch.long)
        labels[~is_ref], labels[is_ref] = bias.labels(cfg.condition, i_bias), ref.labels(cfg.condition, i_ref)
        labels = drop_labels(labels, cfg.class_dropout, g)
    return x0, labels, ~is_ref, t, log_factor


def tiw_loss(model: DiscreteVPDenoiser, disc, loss_mode: str, x0, labels, is_bias, g: torch.Generator,
             correction_sigma_min: float = 0.0, t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample TIW-DSM loss of one batch (``is_bias``: rows from D_bias) and the ``log w`` used; noise from ``g`` (CPU).
    ``correction_sigma_min``: no correction on rows whose sigma is below it (``--correction-sigma-min``). ``t``: the
    rows' timesteps (default: drawn here from ``g``).

    The weighting ``lambda(sigma)`` makes it the DDPM loss of ``training dsm``: (sigma^2 + 1) / sigma^2 for v-prediction
    (``|| v - v_target ||^2 = || D - D_target ||^2 (sigma^2 + 1) / sigma^2``), 1 / sigma^2 for eps-prediction.
    """
    sigma = model.sigmas[(draw_t(model, x0.shape[0], g) if t is None else t).to(x0.device)]
    x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g).to(x0.device)
    log_w, grad = tiw_terms(disc, loss_mode, x0, x, sigma, is_bias, model.sigma_min, labels)
    if correction_sigma_min > 0:
        grad = grad * (sigma >= correction_sigma_min).view(-1, *([1] * (grad.ndim - 1))).to(grad.dtype)
    lam = (sigma**2 + 1) / sigma**2 if model.cfg.prediction_type == "v_prediction" else sigma**-2
    mode = {"iw": "weight"}.get(loss_mode, loss_mode)
    return tiw_dsm_loss(model(x, sigma, class_labels=labels), x0, sigma, log_w, grad, mode=mode, lambda_sigma=lam), log_w


def tiw_terms(disc, loss_mode: str, x0, x, sigma, is_bias, sigma_min: float,
              labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log w, grad_x log w)`` per sample: from the discriminator on the biased rows (one batched call), 0 elsewhere.
    ``labels``: the score model's labels of the batch (-1 where dropped), for a class-conditional discriminator."""
    log_w, grad = torch.zeros(x.shape[0], device=x.device), torch.zeros_like(x)
    if loss_mode == "none" or not bool(is_bias.any()):
        return log_w, grad
    y = None if labels is None else labels[is_bias]  # an unconditional discriminator does not read them
    if loss_mode == "iw":  # time-independent: the ratio of the clean image, no correction
        with torch.no_grad():
            log_w[is_bias] = log_ratio(disc, x0[is_bias], torch.full((int(is_bias.sum()),), sigma_min, device=x.device), y)
        return log_w, grad
    log_w[is_bias], grad[is_bias] = log_ratio_and_grad(disc, x[is_bias], sigma[is_bias], y)
    return log_w, grad
