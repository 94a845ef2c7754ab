"""Does the image discriminator of ``python -m training tiw`` recover w_t on Colored-MNIST?

With a 90:10 red:green biased set and a 50:50 reference set, the clean-image ratio is known per colour:
w(red) = 0.5 / 0.9 = 0.556 and w(green) = 0.5 / 0.1 = 5 (digits are balanced in both sets); as sigma grows the
two noised distributions merge and w_t -> 1. This script reports the median w_t of held-out red and green test
images at several sigmas for a trained discriminator checkpoint.

    python -m training tiw --model tiny --steps 1 --disc-steps 800 --threads 1 --outdir /tmp/tiwdisc
    python bench/bench_tiw_discriminator.py /tmp/tiwdisc/00000-tiw-colored-mnist/discriminator.safetensors

``--against BIASED REFERENCE`` also checks the discriminator's *gradient*, which TIW-DSM's score correction uses:
for two diffusion models of the same architecture, one trained on the biased data and one on the reference data,
``D_ref(x_t) - D_bias(x_t) = sigma^2 (grad log p_ref,t - grad log p_bias,t) = sigma^2 grad log w_t`` if both were
exact. On biased test images (90:10) noised to each sigma it reports the median cosine between the correction
``sigma^2 grad log w_t`` and that model difference, their norm ratio, and the mean green-minus-red shift of each.

``--guide BIASED`` samples the biased model with the correction added at sampling time (``CorrectedDenoiser``:
``D + gamma sigma^2 grad log w_t``, at gamma 1 the pointwise minimiser TIW-DSM trains towards) and reports the colour
share, FD and quality per gamma: how far the discriminator's correction can move the colour before any training.
``oracle --oracle {marginal,conditional}`` in place of the checkpoint does the same with the kernel ratio of
``tiw_oracle.py``, built from the colour labels: what a near-exact correction does to the same model.
``--vs-oracle SIGMAS`` compares the discriminator's ``log w_t`` and ``grad log w_t`` with the kernel ratio's, given
the digit and marginal, on noised test images (a check of the correction's direction and size without sampling).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _bench import write_json  # noqa: E402
from fair_core import checkpoints, evaluation  # noqa: E402
from fair_core.density_ratio import log_ratio_and_grad, ratio  # noqa: E402
from training.data import DataConfig, load  # noqa: E402
from training.discriminator import clean_log_ratios  # noqa: E402
from tiw_oracle import ORACLE_MODES, KernelRatio  # noqa: E402

SIGMAS = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0)
GRADIENT_SIGMAS = (0.3, 1.0, 3.0, 10.0, 30.0, 80.0)  # the VP schedule reaches sigma ~157


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("discriminator", help="a 'discriminator' checkpoint, or 'oracle' with --oracle (the kernel ratio of tiw_oracle.py)")
    p.add_argument("--n", type=int, default=500, help="test images per colour")
    p.add_argument("--against", nargs=2, metavar=("BIASED", "REFERENCE"), help="diffusion models to compare the correction with")
    p.add_argument("--guide", default=None, metavar="BIASED",
                   help="also sample this biased model with the correction added at sampling time, D + gamma sigma^2 grad log w_t "
                        "(what a TIW-DSM model learns to be, at gamma 1), and report the colour and quality of each gamma")
    p.add_argument("--gammas", default="0,1,2", help="--guide: scales of the correction, comma-separated")
    p.add_argument("--band", default=None, metavar="LO:HI", help="--guide: apply gamma only where LO <= sigma < HI (1 elsewhere)")
    p.add_argument("--guide-n", type=int, default=500, help="--guide: samples per gamma")
    p.add_argument("--smooth", default=None, metavar="F:K",
                   help="--guide: read the discriminator's logit as its mean over K inputs x + F sigma n (fixed n), so that "
                        "its gradient is smoothed at the scale F sigma (SmoothedLogit)")
    p.add_argument("--implied-at", default=None, metavar="SIGMAS",
                   help="also report, over the 5 %% split's biased training images, the mean w and the green share w implies "
                        "(sum of w over green / sum of w) at these comma-separated sigmas: a clean ratio w0 that reweights "
                        "D_bias to 50:50 gives mean 1 and 50 %%")
    p.add_argument("--oracle", default=None, choices=list(ORACLE_MODES),
                   help="with DISCRIMINATOR 'oracle': the kernel ratio w_t(x) or w_t(x | digit) (tiw_oracle.py)")
    p.add_argument("--vs-oracle", default=None, metavar="SIGMAS",
                   help="also compare the ratio and its gradient with the kernel oracle's, w_t(x | digit) and w_t(x), on --n "
                        "test images (50:50) noised to these comma-separated sigmas: correlation of log w, median cosine and "
                        "norm ratio of grad log w (the oracle is a nearest-neighbour estimate below sigma ~5)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if (args.discriminator == "oracle") != (args.oracle is not None):
        raise SystemExit("--oracle {marginal,conditional} goes with DISCRIMINATOR 'oracle', and 'oracle' needs it; got "
                         f"{args.discriminator!r} with --oracle {args.oracle}")
    for option, value in (("--band", args.band), ("--smooth", args.smooth)):
        if value is not None and not args.guide:
            raise SystemExit(f"{option} shapes the correction of --guide sampling; give --guide BIASED too (got {option} {value})")
    if args.discriminator == "oracle":
        disc = KernelRatio(args.oracle).to(device)
    else:
        disc = checkpoints.load(args.discriminator, kind="discriminator", device=device).model
    test = load(DataConfig(dataset="colored-mnist", split="test", colour_ratio=0.5))
    g = torch.Generator().manual_seed(0)
    out = {"discriminator": args.discriminator, "expected_clean": {"red": round(0.5 / 0.9, 3), "green": 5.0}, "median_w": {}}
    for colour, c in (("red", 0), ("green", 1)):
        idx = torch.nonzero(test.colours == c).flatten()[: args.n]
        x0, y = test.images(idx), test.digits[idx].to(device)  # y: for a digit-conditional discriminator, w_t(x | y)
        out["median_w"][colour] = {}
        for s in SIGMAS:
            x = (x0 + s * torch.randn(x0.shape, generator=g)).to(device)
            with torch.no_grad():
                w = ratio(disc, x, torch.full((len(x),), s, device=device), y)
            out["median_w"][colour][s] = round(float(w.median()), 3)
    if args.implied_at:
        out["implied_share"] = implied_share(disc, [float(v) for v in args.implied_at.split(",")], device)
    if args.vs_oracle:
        out["vs_oracle"] = compare_oracle(disc, [float(v) for v in args.vs_oracle.split(",")], args.n, device)
    if args.against:
        out["correction_vs_model_difference"] = compare_gradient(disc, *args.against, args.n, device)
    if args.guide:
        band = parse_band(args.band) if args.band else (0.0, math.inf)
        if args.smooth:
            disc = SmoothedLogit(disc, *parse_smooth(args.smooth))
        out["guided"] = guided_sampling(disc, args.guide, [float(gm) for gm in args.gammas.split(",")], band, args.guide_n, device)
    write_json(out, args.json)


def implied_share(disc, sigmas: list[float], device) -> dict:
    """Per sigma: mean w over D_bias (1 for an exact ratio) and the green share that weighting D_bias by w gives (w read
    as ``training tiw --disc-w0-sigma`` reads it: the mean over two noise draws)."""
    bias = load(DataConfig(dataset="colored-mnist", colour_ratio=0.9, reference_fraction=0.05, part="biased"))
    green, out = bias.colours == 1, {}
    for s in sigmas:
        w = clean_log_ratios(disc, bias, s, device, w0_sigma=s, seed=2).exp()
        out[s] = {"mean_w": round(float(w.mean()), 3), "implied_green_share": round(float(w[green].sum() / w.sum()), 3)}
    return out


@torch.no_grad()
def compare_gradient(disc, biased: str, reference: str, n: int, device=torch.device("cpu")) -> dict:
    d_bias, d_ref = (checkpoints.load(p, device=device).model for p in (biased, reference))
    test = load(DataConfig(dataset="colored-mnist", split="test", colour_ratio=0.9))
    idx = torch.arange(min(n, len(test)))
    x0 = test.images(idx).to(device)
    labels = test.labels(d_bias.cfg.condition, idx).to(device) if d_bias.cfg.conditional else None
    g, out = torch.Generator().manual_seed(1), {"biased": biased, "reference": reference, "n": len(idx)}

    def green_minus_red(v):
        return float((v[:, 1] - v[:, 0]).mean())

    for s in GRADIENT_SIGMAS:
        sigma = torch.full((len(x0),), s, device=device)
        x = x0 + s * torch.randn(x0.shape, generator=g).to(device)
        delta = d_ref(x, sigma, class_labels=labels) - d_bias(x, sigma, class_labels=labels)
        correction = s**2 * log_ratio_and_grad(disc, x, sigma, labels)[1]
        cos = torch.nn.functional.cosine_similarity(correction.flatten(1), delta.flatten(1), dim=1)
        norm = correction.flatten(1).norm(dim=1) / delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        out[s] = {"median_cosine": round(float(cos.median()), 3), "median_norm_ratio": round(float(norm.median()), 3),
                  "green_minus_red_correction": round(green_minus_red(correction), 4),
                  "green_minus_red_model_difference": round(green_minus_red(delta), 4)}
    return out


def compare_oracle(disc, sigmas: list[float], n: int, device, per_digit: int = 1000) -> dict:
    """Per sigma: how close ``log w_t`` and ``grad log w_t`` of ``disc`` (given the digit if it is conditional) are to
    the kernel oracle's, conditional and marginal, on ``n`` test images at 50:50."""
    test = load(DataConfig(dataset="colored-mnist", split="test", colour_ratio=0.5))
    g = torch.Generator().manual_seed(3)
    idx = torch.randperm(len(test), generator=g)[:n]
    x0, y = test.images(idx), test.digits[idx].to(device)
    oracles = {mode: KernelRatio(mode, per_digit=per_digit).to(device) for mode in ORACLE_MODES}
    out = {"n": len(idx)}
    for s in sigmas:
        x, sigma = (x0 + s * torch.randn(x0.shape, generator=g)).to(device), torch.full((len(idx),), s, device=device)
        log_w, grad = log_ratio_and_grad(disc, x, sigma, y)
        grad = grad.flatten(1)
        out[s] = {}
        for mode, oracle in oracles.items():
            o_log_w, o_grad = log_ratio_and_grad(oracle, x, sigma, y)
            o_grad = o_grad.flatten(1)
            cos = torch.nn.functional.cosine_similarity(grad, o_grad, dim=1)
            norm = grad.norm(dim=1) / o_grad.norm(dim=1).clamp_min(1e-30)
            out[s][mode] = {"log_w_correlation": round(float(torch.corrcoef(torch.stack([log_w, o_log_w]))[0, 1]), 3),
                            "grad_median_cosine": round(float(cos.median()), 3), "grad_median_norm_ratio": round(float(norm.median()), 3)}
    return out


