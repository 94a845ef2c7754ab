"""The Colored-MNIST experiment of issue 4 (TIW-DSM, Kim et al. 2024): a 90:10 red:green biased set D_bias and a
balanced 50:50 reference set D_ref of 5 % (or 10 %, 25 %) of its size. Per fraction four models:

- ``dsm``: plain DSM on D_bias (what the bias gives);
- ``ref``: plain DSM on D_ref only (fair, but few images);
- ``iw``: importance weighting only, the time-independent ``w(x0)`` of the same discriminator, no score correction;
- ``tiw``: TIW-DSM (``python -m training tiw``, the paper's loss), which also trains the discriminator.

    python bench/bench_tiw_colored_mnist.py plan                  # the exact commands and time estimates
    python bench/bench_tiw_colored_mnist.py run                   # train (skips an export that exists), then eval
    python bench/bench_tiw_colored_mnist.py eval A.safetensors B.safetensors --n 1000 --json out.json --png out.png
    python bench/bench_tiw_colored_mnist.py report out.json --png out.png   # table and chart of a saved eval again
    python bench/bench_tiw_colored_mnist.py run --mode scratch --scale smoke   # tiny models, a few steps: pipeline check

Two modes (``--mode``):

- ``finetune`` (default): all four start from ``--init`` (the shipped ``colored_mnist_dsm``: 3600 DSM steps on the
  90:10 data) with a fresh Adam and warm-up, and train ``--steps`` (1200) more on their own data and loss. ``dsm`` is
  then the matched control: same start, same steps, only the loss and data differ. This is the form that fits this
  project's 2-core CPU (about 35 min per model at ``--threads 1``, two at a time).
- ``scratch``: the paper's form, every model from scratch for ``--steps`` (3600 like the shipped default): about
  4.3 h per fraction on this CPU, well under an hour for the whole experiment on one GPU.

Evaluation: ``n`` samples per model (uniform digit labels, dpmpp_2m, 20 steps) classified by the shipped evaluation
classifier: colour proportions with 95 % bootstrap intervals, FD to 50:50, and quality = the classifier-feature
Frechet distance to the real Colored-MNIST test set (*not* Inception FID). Targets (issue 4): TIW-DSM at 5 %
reference with FD <= 0.05, quality no more than 10 % worse than ``dsm`` and better than ``ref``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _bench import add_eval_parser, add_fid_parser, add_run_options, fid_rows, run_plan, write_json  # noqa: E402
from fair_core import checkpoints, evaluation, features, plots  # noqa: E402
from fair_core.density_ratio import DISC_OBJECTIVES, DISC_POOLS  # noqa: E402
from fair_core.errors import FairSamplingError  # noqa: E402
from training.data import DataConfig, load  # noqa: E402
from training.discriminator import DISC_CONDITIONS, DISC_SCHEDULES, DISC_WIDTHS  # noqa: E402
from training.tiw import reference_share  # noqa: E402
from training.tiw_proposal import BIAS_SAMPLINGS  # noqa: E402

METHODS = {"dsm": "DSM on D_bias", "ref": "DSM on D_ref only", "iw": "IW only (w(x0))", "tiw": "TIW-DSM"}
S_PER_STEP = {"dsm": 1.0, "ref": 1.0, "iw": 1.05, "tiw": 1.15}  # mnist-s, batch 64, 2 threads (bench/RESULTS.md)
DEFAULT_INIT = "models/colored_mnist_dsm.safetensors"


def export_path(a, method: str, fraction: float) -> Path:
    form = "ft" if a.mode == "finetune" else "scratch"
    model = "tiny_" if a.scale == "smoke" else ""
    disc = ""  # older exports keep their names
    if method in ("tiw", "iw"):
        disc += "_dense" if getattr(a, "disc_pool", "mean") == "dense" else ""
        objective = getattr(a, "disc_objective", "bce")
        disc += f"_{objective}" if objective != "bce" else ""
        disc += "_cond" if getattr(a, "disc_condition", "model") == "model" else ""  # the names before it: the marginal ratio
        disc += f"_w0s{a.disc_w0_sigma:g}" if getattr(a, "disc_w0_sigma", None) is not None else ""
        disc += "_ratio" if getattr(a, "bias_sampling", "uniform") == "ratio" else ""
        share = reference_share(getattr(a, "reference_share", "union"))
        disc += f"_share{share:g}" if share != "union" else ""
    return Path(a.out) / f"cmnist_{model}{method}_{form}_r{round(100 * fraction):d}{disc}.safetensors"


def discriminator_of(tiw_export: Path) -> str:
    """The discriminator the TIW run trained, as its export records it (so IW uses the very same one)."""
    return checkpoints.read_metadata(tiw_export)["training"]["discriminator"]["path"]


def train_steps(a) -> int:
    return a.steps or (1200 if a.mode == "finetune" else 3600)


def commands(a) -> dict:
    """``name -> argv`` (or a callable giving it, for IW, whose discriminator exists only after the TIW run)."""
    smoke = a.scale == "smoke"
    steps = 3 if smoke else train_steps(a)
    common = ["--model", "tiny" if smoke else "mnist-s", "--lr", str(a.lr), "--threads", str(a.threads), "--save-every", "200",
              "--outdir", str(Path(a.out) / "runs"), "--colour-ratio", "0.9", "--steps", str(steps)]
    common += (["--batch", "8"] if smoke else []) + (["--device", a.device] if a.device != "cpu" else [])
    if a.mode == "finetune":
        if smoke:
            raise SystemExit("--scale smoke needs --mode scratch (the shipped init is an mnist-s model)")
        common += ["--init", a.init]
    cmds: dict = {}
    for f in a.fractions:
        data = ["--reference-fraction", str(f)]
        out = {m: str(export_path(a, m, f)) for m in METHODS}
        cmds[f"dsm {f}"] = ["python", "-m", "training", "dsm", *common, *data, "--part", "biased", "--export", out["dsm"]]
        cmds[f"ref {f}"] = ["python", "-m", "training", "dsm", *common, *data, "--part", "reference", "--export", out["ref"]]
        disc = ["--disc-model", "tiny" if smoke else a.disc_model, "--disc-steps", str(3 if smoke else a.disc_steps),
                "--disc-schedule", a.disc_schedule, "--disc-pool", a.disc_pool]
        disc += ["--disc-batch", str(a.disc_batch)] if a.disc_batch else []
        disc += ["--disc-objective", a.disc_objective] if a.disc_objective != "bce" else []
        disc += ["--disc-condition", a.disc_condition] if a.disc_condition != "model" else []
        disc += ["--disc-teacher", a.disc_teacher] if a.disc_teacher else []
        disc += ["--disc-w0-sigma", str(a.disc_w0_sigma)] if a.disc_w0_sigma is not None else []
        if a.disc_objective == "gradient":  # the biased model: the fine-tuning init, or this fraction's DSM run (made first)
            if a.mode == "scratch" and "tiw" in a.methods and "dsm" not in a.methods and not Path(out["dsm"]).exists():
                raise SystemExit(f"--disc-objective gradient with --mode scratch uses this fraction's DSM export {out['dsm']} "
                                 f"as --disc-baseline, but it does not exist and --methods {' '.join(a.methods)} does not make it; "
                                 "add dsm to --methods")
            disc += ["--disc-baseline", a.init if a.mode == "finetune" else out["dsm"]]
        sampling = ["--bias-sampling", a.bias_sampling] if a.bias_sampling != "uniform" else []
        share = reference_share(a.reference_share)  # refused here, before any run, as the trainer would
        sampling += ["--reference-share", f"{share:g}"] if share != "union" else []
        cmds[f"tiw {f}"] = ["python", "-m", "training", "tiw", *common, *data, *disc, *sampling, "--export", out["tiw"]]
        cmds[f"iw {f}"] = (lambda data=data, out=out: ["python", "-m", "training", "tiw", *common, *data, "--loss-mode", "iw", *sampling,
                                                       "--discriminator", discriminator_of(Path(out["tiw"])), "--export", out["iw"]])
    return {name: cmd for name, cmd in cmds.items() if name.split()[0] in a.methods}


def plan(a) -> None:
    steps = train_steps(a)
    for name, cmd in commands(a).items():
        method = name.split()[0]
        print(f"# {name}: about {S_PER_STEP[method] * steps / 60:.0f} min on this CPU at --threads 2")
        if callable(cmd):
            tiw = export_path(a, "tiw", float(name.split()[1]))
            print(f"# (--discriminator: the one the tiw run trained, recorded in {tiw}'s metadata)")
            cmd = ["<as tiw, plus>", "--loss-mode", "iw", "--discriminator", f"<training.discriminator.path of {tiw}>"]
        print(" ".join(cmd))
    exports = [str(export_path(a, m, f)) for f in a.fractions for m in a.methods]
    print(f"# eval: about {len(exports) * a.n / 8.5 / 60:.0f} min\npython bench/bench_tiw_colored_mnist.py eval {' '.join(exports)} "
          f"--n {a.n} --json {Path(a.out) / 'tiw_colored_mnist.json'} --png {Path(a.out) / 'tiw_colored_mnist.png'}"
          + (f" --device {a.device}" if a.device != "cpu" else ""))


def run(a) -> None:
    run_plan(commands(a), a.threads, a.existing)
    exports = [str(export_path(a, m, f)) for f in a.fractions for m in a.methods]
    evaluate_all(exports, 16 if a.scale == "smoke" else a.n, 20, 0, Path(a.out) / "tiw_colored_mnist.json",
                 Path(a.out) / "tiw_colored_mnist.png", a.device)


@torch.no_grad()
def evaluate_model(path: str, clf, n: int, steps: int, seed: int, device="cpu", by_colour: int | None = None) -> dict:
    ckpt = checkpoints.load(path, device=device)
    report, images = evaluation.evaluate(ckpt.model, clf, n, steps, seed=seed, device=device, disable=True)
    t = ckpt.training
    method = {"dsm": "ref" if t["data"]["part"] == "reference" else "dsm", "tiw": t.get("loss_mode", "tiw")}[ckpt.kind]
    extra = {"quality_by_colour": quality_by_colour(clf, images, by_colour, seed)} if by_colour else {}
    return {"path": path, "kind": ckpt.kind, "method": method, "reference_fraction": t["data"]["reference_fraction"],
            "init": t.get("init"), "train_steps": t["steps"], **report, **extra}


def quality_by_colour(clf, images: torch.Tensor, size: int, seed: int) -> dict:
    """The quality figure of each colour's samples alone (as the evaluation classifier reads the colour), on ``size`` of
    them drawn at random, so that both colours and every model are measured at the same n (the figure falls with n);
    ``None`` for a colour with fewer than ``size`` samples."""
    colour = features.classify(clf, images)["colour"].argmax(1)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for c, name in enumerate(("red", "green")):
        idx = torch.nonzero(torch.as_tensor(colour == c)).flatten()
        pick = idx[torch.randperm(len(idx), generator=g)[:size]]
        fd = features.classifier_feature_fd(clf, images[pick]) if len(idx) >= size else None
        out[name] = {"available": len(idx), "n": size, "quality": None if fd is None else round(float(fd), 3)}
    return out


def evaluate_all(paths: list[str], n: int, steps: int, seed: int, json_path, png_path, device="cpu",
                 by_colour: int | None = None) -> list[dict]:
    clf = checkpoints.load(evaluation.resolve_checkpoint("eval_classifier"), kind="classifier", device=device).model
    results = [evaluate_model(p, clf, n, steps, seed, device, by_colour) for p in paths]
    write_json(results, json_path)
    report(results, png_path)
    return results


def label(r: dict) -> str:
    return f"{METHODS.get(r['method'], r['method'])} ({100 * r['reference_fraction']:g} %, {r['train_steps']} steps)"


def report(results: list[dict], png_path=None) -> None:
    """The Markdown table of bench/RESULTS.md and, with ``png_path``, the chart of the colour proportions."""
    print(table(results))
    if png_path:
        names = [label(r) for r in results]
        chart = plots.distribution_chart(
            {k: np.array(r["colour"]["proportions"]) for k, r in zip(names, results)}, np.full(2, 0.5), evaluation.CLASS_NAMES["colour"],
            f"Colour of generated digits (n = {results[0]['n']} each; data 90:10 red:green)",
            {k: f"FD {r['colour']['fd']:.3f}, quality {r['quality']['classifier_feature_fd']:.1f}" for k, r in zip(names, results)},
            {k: (np.array(r["colour"]["proportions_low"]), np.array(r["colour"]["proportions_high"])) for k, r in zip(names, results)})
        print(f"wrote {plots.save_chart(png_path, chart)}")


def table(results: list[dict]) -> str:
    """The Markdown table of bench/RESULTS.md."""
    rows = ["| reference | method | steps | red | green (95 % interval) | FD to 50:50 | quality (classifier-feature FD) |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["colour"]
        rows.append(f"| {100 * r['reference_fraction']:g} % | {METHODS.get(r['method'], r['method'])} | {r['train_steps']} | {c['proportions'][0]:.3f} | "
                    f"{c['proportions'][1]:.3f} ({c['proportions_low'][1]:.3f}-{c['proportions_high'][1]:.3f}) | {c['fd']:.3f} | "
                    f"{r['quality']['classifier_feature_fd']:.1f} |")
    return "\n".join(rows)


def eval_cmd(a) -> None:
    if a.by_colour is not None and not 2 <= a.by_colour <= a.n:
        raise SystemExit(f"--by-colour must be a sample count in [2, --n = {a.n}], got {a.by_colour}")
    evaluate_all(a.models, a.n, a.steps, a.seed, a.json, a.png, a.device, a.by_colour)


def fid_cmd(a) -> None:
    """Inception FID of each model's ``--n`` samples against ``--n`` real Colored-MNIST test digits at 50:50 (a fixed
    shuffle): the paper's measure, distance to the unbiased distribution, so a colour share off 50:50 costs too."""
    test = load(DataConfig(dataset="colored-mnist", split="test", colour_ratio=0.5))
    fid_rows(test.images(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))), a)


