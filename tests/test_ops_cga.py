"""Fused CGA ops (omkit.ops / torch.ops.omkit) against the pure-PyTorch oracle in
omkit.functional: values, gradients, gradcheck, opcheck, shapes (hypothesis),
argument errors, torch.compile."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omkit import functional as OF
from omkit import ops

pytestmark = pytest.mark.skipif(not ops.extension_loaded(), reason=f"compiled ops not built: {ops.load_error()}")

VARIANTS = OF.CGA_VARIANTS
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in ops._library.STATE.kernels.get("cga_pool", ()) else [])
# Half types the kernels take on each device (the manifest's dtypes): bfloat16 on a CPU, both on CUDA.
HALF_CASES = [(device, dtype) for device in DEVICES for dtype in (torch.float16, torch.bfloat16)
              if str(dtype).removeprefix("torch.") in ops.manifest.CGA_DTYPES[device]]
# (rtol, atol) per dtype: float32 sums of up to a few hundred products; half types accumulated in float32.
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-5), torch.float16: (2e-2, 2e-2), torch.bfloat16: (5e-2, 5e-2)}


def make_inputs(b, c, k, spatial, dtype=torch.float64, device="cpu", noncontiguous=False, final=True, k_out=None,
                requires_grad=False):
    g = torch.Generator().manual_seed(1234 + b * 97 + c * 13 + k)

    def rand(*shape, positive=False):
        t = torch.rand(*shape, generator=g, dtype=torch.float64) if positive else torch.randn(*shape, generator=g, dtype=torch.float64)
        return t.to(device=device, dtype=dtype)

    if noncontiguous:  # channels-last-like storage: features[b, c, ...] strided over c
        features = rand(b, *spatial, c).movedim(-1, 1)
        guidance = rand(b, *spatial, 1, positive=True).movedim(-1, 1)
        assert not features.is_contiguous() or features[0, 0].numel() == 1
    else:
        features, guidance = rand(b, c, *spatial), rand(b, 1, *spatial, positive=True)
    k_out = k_out or k
    params = {
        "w_pos": rand(k, c), "b_pos": rand(k), "w_neg": rand(k, c), "b_neg": rand(k),
        "w_out": rand(k_out, k) if final else None, "b_out": rand(k_out) if final else None,
    }
    if requires_grad:
        features.requires_grad_(True)
        for t in params.values():
            if t is not None:
                t.requires_grad_(True)
    return features, guidance, params


def assert_close(actual, expected, dtype):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,c,spatial", [(1, 3, (3, 5, 7)), (2, 33, (4, 3, 5)), (3, 5, (1, 1, 1)), (2, 7, (5, 9, 11))])
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_pool_matches_reference(device, dtype, b, c, spatial, noncontiguous):
    features, guidance, _ = make_inputs(b, c, 2, spatial, dtype, device, noncontiguous)
    m, l1_norm = torch.ops.omkit.cga_pool(features, guidance, OF.DEFAULT_EPS)
    expected = OF.category_importance_reference(features, guidance)
    assert m.shape == (b, 2, c) and l1_norm.shape == (b, 2)
    assert_close(m, expected, dtype)
    assert_close(m.abs().sum(-1), torch.ones(b, 2, dtype=dtype, device=device), dtype)
    assert_close(OF.category_importance(features, guidance), expected, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("final", [True, False])
def test_cga_forward_and_grads_match_reference(device, dtype, variant, final):
    features, guidance, params = make_inputs(2, 7, 5, (3, 5, 6), dtype, device, noncontiguous=final, final=final,
                                             requires_grad=True)
    out = OF.cga(features, guidance, **params, variant=variant)
    grad_out = torch.randn_like(out)
    leaves = [features] + [t for t in params.values() if t is not None]
    used = [t for name, t in params.items() if t is not None and not
            ((variant == "pos" and name.endswith("neg")) or (variant == "neg" and name.endswith("pos")))]
    grads = torch.autograd.grad(out, [features] + used, grad_out)
    with ops.use_backend("reference"):
        ref = OF.cga(features, guidance, **params, variant=variant)
    ref_grads = torch.autograd.grad(ref, [features] + used, grad_out)
    assert_close(out, ref, dtype)
    for got, want in zip(grads, ref_grads):
        assert_close(got, want, dtype)
    assert len(leaves) >= len(used)


@pytest.mark.parametrize("variant", VARIANTS)
def test_unused_branch_gets_no_gradient(variant):
    features, guidance, params = make_inputs(1, 4, 3, (2, 3, 3), requires_grad=True)
    OF.cga(features, guidance, **params, variant=variant).sum().backward()
    assert (params["w_neg"].grad is None) == (variant == "pos")
    assert (params["w_pos"].grad is None) == (variant == "neg")


def test_guidance_gets_no_gradient_and_optional_biases():
    features, guidance, params = make_inputs(2, 5, 3, (2, 3, 4), requires_grad=True)
    guidance.requires_grad_(True)
    params.update(b_pos=None, b_out=None)
    out = OF.cga(features, guidance, **params)
    out.sum().backward()
    assert guidance.grad is None
    with ops.use_backend("reference"):
        ref_m = OF.category_importance(features.detach(), guidance.detach())
    zero_bias = torch.zeros(3, dtype=torch.float64)
    ref = OF.recalibrate_reference(features, guidance.detach(), ref_m, **dict(params, b_pos=zero_bias))
    assert_close(out, ref, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_cga(variant, device):
    features, guidance, params = make_inputs(2, 3, 2, (2, 3, 2), device=device, requires_grad=True, k_out=3)
    names = [n for n, t in params.items() if t is not None]

    def fn(features, *tensors):
        return OF.cga(features, guidance, **dict(zip(names, tensors)), variant=variant)

    assert torch.autograd.gradcheck(fn, (features, *[params[n] for n in names]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["full", "neg"])
def test_gradcheck_whole_head_op_all_outputs(variant, device):
    """omkit::cga returns (out, m, l1_norm); gradients arriving through m and l1_norm are honoured."""
    features, guidance, params = make_inputs(2, 3, 2, (2, 2, 3), device=device, requires_grad=True)
    names = [n for n, t in params.items() if t is not None]

    def fn(features, *tensors):
        return torch.ops.omkit.cga(features, guidance, *tensors, variant, 1e-12)

    assert torch.autograd.gradcheck(fn, (features, *[params[n] for n in names]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("eps", [1e-12, 1e3])  # 1e3: the L1 norm is clamped, the gradient skips the norm
def test_gradcheck_pool_both_outputs(eps, device):
    features, guidance, _ = make_inputs(2, 4, 1, (3, 2, 3), device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: torch.ops.omkit.cga_pool(f, guidance, eps), (features,))


def test_gradgrad_not_required_but_backward_ops_are_ops():
    # Backward ops are real ops: they have fake kernels (torch.compile can trace them).
    features, guidance, params = make_inputs(1, 3, 2, (2, 2, 2))
    m, norm = torch.ops.omkit.cga_pool(features, guidance, 1e-12)
    grads = torch.ops.omkit.cga_recalibrate_backward(torch.ones(1, 2, 2, 2, 2, dtype=torch.float64), features,
                                                     guidance, m, *params.values(), "full")
    assert len(grads) == 8 and grads[0].shape == features.shape
    dF = torch.ops.omkit.cga_pool_backward(torch.ones_like(m), None, m, norm, guidance, 1e-12)
    assert dF.shape == features.shape


def _opcheck_samples(device="cpu"):
    features, guidance, params = make_inputs(2, 5, 3, (2, 3, 3), device=device)
    features_g, _, params_g = make_inputs(2, 5, 3, (2, 3, 3), device=device, requires_grad=True)
    m = OF.category_importance_reference(features, guidance)
    return features, guidance, params, features_g, params_g, m


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_cga_pool(requires_grad, device):
    features, guidance, _, features_g, _, _ = _opcheck_samples(device)
    torch.library.opcheck(torch.ops.omkit.cga_pool.default, (features_g if requires_grad else features, guidance, 1e-12))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("variant", ["full", "pos"])
def test_opcheck_cga_recalibrate(requires_grad, variant, device):
    features, guidance, params, features_g, params_g, m = _opcheck_samples(device)
    f, p = (features_g, params_g) if requires_grad else (features, params)
    mm = m.clone().requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.omkit.cga_recalibrate.default, (f, guidance, mm, *p.values(), variant))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_cga_whole_head(requires_grad, device):
    features, guidance, params, features_g, params_g, _ = _opcheck_samples(device)
    f, p = (features_g, params_g) if requires_grad else (features, params)
    torch.library.opcheck(torch.ops.omkit.cga.default, (f, guidance, *p.values(), "full", 1e-12))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_backward_ops(device):
    features, guidance, params, _, _, m = _opcheck_samples(device)
    _, norm = torch.ops.omkit.cga_pool(features, guidance, 1e-12)
    torch.library.opcheck(torch.ops.omkit.cga_pool_backward.default,
                          (torch.randn_like(m), torch.randn_like(norm), m, norm, guidance, 1e-12))
    grad_out = torch.randn(2, 3, 2, 3, 3, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.omkit.cga_recalibrate_backward.default,
                          (grad_out, features, guidance, m, *params.values(), "minus"))
    torch.library.opcheck(torch.ops.omkit.cga_backward.default,
                          (grad_out, torch.randn_like(m), None, features, guidance, m, norm, *params.values(), "full", 1e-12))


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(1, 3), c=st.integers(1, 9), k=st.integers(1, 6), k_out=st.integers(1, 4),
    spatial=st.lists(st.integers(1, 5), min_size=1, max_size=3), variant=st.sampled_from(VARIANTS),
    final=st.booleans(),
)
def test_shapes_property(b, c, k, k_out, spatial, variant, final):
    """Any (B, C, *spatial): the fused ops give the reference's values and the documented shapes."""
    features, guidance, params = make_inputs(b, c, k, tuple(spatial), final=final, k_out=k_out)
    m, _ = torch.ops.omkit.cga_pool(features, guidance, 1e-12)
    b_ref = features.reshape(b, c, -1)
    z_t = (b_ref * guidance.reshape(b, 1, -1)).sum(-1)
    z_n = (b_ref * (1 - guidance.reshape(b, 1, -1))).sum(-1)
    z = torch.stack((z_t, z_n), 1)
    assert_close(m, z / z.abs().sum(-1, keepdim=True).clamp_min(1e-12), torch.float64)
    out = torch.ops.omkit.cga_recalibrate(features, guidance, m, *params.values(), variant)
    assert out.shape == (b, k_out if final else k, *spatial)
    if len(spatial) == 3:
        assert_close(out, OF.recalibrate_reference(features, guidance, m, **params, variant=variant), torch.float64)