def parse_band(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise SystemExit(f"--band must be LO:HI with 0 <= LO < HI (sigmas), got {text!r}") from None
    if not 0 <= lo < hi:
        raise SystemExit(f"--band must be LO:HI with 0 <= LO < HI (sigmas), got {text!r}")
    return lo, hi


def parse_smooth(text: str) -> tuple[float, int]:
    try:
        fraction, draws = float(text.split(":")[0]), int(text.split(":")[1])
    except (ValueError, IndexError):
        fraction, draws = -1.0, 0
    if not (fraction > 0 and draws >= 1) or text.count(":") != 1:
        raise SystemExit(f"--smooth must be F:K with F > 0 (a fraction of sigma) and K >= 1 draws, got {text!r}")
    return fraction, draws


class SmoothedLogit(torch.nn.Module):
    """``f_s(x) = mean_k f(x + F sigma n_k)`` over K fixed draws ``n_k`` (the same at every call, so ``f_s`` is a
    function of ``x``): its input gradient is the discriminator's averaged over a ball of radius ~ F sigma. The exact
    ``log w_t`` is smooth at the scale sigma, so a small F changes it little, while a CNN's high-frequency input
    gradient averages out."""

    def __init__(self, disc, fraction: float, draws: int, seed: int = 0):
        super().__init__()
        self.disc, self.fraction, self.draws, self.seed, self.cfg = disc, fraction, draws, seed, disc.cfg

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        s = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).expand(x.shape[0])
        g = torch.Generator(device=x.device).manual_seed(self.seed)
        noise = torch.randn((self.draws, *x.shape), generator=g, device=x.device, dtype=x.dtype)
        xs = (x[None] + self.fraction * s.view(1, -1, *([1] * (x.ndim - 1))) * noise).flatten(0, 1)
        labels = None if class_labels is None else class_labels.repeat(self.draws)
        return self.disc(xs, s.repeat(self.draws), labels).view(self.draws, -1).mean(0)


