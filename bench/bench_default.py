"""Benchmark of the shipped default model: sampling and training throughput, colour balance and quality.

    python bench/bench_default.py [--n 1000] [--fid-n 500] [--device cpu] [--json bench/out/default.json]

Prints a JSON report; figures go to bench/RESULTS.md together with this command. Throughput figures are
measured within one run (warm-up excluded); compare ratios, not absolute times across machines or runs.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import write_json  # noqa: E402

from fair_core import checkpoints, evaluation, features  # noqa: E402
from fair_core.models import EvalClassifier  # noqa: E402
from fair_core.sampling import generate  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def sampling_throughput(model, device, batch: int = 64, steps: int = 20) -> dict:
    labels = torch.arange(batch) % 10
    s = timed(lambda: generate(model, batch, steps, class_labels=labels, device=device, disable=True), repeats=3)
    return {"batch": batch, "steps": steps, "sampler": "dpmpp_2m", "seconds_per_batch": round(s, 3), "images_per_s": round(batch / s, 2)}


def training_throughput(model, device, batch: int = 64, steps: int = 10) -> dict:
    model = model.to(device).train().requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x0 = torch.randn(batch, model.cfg.channels, model.cfg.sample_size, model.cfg.sample_size, device=device)
    labels = torch.arange(batch, device=device) % model.cfg.num_classes

    def run():
        for _ in range(steps):
            loss = model.loss(x0, labels).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    s = timed(run, repeats=2)
    model.eval().requires_grad_(False)
    return {"batch": batch, "steps_per_s": round(steps / s, 3), "seconds_per_step": round(s / steps, 3)}


def real_test_images(n: int) -> torch.Tensor:
    from training.data import DataConfig, load

    data = load(DataConfig(split="test", colour_ratio=0.5, seed=0))
    return data.images(torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="images sampled for colour balance and quality")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--fid-n", type=int, default=0, help="images per set for Inception FID (0 = skip; ~0.24 s/image on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args()
    device = torch.device(args.device)
    model = checkpoints.load(evaluation.MODELS_DIR / "colored_mnist_dsm.safetensors", kind="dsm", device=device).model
    clf: EvalClassifier = checkpoints.load(evaluation.MODELS_DIR / "eval_classifier.safetensors", kind="classifier", device=device).model
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "sampling": sampling_throughput(model, device),
        "training_mnist_s": training_throughput(checkpoints.KINDS["dsm"].build(model.cfg), device),
    }
    t0 = time.perf_counter()
    ev, images = evaluation.evaluate(model, clf, args.n, args.steps, seed=0, device=device, disable=True)
    report["eval"] = {**ev, "seconds": round(time.perf_counter() - t0, 1)}
    report["eval"]["digit"] = evaluation.attribute_report(clf, images, evaluation.parse_target(None, "digit"), "digit")
    if args.fid_n:
        real = real_test_images(args.fid_n).to(device)
        report["eval"]["quality"]["inception_fid"] = round(float(features.inception_fid(images[: args.fid_n], real)), 2)
        report["eval"]["quality"]["inception_fid_n"] = args.fid_n
    write_json(report, args.json)


if __name__ == "__main__":
    main()
