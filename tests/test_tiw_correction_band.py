"""``training tiw --correction-sigma-min S``: the score correction only where sigma >= S, the weight everywhere."""
import dataclasses

import torch

from fair_core import checkpoints
from fair_core.density_ratio import DiscriminatorConfig, describe_tiw_training
from fair_core.denoiser import DiscreteVPDenoiser
from fair_core.models import build_unet, named_config
from training.__main__ import main
from training.tiw import tiw_loss


class LinearLogit(torch.nn.Module):
    """``f(x) = <a, x> / 100``: a ratio whose gradient is plainly not zero, so the correction shows in the loss."""

    def __init__(self):
        super().__init__()
        self.a = torch.randn(3, 28, 28, generator=torch.Generator().manual_seed(1))
        self.cfg = DiscriminatorConfig(arch="cnn", channels=3, sample_size=28)

    def forward(self, x, sigma, class_labels=None):
        return (x * self.a).sum((1, 2, 3)) / 100


def test_rows_below_the_threshold_get_the_weighted_loss_without_correction():
    cfg = dataclasses.replace(named_config("unet", "tiny"), condition="none", num_classes=0)
    torch.manual_seed(0)
    model = DiscreteVPDenoiser(build_unet(cfg), cfg)
    disc = LinearLogit()
    x0, is_bias = torch.rand(16, 3, 28, 28) * 2 - 1, torch.ones(16, dtype=torch.bool)

    def loss(mode, s_min):
        return tiw_loss(model, disc, mode, x0, None, is_bias, torch.Generator().manual_seed(3), s_min)[0].detach()

    sigma = model.sigmas[torch.randint(0, cfg.num_train_timesteps, (16,), generator=torch.Generator().manual_seed(3))]
    threshold = float(sigma.median())
    full, weight_only, cut = loss("tiw", 0.0), loss("weight", 0.0), loss("tiw", threshold)
    above = sigma >= threshold
    assert 0 < int(above.sum()) < 16 and not torch.allclose(full, weight_only)  # the correction matters in this batch
    assert torch.equal(cut[above], full[above]) and torch.equal(cut[~above], weight_only[~above])
    assert torch.equal(loss("tiw", float(sigma.max()) + 1), weight_only)


def test_the_threshold_is_recorded_and_shown(tmp_path):
    main(["tiw", "--model", "tiny", "--disc-model", "tiny", "--batch", "4", "--threads", "1", "--steps", "1", "--disc-steps", "1",
          "--correction-sigma-min", "5", "--outdir", str(tmp_path)])
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    training = checkpoints.read_metadata(run / "export.safetensors")["training"]
    assert training["correction_sigma_min"] == 5.0 and "correction: only where sigma >= 5.0" in describe_tiw_training(training)
    assert "correction:" not in describe_tiw_training({k: v for k, v in training.items() if k != "correction_sigma_min"})
