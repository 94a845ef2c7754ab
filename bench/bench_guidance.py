"""Benchmark of distribution guidance in h-space (issue 7) on the shipped colour-biased model.

    python bench/bench_guidance.py --adp models/colored_mnist_adp.safetensors [--n 256] [--batches 16,64,256]
        [--attribute colour|digit] [--labels uniform|none] [--targets uniform 0.2,0.8] [--scale 300] [--end-percent 1]
        [--json bench/out/guidance.json] [--device cpu|cuda|cuda:N]

For each target and guidance batch size: colour proportions of ``--n`` images (uniform digit labels, seed 0) by the
evaluation classifier, FD and TV to the target, classifier-feature FD (quality; not FID) against the same figure
for unguided sampling of the same noise. Speed: guided vs unguided sampling of one batch (same model, steps,
batch), timed alternately in this run (median of ``--repeats``; on a GPU the queue is drained before each clock
reading). The models run on ``--device``; the images come back to the CPU, where the proportions and FDs are computed.
The ADP's per-step held-out accuracy is read from its checkpoint metadata (recorded by ``python -m training adp``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import describe_device, synchronize, write_json  # noqa: E402

from fair_core import checkpoints, evaluation, guidance  # noqa: E402
from fair_core.sampling import generate  # noqa: E402


def guided_model(model, adp, reference: str, scale: float, args) -> guidance.DistributionGuidedDenoiser:
    targets = guidance.targets_from(adp, {args.attribute: (reference, scale)})
    cfg = guidance.GuidanceConfig(targets, loss=args.loss, temperature=args.temperature, start_percent=0.0,
                                  end_percent=args.end_percent, head_selection="nearest")
    return guidance.DistributionGuidedDenoiser(model, adp, cfg)


def sample(model, n: int, batch: int, args) -> torch.Tensor:
    """``n`` images (on the CPU) sampled on ``args.device`` in batches of ``batch``."""
    labels = evaluation.uniform_labels(model, n) if args.labels == "uniform" else None
    labels = None if labels is None else labels.to(args.device)
    return generate(model, n, args.steps, class_labels=labels, seed=args.seed, batch_size=batch, device=args.device, disable=True)


def measure(clf, images, target, attribute) -> dict:
    rep = evaluation.attribute_report(clf, images, target, attribute)
    return {"proportions": rep["proportions"], "fd": rep["fd"], "tv": rep["tv"],
            "classifier_feature_fd": evaluation.quality_report(clf, images)["classifier_feature_fd"]}


def speed(model, guided, batch: int, args) -> dict:
    """Median seconds per batch, guided and unguided timed alternately after one warm-up each."""
    times = {"unguided": [], "guided": []}
    for m in (model, guided):
        sample(m, batch, batch, args)
    for _ in range(args.repeats):
        for name, m in (("unguided", model), ("guided", guided)):
            synchronize(args.device)
            t0 = time.perf_counter()
            sample(m, batch, batch, args)
            synchronize(args.device)
            times[name].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"batch": batch, "steps": args.steps, "unguided_s": round(med["unguided"], 3), "guided_s": round(med["guided"], 3),
            "ratio": round(med["guided"] / med["unguided"], 3), "repeats": args.repeats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adp", default=str(evaluation.MODELS_DIR / "colored_mnist_adp.safetensors"))
    p.add_argument("--n", type=int, default=256, help="images per configuration (at least the batch size)")
    p.add_argument("--batches", default="16,64,256", help="guidance batch sizes")
    p.add_argument("--attribute", default="colour", choices=["colour", "digit"], help="the guided (and measured) attribute")
    p.add_argument("--labels", default="uniform", choices=["uniform", "none"],
                   help="class labels: every digit equally often, or none (unconditional sampling with the null label)")
    p.add_argument("--targets", nargs="+", default=["uniform", "0.2,0.8"], help="reference distributions, e.g. red,green")
    p.add_argument("--scale", type=float, default=300.0)
    p.add_argument("--end-percent", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--loss", default="chi2", choices=list(guidance.LOSSES))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (0: skip the speed measurement)")
    p.add_argument("--speed-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)  # sample() and speed() pass args.device, the same device by name
    model = checkpoints.load(evaluation.MODELS_DIR / "colored_mnist_dsm.safetensors", kind="dsm", device=device).model
    clf = checkpoints.load(evaluation.MODELS_DIR / "eval_classifier.safetensors", kind="classifier", device=device).model
    adp_ckpt = checkpoints.load(args.adp, kind="adp", device=device)
    adp = adp_ckpt.model
    batches = [int(b) for b in args.batches.split(",")]
    report = {"device": describe_device(device), "torch": torch.__version__,
              "command": "python " + " ".join(sys.argv), "settings": {k: v for k, v in vars(args).items() if k != "json"},
              "adp": {"path": str(args.adp), "timesteps": [round(t) for t in adp.cfg.timesteps],
                      "heldout_accuracy": adp_ckpt.training.get("heldout_accuracy"), "holdout": adp_ckpt.training.get("holdout"),
                      "label_counts": adp_ckpt.training.get("label_counts")}}
    t0 = time.perf_counter()
    plain_images = sample(model, max(args.n, max(batches)), 64, args)
    report["unguided"] = {"n": plain_images.shape[0], **measure(clf, plain_images, evaluation.parse_target(None, args.attribute), args.attribute)}
    report["guided"] = []
    for ref in args.targets:
        target = torch.tensor(guidance.parse_reference(ref, adp.cfg.attributes[args.attribute])).numpy()
        for b in batches:
            n = max(args.n, b)
            images = sample(guided_model(model, adp, ref, args.scale, args), n, b, args)
            row = {"target": target.round(3).tolist(), "batch": b, "n": n, **measure(clf, images, target, args.attribute)}
            row["quality_ratio"] = round(row["classifier_feature_fd"] / report["unguided"]["classifier_feature_fd"], 3)
            report["guided"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.repeats:
        report["speed"] = speed(model, guided_model(model, adp, "uniform", args.scale, args), args.speed_batch, args)
    synchronize(device)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(report, args.json)


if __name__ == "__main__":
    main()
