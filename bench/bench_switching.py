#!/usr/bin/env python3
"""Attribute switching on the colour-conditional Colored-MNIST model (issue 6): a tau sweep, the searched tau, its
stability, and the cost of switching against vanilla sampling, all in one run.

    python bench/bench_switching.py --n 256 --out bench/out/switching.json [--device cuda]

Per tau on the sampler's grid (20 steps): ``alternate`` batches (half red->green, half green->red) and
* BER: balanced error of a held-out linear probe predicting s0 (the starting colour) from the evaluation
  classifier's features (0.5 = s0 cannot be read off the images; ``fair_core.metrics.held_out_ber``);
* quality: classifier-feature FD to real Colored-MNIST (recoloured red, so colour does not count);
* red fraction by the classifier's colour head.
tau = steps is vanilla conditional sampling (never switch). The searched tau (search batch 16, 64, 256; seeds 0-2)
is marked. Speed: vanilla vs switched sampling at a known tau, and the search vs one vanilla run of the search
batch, interleaved and repeated after one warm-up run of each, medians reported (on a GPU the queue is drained before
each clock reading). The models run on ``--device``; the BER probe and the FD statistics run on the CPU whatever the
device.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _bench import describe_device, synchronize  # noqa: E402
from fair_core import checkpoints, evaluation, features, metrics, switching  # noqa: E402
from fair_core.plots import _png, _pyplot, save_chart  # noqa: E402
from fair_core.sampling import generate, get_sigmas  # noqa: E402


def sweep_point(model, clf, n, steps, tau, seed):
    images, _, sigma = switching.sample_switched(model, n, steps, 0, 1, tau, "alternate", seed=seed, disable=True)
    s0, _ = switching.switch_labels("alternate", 0, 1, n)
    feats = features.classifier_features(clf, images)
    red = float((features.classify(clf, images)["colour"].argmax(1) == 0).mean())
    return {"tau": tau, "sigma": sigma, "ber": round(metrics.held_out_ber(feats, s0.numpy(), 2), 4),
            "quality_fd": round(features.classifier_feature_fd(clf, images), 3), "red": round(red, 4)}, images


def timed(fn, repeats, device):
    out = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def speed(model, n, steps, tau, search_n, repeats, device):
    labels = (torch.arange(n) % 2).to(device)
    zeros = {k: torch.zeros(k, dtype=torch.long, device=device) for k in (search_n, 2 * search_n)}
    noise = torch.randn(search_n, 3, 28, 28, generator=torch.Generator().manual_seed(5)).to(device)
    sigmas = get_sigmas(model, steps, "karras", device=device)
    runs = {"vanilla": lambda: generate(model, n, steps, class_labels=labels, batch_size=n, device=device, disable=True),
            "switched": lambda: switching.sample_switched(model, n, steps, 0, 1, tau, batch_size=n, device=device, disable=True),
            "vanilla_search_batch": lambda: generate(model, search_n, steps, sampler="euler", class_labels=zeros[search_n],
                                                     batch_size=search_n, device=device, disable=True),
            "vanilla_double_search_batch": lambda: generate(model, 2 * search_n, steps, sampler="euler", class_labels=zeros[2 * search_n],
                                                            batch_size=2 * search_n, device=device, disable=True),
            "search": lambda: switching.search_tau(model, noise, sigmas, 0, 1, disable=True)}
    for fn in runs.values():  # warm-up, untimed (a GPU's first calls pay for kernel loading and allocation)
        fn()
    times = {k: [] for k in runs}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit every variant alike
        for k, fn in runs.items():
            times[k] += timed(fn, 1, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"device": describe_device(device), "seconds_median": {k: round(v, 3) for k, v in med.items()}, "repeats": repeats,
            "n": n, "search_n": search_n,
            "switched_over_vanilla": round(med["switched"] / med["vanilla"], 3),
            "search_over_vanilla_search_batch": round(med["search"] / med["vanilla_search_batch"], 3),
            "search_over_vanilla_double_batch": round(med["search"] / med["vanilla_double_search_batch"], 3)}


def chart(rows, searched, path):
    plt = _pyplot()
    taus = [r["tau"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(taus, [r["ber"] for r in rows], marker="o", color="#4c72b0", label="BER (0.5 = s0 hidden)")
    ax.set_xlabel("tau (steps under s0 before the switch; 20 = never switch)")
    ax.set_ylabel("BER")
    ax.set_ylim(0, 0.55)
    ax2 = ax.twinx()
    ax2.plot(taus, [r["quality_fd"] for r in rows], marker="s", color="#dd8452", label="classifier-feature FD (lower = better)")
    ax2.set_ylabel("quality FD")
    for t in sorted(set(searched)):
        ax.axvline(t, color="#d62728", linestyle="--", linewidth=1)
    ax.set_title("Attribute switching, colour-conditional Colored-MNIST (dashed: searched tau)", fontsize=9)
    fig.legend(loc="lower center", fontsize=8, ncol=2)
    fig.subplots_adjust(bottom=0.28)
    save_chart(path, _png(fig))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(Path(__file__).resolve().parent.parent / "models" / "colour_cond_dsm.safetensors"))
    p.add_argument("--n", type=int, default=256, help="images per tau in the sweep")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--search-sizes", default="16,64,256")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--out", default="bench/out/switching.json")
    p.add_argument("--speed-only", action="store_true", help="re-measure only the speed, at the tau recorded in --out")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = checkpoints.load(args.checkpoint, kind=checkpoints.DIFFUSION_KINDS, device=device).model.eval()
    if args.speed_only:
        result = json.loads(Path(args.out).read_text())
        result["speed"] = speed(model, 64, args.steps, result["summary"]["searched_tau"], 64, args.repeats, device)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result["speed"]))
        return 0
    clf = checkpoints.load(evaluation.resolve_checkpoint("eval_classifier"), kind="classifier", device=device).model.eval()
    sigmas = get_sigmas(model, args.steps, "karras", device=device)
    stability = []
    for size in map(int, args.search_sizes.split(",")):
        for seed in map(int, args.seeds.split(",")):
            z = torch.randn(size, 3, 28, 28, generator=torch.Generator().manual_seed(seed + 1)).to(device)
            found = switching.search_tau(model, z, sigmas, 0, 1, disable=True)
            stability.append({"search_n": size, "seed": seed, "tau": found.tau, "sigma": round(found.sigma, 4)})
            print(f"search n={size} seed={seed}: tau={found.tau} sigma={found.sigma:.4f}", flush=True)
    by_weighting = {}
    z = torch.randn(64, 3, 28, 28, generator=torch.Generator().manual_seed(1)).to(device)
    for w in switching.WEIGHTINGS:  # the default (vp) and the alternatives, on the same search batch
        by_weighting[w] = switching.search_tau(model, z, sigmas, 0, 1, weighting=w, disable=True).tau
    print("tau by weighting (search n=64, seed 0):", by_weighting, flush=True)
    rows = []
    for tau in range(args.steps + 1):
        row, _ = sweep_point(model, clf, args.n, args.steps, tau, seed=0)
        rows.append(row)
        print(json.dumps(row), flush=True)
    vanilla = rows[-1]
    main_n = 64 if any(s["search_n"] == 64 for s in stability) else stability[0]["search_n"]
    searched = [s["tau"] for s in stability if s["search_n"] == main_n]
    bers = sorted((r["ber"] for r in rows), reverse=True)
    top10 = bers[max(0, int(np.ceil(0.1 * len(bers))) - 1)]
    main_tau = statistics.mode(searched)
    at = rows[main_tau]
    summary = {"search_n": main_n, "searched_tau": main_tau, "ber_at_searched": at["ber"], "best_ber": bers[0], "top10pct_ber_threshold": top10,
               "searched_in_top10pct": at["ber"] >= top10, "quality_at_searched": at["quality_fd"], "quality_vanilla": vanilla["quality_fd"],
               "quality_ratio": round(at["quality_fd"] / vanilla["quality_fd"], 3)}
    result = {"checkpoint": args.checkpoint, "device": describe_device(device), "n": args.n, "steps": args.steps, "sampler": "dpmpp_2m",
              "schedule": "karras", "sweep": rows, "stability": stability, "tau_by_weighting": by_weighting, "summary": summary,
              "speed": speed(model, 64, args.steps, main_tau, 64, args.repeats, device), "threads": torch.get_num_threads()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    chart(rows, searched, out.with_name("switching_sweep.png"))
    print(json.dumps(summary), json.dumps(result["speed"]), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
