"""``python -m training adp``: an Attribute Distribution Predictor (h-space heads) for a given diffusion checkpoint.

Data (``--source``):

* ``generated`` (default): ``--n-samples`` images sampled from the base model (uniform class labels) with h recorded
  at every step; each image's attributes are labelled by the evaluation classifier (``--classifier``).
* ``inversion``: real labelled Colored-MNIST test images (``--colour-ratio`` red), mapped to noise by deterministic
  DDIM (probability-flow ODE) inversion along the same schedule, recording h on the way up.

The recorded trajectories are cached in the run folder (``trajectories.safetensors``), so ``--resume`` does not
sample again. All heads (one per attribute and step) are trained jointly with cross-entropy; the last
``--holdout`` fraction of the samples is held out and the per-step held-out accuracy is logged and recorded in
the export's metadata, together with the base model (name, config and weights hashes), its h shape and the steps.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from fair_core import adp as adp_lib
from fair_core import checkpoints, evaluation, features
from fair_core.errors import FairSamplingError

from . import cli
from .dsm import export
from .runs import EMA, Loop, load_state, pick_device, step_generator

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("adp", help="train an attribute distribution predictor (h-space heads) for distribution guidance",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base", default="colored_mnist_dsm", help="diffusion checkpoint (path or shipped name) the ADP reads h from")
    p.add_argument("--classifier", default="eval_classifier", help="classifier (path or shipped name) labelling generated samples")
    p.add_argument("--attributes", default="colour", help="comma-separated classifier heads to predict, e.g. colour or colour,digit")
    p.add_argument("--source", default="generated", choices=["generated", "inversion"], help="where the trajectories come from")
    p.add_argument("--n-samples", type=int, default=1024, help="trajectories recorded (generated images or inverted real ones)")
    p.add_argument("--sample-steps", type=int, default=20, help="sampling steps = ADP step buckets")
    p.add_argument("--sampler", default="dpmpp_2m", choices=["euler", "ddim", "dpmpp_2m"], help="sampler of the generated trajectories")
    p.add_argument("--schedule", default="karras", choices=["karras", "uniform"], help="noise schedule of the trajectories")
    p.add_argument("--labels", default="uniform", choices=["uniform", "none"],
                   help="class labels of generated samples: every class equally often, or none (the null label: unconditional)")
    p.add_argument("--colour-ratio", type=float, default=0.5, help="fraction of red real images (source inversion)")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of trajectories held out for accuracy")
    p.add_argument("--ema", type=float, default=0.95, help="EMA decay of the exported heads")
    p.add_argument("--export-dtype", default="fp32", choices=["fp32", "fp16"],
                   help="precision of the exported heads (fp16 halves the file; loading casts back to float32)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay of the linear heads")
    cli.add_common(p, steps=400, batch=256, lr=1e-3)
    p.set_defaults(func=main)


@torch.no_grad()
def invert_trajectories(model, images: torch.Tensor, steps: int, schedule: str, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Deterministic DDIM inversion: Euler steps of the probability-flow ODE from sigma_min up the schedule.

    At each schedule level sigma_i (from the smallest) h of ``D(x, sigma_i)`` is recorded, then
    ``x <- x + (x - D(x, sigma_i)) / sigma_i * (sigma_{i-1} - sigma_i)``. Returns the layout of
    :func:`fair_core.adp.record_trajectories` (steps in sampling order: t descending).
    """
    from fair_core import hspace
    from fair_core.sampling import get_sigmas

    sigmas = get_sigmas(model, steps, schedule)[:-1].flip(0)  # ascending
    hs = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].float()  # at sigma_min (~0.03) x is the image itself
        seen_all = []
        for i, sigma in enumerate(sigmas):
            with hspace.captured(model.unet) as seen:
                denoised = model(x, sigma.expand(x.shape[0]))
            seen_all.append(seen[0].to("cpu", torch.float16))
            if i + 1 < len(sigmas):
                x = x + (x - denoised) / sigma * (sigmas[i + 1] - sigma)
        hs.append(torch.stack(seen_all[::-1]))
    t = model.sigma_to_t(sigmas.flip(0)).cpu()
    return {"h": torch.cat(hs, 1), "t": t, "images": images}


def labels_for(model, opts: dict):
    """Class labels of the generated trajectories: cycled over every class, or None (unconditional)."""
    return evaluation.uniform_labels(model, opts["n_samples"]) if opts["labels"] == "uniform" else None


