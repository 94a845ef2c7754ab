"""``python -m training tiw``: dry run, a few-step run end to end (discriminator + score model), reuse of a
discriminator, resume, and the bad inputs of issue 4."""
import json

import pytest
import torch

from fair_core import checkpoints
from fair_core.density_ratio import (DiscriminatorConfig, TimeDependentDiscriminator, correction_matching_loss, describe_tiw_training,
                                     log_ratio, log_ratio_and_grad)
from fair_core.models import named_config
from training.__main__ import main
from training.tiw import tiw_terms

TINY = ["tiw", "--model", "tiny", "--disc-model", "tiny", "--batch", "4", "--threads", "1"]


def test_dry_run_prints_resolved_options_and_writes_nothing(tmp_path, capsys):
    main([*TINY, "--steps", "3", "--outdir", str(tmp_path / "runs"), "--dry-run"])
    record = json.loads(capsys.readouterr().out)
    opts = record["options"]
    assert record["command"] == "tiw" and opts["steps"] == 3 and opts["loss_mode"] == "tiw"
    assert opts["reference_fraction"] == 0.05 and opts["colour_ratio"] == 0.9 and opts["clip"] == 1e-5
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiw")
    main([*TINY, "--steps", "3", "--disc-steps", "4", "--save-every", "2", "--outdir", str(out), "--export", str(out / "tiw.safetensors")])
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return out, run


def test_tiny_run_exports_a_tiw_model_and_its_discriminator(tiny_run):
    out, run = tiny_run
    assert run.name == "00000-tiw-colored-mnist"
    ckpt = checkpoints.load(out / "tiw.safetensors", kind="tiw")
    t = ckpt.training
    assert t["steps"] == 3 and t["reference_fraction"] == 0.05 and t["bias"] == {"attribute": "colour", "colour_ratio": 0.9}
    assert t["loss_mode"] == "tiw" and t["n_reference"] == 2380 and t["n_bias"] == 47620
    assert t["discriminator"]["trained_in_run"] and t["discriminator"]["steps"] == 4
    assert t["command"].startswith("python -m training tiw")
    facts = describe_tiw_training(t)
    assert "reference fraction: 0.05 (D_ref 2380 images" in facts and "colour ratio 0.9" in facts and "trained in the run, 4 steps" in facts
    assert t["init"] is None and "started from scratch" in facts and "clip 1e-05, mean pool" in facts
    disc = checkpoints.load(run / "discriminator.safetensors", kind="discriminator")
    assert isinstance(disc.model, TimeDependentDiscriminator) and disc.config.prior_ref == 0.5 and disc.config.channels == 3
    assert disc.config.num_classes == 10 and "w_t(x | y), y = the digit label" in facts  # the score model is digit-conditional
    x = torch.zeros(2, 3, 28, 28)
    assert ckpt.model(x, torch.ones(2), class_labels=torch.tensor([3, -1])).shape == x.shape
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert logs[-1]["step"] == 3 and logs[-1]["mean_w_bias"] > 0