# ---- argument errors -----------------------------------------------------------------------

def test_wrong_guidance_shape_raises():
    features, guidance, params = make_inputs(2, 3, 2, (2, 3, 4))
    with pytest.raises(ValueError, match="guidance must be"):
        torch.ops.omkit.cga_pool(features, guidance[:, :, :1], 1e-12)
    with pytest.raises(ValueError, match="guidance must be"):
        OF.cga(features, guidance[:1], **params)


def test_wrong_weights_raise():
    features, guidance, params = make_inputs(2, 3, 2, (2, 3, 4))
    m, _ = torch.ops.omkit.cga_pool(features, guidance, 1e-12)
    bad = dict(params, w_pos=params["w_pos"][:, :2])
    with pytest.raises(ValueError, match="w_pos must be \\(K, C\\)"):
        torch.ops.omkit.cga_recalibrate(features, guidance, m, *bad.values(), "full")
    with pytest.raises(ValueError, match="needs w_neg"):
        torch.ops.omkit.cga_recalibrate(features, guidance, m, params["w_pos"], None, None, None, None, None, "full")
    with pytest.raises(ValueError, match="m must be"):
        torch.ops.omkit.cga_recalibrate(features, guidance, m[:, :1], *params.values(), "full")
    with pytest.raises(ValueError, match="unknown CGA variant"):
        torch.ops.omkit.cga_recalibrate(features, guidance, m, *params.values(), "both")
    with pytest.raises(ValueError, match="w_out must be"):
        torch.ops.omkit.cga_recalibrate(features, guidance, m, *dict(params, w_out=params["w_out"][:, :1]).values(), "full")


