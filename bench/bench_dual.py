"""Training cost of constrained dual training vs plain DSM at the same primal batch (issue 5 target: <= 1.5x per epoch).

Both steps are ``training.dual.make_step_fn`` (the step ``python -m training dual`` runs): once with the three
minority-digit constraint sets (4, 5, 7 at 10 % of grey MNIST; ``--dual-batch`` images each per step, dual step every
10), once with no constraint set, which is exactly a DSM step (same loss, clipping and Adam step as ``training/dsm.py``).
Two identically initialised mnist-s models are stepped alternately, one step each, so a load change on a shared CPU
hits both; the first ``--skip`` pairs are warm-up. Both see the same data, so steps per epoch are equal and the
per-step ratio is the per-epoch ratio. On a GPU the queue is drained (``torch.cuda.synchronize``) before each clock
reading; batches are drawn on the CPU and moved over, lambdas and bounds stay on the CPU, as in ``training/dual.py``.

    python bench/bench_dual.py --steps 30 --json bench/out/dual_speed.json [--device cuda]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _bench import describe_device, synchronize, write_json  # noqa: E402

from fair_core import constrained as C  # noqa: E402
from fair_core.denoiser import DiscreteVPDenoiser  # noqa: E402
from fair_core.models import build_unet  # noqa: E402
from training import dsm, dual  # noqa: E402
from training.data import DataConfig, load  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mnist-s")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dual-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=30, help="timed step pairs")
    p.add_argument("--skip", type=int, default=3, help="warm-up pairs not timed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--slack-estimate", default="plain", choices=["plain", "paired"],
                   help="the trainer's option: paired adds a no-grad forward of the constraint images through a frozen copy")
    p.add_argument("--paired-every", type=int, default=1, help="the trainer's option: the frozen forward on every k-th step")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.paired_every < 1 or 10 % a.paired_every:
        p.error(f"--paired-every must divide the dual step's 10 primal steps (1, 2, 5 or 10), got {a.paired_every}")
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    data_cfg = DataConfig(dataset="mnist", minority_classes=(4, 5, 7), minority_keep=0.1)
    data = load(data_cfg)
    sets = dual.parse_constraints("minority", data_cfg.minority_classes)
    cons = dual.constraint_sets(sets, "biased", data, data_cfg)
    opts = {"model": a.model, "condition": "none", "prediction": "v_prediction", "seed": 0, "batch": a.batch, "dual_batch": a.dual_batch,
            "lr": 3e-4, "warmup": 200, "dual_every": 10, "dual_start": 0, "dual_lr": 5.0,
            "paired_every": a.paired_every}
    cfg = dsm.model_config(opts, data.channels)
    torch.manual_seed(0)
    base = DiscreteVPDenoiser(build_unet(cfg), cfg)
    runs = {}
    for name, c in (("dsm", []), ("dual", cons)):
        model = copy.deepcopy(base).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=opts["lr"])
        # lambdas, bounds and the tracker live on the CPU, as in training.dual.main; the step moves them to the losses
        state = {"lambdas": torch.zeros(len(c)), "tracker": C.ConstraintTracker.new(len(c))}
        bounds = torch.full((len(c),), 0.05)
        names = [dual.set_name(s) for s in sets[: len(c)]]
        control = None
        if c and a.slack_estimate == "paired":
            control = (copy.deepcopy(base).to(device).eval().requires_grad_(False), torch.full((len(c),), 0.05))
        runs[name] = dual.make_step_fn(opts, model, opt, data, c, names, "none", state, bounds, None, device, control)
    times = {"dsm": [], "dual": []}
    t0 = time.monotonic()
    for step in range(a.skip + a.steps):
        for name, fn in runs.items():
            synchronize(device)
            t = time.perf_counter()
            fn(step)
            synchronize(device)
            if step >= a.skip:
                times[name].append(time.perf_counter() - t)
    synchronize(device)
    wall = time.monotonic() - t0
    ratios = [d / s for s, d in zip(times["dsm"], times["dual"])]
    result = {"device": describe_device(device, a.threads), "model": a.model, "batch": a.batch, "dual_batch": a.dual_batch,
              "constraint_sets": len(cons), "slack_estimate": a.slack_estimate,
              "paired_every": a.paired_every, "threads": a.threads, "pairs": a.steps,
              "dsm_median_s": round(statistics.median(times["dsm"]), 4),
              "dual_median_s": round(statistics.median(times["dual"]), 4),
              "ratio_of_medians": round(statistics.median(times["dual"]) / statistics.median(times["dsm"]), 3),
              "median_pair_ratio": round(statistics.median(ratios), 3),
              "expected_ratio_from_images": (a.batch + len(cons) * a.dual_batch) / a.batch, "wall_s": round(wall, 1)}
    write_json(result, a.json)


if __name__ == "__main__":
    main()
