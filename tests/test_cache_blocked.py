"""``CacheBlockedConv3d`` (``omkit.models.cache_blocked``): the same function as the
``nn.Conv3d`` it converts, whether the input is cut into slabs or not."""
import pytest
import torch
from torch import nn

from omkit.models import cache_blocked
from omkit.models.cache_blocked import CacheBlockedConv3d, cache_blocked_convolutions


def converted(conv: nn.Conv3d) -> nn.Conv3d:
    import copy

    return cache_blocked_convolutions(copy.deepcopy(conv))


@pytest.fixture
def small_blocks(monkeypatch):
    """Slabs of a few planes on test-sized inputs: 8 channels x 12 x 10 voxels x 4 bytes
    = 3840 bytes a plane, so 3 planes a slab."""
    monkeypatch.setattr(cache_blocked, "CACHE_BLOCK_BYTES", 3 * 3840)


@pytest.mark.parametrize("kernel,padding", [(3, 1), (1, 0), (3, 0), (5, 2), ((3, 1, 1), (1, 0, 0)), (5, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_slabs_equal_the_whole_convolution(small_blocks, kernel, padding, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 8, kernel, padding=padding).eval()
    x = torch.randn(2, 4, 23, 12, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        want = conv(x)
        got = converted(conv)(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last_3d) == channels_last or got.is_contiguous()


def test_slabs_are_used(small_blocks, monkeypatch):
    """The input really is cut: the backbone op sees inputs of a few planes, not 23."""
    seen = []
    real = CacheBlockedConv3d._conv

    def spy(self, x, padding):
        seen.append(x.shape[2])
        return real(self, x, padding)

    monkeypatch.setattr(CacheBlockedConv3d, "_conv", spy)
    conv = converted(nn.Conv3d(4, 8, 3, padding=1).eval())
    with torch.no_grad():
        conv(torch.randn(1, 4, 23, 12, 10))
    assert len(seen) == 8 and max(seen) == 5, seen  # 3 output planes a slab, +1 plane each side


def test_gradients_take_the_plain_path():
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 3, 3, padding=1)
    blocked = converted(conv)
    x = torch.randn(1, 2, 40, 6, 6, requires_grad=True)
    blocked(x).sum().backward()
    assert x.grad is not None and blocked.weight.grad is not None
    torch.testing.assert_close(blocked(x), conv(x))


def test_only_exact_conv3d_is_converted():
    class Standardised(nn.Conv3d):  # a plug-in's subclass computes its own function
        pass

    model = nn.Sequential(nn.Conv3d(1, 2, 3), Standardised(2, 2, 3), nn.Conv2d(2, 2, 3))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cache_blocked_convolutions(model)
    assert [type(m) for m in model] == [CacheBlockedConv3d, Standardised, nn.Conv2d]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_strided_and_autocast_inputs_keep_the_module_function(small_blocks):
    torch.manual_seed(0)
    strided = nn.Conv3d(4, 8, 3, stride=2, padding=1).eval()
    x = torch.randn(1, 4, 23, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(converted(strided)(x), strided(x))
        conv = nn.Conv3d(4, 8, 3, padding=1).eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want, got = conv(x), converted(conv)(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
