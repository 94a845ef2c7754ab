"""The time-dependent discriminator's architecture options: the head (``pool``) and how sigma enters (``film``)."""
import dataclasses

import pytest
import torch

from fair_core.density_ratio import DiscriminatorConfig, TimeDependentDiscriminator, discriminator_loss, log_ratio_and_grad
from fair_core.models import config_from_dict


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_scale_shift_film_is_a_gain_and_a_bias(arch):
    """``film = "scale_shift"`` maps a layer's normalised features ``h`` to ``h (1 + b) + a``; with ``b = 0`` it is
    the ``"shift"`` network (``h + a``) with the same weights."""
    channels, widths = (1, (4,)) if arch == "mlp" else (3, (4, 8))
    torch.manual_seed(0)
    disc = TimeDependentDiscriminator(DiscriminatorConfig(arch=arch, channels=channels, widths=widths, embed_dim=8, film="scale_shift"))
    shift = TimeDependentDiscriminator(DiscriminatorConfig(arch=arch, channels=channels, widths=widths, embed_dim=8))
    assert [f.out_features for f in disc.film] == [2 * w for w in widths]  # a shift and a scale per unit
    h, film = torch.randn(3, 4), torch.randn(3, 8)
    torch.testing.assert_close(disc.modulate(h, film), h * (1 + film[:, 4:]) + film[:, :4])
    torch.testing.assert_close(shift.modulate(h, film[:, :4]), h + film[:, :4])
    state = disc.state_dict()
    for i, w in enumerate(widths):
        state[f"film.{i}.weight"], state[f"film.{i}.bias"] = state[f"film.{i}.weight"][:w], state[f"film.{i}.bias"][:w]
        with torch.no_grad():
            disc.film[i].weight[w:] = 0
            disc.film[i].bias[w:] = 0
    shift.load_state_dict(state)
    x, sigma = (torch.randn(5, 1) if arch == "mlp" else torch.randn(5, 3, 28, 28)), torch.rand(5) * 10
    with torch.no_grad():
        torch.testing.assert_close(disc(x, sigma), shift(x, sigma))
        assert not torch.allclose(disc(x, sigma), TimeDependentDiscriminator(disc.cfg)(x, sigma))  # the weights matter


def test_a_checkpoint_config_without_film_reads_as_shift_and_loads_its_weights():
    """Discriminators saved before ``film`` existed have no such field in their JSON config; they are ``"shift"``
    networks, and their weights load into the rebuilt one unchanged."""
    cfg = DiscriminatorConfig(arch="cnn", widths=(8, 8), embed_dim=8, pool="dense", num_classes=10)
    old = TimeDependentDiscriminator(cfg)
    saved = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items() if k != "film"}
    rebuilt = TimeDependentDiscriminator(config_from_dict(DiscriminatorConfig, saved))
    assert rebuilt.cfg.film == "shift"
    rebuilt.load_state_dict(old.state_dict())  # strict: the same parameters and shapes
    x, sigma, y = torch.randn(2, 3, 28, 28), torch.ones(2), torch.tensor([3, -1])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, sigma, y), old(x, sigma, y))


def test_dense_head_places_its_input_gradient_the_mean_head_cannot():
    """Two classes of one blob, at two places 8 px apart (the stride grid's period) and out of the receptive field's
    reach of the border: for the translation-invariant mean head the two classes look the same, so it stays at
    chance; the dense head separates them, and its input gradient lives where the blobs are."""
    x = torch.zeros(2, 1, 24, 24)
    x[0, :, 6:10, 6:10] = 1.0
    x[1, :, 14:18, 14:18] = 1.0
    acc = {}
    for pool in ("mean", "dense"):
        torch.manual_seed(0)
        disc = TimeDependentDiscriminator(DiscriminatorConfig(arch="cnn", channels=1, sample_size=24, widths=(8, 8), embed_dim=8,
                                                              pool=pool))
        opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(1)
        sigma = torch.full((64,), 0.3)
        for _ in range(150):
            xr, xb = x[0] + 0.3 * torch.randn(64, 1, 24, 24, generator=g), x[1] + 0.3 * torch.randn(64, 1, 24, 24, generator=g)
            loss = discriminator_loss(disc, xr, sigma, xb, sigma)
            opt.zero_grad()
            loss.backward()
            opt.step()
        xr, xb = x[0] + 0.3 * torch.randn(256, 1, 24, 24, generator=g), x[1] + 0.3 * torch.randn(256, 1, 24, 24, generator=g)
        with torch.no_grad():
            acc[pool] = ((disc(xr, sigma[:1]) > 0).float().mean() + (disc(xb, sigma[:1]) < 0).float().mean()).item() / 2
        if pool == "dense":
            _, grad = log_ratio_and_grad(disc, x.mean(0, keepdim=True), torch.full((1,), 0.3))  # half of each blob: unsaturated
            assert grad[0, 0, 6:10, 6:10].sum() > 0 > grad[0, 0, 14:18, 14:18].sum()
    assert acc["dense"] > 0.95 and acc["mean"] < 0.65, acc
