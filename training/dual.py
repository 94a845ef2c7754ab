"""``python -m training dual``: constrained diffusion via dual training (Khalafi, Ding, Ribeiro, NeurIPS 2024).

minimise L(theta; q_data) subject to L(theta; q_i) <= b_i for constraint sets q_i (by default one per minority digit),
by primal steps on the Lagrangian and projected dual ascent on lambda (``fair_core.constrained``).

Each primal step draws ``--batch`` images of the (biased) training data and ``--dual-batch`` images of every
constraint set, evaluates all of them in one forward pass, and steps on
``L(theta, lambda) = mean l(data) + sum_i lambda_i (mean l(q_i) - b_i)``. The constraint losses it computes anyway
are accumulated (``ConstraintTracker``); every ``--dual-every`` primal steps their mean drives
``lambda_i <- max(0, lambda_i + eta (L_i - b_i - u_i))`` (``u_i = lambda_i / alpha`` with ``--relaxation resilient``).
So a dual step costs no extra forward pass, and one primal step costs ``(batch + m * dual_batch) / batch`` of a DSM
step (1.375x with the defaults: 64 + 3 x 8).

``--slack-estimate paired`` feeds the dual step ``l_theta - l_ref + L(ref; q_i)`` instead of the plain batch means, with
a frozen reference run on the same constraint images, timesteps and noise (``fair_core.constrained.paired_estimate``):
the same expectation, a sixth of the noise, one extra no-grad forward of the constraint images per step
(``--paired-every k``: on every k-th step only, and the dual step averages those; 1/k of the cost).

Constraint sets (``--constraints``): each is '+'-joined digits and/or colours, e.g. ``4`` (the digit 4), ``4+5``,
``green`` (every green Colored-MNIST image), ``7+green`` (green sevens): any listed digit, and any listed colour.
Where they come from (``--constraint-source``): ``biased`` = those images inside the training data itself (no extra
data; for a minority digit these are the few kept images); ``val`` = those images of the MNIST validation split
(held out from training).

Bounds (``--bounds``): explicit numbers, one per set, or ``auto``: ``b_i = (1 + margin) L(theta_ref; q_i)`` with the
reference checkpoint ``--bound-reference``. The loss is relative to the unknown entropy of ``q_i``, so a bound in
absolute units means little: the reference supplies the scale (see ``fair_core.constrained``). The usual reference
is the unconstrained DSM model on the same data, with a negative margin (default -0.05: 5 % less loss on each
minority digit than the unconstrained model has); a specialist trained on ``q_i`` alone needs a positive margin.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from pathlib import Path

import torch

from fair_core import constrained as C
from fair_core.errors import FairSamplingError, check_choice, check_range
from fair_core.models import CONDITIONS

from . import cli
from .data import COLOURS, NUM_DIGITS, ImageSet
from .data import load as load_data
from .dual_bounds import (load_reference, parse_bounds, parse_margins, reference_losses, resolve_bounds, set_loss,
                          stratified_timesteps)
from .dsm import export, new_model, training_record
from .runs import EMA, Loop, load_state, pick_device, step_generator

log = logging.getLogger(__name__)
SOURCES = ("biased", "val")
RELAXATIONS = ("none", "resilient")
CONSTRAINT_TIMESTEPS = ("uniform", "stratified")
SLACK_ESTIMATES = ("plain", "paired")


def add_parser(sub) -> None:
    p = sub.add_parser("dual", help="train a diffusion model by constrained dual training (Khalafi et al. 2024)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="mnist-s", choices=["tiny", "mnist-s", "mnist-m"], help="named UNet config")
    p.add_argument("--condition", default="none", choices=list(CONDITIONS),
                   help="what the class label means; 'none' (unconditional) is the paper's fair-generation setting")
    p.add_argument("--prediction", default="v_prediction", choices=["epsilon", "v_prediction"], help="network target")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights")
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps (primal)")
    g = p.add_argument_group("constraints")
    g.add_argument("--constraints", default="minority",
                   help="constraint sets: 'minority' (one per --minority-classes digit) or comma-separated sets of "
                        "'+'-joined digits and/or colours, e.g. '4,5,7' (three sets), '4+5,7' (two), 'green' (colored-mnist)")
    g.add_argument("--constraint-source", default="biased", choices=SOURCES,
                   help="where the constraint images come from: the training data itself, or the MNIST validation split")
    g.add_argument("--dual-batch", type=int, default=8, help="images of each constraint set per primal step")
    g.add_argument("--dual-lr", type=float, default=5.0, help="dual learning rate eta of lambda_i += eta (L_i - b_i - u_i)")
    g.add_argument("--dual-every", type=int, default=10, help="primal steps per dual step (the dual step uses their mean losses)")
    g.add_argument("--dual-start", type=int, default=0,
                   help="primal steps before the first dual step (lambda stays 0): bounds set by a trained reference are far "
                        "below an untrained model's loss, and lambda would climb for as long as that lasts")
    cli.add_init(g, "e.g. the unconstrained model, for dual training as constrained fine-tuning")
    g.add_argument("--bounds", default="auto", help="'auto' (needs --bound-reference) or comma-separated b_i, one per set")
    g.add_argument("--bound-reference", default=None, help="checkpoint whose loss on each set sets the auto bounds")
    g.add_argument("--bound-margin", default="-0.05",
                   help="auto bound b_i = (1 + margin_i) L(ref; q_i): one margin for every set, or comma-separated, one per "
                        "set; < 0 for an unconstrained reference, > 0 for a specialist")
    g.add_argument("--bound-eval", type=int, default=2048,
                   help="images per set (cycled; fixed, stratified timesteps and noise) to measure reference and final losses: "
                        "the estimate moves by about 1 %% with the seed at 512, 0.3 %% at 2048 (bench_dual_mnist.py bound-check)")
    g.add_argument("--constraint-timesteps", default="uniform", choices=CONSTRAINT_TIMESTEPS,
                   help="timesteps of each set's --dual-batch images per step: uniform draws, or stratified (one in each "
                        "n-th of [0, T)), which lowers the noise of the slack estimates that drive lambda")
    g.add_argument("--slack-estimate", default="plain", choices=SLACK_ESTIMATES,
                   help="estimate of L(theta; q_i) fed to the dual step: plain batch means, or paired with a frozen reference "
                        "model on the same images, timesteps and noise (l_theta - l_ref + L_ref, a control variate: ~6x less "
                        "noise on grey MNIST, for one extra no-grad forward of the constraint images)")
    g.add_argument("--paired-every", type=int, default=1,
                   help="run the frozen reference of --slack-estimate paired on every k-th primal step only (k divides "
                        "--dual-every); the dual step then averages those k-th steps' estimates: 1/k of the extra cost")
    g.add_argument("--slack-reference", default=None,
                   help="the frozen model of --slack-estimate paired (same image size and condition); default: "
                        "--bound-reference, else --init")
    g.add_argument("--relaxation", default="none", choices=RELAXATIONS, help="resilient: relax b_i by u_i = lambda_i / alpha")
    g.add_argument("--alpha", type=float, default=10.0, help="cost (alpha/2) u^2 of the resilient relaxation")
    cli.add_data(p, colour_ratio=0.5)
    p.set_defaults(data="mnist", minority_classes="4,5,7", minority_keep=0.1)
    cli.add_common(p, steps=6000, batch=64, lr=3e-4)
    p.set_defaults(func=main)


def parse_constraints(text: str, minority: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """'minority' -> one set per minority digit; '4+5,green' -> [((4, 5), ()), ((), (1,))] as (digits, colour indices)."""
    if text.strip() == "minority":
        if not minority:
            raise FairSamplingError("--constraints minority needs --minority-classes (e.g. 4,5,7), got none")
        return [((d,), ()) for d in minority]
    sets = []
    for part in text.split(","):
        items = [t.strip() for t in part.split("+")]
        colours = tuple(sorted({COLOURS.index(t) for t in items if t in COLOURS}))
        try:
            digits = tuple(sorted({int(t) for t in items if t not in COLOURS}))
        except ValueError:
            digits = (-1,)
        if not (digits or colours) or any(not 0 <= d < NUM_DIGITS for d in digits):
            raise FairSamplingError(f"--constraints must be 'minority' or comma-separated sets of '+'-joined digits 0-9 and/or "
                                    f"colours {list(COLOURS)}, like '4,5,7', '4+5,7' or 'green', got {text!r}")
        sets.append((digits, colours))
    return sets


def check_options(opts: dict) -> list[tuple[int, ...]]:
    sets = parse_constraints(opts["constraints"], cli.data_config(opts).minority_classes)
    check_choice("--constraint-source", opts["constraint_source"], SOURCES)
    check_choice("--relaxation", opts["relaxation"], RELAXATIONS)
    check_choice("--constraint-timesteps", opts.get("constraint_timesteps", "uniform"), CONSTRAINT_TIMESTEPS)
    check_choice("--slack-estimate", opts.get("slack_estimate", "plain"), SLACK_ESTIMATES)
    if opts.get("slack_estimate", "plain") == "paired" and not slack_reference(opts):
        raise FairSamplingError("--slack-estimate paired needs a frozen reference model: --slack-reference CHECKPOINT "
                                "(or --bound-reference, or --init), got none")
    check_range("--dual-batch", opts["dual_batch"], 1, integer=True)
    check_range("--dual-lr", opts["dual_lr"], 0.0, low_open=True)
    check_range("--dual-every", opts["dual_every"], 1, integer=True)
    check_range("--dual-start", opts["dual_start"], 0, integer=True)
    check_range("--paired-every", opts.get("paired_every", 1), 1, integer=True)
    if opts.get("paired_every", 1) != 1 and opts.get("slack_estimate", "plain") != "paired":
        raise FairSamplingError(f"--paired-every applies to --slack-estimate paired only, got {opts['paired_every']} with "
                                f"--slack-estimate {opts.get('slack_estimate', 'plain')}")
    if opts["dual_every"] % opts.get("paired_every", 1):
        raise FairSamplingError(f"--paired-every must divide --dual-every ({opts['dual_every']}) so that every dual step sees "
                                f"paired estimates, got {opts['paired_every']}")
    check_range("--bound-eval", opts["bound_eval"], 1, integer=True)
    parse_margins(opts["bound_margin"], len(sets))
    check_range("--alpha", opts["alpha"], 0.0, low_open=True)
    if parse_bounds(opts["bounds"], len(sets)) is None and not opts["bound_reference"]:
        raise FairSamplingError("--bounds auto needs --bound-reference CHECKPOINT (e.g. the unconstrained dsm model on the "
                                "same data); or give explicit --bounds, one per constraint set")
    return sets


def slack_reference(opts: dict) -> str | None:
    """The frozen model of ``--slack-estimate paired``: ``--slack-reference``, else ``--bound-reference``, else ``--init``."""
    return opts.get("slack_reference") or opts["bound_reference"] or opts["init"]


def set_name(spec) -> str:
    digits, colours = spec
    return "+".join(([f"digit{'+'.join(map(str, digits))}"] if digits else []) + [COLOURS[c] for c in colours])


def short_name(name: str) -> str:
    return name.replace("digit", "")


def constraint_sets(sets, source: str, data: ImageSet, data_cfg) -> list[ImageSet]:
    """The images of each set (any of its digits, any of its colours), from the training data or the validation split;
    empty sets are errors."""
    check_choice("--constraint-source", source, SOURCES)
    pool = data if source == "biased" else load_data(dataclasses.replace(
        data_cfg, split="val", part="biased", reference_fraction=0.0, minority_classes=(), minority_keep=1.0, long_tail=1.0))
    out = []
    for spec in sets:
        digits, colours = spec
        mask = torch.ones(len(pool), dtype=torch.bool)
        if digits:
            mask &= torch.isin(pool.digits, torch.tensor(digits))
        if colours:
            if pool.channels == 1:
                raise FairSamplingError(f"constraint set {set_name(spec)} selects a colour; grey --data mnist has none")
            mask &= torch.isin(pool.colours, torch.tensor(colours))
        if not mask.any():
            raise FairSamplingError(f"constraint set {set_name(spec)} is empty: no such image in the {source!r} source")
        sub = ImageSet(pool.gray[mask], pool.digits[mask], pool.colours[mask], pool.channels)
        if sub.images([0]).shape[1:] != data.images([0]).shape[1:]:
            raise FairSamplingError(f"constraint set {set_name(spec)} has images of shape {tuple(sub.images([0]).shape[1:])}, "
                                    f"the data {tuple(data.images([0]).shape[1:])}")
        out.append(sub)
    return out


def main(args: argparse.Namespace) -> None:
    opts = cli.resolve(args, "dual")
    sets = check_options(opts)
    data_cfg = cli.data_config(opts)
    run_dir = cli.start_run(args, "dual", opts, f"dual-{opts['data']}")
    if run_dir is None:
        return
    device = pick_device(opts["device"])
    data = load_data(data_cfg)
    cons = constraint_sets(sets, opts["constraint_source"], data, data_cfg)
    names = [set_name(s) for s in sets]
    cfg, model = new_model(opts, data.channels, run_dir, device)
    log.info("%s: %d parameters, %d training images, constraint sets %s", opts["model"], sum(p.numel() for p in model.parameters()),
             len(data), ", ".join(f"{n} ({len(c)} images)" for n, c in zip(names, cons)))
    opt = torch.optim.Adam(model.parameters(), lr=opts["lr"])
    ema = EMA(model, opts["ema"])
    alpha = opts["alpha"] if opts["relaxation"] == "resilient" else None
    state = {"lambdas": torch.zeros(len(sets)), "tracker": C.ConstraintTracker.new(len(sets))}
    start, extra, bound_ref_losses = 0, {}, None
    if (run_dir / "state.safetensors").exists():
        start, extra = load_state(run_dir / "state.safetensors", model, ema, opt, device)
        state["lambdas"], bounds = extra["lambdas"].float().cpu(), extra["bounds"].float().cpu()
        state["tracker"] = C.ConstraintTracker.from_state({k[len("tracker."):]: v for k, v in extra.items() if k.startswith("tracker.")})
        log.info("resumed at step %d with lambdas %s", start, state["lambdas"].tolist())
    else:
        bounds, bound_ref_losses = resolve_bounds(opts, cons, cfg.condition, device)
    log.info("bounds %s", dict(zip(names, bounds.tolist())))
    control = None
    if opts.get("slack_estimate", "plain") == "paired":
        path = slack_reference(opts)
        ref = load_reference(path, "--slack-reference", cons, cfg.condition, device).eval().requires_grad_(False)
        means = extra.get("slack_reference_means")  # a resumed run's; else measured once (the bounds' if the same model)
        if means is None:
            same = bound_ref_losses is not None and path == opts["bound_reference"]
            means = bound_ref_losses if same else reference_losses(ref, cons, cfg.condition, opts, device)
        log.info("paired slack estimate: reference losses %s", means.tolist())
        control = (ref, means.float().cpu())

    step_fn = make_step_fn(opts, model, opt, data, cons, names, cfg.condition, state, bounds, alpha, device, control)

    def extra_state() -> dict[str, torch.Tensor]:
        paired = {} if control is None else {"slack_reference_means": control[1]}
        return {"lambdas": state["lambdas"], "bounds": bounds, **paired,
                **{f"tracker.{k}": v for k, v in state["tracker"].state().items()}}

    loop = Loop(run_dir, model, opt, ema, steps=opts["steps"], save_every=opts["save_every"], time_limit_min=opts["time_limit"],
                extra_state=extra_state)
    step = loop.run(step_fn, start, desc="dual")
    record = final_record(ema.model, cons, names, sets, bounds, state["lambdas"], alpha, opts, cfg.condition, device)
    log.info("%s", C.constraint_report(record))
    export(run_dir, ema.model, "dual", cfg, training_record(opts, run_dir, step) | {"constraints": record}, opts["export"])


def make_step_fn(opts: dict, model, opt, data: ImageSet, cons: list[ImageSet], names: list[str], condition: str, state: dict,
                 bounds: torch.Tensor, alpha: float | None, device, control: tuple | None = None):
    """One primal step on the Lagrangian (data and constraint images in one forward pass) and, every ``dual_every``
    steps, the dual step. ``state`` holds ``lambdas`` and ``tracker`` and is updated in place. With no constraint
    sets this is exactly a DSM step (``bench/bench_dual.py`` times both through it).

    ``control``: ``(frozen reference, its (m,) set losses)`` for ``--slack-estimate paired``; the timesteps and noise
    are then drawn here exactly as the loss would draw them, so the primal step is unchanged."""

    def step_fn(step: int) -> dict[str, float]:
        g = step_generator(opts["seed"], step, "cpu")
        idx = torch.randint(len(data), (opts["batch"],), generator=g)
        cidx = [torch.randint(len(c), (opts["dual_batch"],), generator=g) for c in cons]
        x0 = torch.cat([data.images(idx)] + [c.images(i) for c, i in zip(cons, cidx)]).to(device)
        labels = [data.labels(condition, idx)] + [c.labels(condition, i) for c, i in zip(cons, cidx)]
        labels = None if labels[0] is None else torch.cat(labels).to(device)
        for group in opt.param_groups:
            group["lr"] = opts["lr"] * min(1.0, (step + 1) / max(opts["warmup"], 1))
        g_dev = step_generator(opts["seed"], step, device)
        t = None
        if opts.get("constraint_timesteps", "uniform") == "stratified":  # older options files have no such key
            steps = model.cfg.num_train_timesteps
            t = torch.cat([torch.randint(steps, (opts["batch"],), generator=g)]
                          + [stratified_timesteps(opts["dual_batch"], steps, g) for _ in cons]).to(device)
        noise = None
        if control is not None:  # the same draws, in the same order, as DiscreteVPDenoiser.loss makes them
            if t is None:
                t = torch.randint(0, model.cfg.num_train_timesteps, (len(x0),), device=device, generator=g_dev)
            noise = torch.randn(x0.shape, device=device, dtype=x0.dtype, generator=g_dev)
        per_sample = model.loss(x0, labels, t=t, noise=noise, generator=g_dev)
        loss_data = per_sample[: opts["batch"]].mean()
        losses = per_sample[opts["batch"]:].view(len(cons), opts["dual_batch"]).mean(1)
        tracked = losses
        paired_now = control is not None and (step + 1) % opts.get("paired_every", 1) == 0
        if paired_now:
            b = opts["batch"]
            with torch.no_grad():
                ref_losses = control[0].loss(x0[b:], None if labels is None else labels[b:], t=t[b:], noise=noise[b:],
                                             generator=g_dev).view(len(cons), opts["dual_batch"]).mean(1)
            tracked = C.paired_estimate(losses, ref_losses, control[1])
        lagrangian = C.lagrangian(loss_data, losses, state["lambdas"].to(losses), bounds.to(losses))
        if not math.isfinite(lagrangian.item()):
            raise FloatingPointError(f"Lagrangian became {lagrangian.item()} at step {step}; lower --lr or --dual-lr")
        opt.zero_grad(set_to_none=True)
        lagrangian.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if control is None or paired_now:
            state["tracker"].add(tracked)
        if (step + 1) % opts["dual_every"] == 0:
            mean_losses = state["tracker"].take_mean()
            if step + 1 > opts["dual_start"]:
                state["lambdas"] = C.dual_step(state["lambdas"], mean_losses, bounds, opts["dual_lr"], alpha)
        u = None if alpha is None else C.resilient_relaxation(state["lambdas"], alpha)
        slacks = C.slack(state["tracker"].running, bounds, u)
        return {"loss": loss_data.item(), **{f"lam_{short_name(n)}": v for n, v in zip(names, state["lambdas"].tolist())},
                **{f"slack_{short_name(n)}": v for n, v in zip(names, slacks.tolist())}}

    return step_fn


def final_record(model, cons, names, sets, bounds, lambdas, alpha, opts, condition, device) -> dict:
    """The ``constraints`` metadata of the export: sets, bounds, final lambdas, relaxation and slacks (EMA model, fixed noise)."""
    losses = torch.tensor([set_loss(model, c, condition, opts["bound_eval"], 54321 + i, device) for i, c in enumerate(cons)])
    u = torch.zeros_like(lambdas) if alpha is None else C.resilient_relaxation(lambdas, alpha)
    return {"names": names, "sets": [{"digits": list(d), "colours": [COLOURS[c] for c in c_]} for d, c_ in sets],
            "source": opts["constraint_source"], "sizes": [len(c) for c in cons],
            "bounds": bounds.tolist(), "bound_rule": "explicit" if opts["bounds"].strip() != "auto" else
            f"auto: (1 + {opts['bound_margin']}) * loss of {Path(opts['bound_reference']).name}",
            "lambdas": lambdas.tolist(), "mode": opts["relaxation"], "alpha": alpha, "relaxation": u.tolist(),
            "losses": losses.tolist(), "slacks": C.slack(losses, bounds, u).tolist(),
            "mixture_weights": C.mixture_weights(lambdas).tolist(),
            "dual": {"lr": opts["dual_lr"], "every": opts["dual_every"], "start": opts["dual_start"], "batch": opts["dual_batch"],
                     "init": opts["init"], "constraint_timesteps": opts.get("constraint_timesteps", "uniform"),
                     "slack_estimate": opts.get("slack_estimate", "plain"), "paired_every": opts.get("paired_every", 1),
                     "slack_reference": slack_reference(opts) if opts.get("slack_estimate") == "paired" else None}}
