"""``python -m fair_core switch``: searched or given tau, the switched batch, the curve, and its bad input."""
import json

import numpy as np
import pytest
import torch

from fair_core import checkpoints
from fair_core.cli import main
from fair_core.models import UNET_CONFIGS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "dsm.safetensors"
    torch.manual_seed(0)
    checkpoints.save(path, checkpoints.KINDS["dsm"].build(UNET_CONFIGS["tiny"]), "dsm", UNET_CONFIGS["tiny"])
    return str(path)


def test_switch_searches_tau_and_writes_batch_and_curve(tiny, tmp_path, capsys):
    out, curve = tmp_path / "s.npz", tmp_path / "curve.png"
    main(["switch", tiny, "--s0", "3", "--s1", "8", "--n", "6", "--steps", "4", "--search-n", "3", "--out", str(out),
          "--curve", str(curve), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert 0 <= report["tau"] <= 4 and len(report["objective"]) == 5 and report["fraction"] == report["tau"] / 4
    assert report["objective"][report["tau"]] == min(report["objective"])
    data = np.load(out)
    assert data["images"].shape == (6, 28, 28, 3) and data["labels"].tolist() == [3, 3, 3, 8, 8, 8]  # the starting label
    assert curve.read_bytes()[:4] == b"\x89PNG"


def test_switch_with_a_given_tau(tiny, tmp_path, capsys):
    main(["switch", tiny, "--tau", "2", "--direction", "s1->s0", "--n", "2", "--steps", "4", "--out", str(tmp_path / "s.npz"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["tau"] == 2 and report["fraction"] == 0.5 and "objective" not in report
    assert np.load(tmp_path / "s.npz")["labels"].tolist() == [1, 1]


@pytest.mark.parametrize("args, message", [
    (["--tau", "half"], "--tau must be 'auto' or a step index, got 'half'"),
    (["--tau", "9"], r"tau must be in \[0, 4\], got 9"),
    (["--direction", "both"], "direction must be one of"),
    (["--search-n", "1"], "search batch of at least 2"),
    (["--weighting", "sqrt"], "weighting must be one of"),
])
def test_switch_bad_input(tiny, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["switch", tiny, "--n", "2", "--steps", "4", "--out", str(tmp_path / "s.npz"), *args])
    assert e.value.code == 2 and __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "s.npz").exists()
