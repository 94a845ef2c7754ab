"""h-space read and edit on a diffusers UNet2DModel."""
import pytest
import torch

from fair_core import checkpoints, hspace
from fair_core.errors import FairSamplingError
from fair_core.models import UNET_CONFIGS


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return checkpoints.KINDS["dsm"].build(UNET_CONFIGS["tiny"]).eval()


def test_captured_h_is_the_middle_block_output(model):
    x, t = torch.randn(2, 3, 28, 28), torch.tensor([10.0, 500.0])
    mid = []
    handle = model.unet.mid_block.register_forward_hook(lambda m, a, out: mid.append(out))
    with torch.no_grad(), hspace.captured(model.unet) as seen:
        model.network(x, t, torch.tensor([1, 2]))
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], mid[0])


def test_patch_edits_the_output_and_is_removed_after(model):
    x, t, y = torch.randn(2, 3, 28, 28), torch.tensor([10.0, 500.0]), torch.tensor([1, 2])
    with torch.no_grad():
        plain = model.network(x, t, y)
        with hspace.patched(model.unet, lambda h, hsp: (h, hsp)):
            same = model.network(x, t, y)
        with hspace.patched(model.unet, lambda h, hsp: (h + 1, hsp)):
            edited = model.network(x, t, y)
        after = model.network(x, t, y)
    assert torch.equal(plain, same) and torch.equal(plain, after)
    assert not torch.allclose(plain, edited)


def test_patch_sees_the_deepest_skip(model):
    shapes = []
    with torch.no_grad(), hspace.patched(model.unet, lambda h, hsp: (shapes.append((h.shape, hsp.shape)), (h, hsp))[1]):
        model.network(torch.randn(1, 3, 28, 28), torch.tensor([3.0]), torch.tensor([0]))
    (h_shape, hsp_shape), = shapes
    assert h_shape[2:] == hsp_shape[2:] and h_shape[2] < 28, "h and the skip it meets are at the bottleneck resolution"


def test_non_unet_is_refused():
    with pytest.raises(FairSamplingError, match="h-space needs a UNet with up_blocks"):
        with hspace.patched(torch.nn.Linear(2, 2), lambda h, hsp: (h, hsp)):
            pass
