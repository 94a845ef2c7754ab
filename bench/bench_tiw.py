"""Cost of one TIW-DSM training step against one plain DSM step, side by side in one process (issue 4: <= 1.3x).

Both steps are the real ones: DSM = ``DiscreteVPDenoiser.loss`` as in ``training/dsm.py``; TIW = ``training.tiw.tiw_loss``
(one batched discriminator forward + input-gradient on the biased rows, the UNet through the Denoiser, the weighted
corrected loss), each followed by backward, gradient clipping and an Adam step. The two are timed in alternating
blocks so that load from other processes hits both alike; the median block time per step is reported, as wall time
and, on the CPU, as this process's CPU time (with one thread the CPU-time ratio is the compute ratio, whatever else
runs; on a GPU the CPU time says nothing about the work, so it is reported as null). On a GPU the queue is drained
(``torch.cuda.synchronize``) before each clock reading. The TIW step draws its noise on the CPU and copies it over,
as ``training/tiw.py`` does; the DSM step draws on the device, as ``training/dsm.py`` does.

``--draw uniform | ratio`` adds the batch draw to both steps, from sets of the Colored-MNIST sizes (47 620 biased and
2 380 reference indices over a pool of random images): the DSM step draws uniformly from D_bias, the TIW step through
``training.tiw.draw_batch``, with ``--draw ratio`` from a ratio proposal of that size (``--bias-sampling ratio``, its
16 levels, its per-row factor in the loss). The default, ``none``, times one fixed batch.

    OMP_NUM_THREADS=1 python bench/bench_tiw.py --model mnist-s --batch 64 --steps 36 --threads 1 [--device cuda]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import describe_device, synchronize, write_json  # noqa: E402
from fair_core.density_ratio import DISC_POOLS, DiscriminatorConfig, TimeDependentDiscriminator  # noqa: E402
from fair_core.denoiser import DiscreteVPDenoiser  # noqa: E402
from fair_core.models import build_unet, named_config  # noqa: E402
from training.tiw import DISC_WIDTHS, draw_batch, tiw_loss  # noqa: E402
from training.tiw_proposal import LEVELS, level_sigmas, proposal_tables  # noqa: E402

N_BIAS, N_REF, POOL = 47_620, 2_380, 1024  # --draw: the 5 % Colored-MNIST sets' sizes; distinct random images in the pool
UNION = N_REF / (N_BIAS + N_REF)  # their union's share of reference rows (= 0.05 / 1.05, the --reference-share default)


class IndexedPool:
    """A training set's interface (``len``, ``images``, ``labels``) of ``n`` indices over a pool of random images."""

    channels = 3

    def __init__(self, n: int, g: torch.Generator):
        self.n, self.pool = n, torch.rand(POOL, 3, 28, 28, generator=g) * 2 - 1

    def __len__(self):
        return self.n

    def images(self, idx):
        return self.pool[idx % POOL]

    def labels(self, condition, idx):
        return idx % 10


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mnist-s")
    p.add_argument("--disc-model", default="small", choices=list(DISC_WIDTHS))
    p.add_argument("--disc-pool", default="mean", choices=list(DISC_POOLS), help="as training tiw's")
    p.add_argument("--disc-condition", default="none", choices=["none", "model"],
                   help="model: the discriminator reads the digit label too (training tiw's default, and the shipped recipe's)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=36, help="steps per method (in blocks of --block)")
    p.add_argument("--block", type=int, default=4)
    p.add_argument("--reference-share", type=float, default=UNION, help="share of reference rows in a batch (no discriminator)")
    p.add_argument("--draw", default="none", choices=["none", "uniform", "ratio"],
                   help="none: one fixed batch; uniform / ratio: each step draws its batch as training does (see above)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--out", default="bench/out/tiw_speed.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = dataclasses.replace(named_config("unet", args.model), prediction_type="v_prediction")
    model = DiscreteVPDenoiser(build_unet(cfg), cfg).to(device)
    disc_cfg = DiscriminatorConfig(widths=DISC_WIDTHS[args.disc_model], pool=args.disc_pool,
                                   num_classes=10 if args.disc_condition == "model" else 0)
    disc = TimeDependentDiscriminator(disc_cfg).to(device).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)  # CPU: the batch here, the TIW step's noise in tiw_loss (drawn on the CPU, then moved)
    g_dev = torch.Generator(device=device).manual_seed(1)  # the DSM step's noise: DiscreteVPDenoiser.loss draws on x0's device
    x0 = (torch.rand(args.batch, 3, 28, 28, generator=g) * 2 - 1).to(device)
    labels = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    is_bias = (torch.rand(args.batch, generator=g) >= args.reference_share).to(device)
    bias, ref = IndexedPool(N_BIAS, g), IndexedPool(N_REF, g)
    proposal = None
    if args.draw == "ratio":  # w0 as at 90:10 (5 on a tenth of the rows, 0.56 on the rest), rho falling from 1 to 0
        log_w0 = torch.where(torch.rand(N_BIAS, generator=g) < 0.1, torch.tensor(5.0).log(), torch.tensor(0.5 / 0.9).log())
        proposal = proposal_tables(log_w0, torch.linspace(1, 0, LEVELS), level_sigmas(model.sigmas), model.sigmas)

    def step(kind):
        if kind == "dsm" and args.draw == "none":
            loss = model.loss(x0, labels, generator=g_dev).mean()
        elif kind == "dsm":
            idx = torch.randint(N_BIAS, (args.batch,), generator=g)
            loss = model.loss(bias.images(idx).to(device), bias.labels(None, idx).to(device), generator=g_dev).mean()
        elif args.draw == "none":
            loss = tiw_loss(model, disc, "tiw", x0, labels, is_bias, g)[0].mean()
        else:
            share = "union" if args.reference_share == UNION else args.reference_share  # training's default draw
            xb, lb, rows, t, log_factor = draw_batch(args.batch, bias, ref, cfg, proposal, model, g, share)
            per_sample = tiw_loss(model, disc, "tiw", xb.to(device), lb.to(device), rows.to(device), g, 0.0, t)[0]
            loss = (per_sample * log_factor.to(device).exp()).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for kind in ("dsm", "tiw"):  # warm-up
        step(kind)
    times = {"dsm": [], "tiw": []}
    cpu = {"dsm": [], "tiw": []}  # process CPU time: robust to other processes sharing the cores (CPU runs only)
    for _ in range(max(args.steps // args.block, 1)):
        for kind in ("dsm", "tiw"):
            synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.block):
                step(kind)
            synchronize(device)
            times[kind].append((time.perf_counter() - t0) / args.block)
            cpu[kind].append((time.process_time() - c0) / args.block)
    dsm, tiw = statistics.median(times["dsm"]), statistics.median(times["tiw"])
    disc_params = sum(q.numel() for q in disc.parameters())
    result = {"command": "python " + " ".join(sys.argv), "device": describe_device(device, args.threads), "model": args.model,
              "batch": args.batch, "threads": args.threads, "draw": args.draw,
              "discriminator": f"{args.disc_model} {DISC_WIDTHS[args.disc_model]}, {args.disc_pool} head, "
                               f"{'given the digit' if disc_cfg.num_classes else 'marginal'} ({disc_params} parameters)",
              "dsm_s_per_step": round(dsm, 4), "tiw_s_per_step": round(tiw, 4), "ratio": round(tiw / dsm, 3),
              **cpu_time_fields(cpu, device), "blocks": {k: [round(v, 4) for v in vs] for k, vs in times.items()}}
    write_json(result, args.out)


def cpu_time_fields(cpu: dict, device: torch.device) -> dict:
    """Median process CPU time per step and its ratio; null on a GPU, where the CPU only queues the work."""
    if device.type != "cpu":
        return {"dsm_cpu_s_per_step": None, "tiw_cpu_s_per_step": None, "cpu_ratio": None,
                "cpu_time_note": f"not measured on {device.type}: process CPU time does not cover the device's work"}
    dsm_cpu, tiw_cpu = statistics.median(cpu["dsm"]), statistics.median(cpu["tiw"])
    return {"dsm_cpu_s_per_step": round(dsm_cpu, 4), "tiw_cpu_s_per_step": round(tiw_cpu, 4), "cpu_ratio": round(tiw_cpu / dsm_cpu, 3)}


if __name__ == "__main__":
    main()
