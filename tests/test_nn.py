"""omkit.nn, the public modules: 2-D and 3-D, fused op and reference, autocast,
torch.compile, model files, and CGA inside a MONAI network that trains."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import omkit
import omkit.nn as onn
from omkit import ops
from omkit.functional import CGA_VARIANTS

from conftest import TINY_PATCH, TINY_WIDTH

SPATIAL = {3: TINY_PATCH, 2: TINY_PATCH[1:]}
# the paths CGA can take on this machine: the compiled kernel only where it is built
PATHS = ["reference"] + (["kernel"] if ops.extension_loaded() else [])


def cga_inputs(spatial_dims, batch=2, channels=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = SPATIAL[spatial_dims]
    features = torch.randn(batch, channels, *shape, generator=g)
    guidance = torch.rand(batch, 1, *shape, generator=g)
    return features, guidance


def test_the_public_names():
    assert set(onn.__all__) >= {"CGA", "SE", "FusionNet3D", "OMNet"}
    for name in ("CGA", "SE", "FusionNet3D", "OMNet"):
        cls = getattr(onn, name)
        assert issubclass(cls, nn.Module) and "(B, " in cls.__doc__, name
    # the built-in plug-ins register these very classes
    assert omkit.factory.attention_class("cga") is onn.CGA
    assert omkit.factory.attention_class("se") is onn.SE
    assert type(omkit.create_backbone("fusionnet3d", width=TINY_WIDTH)) is onn.FusionNet3D
    assert type(omkit.create_model("omnet_cga", width=TINY_WIDTH)) is onn.OMNet


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", CGA_VARIANTS)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cga_in_2d_and_3d_matches_the_float64_reference(spatial_dims, variant, path):
    cga = onn.CGA(6, num_classes=3, variant=variant, spatial_dims=spatial_dims)
    features, guidance = cga_inputs(spatial_dims)
    features.requires_grad_(True)
    with ops.use_backend(path), ops.record_dispatch() as taken:
        out = cga(features, guidance)
        grads = torch.autograd.grad(out.square().sum(), [features, *cga.parameters()])
    assert {d.path for d in taken} == {path}
    assert out.shape == (2, 3, *SPATIAL[spatial_dims])
    # oracle: the reference in float64 on a float64 copy
    ref = onn.CGA(6, num_classes=3, variant=variant, spatial_dims=spatial_dims).double()
    ref.load_state_dict(cga.state_dict())
    f64 = features.detach().double().requires_grad_(True)
    with ops.use_backend("reference"):
        want = ref(f64, guidance.double())
        want_grads = torch.autograd.grad(want.square().sum(), [f64, *ref.parameters()])
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, want_grads):
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_cga_checks_its_inputs():
    with pytest.raises(ValueError, match="unknown CGA variant 'half'"):
        onn.CGA(4, 2, variant="half")
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        onn.CGA(4, 2, spatial_dims=1)
    cga = onn.CGA(6, 3, spatial_dims=2)
    features, guidance = cga_inputs(3)
    with pytest.raises(ValueError, match=r"CGA \(spatial_dims=2\) takes features of shape \(B, C, H, W\)"):
        cga(features, guidance)
    features, guidance = cga_inputs(2)
    with pytest.raises(ValueError, match=r"guidance must be \(B, 1, H, W\)"):
        cga(features, guidance[:, :, :4])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_se_backbone_and_omnet_shapes(spatial_dims):
    shape = SPATIAL[spatial_dims]
    x = torch.randn(2, 6, *shape)
    se = onn.SE(6, reduction=2, spatial_dims=spatial_dims)
    assert se(x).shape == x.shape
    backbone = onn.FusionNet3D(in_channels=4, width=TINY_WIDTH, spatial_dims=spatial_dims)
    assert backbone(torch.randn(2, 4, *shape)).shape == (2, backbone.out_channels, *shape)
    for attention in ((None, "cga", "cga"), ("se", "se", "se"), (None, None, None)):
        model = onn.OMNet(width=TINY_WIDTH, attention=attention, spatial_dims=spatial_dims).eval()
        out = model(torch.randn(2, 4, *shape))
        assert [tuple(o.shape) for o in out] == [(2, 5, *shape), (2, 5, *shape), (2, 2, *shape)]
    other = 2 if spatial_dims == 3 else 3
    with pytest.raises(ValueError, match=f"FusionNet3D \\(spatial_dims={spatial_dims}\\) takes"):
        backbone(torch.randn(2, 4, *SPATIAL[other]))


def test_a_3d_only_plugin_in_a_2d_model_is_a_one_line_error():
    class Gate(nn.Module):  # a third party's attention, written for volumes
        guided = False

        def __init__(self, channels):
            super().__init__()
            self.gate = nn.Parameter(torch.ones(channels))

        def forward(self, x):
            return x * self.gate.view(1, -1, 1, 1, 1)

    class Plugin:
        @omkit.hookimpl
        def omkit_register_attention(self, registry):
            registry.add("gate3d", Gate)

    omkit.setup_plugins(extra_plugins={"gate3d_plugin": Plugin()})
    try:
        assert omkit.create_model("omnet", width=TINY_WIDTH, attention="gate3d") is not None  # 3-D: unchanged
        with pytest.raises(ValueError, match="attention 'gate3d' \\(Gate\\) takes no spatial_dims"):
            omkit.create_model("omnet", width=TINY_WIDTH, attention="gate3d", spatial_dims=2)
    finally:
        omkit.setup_plugins()


def test_every_preset_builds_in_2d_and_its_model_file_round_trips(tmp_path):
    from omkit.checkpoint import load_model, save_model

    x = torch.randn(1, 4, 16, 16)
    for preset in ("mc3", "omnet_se", "omnet_cga_n"):
        model = omkit.create_model(preset, width=TINY_WIDTH, spatial_dims=2).eval()
        path = save_model(model, tmp_path / f"{preset}.pt")
        loaded, meta = load_model(path)
        assert meta.model_options["spatial_dims"] == 2
        with torch.no_grad():
            for a, b in zip(model(x), loaded(x)):
                torch.testing.assert_close(a, b)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_omnet_with_cga_under_autocast(spatial_dims):
    """bfloat16 autocast on the CPU (float16 on CUDA takes the same rules): the CGA heads run
    in the autocast dtype and stay close to float32."""
    model = onn.OMNet(width=TINY_WIDTH, attention=(None, "cga", "cga"), spatial_dims=spatial_dims).eval()
    x = torch.randn(2, 4, *SPATIAL[spatial_dims])
    with torch.no_grad():
        want = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16 and torch.isfinite(g).all()
        # bfloat16 keeps 8 bits of mantissa; a few roundings along the network
        assert (g.float() - w).abs().max() <= 0.1 * w.abs().max() + 0.05


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cga_and_se_compile_fullgraph(spatial_dims):
    torch._dynamo.reset()

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.se = onn.SE(6, reduction=2, spatial_dims=spatial_dims)
            self.cga = onn.CGA(6, 3, spatial_dims=spatial_dims)

        def forward(self, features, guidance):
            return self.cga(self.se(features), guidance)

    module = Head()
    features, guidance = cga_inputs(spatial_dims)
    features.requires_grad_(True)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out, eager = compiled(features, guidance), module(features, guidance)
    torch.testing.assert_close(out, eager)
    (g_compiled,) = torch.autograd.grad(out.square().sum(), features)
    (g_eager,) = torch.autograd.grad(eager.square().sum(), features)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_omnet_with_cga_compiles_fullgraph(spatial_dims):
    torch._dynamo.reset()
    model = onn.OMNet(width=TINY_WIDTH, attention=(None, "cga", "cga"), spatial_dims=spatial_dims).eval()
    x = torch.randn(2, 4, *SPATIAL[spatial_dims])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for got, want in zip(compiled(x), model(x)):
            torch.testing.assert_close(got, want)


# ---- CGA inside a MONAI network -------------------------------------------------------------

def _blobs(spatial_dims: int, batch: int, size: int, generator: torch.Generator):
    """Images of a bright ball with a brighter core on noise; labels 0 outside, 1 ball, 2 core."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * spatial_dims, indexing="ij"))
    images, labels = [], []
    for _ in range(batch):
        centre = (torch.rand(spatial_dims, generator=generator) * 0.5 + 0.25) * size
        radius = float(torch.rand(1, generator=generator) * 2 + size / 4)
        dist = (grid - centre.view(-1, *[1] * spatial_dims)).square().sum(0).sqrt()
        label = (dist < radius).long() + (dist < radius / 2).long()
        images.append(label.float() + 0.3 * torch.randn(label.shape, generator=generator))
        labels.append(label)
    return torch.stack(images)[:, None], torch.stack(labels)