def test_wrong_dtypes_raise():
    features, guidance, params = make_inputs(2, 3, 2, (2, 3, 4))
    with pytest.raises(TypeError, match="floating point"):
        torch.ops.omkit.cga_pool(features.long(), guidance, 1e-12)
    with pytest.raises(TypeError, match="float32, float64 and bfloat16, got Half"):
        torch.ops.omkit.cga_pool(features.half(), guidance, 1e-12)
    m, _ = torch.ops.omkit.cga_pool(features, guidance, 1e-12)
    with pytest.raises(TypeError, match="w_pos has dtype"):
        torch.ops.omkit.cga_recalibrate(features, guidance, m, *dict(params, w_pos=params["w_pos"].float()).values(), "full")


def test_float16_on_cpu_falls_back_to_the_reference_visibly(monkeypatch):
    """The CPU kernels take bfloat16 but not float16: the public API runs the reference,
    warns once for that op, device and dtype, and lists the fallback (omkit info)."""
    monkeypatch.setattr(ops._library.STATE, "warned", set())
    monkeypatch.setattr(ops._library.STATE, "fallbacks", set())
    features, guidance, params = make_inputs(1, 3, 2, (2, 2, 2), dtype=torch.float16)
    with pytest.warns(RuntimeWarning, match="cga kernel for cpu does not take float16"):
        with ops.record_dispatch() as calls:
            out = OF.cga(features, guidance, **params)
    assert out.dtype == torch.float16 and out.shape == (1, 2, 2, 2, 2)
    assert [c.path for c in calls] == ["reference"]
    assert ("cga", "cpu", "float16") in ops.fallbacks()
    bf16 = make_inputs(1, 3, 2, (2, 2, 2), dtype=torch.bfloat16)
    with ops.record_dispatch() as calls:
        OF.cga(bf16[0], bf16[1], **bf16[2])
    assert [c.path for c in calls] == ["kernel"]


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device and the CUDA kernels")
def test_wrong_device_raises():
    features, guidance, params = make_inputs(1, 3, 2, (2, 2, 2), device="cuda")
    with pytest.raises(RuntimeError, match="guidance is on cpu"):
        torch.ops.omkit.cga_pool(features, guidance.cpu(), 1e-12)


