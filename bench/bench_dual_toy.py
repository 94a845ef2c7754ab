"""Dual training of a small MLP denoiser on the 1-D Gaussian mixture of tests/dual_toy.py (issue 5, analytic check).

Data 0.9 N(-2, 0.4^2) + 0.1 N(+2, 0.4^2), constraint set N(+2, 0.4^2) with the bound set to the exact loss on it of
the mixture whose minority weight is 0.3, so lambda* = (0.3 - 0.1) / (1 - 0.3) = 0.2857. Reported per variant (plain,
resilient): lambda averaged over the last quarter of the dual steps and its spread, the measured final slack
(200k samples, fixed noise), the component weights of 8000 samples of the trained MLP (Heun ODE) and the weights
the final lambda predicts. tests/test_constrained.py runs the same check with an in-family mixture denoiser.

    python bench/bench_dual_toy.py --steps 3000 --json bench/out/dual_toy.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _bench import write_json  # noqa: E402

import dual_toy as T  # noqa: E402
from fair_core import constrained as C  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--eta", type=float, default=0.04)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--alpha", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    target = 0.3
    bound = T.ideal_loss(torch.tensor([1 - target, target]), T.MINORITY)
    results = {"bound": bound, "lambda_star": (target - 0.1) / (1 - target), "args": vars(a)}
    for name, alpha in (("plain", None), ("resilient", a.alpha)):
        t0 = time.monotonic()
        D = T.MLPDenoiser()
        r = T.train_dual(D, bound, steps=a.steps, eta=a.eta, every=a.every, alpha=alpha, batch=a.batch, seed=a.seed)
        tail = r["history"][-len(r["history"]) // 4:]
        lam = tail.mean().item()
        loss = T.measured_loss(D, T.MINORITY)
        results[name] = {"lambda_avg": round(lam, 4), "lambda_spread": round(tail.std().item(), 4), "lambda_final": round(r["lambda"].item(), 4),
                         "loss_on_q1": round(loss, 4), "slack_unrelaxed": round(loss - bound, 4),
                         "lambda_over_alpha": None if alpha is None else round(lam / alpha, 4),
                         "learned_weights": [round(w, 4) for w in D.weights().tolist()],
                         "predicted_weights": [round(w, 4) for w in C.component_weights(T.PI, [1], [lam]).tolist()],
                         "seconds": round(time.monotonic() - t0, 1)}
        print(name, json.dumps(results[name]), flush=True)
    write_json(results, a.json, echo=False)


if __name__ == "__main__":
    main()
