"""Command-line plumbing shared by the training commands: common options, resolution, dry-run, run folders."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from fair_core.errors import FairSamplingError, check_range

from .data import DataConfig
from .runs import command_line, new_run_dir, pick_device, write_json

log = logging.getLogger(__name__)

# Options that a resumed run may change; everything else is read back from the run folder.
RESUME_OVERRIDES = ("steps", "device", "time_limit", "threads", "save_every", "export")


def add_init(p: argparse.ArgumentParser, what: str) -> None:
    """``--init``: start a fresh run from a diffusion checkpoint of the same architecture (ignored on --resume)."""
    p.add_argument("--init", default=None, help=f"start from this diffusion checkpoint (same architecture): {what}; default: from scratch")


def add_common(p: argparse.ArgumentParser, *, steps: int, batch: int, lr: float) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--outdir", default="runs", help="parent folder of numbered run folders")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or finished run from its state.safetensors")
    g.add_argument("--dry-run", action="store_true", help="print the resolved options and exit without training")
    g.add_argument("--device", default=None, help="auto (CUDA if available) | cpu | cuda | cuda:N (default: auto)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--seed", type=int, default=0, help="seeds batches, noise and initialisation")
    g.add_argument("--steps", type=int, default=None, help=f"total optimisation steps (default: {steps})")
    g.add_argument("--batch", type=int, default=batch, help="batch size")
    g.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
    g.add_argument("--save-every", type=int, default=None, help="steps between resumable state saves (default: 500)")
    g.add_argument("--time-limit", type=float, default=None, help="stop (state saved, export written) after this many minutes; 0 = none")
    g.add_argument("--export", default=None, help="also write the exported checkpoint to this path")
    p.set_defaults(default_steps=steps)


def add_data(p: argparse.ArgumentParser, *, colour_ratio: float) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="colored-mnist", choices=["colored-mnist", "mnist"], help="data set")
    g.add_argument("--colour-ratio", type=float, default=colour_ratio, help="fraction of red images in the biased set")
    g.add_argument("--reference-fraction", type=float, default=0.0, help="balanced reference set size / biased set size")
    g.add_argument("--minority-classes", default="", help="comma-separated digits to under-represent, e.g. 4,5,7")
    g.add_argument("--minority-keep", type=float, default=1.0, help="fraction of each minority class kept")
    g.add_argument("--long-tail", type=float, default=1.0, help="rarest / most common class count (1: no tail)")
    g.add_argument("--part", default="biased", choices=["biased", "reference"], help="which part of the split to train on")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the split")


def data_config(opts: dict) -> DataConfig:
    try:
        minority = tuple(int(c) for c in str(opts["minority_classes"]).split(",") if c.strip())
    except ValueError as e:
        raise FairSamplingError(f"--minority-classes must be comma-separated digits like 4,5,7, got {opts['minority_classes']!r}") from e
    return DataConfig(
        dataset=opts["data"], split="train", part=opts["part"], colour_ratio=opts["colour_ratio"],
        reference_fraction=opts["reference_fraction"], minority_classes=minority, minority_keep=opts["minority_keep"],
        long_tail=opts["long_tail"], seed=opts["data_seed"],
    )


def resolve(args: argparse.Namespace, command: str) -> dict:
    """Resolved options: a fresh run's from ``args``; a resumed run's from its folder, plus RESUME_OVERRIDES."""
    given = {k: v for k, v in vars(args).items() if k not in ("func", "default_steps", "dry_run", "resume", "command", "argv")}
    if args.resume:
        path = Path(args.resume) / "training_options.json"
        if not path.is_file():
            raise FairSamplingError(f"--resume {args.resume!r}: no training_options.json there (not a run folder)")
        saved = json.loads(path.read_text())
        if saved["command"] != command:
            raise FairSamplingError(f"--resume {args.resume!r} is a {saved['command']!r} run, not {command!r}")
        opts = saved["options"] | {k: given[k] for k in RESUME_OVERRIDES if given.get(k) is not None}
    else:
        opts = given | {
            "steps": given["steps"] if given["steps"] is not None else args.default_steps,
            "device": given["device"] or "auto",
            "time_limit": given["time_limit"] or 0.0,
            "save_every": given["save_every"] or 500,
        }
    check_range("--steps", opts["steps"], 1, integer=True)
    check_range("--batch", opts["batch"], 1, integer=True)
    check_range("--lr", opts["lr"], 0.0, low_open=True)
    check_range("--save-every", opts["save_every"], 1, integer=True)
    pick_device(opts["device"])  # fail before a run folder is made
    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    return opts


def start_run(args: argparse.Namespace, command: str, opts: dict, desc: str) -> Path | None:
    """Dry run: print and return None. Otherwise the run folder, with ``training_options.json`` written."""
    record = {"command": command, "command_line": command_line(args.argv), "options": opts}
    if args.resume:
        saved = json.loads((Path(args.resume) / "training_options.json").read_text())
        record["command_line"] = saved["command_line"]
        record["resumed_with"] = saved.get("resumed_with", []) + [command_line(args.argv)]
    if args.dry_run:
        print(json.dumps(record, indent=2))
        return None
    run_dir = Path(args.resume) if args.resume else new_run_dir(Path(opts["outdir"]), desc)
    write_json(run_dir / "training_options.json", record)
    log.info("run folder: %s", run_dir)
    return run_dir


def recorded_command_line(run_dir: Path) -> str:
    """The command that started the run (resumes: ``recorded_resumes``)."""
    return json.loads((run_dir / "training_options.json").read_text())["command_line"]


def recorded_resumes(run_dir: Path) -> list[str]:
    """The commands that resumed the run, in order (``resumed_with`` in training_options.json); [] if none."""
    return json.loads((run_dir / "training_options.json").read_text()).get("resumed_with", [])