def collect(opts: dict, model, classifier, attributes: list[str]) -> dict[str, torch.Tensor]:
    if opts["source"] == "generated":
        rec = adp_lib.record_trajectories(model, opts["n_samples"], opts["sample_steps"], opts["sampler"], opts["schedule"],
                                          labels_for(model, opts), seed=opts["seed"], batch_size=128, disable=True)
        probs = features.classify(classifier, rec["images"])
        labels = {a: torch.from_numpy(probs[a].argmax(1)) for a in attributes}
    else:
        from .data import DataConfig, load

        data = load(DataConfig(dataset="colored-mnist", split="test", colour_ratio=opts["colour_ratio"], seed=opts["seed"]))
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(opts["seed"]))[: opts["n_samples"]]
        rec = invert_trajectories(model, data.images(idx), opts["sample_steps"], opts["schedule"])
        truth = {"colour": data.colours[idx], "digit": data.digits[idx]}
        labels = {a: truth[a] for a in attributes}
    return {"h": rec["h"], "t": rec["t"], **{f"label.{a}": v.long() for a, v in labels.items()}}


def main(args: argparse.Namespace) -> None:
    opts = cli.resolve(args, "adp")
    attributes = [a.strip() for a in opts["attributes"].split(",") if a.strip()]
    base_path = evaluation.resolve_checkpoint(opts["base"])
    clf_path = evaluation.resolve_checkpoint(opts["classifier"])
    heads = checkpoints.read_metadata(clf_path)["config"].get("heads", {})
    unknown = [a for a in attributes if a not in heads]
    if unknown or not attributes:
        raise FairSamplingError(f"--attributes must be heads of the classifier {list(heads)}, got {unknown or attributes}")
    run_dir = cli.start_run(args, "adp", opts, f"adp-{Path(base_path).stem}")
    if run_dir is None:
        return
    device = pick_device(opts["device"])
    base = checkpoints.load(base_path, kind=checkpoints.DIFFUSION_KINDS, device=device).model
    classifier = checkpoints.load(clf_path, kind="classifier", device=device).model
    cache = run_dir / "trajectories.safetensors"
    if cache.exists():
        from safetensors.torch import load_file

        data = load_file(str(cache))
    else:
        from safetensors.torch import save_file

        data = collect(opts, base, classifier, attributes)
        checkpoints.atomic_write(cache, lambda tmp: save_file({k: v.contiguous() for k, v in data.items()}, tmp))
    h, t = data["h"], data["t"]
    labels = {a: data[f"label.{a}"] for a in attributes}
    n = h.shape[1]
    n_train = n - max(1, int(round(opts["holdout"] * n)))
    names = {a: evaluation.CLASS_NAMES.get(a, [str(i) for i in range(classifier.cfg.heads[a])]) for a in attributes}
    cfg = adp_lib.ADPConfig(h_shape=tuple(h.shape[2:]), timesteps=tuple(round(float(v), 4) for v in t), attributes=names,
                            base_model=adp_lib.base_fingerprint(base, Path(base_path).name))
    log.info("%d trajectories x %d steps, h %s; train %d / held out %d; label counts %s", n, h.shape[0], tuple(h.shape[2:]), n_train,
             n - n_train, {a: torch.bincount(y, minlength=len(names[a])).tolist() for a, y in labels.items()})
    torch.manual_seed(opts["seed"])
    adp = adp_lib.ADP(cfg).to(device)
    opt = torch.optim.AdamW(adp.parameters(), lr=opts["lr"], weight_decay=opts["weight_decay"])
    ema = EMA(adp, opts["ema"])
    start = 0
    if (run_dir / "state.safetensors").exists():
        start, _ = load_state(run_dir / "state.safetensors", adp, ema, opt, device)

    def step_fn(step: int) -> dict[str, float]:
        idx = torch.randint(n_train, (opts["batch"],), generator=step_generator(opts["seed"], step, "cpu"))
        loss = adp_lib.head_loss(adp, h, labels, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    step = Loop(run_dir, adp, opt, ema, steps=opts["steps"], save_every=opts["save_every"], log_every=25,
                time_limit_min=opts["time_limit"]).run(step_fn, start, "adp")
    held = {a: y[n_train:] for a, y in labels.items()}
    acc = adp_lib.per_step_accuracy(ema.model, h[:, n_train:], held)
    log.info("held-out accuracy per step (t %s): %s", [round(float(v)) for v in t], acc)
    training = {"command": cli.recorded_command_line(run_dir), "source": opts["source"], "n_samples": n, "holdout": n - n_train,
                "sampler": opts["sampler"], "schedule": opts["schedule"], "sample_steps": opts["sample_steps"], "steps": step,
                "seed": opts["seed"], "run": run_dir.name, "classifier": Path(clf_path).name, "heldout_accuracy": acc,
                "label_counts": {a: torch.bincount(y, minlength=len(names[a])).tolist() for a, y in labels.items()}}
    export(run_dir, ema.model.to(torch.float16 if opts["export_dtype"] == "fp16" else torch.float32), "adp", cfg, training, opts["export"])
