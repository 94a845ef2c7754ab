"""What every training command shares: numbered run folders, resolved options, resumable state, EMA, the loop.

A run folder ``runs/00003-dsm-colored-mnist/`` holds

* ``training_options.json``: the resolved options (written before the first step, like EDM's ``train.py``);
* ``state.safetensors``: model, EMA and optimizer tensors plus the step, rewritten atomically every
  ``save_every`` steps, so a killed run resumes with ``--resume RUN_DIR`` (no pickles);
* ``log.jsonl``: one line of scalars per logged step;
* ``export.safetensors``: the EMA weights in the checkpoint contract (``fair_core.checkpoints``).

Batches and noise come from a generator seeded by ``(seed, step)``, so a resumed run continues exactly as an
uninterrupted one would.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fair_core import checkpoints
from fair_core.checkpoints import atomic_write
from fair_core.errors import FairSamplingError

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; anything else must name an available device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FairSamplingError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FairSamplingError(f"--device {name!r} asked for CUDA but torch sees no CUDA device; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FairSamplingError(f"--device {name!r}: torch sees only {torch.cuda.device_count()} CUDA device(s)")
    return device


def step_generator(seed: int, step: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + step)
    return g


def new_run_dir(outdir: Path, desc: str) -> Path:
    """``outdir/NNNNN-desc`` with the next free number; runs started at the same moment each get their own folder."""
    outdir.mkdir(parents=True, exist_ok=True)
    while True:
        ids = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"^(\d{5})-", p.name))]
        run = outdir / f"{max(ids, default=-1) + 1:05d}-{desc}"
        try:
            run.mkdir()
            return run
        except FileExistsError:  # another run took this number between the listing and the mkdir
            continue


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def command_line(argv: list[str]) -> str:
    return " ".join(["python -m training", *argv])


class EMA:
    """Exponential moving average of a model's weights, with the usual warm-up ``min(decay, (1+n)/(10+n))``."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def state_tensors(model: nn.Module, ema: EMA | None, opt: torch.optim.Optimizer, extra: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.model.state_dict().items()})
    sd = opt.state_dict()
    for i, st in sd["state"].items():
        for name, v in st.items():
            tensors[f"opt.{i}.{name}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors.update({f"extra.{k}": v for k, v in extra.items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return tensors, {"param_groups": json.dumps(sd["param_groups"])}


def save_state(path: Path, step: int, model, ema, opt, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors, meta = state_tensors(model, ema, opt, extra or {})
    meta["step"] = str(step)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_state(path: Path, model, ema, opt, device) -> tuple[int, dict[str, torch.Tensor]]:
    """Restore model, EMA and optimizer from ``path``; returns the step and the ``extra`` tensors."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path), device=str(device))

    def part(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    model.load_state_dict(part("model."), strict=True)
    if ema is not None:
        ema.model.load_state_dict(part("ema."), strict=True)
    opt_state: dict[int, dict] = {}
    for k, v in part("opt.").items():
        i, name = k.split(".", 1)
        # Adam keeps ``step`` on the CPU (unless capturable/fused, which load_state_dict handles): a CUDA step would
        # cost a device sync per parameter in every optimizer step.
        opt_state.setdefault(int(i), {})[name] = v.cpu() if name == "step" else v
    opt.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["step"]), part("extra.")


@dataclass
class Loop:
    """The shared training loop: ``step_fn(step) -> {scalar name: float}`` does one optimisation step."""

    run_dir: Path
    model: nn.Module
    opt: torch.optim.Optimizer
    ema: EMA | None
    steps: int
    save_every: int = 500
    log_every: int = 25
    time_limit_min: float = 0.0  # 0 = no limit; otherwise stop (saving state) after this many minutes
    extra_state: Callable[[], dict[str, torch.Tensor]] = field(default=lambda: {})

    def run(self, step_fn: Callable[[int], dict[str, float]], start: int, desc: str) -> int:
        from tqdm import tqdm

        state_path = self.run_dir / "state.safetensors"
        for stale in self.run_dir.glob(".*.tmp"):  # a save cut off by a kill; state.safetensors itself is intact
            log.info("removing %s left by an interrupted save", stale.name)
            stale.unlink()
        t0 = time.monotonic()
        smooth: dict[str, float] = {}
        step = start
        with open(self.run_dir / "log.jsonl", "a") as logf, tqdm(total=self.steps, initial=start, desc=desc, dynamic_ncols=True) as bar:
            while step < self.steps:
                self.model.train()
                scalars = step_fn(step)
                step += 1
                if self.ema is not None:
                    self.ema.update(self.model, step)
                smooth = smoothed(smooth, scalars)
                bar.set_postfix({k: f"{v:.4g}" for k, v in smooth.items()}, refresh=False)
                bar.update(1)
                if step % self.log_every == 0 or step == self.steps:
                    logf.write(json.dumps({"step": step, "time_s": round(time.monotonic() - t0, 2), **scalars}) + "\n")
                    logf.flush()
                out_of_time = self.time_limit_min > 0 and time.monotonic() - t0 > 60 * self.time_limit_min
                if step % self.save_every == 0 or step == self.steps or out_of_time:
                    save_state(state_path, step, self.model, self.ema, self.opt, self.extra_state())
                if out_of_time:
                    log.warning("time limit of %s min reached at step %d; state saved, resume with --resume %s", self.time_limit_min, step, self.run_dir)
                    break
        return step


def smoothed(smooth: dict[str, float], scalars: dict[str, float], beta: float = 0.05) -> dict[str, float]:
    """The progress bar's EMA of each scalar; a value that is not yet finite (a slack before its first estimate)
    is replaced by the next one instead of turning the average into NaN for good."""
    return {k: v if not math.isfinite(smooth.get(k, math.nan)) else (1 - beta) * smooth[k] + beta * v for k, v in scalars.items()}


def adam_ema_resume(model, opts: dict, run_dir: Path, device):
    """Adam at ``opts['lr']``, an EMA of ``model`` at ``opts['ema']``, and the step to start from (0, or the saved
    state's step when ``run_dir`` holds one): the opening of every diffusion training command."""
    opt = torch.optim.Adam(model.parameters(), lr=opts["lr"])
    ema = EMA(model, opts["ema"])
    start = 0
    if (run_dir / "state.safetensors").exists():
        start, _ = load_state(run_dir / "state.safetensors", model, ema, opt, device)
        log.info("resumed at step %d", start)
    return opt, ema, start


def init_from(model, path: str, cfg) -> None:
    """Copy the weights of a diffusion checkpoint whose config equals this run's (else a clear error)."""
    ckpt = checkpoints.load(path, kind=checkpoints.DIFFUSION_KINDS)
    if ckpt.config != cfg:
        diff = {k: (getattr(ckpt.config, k), getattr(cfg, k)) for k in vars(cfg) if getattr(ckpt.config, k) != getattr(cfg, k)}
        raise FairSamplingError(f"--init {path!r} has another model config than this run (checkpoint, run): {diff}")
    model.load_state_dict(ckpt.model.state_dict(), strict=True)
    log.info("initialised from %s (%s, %s steps)", path, ckpt.kind, ckpt.training.get("steps"))