def test_discriminator_batch_and_schedule_are_their_own_and_recorded(tmp_path):
    main([*TINY, "--steps", "1", "--disc-steps", "2", "--disc-batch", "6", "--disc-schedule", "cosine", "--disc-model", "medium",
          "--disc-pool", "dense", "--disc-film", "scale_shift", "--outdir", str(tmp_path), "--export", str(tmp_path / "tiw.safetensors")])
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    disc = checkpoints.load(run / "discriminator.safetensors", kind="discriminator")
    assert disc.training["batch"] == 6 and disc.training["lr_schedule"] == "cosine" and disc.config.widths == (64, 128, 128)
    assert disc.config.pool == "dense" and disc.model.head.in_features == 128 * 7 * 7
    assert disc.config.film == "scale_shift" and disc.model.film[0].out_features == 2 * 64
    facts = describe_tiw_training(checkpoints.load(tmp_path / "tiw.safetensors", kind="tiw").training)
    assert "2 steps, widths (64, 128, 128), clip 1e-05, dense pool, scale_shift film, objective bce" in facts
    with pytest.raises(SystemExit):
        main([*TINY, "--disc-batch", "1", "--outdir", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_disc_condition_none_gives_the_marginal_ratio_and_a_mismatch_is_refused(tiny_run, tmp_path, capsys):
    out, run = tiny_run
    main([*TINY, "--steps", "1", "--disc-steps", "2", "--disc-condition", "none", "--outdir", str(tmp_path / "a"),
          "--export", str(tmp_path / "tiw.safetensors")])
    t = checkpoints.load(tmp_path / "tiw.safetensors", kind="tiw").training
    assert t["discriminator"]["config"]["num_classes"] == 0 and "marginal w_t(x)" in describe_tiw_training(t)
    with pytest.raises(SystemExit):
        main([*TINY, "--steps", "1", "--disc-condition", "none", "--discriminator", str(run / "discriminator.safetensors"),
              "--outdir", str(tmp_path / "b")])
    assert ("is conditional on 10 classes; --disc-condition 'none' with --condition 'digit' needs an unconditional one"
            in capsys.readouterr().err)
    assert not (tmp_path / "b").exists()


def test_tiw_terms_read_the_ratio_given_each_row_s_label():
    cfg = DiscriminatorConfig(channels=3, widths=(8, 16), num_classes=10)
    torch.manual_seed(0)
    disc = TimeDependentDiscriminator(cfg)
    torch.nn.init.normal_(disc.label_embed.weight)
    x0 = torch.randn(4, 3, 28, 28)
    x, sigma = x0 + torch.randn_like(x0), torch.full((4,), 1.0)
    labels, is_bias = torch.tensor([2, -1, 7, 5]), torch.tensor([True, True, False, True])
    log_w, grad = tiw_terms(disc, "tiw", x0, x, sigma, is_bias, 0.002, labels)
    want, want_grad = log_ratio_and_grad(disc, x[is_bias], sigma[is_bias], labels[is_bias])
    assert torch.equal(log_w[is_bias], want) and torch.equal(grad[is_bias], want_grad) and log_w[2] == 0
    assert not torch.equal(want, log_ratio_and_grad(disc, x[is_bias], sigma[is_bias])[0])  # the labels were read
    iw, _ = tiw_terms(disc, "iw", x0, x, sigma, is_bias, 0.002, labels)
    assert torch.equal(iw[is_bias], log_ratio(disc, x0[is_bias], torch.full((3,), 0.002), labels[is_bias]))


def test_given_discriminator_is_used_init_is_recorded_and_resume_continues(tiny_run, tmp_path):
    out, run = tiny_run
    disc_path, init = run / "discriminator.safetensors", str(out / "tiw.safetensors")
    args = [*TINY, "--steps", "2", "--save-every", "1", "--outdir", str(tmp_path), "--discriminator", str(disc_path), "--loss-mode", "iw",
            "--init", init]
    main(args)
    (run2,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not (run2 / "discriminator.safetensors").exists()
    first = checkpoints.read_metadata(run2 / "export.safetensors")["training"]
    assert first["discriminator"]["path"] == str(disc_path) and not first["discriminator"]["trained_in_run"]
    assert first["loss_mode"] == "iw" and first["init"] == init and f"started from {init}" in describe_tiw_training(first)
    assert first["resumed_with"] == [] and "resumed with" not in describe_tiw_training(first)
    main(["tiw", "--resume", str(run2), "--steps", "4"])
    resumed = checkpoints.read_metadata(run2 / "export.safetensors")["training"]
    assert resumed["steps"] == 4 and f"resumed with: python -m training tiw --resume {run2} --steps 4" in describe_tiw_training(resumed)


@pytest.mark.parametrize("extra, match", [
    (["--reference-fraction", "0"], "reference-fraction"),
    (["--reference-fraction", "1.0"], "reference-fraction"),
    (["--part", "reference"], "--part"),
    (["--clip", "0.7"], "clip"),
    (["--correction-sigma-min", "-1"], "--correction-sigma-min"),
    (["--correction-sigma-min", "3", "--loss-mode", "weight"], "does not use; give it with --loss-mode tiw or correction"),
    (["--bias-sampling", "ratio", "--loss-mode", "correction"], "give it with --loss-mode tiw / weight / iw"),
    (["--bias-sampling", "ratio", "--loss-mode", "none"], "which --loss-mode 'none' does not use"),
    (["--bias-sampling", "uniformly"], "--bias-sampling"),
    (["--reference-share", "1"], "--reference-share must be 'union' or a number in (0, 1), got '1'"),
    (["--reference-share", "half"], "--reference-share must be 'union' or a number in (0, 1), got 'half'"),
    (["--reference-share", "0.5", "--loss-mode", "weight"], "give it with --loss-mode tiw / iw, not 'weight'"),
])
def test_bad_options_are_refused_before_a_run_folder(tmp_path, capsys, extra, match):
    with pytest.raises(SystemExit) as e:
        main([*TINY, "--steps", "1", "--outdir", str(tmp_path), *extra])
    assert e.value.code == 2 and match in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_discriminator_for_another_image_size_is_refused(tmp_path, capsys):
    wrong = TimeDependentDiscriminator(DiscriminatorConfig(arch="cnn", channels=3, sample_size=32, widths=(8,)))
    path = checkpoints.save(tmp_path / "d32.safetensors", wrong, "discriminator", wrong.cfg)
    with pytest.raises(SystemExit):
        main([*TINY, "--steps", "1", "--outdir", str(tmp_path / "runs"), "--discriminator", str(path)])
    assert "size 32; this data needs a cnn with 3 channels and size 28" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_diffusion_checkpoint_given_as_discriminator_is_refused(tmp_path, capsys):
    cfg = named_config("unet", "tiny")
    path = checkpoints.save(tmp_path / "dsm.safetensors", checkpoints.KINDS["dsm"].build(cfg), "dsm", cfg)
    with pytest.raises(SystemExit):
        main([*TINY, "--steps", "1", "--outdir", str(tmp_path / "runs"), "--discriminator", str(path)])
    assert "is a 'dsm' checkpoint; expected kind 'discriminator'" in capsys.readouterr().err


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_loss_mode_none_is_the_ddpm_loss_of_training_dsm(prediction):
    """tiw_loss with lambda(sigma) in denoiser space == DiscreteVPDenoiser.loss in network space, same t and noise."""
    import dataclasses

    from fair_core.denoiser import DiscreteVPDenoiser
    from fair_core.models import build_unet
    from training.tiw import tiw_loss

    cfg = dataclasses.replace(named_config("unet", "tiny"), condition="none", num_classes=0, prediction_type=prediction)
    torch.manual_seed(0)
    model = DiscreteVPDenoiser(build_unet(cfg), cfg)
    x0 = torch.rand(6, 3, 28, 28) * 2 - 1
    ours, log_w = tiw_loss(model, None, "none", x0, None, torch.ones(6, dtype=torch.bool), torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, cfg.num_train_timesteps, (6,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    theirs = model.loss(x0, None, t=t, noise=noise)
    assert torch.allclose(ours, theirs, rtol=2e-3, atol=1e-5) and torch.equal(log_w, torch.zeros(6))


def test_a_reference_set_not_smaller_than_the_biased_set_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([*TINY, "--steps", "1", "--outdir", str(tmp_path), "--reference-fraction", "0.8", "--long-tail", "0.01"])
    assert "must be smaller than the biased set" in capsys.readouterr().err


def test_weighted_objective_trains_a_teacher_then_a_discriminator_on_biased_images(tmp_path):
    main([*TINY, "--steps", "1", "--disc-steps", "2", "--disc-objective", "weighted", "--outdir", str(tmp_path),
          "--export", str(tmp_path / "tiw.safetensors")])
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    teacher = checkpoints.load(run / "discriminator_teacher.safetensors", kind="discriminator")
    disc = checkpoints.load(run / "discriminator.safetensors", kind="discriminator")
    assert teacher.training["objective"] == "bce" and teacher.training["steps"] == 2
    assert disc.training["objective"] == "weighted" and disc.training["teacher"] == str(run / "discriminator_teacher.safetensors")
    assert disc.training["teacher_w0_mean"] > 0 and disc.training["batch"] == 4
    assert not torch.equal(teacher.model.head.weight, disc.model.head.weight)
    facts = checkpoints.read_metadata(tmp_path / "tiw.safetensors")["training"]["discriminator"]
    assert facts["objective"] == "weighted" and facts["trained_in_run"] and facts["teacher"] == disc.training["teacher"]
    assert facts["command"] == disc.training["command"] and facts["command"].startswith("python -m training tiw")
    assert "mean pool, objective weighted, w_t(x | y), y = the digit label)" in describe_tiw_training(checkpoints.read_metadata(tmp_path / "tiw.safetensors")["training"])


def test_clean_log_ratios_are_the_teacher_at_sigma_min_on_every_biased_image():
    from training.discriminator import clean_log_ratios

    class Images:
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def images(self, idx):
            return self.x[idx]

    torch.manual_seed(0)
    teacher = TimeDependentDiscriminator(DiscriminatorConfig(arch="cnn", channels=3, sample_size=28, widths=(8, 16))).eval()
    x = torch.rand(5, 3, 28, 28) * 2 - 1
    got = clean_log_ratios(teacher, Images(x), 0.01, "cpu", chunk=2)
    with torch.no_grad():
        want = teacher(x, torch.full((5,), 0.01))
    assert got.shape == (5,) and torch.allclose(got, want, atol=1e-5)


def test_disc_teacher_is_checked_before_a_run_folder(tiny_run, tmp_path, capsys):
    out, run = tiny_run
    with pytest.raises(SystemExit):
        main([*TINY, "--steps", "1", "--outdir", str(tmp_path / "a"), "--disc-teacher", str(run / "discriminator.safetensors")])
    assert "--disc-teacher is for --disc-objective weighted or gradient, got --disc-objective 'bce'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*TINY, "--steps", "1", "--outdir", str(tmp_path / "b"), "--disc-objective", "weighted", "--disc-teacher",
              str(out / "tiw.safetensors")])
    assert "--disc-teacher" in (err := capsys.readouterr().err) and "is a 'tiw' checkpoint; expected kind 'discriminator'" in err
    with pytest.raises(SystemExit):
        main([*TINY, "--steps", "1", "--outdir", str(tmp_path / "c"), "--disc-objective", "weighted", "--discriminator",
              str(run / "discriminator.safetensors")])
    assert "--disc-objective weighted trains a discriminator, but --discriminator PATH means none is trained" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_gradient_objective_fine_tunes_the_weighted_discriminator_on_its_correction(tiny_run, tmp_path, monkeypatch):
    import training.discriminator as stage

    calls = []

    def recording(disc, x, sigma, x0, w0, baseline, lambda_sigma=None, class_labels=None):
        calls.append((disc.head.weight.detach().clone(), x.shape, baseline.shape, class_labels))
        return correction_matching_loss(disc, x, sigma, x0, w0, baseline, lambda_sigma, class_labels)

    monkeypatch.setattr(stage, "correction_matching_loss", recording)
    out, run = tiny_run
    main([*TINY, "--steps", "1", "--disc-steps", "2", "--disc-objective", "gradient", "--disc-baseline", str(out / "tiw.safetensors"),
          "--disc-w0-sigma", "0.5", "--disc-teacher", str(run / "discriminator.safetensors"), "--outdir", str(tmp_path)])
    (new,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    values = checkpoints.load(new / "discriminator_values.safetensors", kind="discriminator")
    disc = checkpoints.load(new / "discriminator.safetensors", kind="discriminator")
    assert values.training["objective"] == "weighted" and values.training["w0_sigma"] == 0.5
    t = disc.training
    assert t["objective"] == "gradient" and t["values"] == str(new / "discriminator_values.safetensors") and t["steps"] == 2
    assert t["baseline"] == str(out / "tiw.safetensors") and t["grad_weight"] == 0.3 and t["grad_batch"] == 2
    assert not torch.equal(values.model.head.weight, disc.model.head.weight)
    assert not (new / "discriminator_teacher.safetensors").exists()  # the given teacher was used
    assert len(calls) == 2 and torch.equal(calls[0][0], values.model.head.weight)  # one call a step, from the values' weights
    assert disc.config.num_classes == 10 and all(c[3] is not None and c[3].shape == (2,) for c in calls)  # w_t(x | digit)
    assert calls[0][1] == calls[0][2] == (2, 3, 28, 28)  # half of the batch of 4, with the baseline's denoised images
    assert t["values_steps"] == 2 and values.training["w0"] == "the teacher's mean ratio over 2 noise draws at sigma 0.5"


def test_clean_log_ratios_at_a_noise_level_average_two_draws():
    from training.discriminator import clean_log_ratios

    class Images:
        x = torch.rand(3, 3, 28, 28) * 2 - 1

        def __len__(self):
            return 3

        def images(self, idx):
            return self.x[idx]

    torch.manual_seed(0)
    teacher = TimeDependentDiscriminator(DiscriminatorConfig(arch="cnn", channels=3, sample_size=28, widths=(8, 16))).eval()
    got = clean_log_ratios(teacher, Images(), 0.01, "cpu", w0_sigma=0.5, seed=3)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        draws = [teacher(Images.x + 0.5 * torch.randn(Images.x.shape, generator=g), torch.full((3,), 0.5)).exp() for _ in range(2)]
    assert torch.allclose(got, ((draws[0] + draws[1]) / 2).log(), atol=1e-5)


def test_gradient_objective_options_are_checked_before_a_run_folder(tiny_run, tmp_path, capsys):
    out, run = tiny_run
    cases = [
        (["--disc-objective", "gradient"], "--disc-objective gradient needs --disc-baseline PATH"),
        (["--disc-objective", "weighted", "--disc-baseline", str(out / "tiw.safetensors")],
         "--disc-baseline is for --disc-objective gradient, got --disc-objective 'weighted'"),
        (["--disc-w0-sigma", "0.5"], "--disc-w0-sigma is for --disc-objective weighted or gradient, got --disc-objective 'bce'"),
        (["--disc-objective", "weighted", "--disc-w0-sigma", "0"], "--disc-w0-sigma must be in (0.0, 10.0], got 0.0"),
        (["--disc-objective", "weighted", "--disc-w0-sigma", "inf"], "--disc-w0-sigma must be a finite number, got inf"),
        (["--disc-objective", "weighted", "--disc-grad-weight", "1"],
         "--disc-grad-weight is for --disc-objective gradient, got --disc-objective 'weighted'"),
        (["--disc-objective", "gradient", "--disc-baseline", str(run / "discriminator.safetensors")],
         "is a 'discriminator' checkpoint; expected one of ['dsm', 'tiw', 'dual']"),
        (["--disc-objective", "gradient", "--disc-baseline", "models/mnist457_dual.safetensors"], "makes 1-channel images of size 28"),
        (["--disc-objective", "gradient", "--disc-baseline", str(out / "tiw.safetensors"), "--disc-grad-weight", "-1"],
         "--disc-grad-weight must be in (0.0, inf), got -1.0"),
        (["--disc-objective", "gradient", "--disc-baseline", str(out / "tiw.safetensors"), "--disc-grad-weight", "inf"],
         "--disc-grad-weight must be a finite number, got inf"),
        (["--disc-objective", "weighted", "--condition", "colour", "--disc-teacher", str(run / "discriminator.safetensors")],
         "is conditional on 10 classes; --condition 'colour' has 2 (or give a marginal one)"),
        (["--disc-objective", "gradient", "--disc-baseline", "models/colour_cond_dsm.safetensors"],
         "is conditional on 'colour', the score model on 'digit'; give a model with the same condition or an unconditional one"),
        (["--disc-objective", "gradient", "--discriminator", str(run / "discriminator.safetensors")],
         "--disc-objective gradient trains a discriminator, but --discriminator PATH means none is trained"),
    ]
    import dataclasses

    from fair_core.denoiser import DiscreteVPDenoiser
    from fair_core.models import build_unet

    cfg = dataclasses.replace(named_config("unet", "tiny"), class_dropout=0.0)
    checkpoints.save(tmp_path / "no_dropout.safetensors", DiscreteVPDenoiser(build_unet(cfg), cfg), "dsm", cfg)
    cases.append((["--disc-objective", "gradient", "--disc-baseline", str(tmp_path / "no_dropout.safetensors")],
                  "is class-conditional ('digit') without class dropout, so it has no unconditional denoiser"))
    for i, (extra, message) in enumerate(cases):
        with pytest.raises(SystemExit):
            main([*TINY, "--steps", "1", "--outdir", str(tmp_path / str(i)), *extra])
        assert message in capsys.readouterr().err, (extra, message)
    assert [p.name for p in tmp_path.iterdir()] == ["no_dropout.safetensors"]


def test_discriminator_labels_drop_like_the_score_model_s_and_old_runs_stay_marginal():
    from types import SimpleNamespace

    from training.discriminator import disc_classes, draw_labels

    data = SimpleNamespace(labels=lambda condition, idx: idx % 10)
    schedule = SimpleNamespace(cfg=SimpleNamespace(condition="digit", class_dropout=0.25))
    idx = torch.arange(4000)
    y = draw_labels(data, idx, schedule, 10, torch.Generator().manual_seed(0))
    dropped = y == -1
    assert 0.22 < float(dropped.float().mean()) < 0.28 and torch.equal(y[~dropped], idx[~dropped] % 10)
    assert draw_labels(data, idx, schedule, 0, torch.Generator()) is None
    assert disc_classes({"condition": "digit", "disc_condition": "model"}) == 10
    assert disc_classes({"condition": "digit", "disc_condition": "none"}) == 0
    assert disc_classes({"condition": "digit"}) == 0  # a run saved before --disc-condition existed resumes as it was made


def test_the_baseline_is_read_given_the_label_or_its_null_class(tiny_run):
    """--disc-baseline: a class-conditional diffusion model is read given each row's label, and given -1 (its null
    class, the unconditional denoiser) where the label is None."""
    from training.discriminator import load_baseline

    out, _ = tiny_run
    model = checkpoints.load(out / "tiw.safetensors").model.eval()
    denoise = load_baseline(out / "tiw.safetensors", "cpu")
    x, s, y = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(0)), torch.full((3,), 2.0), torch.tensor([1, 4, 7])
    with torch.no_grad():
        assert torch.equal(denoise(x, s, y), model(x, s, class_labels=y))
        assert torch.equal(denoise(x, s), model(x, s, class_labels=torch.full((3,), -1)))
        assert not torch.equal(denoise(x, s, y), denoise(x, s))


def test_a_conditional_bce_discriminator_gets_both_sets_labels(tmp_path, monkeypatch):
    """--disc-objective bce with --disc-condition model: each half of the batch reaches the loss with its images'
    digit labels (or -1 where the score model's class dropout drops them), the reference half and the biased half."""
    import training.discriminator as stage

    seen, loss = [], stage.discriminator_loss

    def spy(disc, x_ref, s_ref, x_bias, s_bias, labels_ref=None, labels_bias=None):
        seen.append((labels_ref, labels_bias))
        return loss(disc, x_ref, s_ref, x_bias, s_bias, labels_ref, labels_bias)

    monkeypatch.setattr(stage, "discriminator_loss", spy)
    main([*TINY, "--steps", "1", "--disc-steps", "3", "--disc-batch", "64", "--outdir", str(tmp_path)])
    assert len(seen) == 3
    for labels_ref, labels_bias in seen:
        assert labels_ref.shape == labels_bias.shape == (32,)
        both = torch.cat([labels_ref, labels_bias]).cpu()
        assert int(both.min()) >= -1 and int(both.max()) <= 9 and len(set(both[both >= 0].tolist())) > 3


@pytest.mark.parametrize("loss_mode", ["tiw", "iw"])
def test_bias_sampling_ratio_trains_in_both_weighted_modes_and_is_recorded(tiny_run, tmp_path, loss_mode):
    out, run = tiny_run
    main([*TINY, "--steps", "2", "--outdir", str(tmp_path), "--discriminator", str(run / "discriminator.safetensors"),
          "--loss-mode", loss_mode, "--bias-sampling", "ratio", "--export", str(tmp_path / "tiw.safetensors"),
          *(["--reference-share", "0.5"] if loss_mode == "tiw" else [])])
    t = checkpoints.read_metadata(tmp_path / "tiw.safetensors")["training"]
    assert t.get("reference_share") == (0.5 if loss_mode == "tiw" else None)
    assert ("reference share: 0.5 of each batch from D_ref" in describe_tiw_training(t)) == (loss_mode == "tiw")
    sampling = t["bias_sampling"]
    assert sampling["mode"] == "ratio" and len(sampling["rho"]) == len(sampling["sigma"]) == 16
    assert all(0 <= r <= 1 for r in sampling["rho"]) and (loss_mode == "tiw" or set(sampling["rho"]) == {1.0})
    assert "bias sampling: rows drawn in proportion to w0^rho(sigma)" in describe_tiw_training(t)
    (run2,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert json.loads((run2 / "training_options.json").read_text())["options"]["bias_sampling"] == "ratio"
