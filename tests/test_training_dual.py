"""``python -m training dual``: dry run, auto bounds from a reference, export metadata, exact resume with lambdas, bad input."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from fair_core import checkpoints
from fair_core import constrained as C
from fair_core.denoiser import DiscreteVPDenoiser
from fair_core.errors import FairSamplingError
from fair_core.models import build_unet
from training import dsm, dual, dual_bounds
from training.__main__ import main
from training.data import DataConfig, ImageSet

TINY = ["dual", "--model", "tiny", "--batch", "4", "--dual-batch", "2", "--dual-every", "2", "--bound-eval", "8", "--threads", "1"]


@pytest.fixture(scope="module")
def data_cache():
    return {}


@pytest.fixture
def cached_data(monkeypatch, data_cache):
    """MNIST unpickling takes seconds; the runs here share one copy per split config."""
    cache, real = data_cache, dual.load_data
    monkeypatch.setattr(dual, "load_data", lambda cfg: cache[cfg] if cfg in cache else cache.setdefault(cfg, real(cfg)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An (untrained) tiny unconditional grey dsm checkpoint: only its losses matter, as the scale of the auto bounds."""
    opts = {"model": "tiny", "condition": "none", "prediction": "v_prediction"}
    cfg = dsm.model_config(opts, channels=1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ref") / "ref.safetensors"
    checkpoints.save(path, DiscreteVPDenoiser(build_unet(cfg), cfg), "dsm", cfg, {"steps": 0})
    return path


def test_dry_run_validates_and_writes_nothing(tmp_path, capsys):
    main([*TINY, "--steps", "3", "--bounds", "0.1,0.2,0.3", "--outdir", str(tmp_path / "runs"), "--dry-run"])
    record = json.loads(capsys.readouterr().out)
    o = record["options"]
    assert record["command"] == "dual" and o["data"] == "mnist" and o["minority_classes"] == "4,5,7" and o["minority_keep"] == 0.1
    assert o["constraints"] == "minority" and o["relaxation"] == "none"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, message", [
    (["--dual-lr", "0"], r"--dual-lr must be in \(0.0, inf\), got 0.0"),
    (["--bounds", "0.1,-0.2,0.1"], "bounds must be >= 0"),
    (["--bounds", "0.1,0.2"], r"--bounds needs one value per constraint set \(3\), got 2"),
    (["--bounds", "low"], "--bounds must be 'auto' or comma-separated numbers"),
    ([], "--bounds auto needs --bound-reference"),
    (["--bounds", "0.1", "--constraints", "4+x"], "--constraints must be 'minority' or comma-separated sets"),
    (["--bounds", "0.1", "--constraints", "12"], "--constraints must be 'minority' or comma-separated sets"),
    (["--bounds", "0.1", "--constraints", "minority", "--minority-classes", ""], "--constraints minority needs --minority-classes"),
    (["--bounds", "0.1,0.1,0.1", "--alpha", "0", "--relaxation", "resilient"], r"--alpha must be in \(0.0, inf\)"),
    (["--bounds", "0.1,0.1,0.1", "--bound-margin=-0.05,-0.1"], r"--bound-margin needs one value or one per constraint set \(3\), got 2"),
    (["--bounds", "0.1,0.1,0.1", "--bound-margin=-0.05,-1,0"], r"--bound-margin must be in \(-1.0, inf\), got -1.0"),
    (["--bounds", "0.1,0.1,0.1", "--bound-margin", "small"], "--bound-margin must be a number or comma-separated numbers"),
    (["--bounds", "0.1,0.1,0.1", "--slack-estimate", "paired"], r"--slack-estimate paired needs a frozen reference model: --slack-reference"),
    (["--bounds", "0.1,0.1,0.1", "--paired-every", "0"], r"--paired-every must be in \[1, inf\), got 0"),
    (["--bounds", "0.1,0.1,0.1", "--paired-every", "3", "--slack-estimate", "paired", "--slack-reference", "x.safetensors"],
     r"--paired-every must divide --dual-every \(2\) .*, got 3"),
    (["--bounds", "0.1,0.1,0.1", "--paired-every", "2"], r"--paired-every applies to --slack-estimate paired only, got 2"),
])
def test_bad_options_exit_with_a_clear_message(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main([*TINY, "--steps", "1", "--outdir", str(tmp_path), *args])
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not tmp_path.exists() or not any(tmp_path.iterdir()), "bad options are refused before a run folder is made"


def test_margins_one_for_all_sets_or_one_per_set():
    assert dual_bounds.parse_margins("-0.05", 3) == [-0.05] * 3
    assert dual_bounds.parse_margins(-0.05, 2) == [-0.05] * 2  # a float from an older options file
    assert dual_bounds.parse_margins("-0.05,0,-0.1", 3) == [-0.05, 0.0, -0.1]


def test_set_loss_stratifies_timesteps_and_draws_on_the_cpu():
    seen = []

    class Recorder(torch.nn.Module):
        cfg = type("cfg", (), {"num_train_timesteps": 1000})

        def loss(self, x0, class_labels=None, t=None, noise=None, generator=None):
            seen.append((t.clone(), noise.clone()))
            return torch.zeros(x0.shape[0])

    images = ImageSet(torch.zeros(5, 28, 28), torch.arange(5), torch.zeros(5, dtype=torch.long), 1)
    assert dual_bounds.set_loss(Recorder(), images, "none", 8, 0, "cpu") == 0.0
    (t, noise), = seen
    assert sorted((t // 125).tolist()) == list(range(8)), "one timestep in each eighth of [0, T)"
    dual_bounds.set_loss(Recorder(), images, "none", 8, 0, "cpu")
    assert torch.equal(seen[1][0], t) and torch.equal(seen[1][1], noise), "fixed by the seed"
    dual_bounds.set_loss(Recorder(), images, "none", 8, 1, "cpu")
    assert not torch.equal(seen[2][1], noise) and sorted((seen[2][0] // 125).tolist()) == list(range(8))


def test_empty_constraint_set_is_an_error():
    data = ImageSet(torch.rand(6, 28, 28), torch.tensor([0, 1, 2, 3, 4, 4]), torch.zeros(6, dtype=torch.long), 1)
    with pytest.raises(FairSamplingError, match=r"constraint set digit7 is empty: no such image in the 'biased' source"):
        dual.constraint_sets([((4,), ()), ((7,), ())], "biased", data, None)
    (four,) = dual.constraint_sets([((4,), ())], "biased", data, None)
    assert len(four) == 2 and four.digits.tolist() == [4, 4]
    with pytest.raises(FairSamplingError, match="constraint set green selects a colour; grey --data mnist has none"):
        dual.constraint_sets([((), (1,))], "biased", data, None)
    with pytest.raises(FairSamplingError, match=r"--constraint-source must be one of .*biased.*val.*got 'train'"):
        dual.constraint_sets([((4,), ())], "train", data, None)


def test_constraint_sets_by_digit_and_colour():
    assert dual.parse_constraints("minority", (4, 5, 7)) == [((4,), ()), ((5,), ()), ((7,), ())]
    assert dual.parse_constraints("4+5,green,7+green", ()) == [((4, 5), ()), ((), (1,)), ((7,), (1,))]
    assert [dual.set_name(s) for s in dual.parse_constraints("4+5,green,7+green", ())] == ["digit4+5", "green", "digit7+green"]
    colours = torch.tensor([0, 1, 1, 0, 1])
    data = ImageSet(torch.rand(5, 28, 28), torch.tensor([7, 7, 3, 3, 1]), colours, 3)
    green, green7 = dual.constraint_sets([((), (1,)), ((7,), (1,))], "biased", data, None)
    assert green.digits.tolist() == [7, 3, 1] and green7.digits.tolist() == [7] and green7.colours.tolist() == [1]


def test_reference_of_another_image_size_is_refused(tmp_path, capsys, cached_data):
    cfg = dsm.model_config({"model": "tiny", "condition": "none", "prediction": "v_prediction"}, channels=3)
    path = tmp_path / "rgb.safetensors"
    checkpoints.save(path, DiscreteVPDenoiser(build_unet(cfg), cfg), "dsm", cfg, {})
    with pytest.raises(SystemExit) as e:
        main([*TINY, "--steps", "1", "--bound-reference", str(path), "--outdir", str(tmp_path / "runs")])
    assert e.value.code == 2
    assert "models 3x28px images; the constraint sets are 1x28px" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*TINY, "--steps", "1", "--bounds", "0.1,0.1,0.1", "--init", str(path), "--outdir", str(tmp_path / "runs2")])
    assert re.search(r"--init .* has another model config than this run .*'channels': \(3, 1\)", capsys.readouterr().err)


@pytest.mark.parametrize("estimate", ["plain", "paired"])
def test_auto_bounds_export_metadata_and_exact_resume(tmp_path, reference, cached_data, estimate):
    common = [*TINY, "--bound-reference", str(reference), "--relaxation", "resilient", "--alpha", "4", "--init", str(reference),
              "--dual-start", "2", "--slack-estimate", estimate]
    main([*common, "--steps", "4", "--outdir", str(tmp_path / "a"), "--export", str(tmp_path / "copy.safetensors")])
    main([*common, "--steps", "2", "--outdir", str(tmp_path / "b")])
    (a,), (b,) = list((tmp_path / "a").iterdir()), list((tmp_path / "b").iterdir())
    main(["dual", "--resume", str(b), "--steps", "4"])
    sa, sb = load_file(str(a / "state.safetensors")), load_file(str(b / "state.safetensors"))
    assert sa.keys() == sb.keys() and "extra.lambdas" in sa and "extra.tracker.running" in sa
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-6, equal_nan=True), k
    assert (sa["extra.lambdas"] > 0).all(), "an untrained model violates bounds below the reference loss: lambdas rise"
    log = [json.loads(line) for line in (a / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and log[-1]["lam_4"] > 0

    ckpt = checkpoints.load(tmp_path / "copy.safetensors", kind="dual")
    rec = ckpt.training["constraints"]
    assert ckpt.kind == "dual" and ckpt.training["steps"] == 4 and ckpt.config.channels == 1 and ckpt.config.condition == "none"
    assert rec["names"] == ["digit4", "digit5", "digit7"] and rec["sets"][1] == {"digits": [5], "colours": []} and rec["source"] == "biased"
    ref = checkpoints.load(reference).model
    data_cfg = DataConfig(**(ckpt.training["data"] | {"minority_classes": tuple(ckpt.training["data"]["minority_classes"])}))
    cons = dual.constraint_sets(dual.parse_constraints("minority", (4, 5, 7)), "biased", dual.load_data(data_cfg), None)
    expected = [0.95 * dual_bounds.set_loss(ref, c, "none", 8, 12345 + i, "cpu") for i, c in enumerate(cons)]
    assert rec["bounds"] == pytest.approx(expected, rel=1e-5), "auto bounds = (1 - 0.05) x the reference's loss"
    assert rec["lambdas"] == pytest.approx(sa["extra.lambdas"].tolist())
    assert rec["mode"] == "resilient" and rec["relaxation"] == pytest.approx([l / 4 for l in rec["lambdas"]])
    assert rec["slacks"] == pytest.approx([l - b - u for l, b, u in zip(rec["losses"], rec["bounds"], rec["relaxation"])])
    assert rec["dual"]["start"] == 2 and rec["dual"]["init"] == str(reference)
    assert rec["dual"]["slack_estimate"] == estimate
    assert rec["dual"]["slack_reference"] == (str(reference) if estimate == "paired" else None)
    assert rec["dual"]["paired_every"] == 1
    assert ("extra.slack_reference_means" in sa) == (estimate == "paired")
    if estimate == "paired":  # the bound reference is the slack reference: its set losses serve both
        assert sa["extra.slack_reference_means"].tolist() == pytest.approx([b / 0.95 for b in rec["bounds"]], rel=1e-5)
    assert "digit5" in C.constraint_report(rec)
    assert {"loss", "lam_4", "slack_7"} <= log[-1].keys()


def test_lambdas_wait_for_dual_start(tmp_path, cached_data):
    main([*TINY, "--bounds", "0,0,0", "--steps", "4", "--dual-start", "4", "--outdir", str(tmp_path)])
    (run,) = list(tmp_path.iterdir())
    assert load_file(str(run / "state.safetensors"))["extra.lambdas"].tolist() == [0.0, 0.0, 0.0], "no dual step before --dual-start"


def test_stratified_constraint_timesteps(tmp_path, cached_data, monkeypatch):
    """--constraint-timesteps stratified: each set's images of a step get one timestep in each n-th of [0, T); the
    data batch keeps uniform draws. The default (uniform) leaves t to the loss, as before."""
    seen = []
    loss = DiscreteVPDenoiser.loss

    def recording(self, x0, class_labels=None, t=None, noise=None, generator=None):
        seen.append(None if t is None else t.cpu().clone())
        return loss(self, x0, class_labels, t=t, noise=noise, generator=generator)

    monkeypatch.setattr(DiscreteVPDenoiser, "loss", recording)
    args = [*TINY, "--dual-batch", "4", "--bounds", "0.1,0.1,0.1", "--steps", "2", "--bound-eval", "4"]
    main([*args, "--outdir", str(tmp_path / "a"), "--constraint-timesteps", "stratified"])
    steps = [t for t in seen if t is not None and t.numel() == 4 + 3 * 4]
    assert len(steps) == 2
    for t in steps:
        for part in t[4:].view(3, 4):
            assert sorted((part // 250).tolist()) == [0, 1, 2, 3], part
    seen.clear()
    main([*args, "--outdir", str(tmp_path / "b")])
    assert seen.count(None) == 2, "uniform: the loss draws t itself"
    (run,) = (tmp_path / "a").iterdir()
    assert json.loads((run / "training_options.json").read_text())["options"]["constraint_timesteps"] == "stratified"
    assert dual_bounds.stratified_timesteps(5, 1000, torch.Generator().manual_seed(0)).div(200, rounding_mode="floor").sort().values.tolist() == [0, 1, 2, 3, 4]


def test_paired_slack_estimate_leaves_the_primal_step_and_tracks_the_control_variate(tmp_path, reference, cached_data):
    """--slack-estimate paired: the same draws as the loss makes (weights bit-identical while lambda is 0), and at the
    first step, where the model is still its reference, the tracked loss is exactly the reference's set loss."""
    args = [*TINY, "--bounds", "0.1,0.1,0.1", "--init", str(reference), "--dual-start", "4"]
    main([*args, "--steps", "1", "--outdir", str(tmp_path / "paired1"), "--slack-estimate", "paired"])
    (run,) = (tmp_path / "paired1").iterdir()
    state = load_file(str(run / "state.safetensors"))
    means = state["extra.slack_reference_means"]
    ref = checkpoints.load(reference).model
    data_cfg = DataConfig(dataset="mnist", minority_classes=(4, 5, 7), minority_keep=0.1)
    cons = dual.constraint_sets(dual.parse_constraints("minority", (4, 5, 7)), "biased", dual.load_data(data_cfg), None)
    assert means.tolist() == pytest.approx([dual_bounds.set_loss(ref, c, "none", 8, 12345 + i, "cpu") for i, c in enumerate(cons)])
    assert torch.allclose(state["extra.tracker.running"], means, atol=1e-5), "l_theta - l_ref + L_ref with theta = ref"

    for estimate in ("plain", "paired"):
        main([*args, "--steps", "3", "--outdir", str(tmp_path / estimate), "--slack-estimate", estimate])
    (a,), (b,) = (tmp_path / "plain").iterdir(), (tmp_path / "paired").iterdir()
    sa, sb = load_file(str(a / "state.safetensors")), load_file(str(b / "state.safetensors"))
    for k in (k for k in sa if k.startswith("model.")):
        assert torch.equal(sa[k], sb[k]), k
    assert not torch.allclose(sa["extra.tracker.running"], sb["extra.tracker.running"]), "the tracked estimates differ"


def test_paired_every_k_runs_the_reference_on_every_kth_step_only(tmp_path, reference, cached_data):
    """--paired-every 2: the same primal steps as every-step pairing (lambda 0), and only the even-numbered steps'
    estimates reach the tracker."""
    args = [*TINY, "--bounds", "0.1,0.1,0.1", "--init", str(reference), "--dual-start", "8", "--dual-every", "4",
            "--slack-estimate", "paired", "--steps", "3"]
    states = {}
    for k in ("1", "2"):
        main([*args, "--paired-every", k, "--outdir", str(tmp_path / k)])
        (run,) = (tmp_path / k).iterdir()
        states[k] = load_file(str(run / "state.safetensors"))
    assert states["1"]["extra.tracker.count"].item() == 3 and states["2"]["extra.tracker.count"].item() == 1
    for key in (k for k in states["1"] if k.startswith("model.")):
        assert torch.equal(states["1"][key], states["2"][key]), key
    ((run,),) = [list((tmp_path / "2").iterdir())]
    assert json.loads((run / "training_options.json").read_text())["options"]["paired_every"] == 2