def report_cmd(a) -> None:
    report(json.loads(Path(a.json).read_text()), a.png)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("plan", "run"):
        s = sub.add_parser(name)
        s.add_argument("--mode", default="finetune", choices=["finetune", "scratch"], help="see the module docstring")
        s.add_argument("--init", default=DEFAULT_INIT, help="finetune: the biased model every run starts from")
        s.add_argument("--steps", type=int, default=None, help="training steps per model (default: 1200 finetune, 3600 scratch)")
        s.add_argument("--fractions", type=float, nargs="+", default=[0.05], help="reference set sizes / biased set size")
        s.add_argument("--lr", type=float, default=4e-4)
        s.add_argument("--disc-steps", type=int, default=2000)
        s.add_argument("--disc-batch", type=int, default=None, help="discriminator batch (default: the training batch, 64)")
        s.add_argument("--disc-model", default="small", choices=[m for m in DISC_WIDTHS if m != "tiny"])
        s.add_argument("--disc-schedule", default="constant", choices=list(DISC_SCHEDULES))
        s.add_argument("--disc-pool", default="mean", choices=list(DISC_POOLS), help="the trainer's option")
        s.add_argument("--disc-condition", default="model", choices=list(DISC_CONDITIONS), help="the trainer's option")
        s.add_argument("--disc-objective", default="bce", choices=list(DISC_OBJECTIVES), help="the trainer's option")
        s.add_argument("--disc-teacher", default=None, help="the trainer's option (with --disc-objective weighted or gradient)")
        s.add_argument("--disc-w0-sigma", type=float, default=None, help="the trainer's option (with --disc-objective weighted or gradient)")
        s.add_argument("--bias-sampling", default="uniform", choices=list(BIAS_SAMPLINGS), help="the trainer's option (tiw and iw)")
        s.add_argument("--reference-share", default="union", metavar="union|A", help="the trainer's option (tiw and iw)")
        s.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                       help="which of the four models to train and evaluate (iw needs the tiw run's discriminator)")
        add_run_options(s, "bench/out/tiw_ft", "tiny models, 3 steps, 16 samples")
    e = add_eval_parser(sub, "the colour proportions")
    e.add_argument("--by-colour", type=int, default=None, metavar="M",
                   help="also the quality figure of each colour's samples alone, on M of them each (see quality_by_colour)")
    add_fid_parser(sub, "the Colored-MNIST test digits at 50:50 (the reference distribution)")
    r = sub.add_parser("report", help="the table (and chart) of a saved eval JSON again")
    r.add_argument("json")
    r.add_argument("--png", default=None)
    a = p.parse_args()
    try:
        {"plan": plan, "run": run, "eval": eval_cmd, "fid": fid_cmd, "report": report_cmd}[a.cmd](a)
    except FairSamplingError as e:  # a bad option the trainer would refuse (e.g. --reference-share), refused before any run
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    main()
