"""Dense inference within a memory budget (``--max-memory``, ``omkit.inference.memory``):
the full-resolution layers in slabs along D give the values of the whole-region run, and
the budget chooses the slabs from what the computation needs, measured on the meta device."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import omkit
from omkit.cli import main
from omkit.data import find_cases, preprocess_case
from omkit.data.synthetic import make_case
from omkit.inference import DenseSettings, SegmentationPredictor, TileSettings
from omkit.inference import dense as dense_module
from omkit.inference import memory
from omkit.models.backbone import FusionNet3D
from omkit.models.heads import PlainHead
from omkit.models import slabs

from conftest import TINY_WIDTH, model_workspace

TILES = TileSettings(size=(8, 16, 16), keep=(4, 8, 8), batch=8)


def randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    """``module`` in eval mode with BatchNorm statistics away from the identity, so that a
    misplaced plane changes the output."""
    torch.manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm3d):
            layer.running_mean.uniform_(-0.3, 0.3)
            layer.running_var.uniform_(0.5, 2.0)
    return module.eval()


@pytest.mark.parametrize("levels", [(8, 16, 32, 64), (8, 16)])
@pytest.mark.parametrize("planes", [2, 4, 8, 16, 64])
def test_slab_forward_gives_forward(levels, planes):
    net = randomised(FusionNet3D(levels=levels))
    x = torch.randn((1, 4, 48, 16, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = net(x)
        got = net.slab_forward(x, planes)
    assert got.shape == want.shape
    # measured bit-identical; only a convolution backend's summation order may differ
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_slab_forward_is_forward_under_gradient():
    """Training keeps the whole forward (slabs write over the skip maps in place)."""
    net = randomised(FusionNet3D(levels=(8, 16)))
    x = torch.randn((1, 4, 16, 8, 8))
    out = net.slab_forward(x, 2)
    assert out.requires_grad
    out.sum().backward()
    assert net.encoders[0][0][0].weight.grad is not None


def test_a_misplaced_slab_would_be_seen(monkeypatch):
    """The oracle sees a slab that reads one plane of context too few."""
    net = randomised(FusionNet3D(levels=(8, 16)))
    x = torch.randn((1, 4, 32, 8, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = net(x)
        monkeypatch.setattr("omkit.models.backbone.conv_reach", lambda stage: slabs.conv_reach(stage) - 1)
        got = net.slab_forward(x, 8)
    assert (got - want).abs().max() > 1e-3


def test_plain_head_runs_in_slabs_without_gradient(monkeypatch):
    head = randomised(PlainHead(8, 3))
    features = torch.randn((1, 8, 20, 8, 8), generator=torch.Generator().manual_seed(3))
    geometry = {"window": (8, 8, 8), "block": (4, 4, 4), "offset": (2, 2, 2), "origin": (2, 0, 0)}
    with torch.enable_grad():
        want, _ = head.window_logits(features, None, geometry)  # the whole map (with gradient)
    calls = []
    real = slabs.local_in_slabs
    monkeypatch.setattr("omkit.models.heads.local_in_slabs",
                        lambda *a: calls.append(a[2]) or real(*a))
    monkeypatch.setattr("omkit.models.slabs.SLAB_BYTES", 8 * 8 * 8 * 4 * 3)  # three planes a slab
    with torch.no_grad():
        got, _ = head.window_logits(features, None, geometry)
    assert calls == [3]
    torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-6)


def test_conv_reach_counts_the_convolutions_and_refuses_other_layers():
    net = FusionNet3D(levels=(8, 16, 32))
    assert slabs.conv_reach(net.encoders[0]) == 5  # conv, residual (three convs), conv
    assert slabs.conv_reach(net.decoders[-1]) == 4  # conv, residual
    with pytest.raises(ValueError, match="ConvTranspose3d 'up.0' changes the resolution: not a local stage"):
        slabs.conv_reach(net.ups[0])
    with pytest.raises(ValueError, match="Conv3d '0' has a stride or string padding along D"):
        slabs.conv_reach(nn.Sequential(nn.Conv3d(2, 2, 3, stride=2, padding=1)))


def test_the_peak_tracker_counts_live_storages():
    def run():
        a = torch.empty(1000, device="meta")  # 4000 bytes
        b = a + 1  # 8000 live
        del a
        c = b * 2  # 8000 live: a was freed
        view = c[:10]  # a view: no new storage
        return view.sum()  # 4 bytes more

    assert memory.traced_peak(run) == 8004
    # each empty(10) is freed once added: three results and one empty at the peak
    assert memory.traced_peak(lambda: [torch.empty(10, device="meta") + i for i in range(3)]) == 4 * 40


@pytest.mark.parametrize("text, want", [("2G", 2 << 30), ("1500M", 1500 << 20), ("2GiB", 2 << 30),
                                        ("512mb", 512 << 20), ("1.5g", int(1.5 * 2**30)), ("4096", 4096),
                                        (1 << 20, 1 << 20)])
def test_sizes(text, want):
    assert memory.parse_size(text) == want


@pytest.mark.parametrize("text", ["", "two", "2X", "0", "-1G", True])
def test_bad_sizes_say_what_is_expected(text):
    with pytest.raises(ValueError, match="--max-memory: expected a size such as 2G, 1500M or a number of bytes"):
        memory.parse_size(text)


def test_the_slab_candidates_split_the_region():
    assert memory.slab_candidates(200) == [None, 64, 32, 16, 8, 4]
    assert memory.slab_candidates(24) == [None, 16, 8, 4]
    assert memory.slab_candidates(4) == [None]
    assert memory.choose_slab_planes(lambda p: {None: 100, 16: 60, 8: 40}[p], [None, 16, 8], 50) == (8, True)
    assert memory.choose_slab_planes(lambda p: {None: 100, 16: 60, 8: 40}[p], [None, 16, 8], 30) == (8, False)
    assert memory.choose_slab_planes(lambda p: 10**12, [None, 16, 8], None) == (None, True)


def slab_sizes_used(monkeypatch) -> list:
    """The ``planes`` of every ``FusionNet3D.slab_forward`` call from now on."""
    used = []
    real = FusionNet3D.slab_forward
    monkeypatch.setattr(FusionNet3D, "slab_forward", lambda self, x, planes: used.append(planes)
                        or real(self, x, planes))
    return used


@pytest.fixture(scope="module")
def case():
    pre = preprocess_case(make_case((40, 40, 40), seed=0))
    return torch.as_tensor(pre.image), torch.as_tensor(pre.brain_mask)


def test_a_budget_chooses_slabs_with_the_whole_regions_labels(case, monkeypatch):
    image, mask = case
    torch.manual_seed(0)
    # wide enough that the backbone's maps, not the logits, make the peak
    model = randomised(omkit.create_model("omnet_cga", width=0.5))
    whole = SegmentationPredictor([model], tiles=TILES, inference="dense").predict(image, mask, True)

    needs = {}
    real_need = memory.region_need

    def recording_need(run, in_channels, region, dtype, planes, runs=1):
        needs[planes] = real_need(run, in_channels, region, dtype, planes, runs)
        return needs[planes]

    monkeypatch.setattr(dense_module, "region_need", recording_need)
    # a budget between the slabs' need and the whole region's
    monkeypatch.setattr(dense_module, "dense_budget", lambda device, max_memory: budget)
    budget = 10**15
    SegmentationPredictor([model], tiles=TILES, inference="dense").predict(image, mask, True)
    assert set(needs) == {None}  # the whole region fits: no slab is tried
    budget = needs[None] - 1
    used = slab_sizes_used(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = SegmentationPredictor([model], tiles=TILES, inference="dense").predict(image, mask, True)
    assert used and used[0] in (4, 8, 16, 32) and needs[used[0]] <= budget < needs[None]
    assert torch.equal(got.labels, whole.labels)
    for task, want in whole.probabilities.items():
        torch.testing.assert_close(got.probabilities[task], want, rtol=0, atol=1e-6)
    assert (whole.labels > 0).any()


def test_a_budget_too_small_warns_and_runs_the_smallest_slabs(case, monkeypatch):
    image, mask = case
    torch.manual_seed(0)
    model = omkit.create_model("omnet_cga", width=TINY_WIDTH)
    monkeypatch.setattr(dense_module, "dense_budget", lambda device, max_memory: 1000)
    with pytest.warns(dense_module.DenseMemoryWarning, match=r"dense inference needs about .* GiB over a region of"):
        SegmentationPredictor([model], tiles=TILES, inference="dense").predict(image, mask, True)


def test_max_memory_takes_off_what_the_process_holds():
    memory.return_freed_memory()
    held = memory.resident_bytes()
    assert held > 0
    budget = memory.dense_budget(torch.device("cpu"), held + (100 << 20))
    assert 0 < budget <= 100 << 20
    assert memory.dense_budget(torch.device("cpu"), held // 2) == 0
    assert DenseSettings(max_memory="1G").max_memory == 1 << 30


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return model_workspace(tmp_path_factory.mktemp("memory"), shape=(24, 40, 40))


def test_omkit_predict_max_memory(workspace, tmp_path, capsys):
    case_dir = find_cases(workspace / "data")[0]
    base = ["predict", "--no-progress", "-i", str(case_dir), "-m", str(workspace / "model.pt"),
            "--inference", "dense", "--tile-size", "8,16,16", "--tile-keep", "4,8,8"]
    assert main(base + ["-o", str(tmp_path / "a")]) == 0
    assert main(base + ["-o", str(tmp_path / "b"), "--max-memory", "64G"]) == 0
    import nibabel as nib

    name = f"{case_dir.name}.nii.gz"
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(tmp_path / "a" / name)).dataobj),
                                  np.asanyarray(nib.load(str(tmp_path / "b" / name)).dataobj))
    capsys.readouterr()
    assert main(base + ["-o", str(tmp_path / "c"), "--max-memory", "lots"]) == 2
    assert "--max-memory: expected a size such as 2G, 1500M or a number of bytes, got 'lots'" in capsys.readouterr().err


def test_the_cuda_budget_is_the_free_device_memory_within_max_memory(monkeypatch):
    """On CUDA: the device's free memory, and within ``max_memory`` less what PyTorch holds
    there already (checked without a GPU: the two CUDA calls are stood in for)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 1 << 30)
    cuda = torch.device("cuda", 0)
    assert memory.dense_budget(cuda, None) == int((8 << 30) * memory.SAFETY)
    assert memory.dense_budget(cuda, 3 << 30) == int((2 << 30) * memory.SAFETY)
    assert memory.dense_budget(cuda, 100 << 30) == int((8 << 30) * memory.SAFETY)


def test_a_need_that_cannot_be_measured_keeps_the_whole_region_or_warns(case, monkeypatch):
    """A plug-in op without a meta kernel: without --max-memory the whole region as before;
    with it, the smallest slabs and a warning saying why."""
    image, mask = case
    torch.manual_seed(0)
    model = omkit.create_model("omnet_cga", width=TINY_WIDTH)

    def unmeasurable(*args, **kwargs):
        raise NotImplementedError("no meta kernel for a plug-in op")

    monkeypatch.setattr(dense_module, "region_need", unmeasurable)
    used = slab_sizes_used(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SegmentationPredictor([model], tiles=TILES, inference="dense").predict(image, mask, True)
    assert used == []
    with pytest.warns(dense_module.DenseMemoryWarning, match="could not measure what it needs on the meta device "
                                                             r"\(NotImplementedError: no meta kernel"):
        SegmentationPredictor([model], tiles=TILES, inference="dense",
                              dense={"max_memory": "1G"}).predict(image, mask, True)
    assert used and used[0] == memory.SLAB_PLANES[-1]
