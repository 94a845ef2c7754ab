"""Training commands: dry run, options file, export metadata, exact resume (also after SIGKILL), bad options."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fair_core import checkpoints
from training.__main__ import main

TINY = ["dsm", "--model", "tiny", "--batch", "4", "--threads", "1"]
ROOT = Path(__file__).resolve().parent.parent


def run_dirs(outdir: Path):
    return sorted(p for p in outdir.iterdir() if p.is_dir())


def test_dry_run_prints_resolved_options_and_writes_nothing(tmp_path, capsys):
    main([*TINY, "--steps", "3", "--outdir", str(tmp_path / "runs"), "--dry-run"])
    record = json.loads(capsys.readouterr().out)
    assert record["command"] == "dsm" and record["options"]["steps"] == 3 and record["options"]["device"] == "auto"
    assert record["options"]["colour_ratio"] == 0.9
    assert not (tmp_path / "runs").exists()


def test_export_follows_the_contract(tmp_path):
    main([*TINY, "--steps", "2", "--outdir", str(tmp_path), "--export", str(tmp_path / "copy.safetensors")])
    (run,) = run_dirs(tmp_path)
    assert run.name == "00000-dsm-colored-mnist"
    options = json.loads((run / "training_options.json").read_text())
    assert options["command_line"].startswith("python -m training dsm")
    for path in (run / "export.safetensors", tmp_path / "copy.safetensors"):
        ckpt = checkpoints.load(path, kind="dsm")
        assert ckpt.training["steps"] == 2 and ckpt.training["seed"] == 0
        assert ckpt.training["data"]["colour_ratio"] == 0.9 and ckpt.training["command"] == options["command_line"]
    assert len((run / "log.jsonl").read_text().splitlines()) == 1


def test_resume_continues_exactly(tmp_path):
    main([*TINY, "--steps", "4", "--outdir", str(tmp_path / "a")])
    main([*TINY, "--steps", "2", "--outdir", str(tmp_path / "b")])
    (b,) = run_dirs(tmp_path / "b")
    main(["dsm", "--resume", str(b), "--steps", "4", "--export", str(tmp_path / "longer.safetensors")])
    (a,) = run_dirs(tmp_path / "a")
    sa, sb = load_file(str(a / "state.safetensors")), load_file(str(b / "state.safetensors"))
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-6), k
    record = checkpoints.load(b / "export.safetensors").training
    assert record["steps"] == 4 and record["resumed_with"] == [
        f"python -m training dsm --resume {b} --steps 4 --export {tmp_path / 'longer.safetensors'}"]
    assert checkpoints.load(tmp_path / "longer.safetensors").training["steps"] == 4, "a resumed run may export elsewhere"
    assert "resumed_with" in json.loads((b / "training_options.json").read_text())


def test_resume_after_sigkill(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "training", *TINY, "--steps", "100000", "--save-every", "1", "--outdir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*/state.safetensors")) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (run,) = run_dirs(tmp_path)
    assert not (run / "export.safetensors").exists()
    from safetensors import safe_open

    with safe_open(str(run / "state.safetensors"), "pt") as f:
        killed_at = int(f.metadata()["step"])
    assert killed_at >= 1
    main(["dsm", "--resume", str(run), "--steps", str(killed_at + 2)])
    assert checkpoints.load(run / "export.safetensors").training["steps"] == killed_at + 2
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")], "a save cut off by the kill must be cleaned up on resume"


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], r"--steps must be in \[1, inf\), got 0"),
    (["--lr", "0"], r"--lr must be in \(0.0, inf\), got 0.0"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--reference-fraction", "1.5"], r"reference_fraction must be in \[0.0, 1.0\)"),
    (["--minority-classes", "4,x"], "--minority-classes must be comma-separated digits"),
])
def test_bad_options_exit_with_a_clear_message(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main([*TINY, "--steps", "1", "--outdir", str(tmp_path), *args])
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_resume_of_another_command_is_refused(tmp_path, capsys):
    main([*TINY, "--steps", "1", "--outdir", str(tmp_path)])
    (run,) = run_dirs(tmp_path)
    with pytest.raises(SystemExit):
        main(["classifier", "--resume", str(run)])
    assert "is a 'dsm' run, not 'classifier'" in capsys.readouterr().err


def test_init_starts_from_the_given_checkpoint(tmp_path):
    """``--init`` (the matched control of a fine-tuning run) starts from the checkpoint's weights, not from scratch."""
    main([*TINY, "--steps", "2", "--seed", "3", "--outdir", str(tmp_path / "a"), "--export", str(tmp_path / "a.safetensors")])
    main([*TINY, "--steps", "1", "--lr", "1e-9", "--outdir", str(tmp_path / "b"), "--init", str(tmp_path / "a.safetensors"),
          "--export", str(tmp_path / "b.safetensors")])
    main([*TINY, "--steps", "1", "--lr", "1e-9", "--outdir", str(tmp_path / "c"), "--export", str(tmp_path / "c.safetensors")])
    a, b, c = (checkpoints.load(tmp_path / f"{n}.safetensors") for n in "abc")
    wa, wb, wc = (torch.cat([p.flatten() for p in m.model.parameters()]) for m in (a, b, c))
    assert torch.allclose(wa, wb, atol=1e-5)
    assert (wa - wc).abs().max() > 1e-2
    assert b.training["init"] == str(tmp_path / "a.safetensors") and c.training["init"] is None


def test_progress_smoothing_starts_at_the_first_finite_value():
    from training.runs import smoothed

    s = smoothed({}, {"slack": math.nan, "loss": 1.0})
    s = smoothed(s, {"slack": 0.2, "loss": 0.0})
    assert s["slack"] == 0.2 and s["loss"] == pytest.approx(0.95)
    assert smoothed(s, {"slack": 0.4, "loss": 0.0})["slack"] == pytest.approx(0.21)