class CorrectedDenoiser(torch.nn.Module):
    """``D(x, sigma) + gamma sigma^2 grad_x log w_t(x)`` for ``band[0] <= sigma < band[1]`` (gamma 1 elsewhere): the
    pointwise minimiser of TIW-DSM built from the biased model, so sampling it shows what the correction can do
    before any training."""

    def __init__(self, model, disc, gamma: float, band: tuple[float, float]):
        super().__init__()
        self.model, self.disc, self.gamma, self.band = model, disc, gamma, band
        self.cfg, self.sigma_min, self.sigma_max, self.sigmas = model.cfg, model.sigma_min, model.sigma_max, model.sigmas

    def forward(self, x, sigma, class_labels=None, **kwargs):
        s = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).expand(x.shape[0])
        gamma = torch.where((s >= self.band[0]) & (s < self.band[1]), self.gamma, 1.0)
        correction = (gamma * s**2).view(-1, 1, 1, 1) * log_ratio_and_grad(self.disc, x.float(), s, class_labels)[1]
        return self.model(x, sigma, class_labels=class_labels, **kwargs) + correction.to(x.dtype)


@torch.no_grad()
def real_biased_share(clf, n: int, device) -> dict:
    """The evaluation classifier on ``n`` real 90:10 test images: the colour share the biased model would draw if exact."""
    test = load(DataConfig(dataset="colored-mnist", split="test", colour_ratio=0.9))
    images = test.images(torch.arange(min(n, len(test)))).to(device)
    report = evaluation.attribute_report(clf, images, evaluation.parse_target(None, "colour"), "colour")
    return {"real_biased_test_images": min(n, len(test)), "green": round(report["proportions"][1], 4), "fd": round(report["fd"], 4)}


def guided_sampling(disc, biased: str, gammas: list[float], band: tuple[float, float], n: int, device) -> list[dict]:
    """A first row for ``n`` real 90:10 test images, then one row per gamma: colour and quality of ``n`` samples of the
    corrected biased model (seed 0, 20 steps)."""
    clf = checkpoints.load(evaluation.resolve_checkpoint("eval_classifier"), kind="classifier", device=device).model
    base = checkpoints.load(biased, device=device).model
    band_json = [band[0], band[1] if math.isfinite(band[1]) else None]
    rows = [real_biased_share(clf, n, device)]
    for gamma in gammas:
        with torch.no_grad():
            report, _ = evaluation.evaluate(CorrectedDenoiser(base, disc, gamma, band), clf, n, 20, seed=0, device=device, disable=True)
        c = report["colour"]
        rows.append({"biased": biased, "gamma": gamma, "band": band_json, "n": n, "green": round(c["proportions"][1], 4),
                     "fd": round(c["fd"], 4), "quality": round(report["quality"]["classifier_feature_fd"], 2)})
    return rows


if __name__ == "__main__":
    main()