class UNetWithCGA(nn.Module):
    """A MONAI UNet whose last layer is omkit's CGA: the UNet's output is the feature map F,
    a 1x1 conv gives a coarse foreground prediction, and CGA, guided by its foreground
    probability, gives the final three-class scores."""

    def __init__(self, spatial_dims: int, features: int = 8):
        super().__init__()
        from monai.networks.nets import UNet

        self.unet = UNet(spatial_dims=spatial_dims, in_channels=1, out_channels=features, channels=(8, 16),
                         strides=(2,), num_res_units=1)
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.coarse = conv(features, 2, 1)
        self.cga = onn.CGA(features, num_classes=3, spatial_dims=spatial_dims)

    def forward(self, x):
        features = torch.relu(self.unet(x))
        coarse = self.coarse(features)
        return coarse, self.cga(features, coarse.softmax(1)[:, 1:])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cga_in_a_monai_unet_trains(spatial_dims):
    pytest.importorskip("monai")
    g = torch.Generator().manual_seed(0)
    model = UNetWithCGA(spatial_dims)
    before = {n: p.detach().clone() for n, p in model.cga.named_parameters()}
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    size = 16
    losses = []
    for _ in range(15):
        images, labels = _blobs(spatial_dims, 4, size, g)
        coarse, scores = model(images)
        loss = nn.functional.cross_entropy(scores, labels) + nn.functional.cross_entropy(coarse, (labels > 0).long())
        optimiser.zero_grad()
        loss.backward()
        for name, p in model.cga.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"CGA's {name} got no gradient"
        optimiser.step()
        losses.append(loss.item())
    for name, p in model.cga.named_parameters():
        assert not torch.equal(p, before[name]), f"CGA's {name} did not change"
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