@pytest.mark.parametrize("device,dtype", HALF_CASES, ids=lambda v: str(v).removeprefix("torch."))
@pytest.mark.parametrize("variant", VARIANTS)
def test_half_types_match_float64_reference(device, dtype, variant):
    """Half-precision inputs (bfloat16 on a CPU; float16 and bfloat16 on CUDA), accumulated
    in float32: values and every gradient within the dtype's tolerance of the float64
    reference evaluated on the same (rounded) inputs."""
    features, guidance, params = make_inputs(2, 33, 5, (3, 17, 9), dtype=dtype, device=device, requires_grad=True)
    with ops.record_dispatch() as calls:
        out = OF.cga(features, guidance, **params, variant=variant)
    assert out.dtype == dtype and [c.path for c in calls] == ["kernel"]
    names = [n for n in params if params[n] is not None and
             not ((variant == "pos" and n.endswith("neg")) or (variant == "neg" and n.endswith("pos")))]
    leaves64 = {n: params[n].detach().double().requires_grad_(True) for n in params}
    features64 = features.detach().double().requires_grad_(True)
    ref = OF.cga_reference(features64, guidance.double(), **leaves64, variant=variant)
    assert_close(out.double(), ref, dtype)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(device)
    got = torch.autograd.grad(out, [features] + [params[n] for n in names], grad_out.to(dtype))
    want = torch.autograd.grad(ref, [features64] + [leaves64[n] for n in names], grad_out.to(dtype).double())
    for name, g, w in zip(["features"] + names, got, want):
        assert g.dtype == dtype, name
        scale = w.abs().max().clamp_min(1.0)  # half-type tolerances relative to the gradient's magnitude
        assert_close(g.double() / scale, w / scale, dtype)


# ---- torch.compile ---------------------------------------------------------------------------

class TinyCGA(torch.nn.Module):
    """A CGA head built directly on the functional API (what plugins.attention.CGAHead does)."""

    def __init__(self, channels=6, classes=3, variant="full"):
        super().__init__()
        self.variant = variant
        self.pos = torch.nn.Conv3d(channels, classes, 1)
        self.neg = torch.nn.Conv3d(channels, classes, 1)
        self.final = torch.nn.Conv3d(classes, classes, 1)

    def forward(self, features, guidance):
        return OF.cga(features, guidance, self.pos.weight.flatten(1), self.pos.bias, self.neg.weight.flatten(1),
                      self.neg.bias, self.final.weight.flatten(1), self.final.bias, variant=self.variant)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_cga_module_compiles_fullgraph(backend):
    torch._dynamo.reset()
    module = TinyCGA()
    features = torch.randn(2, 6, 3, 4, 5, requires_grad=True)
    guidance = torch.rand(2, 1, 3, 4, 5)
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    out = compiled(features, guidance)
    eager = module(features, guidance)
    torch.testing.assert_close(out, eager)
    (g_compiled,) = torch.autograd.grad(out.square().sum(), features)
    (g_eager,) = torch.autograd.grad(eager.square().sum(), features)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-5, atol=1e-6)
