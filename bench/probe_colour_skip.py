"""Where does the shipped colour-biased model decide colour? A probe for issue 7's negative colour result.

    python bench/probe_colour_skip.py [--n 512] [--scales 30,300,3000] [--threads 1] [--json bench/out/probe_colour_skip.json]

Samples ``--n`` digit-conditional trajectories (dpmpp_2m / karras, 20 steps) recording, at every step, the UNet's
h (middle-block output) and hsp (the deepest skip connection, concatenated with h by the first up block), labels
each final image's colour with the evaluation classifier, and fits per-step linear colour heads (the ADP recipe) on
h, on hsp and on both; held-out accuracy per step tells from which step colour can be read. Then it guides
hsp instead of h (the same gradient step, :func:`fair_core.guidance.guidance_step`, target 0.5:0.5) at each
``--scales`` and reports the green share and quality of 64 images against unguided sampling of the same noise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import write_json  # noqa: E402

from fair_core import adp as adp_lib  # noqa: E402
from fair_core import checkpoints, evaluation, features, guidance, hspace  # noqa: E402
from fair_core.sampling import generate, get_sigmas  # noqa: E402

STEPS = 20


def record(model, n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """h and hsp at every step, (steps, n, C, H, W) float16, and the final images."""
    seen, images = {"h": [], "hsp": []}, []
    for b, start in enumerate(range(0, n, 64)):
        batch = {"h": [], "hsp": []}

        def keep(h, hsp):
            batch["h"].append(h.to(torch.float16))
            batch["hsp"].append(hsp.to(torch.float16))
            return h, hsp

        with hspace.patched(model.unet, keep):
            images.append(generate(model, min(64, n - start), STEPS, class_labels=evaluation.uniform_labels(model, min(64, n - start)),
                                   seed=1000 + b, disable=True))
        for k in seen:
            seen[k].append(torch.stack(batch[k]))
    out = {k: torch.cat(v, 1) for k, v in seen.items()}
    out["both"] = torch.cat([out["h"], out["hsp"]], 2)
    return out, torch.cat(images)


class SkipGuided(torch.nn.Module):
    """The model with guidance on hsp (the deepest skip) instead of h."""

    def __init__(self, model, adp, cfg):
        super().__init__()
        self.inner, self.adp, self.guidance = model, adp, cfg

    cfg = property(lambda self: self.inner.cfg)
    sigmas = property(lambda self: self.inner.sigmas)
    sigma_min = property(lambda self: self.inner.sigma_min)
    sigma_max = property(lambda self: self.inner.sigma_max)

    def forward(self, x, sigma, **kwargs):
        t = self.inner.sigma_to_t(torch.as_tensor(sigma, device=x.device).expand(x.shape[0]))
        guide = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)

        def fn(h, hsp):
            return h, guidance.guidance_step(hsp, t, guide, self.adp, self.guidance)

        with hspace.patched(self.inner.unet, fn):
            return self.inner(x, sigma, **kwargs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512, help="recorded trajectories (80 %% fit the heads, 20 %% held out)")
    p.add_argument("--scales", default="30,300,3000", help="guidance scales tried on hsp")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = checkpoints.load(evaluation.MODELS_DIR / "colored_mnist_dsm.safetensors", kind="dsm").model
    clf = checkpoints.load(evaluation.MODELS_DIR / "eval_classifier.safetensors", kind="classifier").model
    feats, images = record(model, args.n)
    y = torch.from_numpy(features.classify(clf, images)["colour"].argmax(1)).long()
    t = model.sigma_to_t(get_sigmas(model, STEPS, "karras")[:-1])
    n_fit = int(0.8 * args.n)
    report = {"command": "python " + " ".join(sys.argv), "n": args.n, "green_share": round(float(y.float().mean()), 4),
              "majority_baseline": round(float(max(y[n_fit:].float().mean(), 1 - y[n_fit:].float().mean())), 4),
              "timesteps": [round(float(v)) for v in t], "heldout_accuracy": {}, "skip_guidance": []}
    heads = {}
    for name, f in feats.items():
        cfg = adp_lib.ADPConfig(h_shape=tuple(f.shape[2:]), timesteps=tuple(float(v) for v in t), attributes={"colour": ["red", "green"]})
        torch.manual_seed(0)
        heads[name] = adp_lib.ADP(cfg)
        adp_lib.fit(heads[name], f[:, :n_fit], {"colour": y[:n_fit]}, steps=300)
        report["heldout_accuracy"][name] = adp_lib.per_step_accuracy(heads[name], f[:, n_fit:], {"colour": y[n_fit:]})["colour"]
    labels = evaluation.uniform_labels(model, 64)
    plain = generate(model, 64, STEPS, class_labels=labels, seed=0, disable=True)
    report["unguided"] = {"green": float(features.classify(clf, plain)["colour"].argmax(1).mean()),
                          "quality": evaluation.quality_report(clf, plain)["classifier_feature_fd"]}
    for scale in [float(s) for s in args.scales.split(",")]:
        cfg = guidance.GuidanceConfig((guidance.AttributeTarget("colour", (0.5, 0.5), scale),))
        out = generate(SkipGuided(model, heads["hsp"].requires_grad_(False), cfg), 64, STEPS, class_labels=labels, seed=0, disable=True)
        report["skip_guidance"].append({"scale": scale, "green": float(features.classify(clf, out)["colour"].argmax(1).mean()),
                                        "quality": evaluation.quality_report(clf, out)["classifier_feature_fd"]})
    write_json(report, args.json)


if __name__ == "__main__":
    main()
