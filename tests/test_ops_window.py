"""The window-consistent ops (``omkit.ops.window_sums``, ``block_linear``, ``cga_windowed``):
the compiled kernels against literal loops over the paper's tiles on the same features (float64,
tight), for CGA in every variant and for SE, at volume borders, for volumes smaller than one
window and with no block at all; opcheck (schema, fake kernel, dispatch); bfloat16 and autocast;
argument errors. The gradients of ``window_sums`` and ``block_linear`` (their backward ops):
gradcheck in float64, autograd through the reference in float32, opcheck, none for the guidance,
bfloat16 against float32. CUDA cases skip without a GPU."""
from __future__ import annotations

import math

import pytest
import torch

from omkit import ops
from omkit.models.attention import SE
from omkit.ops import reference as R
from omkit.ops import window as window_family

pytestmark = pytest.mark.skipif(not ops.extension_loaded(), reason=f"compiled ops not built: {ops.load_error()}")

_CUDA = torch.cuda.is_available() and "cuda" in ops._library.STATE.kernels.get("window_sums", ())
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not _CUDA, reason="no CUDA GPU with omkit kernels"))]

# (spatial shape, geometry): the paper's tiles inside a volume, with the block grid at voxel 0
# and shifted; a volume smaller than one window; odd small geometry; blocks flush with windows.
CASES = [
    ((20, 45, 41), dict(window=(16, 32, 32), block=(5, 20, 20), offset=(5, 6, 6), origin=(5, 6, 6))),
    ((13, 30, 22), dict(window=(16, 32, 32), block=(5, 20, 20), offset=(5, 6, 6), origin=(0, 0, 0))),
    ((3, 5, 4), dict(window=(16, 32, 32), block=(8, 24, 24), offset=(4, 4, 4), origin=(0, 0, 0))),
    ((7, 11, 9), dict(window=(4, 6, 5), block=(2, 3, 2), offset=(1, 2, 1), origin=(1, 0, 2))),
    ((6, 8, 7), dict(window=(3, 3, 3), block=(3, 3, 3), offset=(0, 0, 0), origin=(0, 0, 0))),
]
IDS = ["paper-interior", "paper-border", "smaller-than-window", "odd", "no-overlap"]


def _inputs(shape, device, dtype=torch.float64, batch=2, channels=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, *shape, generator=gen, dtype=torch.float64)
    guidance = torch.rand(batch, 1, *shape, generator=gen, dtype=torch.float64)
    return x.to(device, dtype), guidance.to(device, dtype)


def _tiles(shape, geom):
    """(block index, block slices, window origin, kept slices inside the window) of every block."""
    window, block, offset, origin, blocks = R.window_geometry(shape, **geom)
    for index, box in window_family._block_boxes(shape, block, origin, blocks):
        start = [s.start - o for s, o in zip(box, offset)]
        kept = tuple(slice(o, o + s.stop - s.start) for s, o in zip(box, offset))
        yield index, box, torch.tensor([start]), kept, window


def _cut(volume, origins, window):
    """The paper's tile (zero outside the volume) of one sample's (C, D, H, W) map."""
    return R.gather_tiles(volume.cpu(), origins, window)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,geom", CASES, ids=IDS)
def test_window_sums_equal_sums_over_each_tile(device, shape, geom):
    x, guidance = _inputs(shape, device)
    sums = ops.window_sums(x, guidance, **geom).cpu()
    plain = ops.window_sums(x, **geom).cpu()
    assert sums.dtype == torch.float64 and sums.shape[-2:] == (2, x.shape[1]) and plain.shape[-2] == 1
    for (i, j, k), _, origins, _, window in _tiles(shape, geom):
        for n in range(x.shape[0]):
            tile, tile_g = _cut(x[n], origins, window)[0], _cut(guidance[n], origins, window)[0]
            torch.testing.assert_close(sums[n, i, j, k, 0], (tile * tile_g).sum((1, 2, 3)), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(sums[n, i, j, k, 1], tile.sum((1, 2, 3)), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(plain[n, i, j, k, 0], tile.sum((1, 2, 3)), rtol=1e-12, atol=1e-12)


def _cga_weights(channels, classes, variant, final, device, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    draw = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(device, dtype)  # noqa: E731
    w_pos, b_pos = (draw(classes, channels), draw(classes)) if variant != "neg" else (None, None)
    w_neg, b_neg = (draw(classes, channels), draw(classes)) if variant != "pos" else (None, None)
    w_out, b_out = (draw(classes, classes), draw(classes)) if final else (None, None)
    return w_pos, b_pos, w_neg, b_neg, w_out, b_out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ops.CGA_VARIANTS)
@pytest.mark.parametrize("shape,geom", CASES, ids=IDS)
def test_cga_windowed_equals_the_cga_head_on_every_tile(device, variant, shape, geom):
    """The kernel, and the op's reference, against the CGA head run on each paper tile cut out
    of the same features, keeping the tile's centre block."""
    x, guidance = _inputs(shape, device)
    weights = _cga_weights(x.shape[1], 3, variant, final=variant != "minus", device=device)
    with ops.record_dispatch() as calls:
        out, m = ops.cga_windowed(x, guidance, *weights, variant=variant, return_importance=True, **geom)
    assert [c.path for c in calls] == ["kernel"]
    cpu_weights = [w.cpu() if w is not None else None for w in weights]
    ref_out, ref_m = R.cga_windowed(x.cpu(), guidance.cpu(), *cpu_weights, *geom.values(), variant, ops.DEFAULT_EPS)
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.cpu(), ref_m, rtol=1e-10, atol=1e-10)
    expected = torch.zeros_like(ref_out)
    for (i, j, k), box, origins, kept, window in _tiles(shape, geom):
        for n in range(x.shape[0]):
            tile, tile_g = _cut(x[n], origins, window), _cut(guidance[n], origins, window)
            scores = ops.reference.cga(tile, tile_g, *cpu_weights, variant=variant)
            expected[(n, slice(None)) + box] = scores[0][(slice(None),) + kept]
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-10, atol=1e-10)
    # voxels before the block grid's origin belong to no block
    origin = geom["origin"]
    assert not out[:, :, :origin[0]].any() and not out[:, :, :, :origin[1]].any()


def _windowed_se(x, se: SE, w_cls, b_cls, geom):
    """SE + classifier with each block's channel mean over its window: the ops as dense inference
    composes them."""
    mean = ops.window_sums(x, **geom)[..., 0, :] / math.prod(geom["window"])
    scale = se.fc(mean)
    m0 = w_cls * scale[..., None, :]
    return ops.block_linear(x, m0, b_cls, block=geom["block"], origin=geom["origin"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,geom", CASES, ids=IDS)
def test_windowed_se_equals_se_on_every_tile(device, shape, geom):
    x, _ = _inputs(shape, device, channels=8)
    se = SE(8, reduction=2).to(device, torch.float64).eval()
    gen = torch.Generator().manual_seed(2)
    w_cls = torch.randn(3, 8, generator=gen, dtype=torch.float64).to(device)
    b_cls = torch.randn(3, generator=gen, dtype=torch.float64).to(device)
    with torch.no_grad():
        out = _windowed_se(x, se, w_cls, b_cls, geom).cpu()
        se_cpu = se.cpu()
        expected = torch.zeros_like(out)
        for _, box, origins, kept, window in _tiles(shape, geom):
            for n in range(x.shape[0]):
                tile = _cut(x[n], origins, window)
                scores = torch.einsum("kc,bc...->bk...", w_cls.cpu(), se_cpu(tile)) + b_cls.cpu().view(1, -1, 1, 1, 1)
                expected[(n, slice(None)) + box] = scores[0][(slice(None),) + kept]
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("guided", [False, True])
def test_block_linear_matches_its_reference(device, guided):
    shape, geom = CASES[3]
    x, guidance = _inputs(shape, device)
    blocks = R.window_geometry(shape, **geom)[-1]
    gen = torch.Generator().manual_seed(3)
    draw = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(device)  # noqa: E731
    m0, c0 = draw(2, *blocks, 4, 5), draw(4)
    m1, c1 = (draw(2, *blocks, 4, 5), draw(4)) if guided else (None, None)
    kw = dict(guidance=guidance, m1=m1, c1=c1) if guided else {}
    out = ops.block_linear(x, m0, c0, block=geom["block"], origin=geom["origin"], **kw)
    ref = R.block_linear(x.cpu(), guidance.cpu() if guided else None, m0.cpu(), c0.cpu(),
                         m1.cpu() if guided else None, c1.cpu() if guided else None, geom["block"], geom["origin"])
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_no_block_gives_zeros_and_empty_importance(device):
    x, guidance = _inputs((4, 6, 6), device)
    weights = _cga_weights(5, 3, "full", True, device)
    out, m = ops.cga_windowed(x, guidance, *weights, window=(4, 4, 4), block=(2, 2, 2), origin=(4, 0, 0),
                              return_importance=True)
    assert out.shape == (2, 3, 4, 6, 6) and not out.any() and m.shape == (2, 0, 3, 3, 2, 5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lower_precision_and_autocast(device, dtype):
    shape, geom = CASES[0]
    x, guidance = _inputs(shape, device)
    weights = _cga_weights(5, 3, "full", True, device)
    exact = ops.cga_windowed(x, guidance, *weights, **geom)
    low = [w.to(dtype) if w is not None else None for w in weights]
    out = ops.cga_windowed(x.to(dtype), guidance.to(dtype), *low, **geom)
    assert out.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert float((out.double() - exact).abs().max() / exact.abs().max()) < tol
    if dtype == torch.bfloat16:  # float32 weights meet bfloat16 features: the autocast rule lowers both
        with torch.autocast(device, dtype=torch.bfloat16), ops.record_dispatch() as calls:
            mixed = ops.cga_windowed(x.float().to(dtype), guidance.float(), *[w.float() if w is not None else None
                                                                             for w in weights], **geom)
        assert mixed.dtype == torch.bfloat16 and [c.path for c in calls] == ["kernel"]
        assert float((mixed.double() - exact).abs().max() / exact.abs().max()) < tol
        sums = ops.window_sums(x.to(dtype), guidance.to(dtype), **geom)
        assert sums.dtype == torch.float32  # accumulated in float32


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    shape, geom = CASES[3]
    x, guidance = _inputs(shape, device, dtype=torch.float32)
    g = [list(v) for v in geom.values()]
    torch.library.opcheck(torch.ops.omkit.window_sums.default, (x, guidance, *g))
    torch.library.opcheck(torch.ops.omkit.window_sums.default, (x, None, *g))
    weights = _cga_weights(5, 3, "full", True, device, dtype=torch.float32)
    torch.library.opcheck(torch.ops.omkit.cga_windowed.default, (x, guidance, *weights, *g, "full", 1e-12))
    blocks = R.window_geometry(shape, **geom)[-1]
    m0 = torch.randn(2, *blocks, 4, 5, device=device)
    torch.library.opcheck(torch.ops.omkit.block_linear.default,
                          (x, guidance, m0, torch.randn(4, device=device), m0.clone(), None, geom["block"],
                           geom["origin"]))


def test_bad_arguments_are_one_line_errors():
    x, guidance = _inputs((6, 8, 8), "cpu")
    weights = _cga_weights(5, 3, "full", True, "cpu")
    with pytest.raises(ValueError, match="every block must lie inside its window"):
        ops.cga_windowed(x, guidance, *weights, window=(4, 4, 4), block=(4, 4, 4), offset=(1, 0, 0))
    with pytest.raises(ValueError, match="origin must be >= 0"):
        ops.window_sums(x, window=4, block=2, origin=(-1, 0, 0))
    with pytest.raises(ValueError, match=r"features must be \(B, C, D, H, W\)"):
        ops.window_sums(x[0], window=4, block=2)
    with pytest.raises(ValueError, match="guidance must be"):
        ops.cga_windowed(x, guidance[:, :, :3], *weights, window=4, block=2)
    with pytest.raises(ValueError, match=r"m0 must be \(B, nD, nH, nW, K, C\)"):
        ops.block_linear(x, torch.zeros(2, 1, 1, 1, 3, 5, dtype=x.dtype), block=2)
    with pytest.raises(ValueError, match="needs guidance"):
        ops.block_linear(x, torch.zeros(2, 3, 4, 4, 3, 5, dtype=x.dtype), m1=torch.zeros(2, 3, 4, 4, 3, 5,
                                                                                        dtype=x.dtype), block=2)


# ---- autograd: window_sums and block_linear train through their backward ops ---------------------

# Tiny geometries for gradcheck: the block grid shifted by the origin (voxels in no block), windows
# clipped at the volume's edges, partial last blocks (H and W); windows larger than the volume.
GRAD_CASES = [
    ((5, 7, 6), dict(window=(3, 4, 4), block=(2, 2, 3), offset=(1, 1, 0), origin=(1, 0, 2))),
    ((3, 4, 5), dict(window=(4, 6, 6), block=(2, 2, 2), offset=(1, 2, 2), origin=(0, 0, 0))),
]
GRAD_IDS = ["origin-clipped-partial", "windows-past-the-volume"]
# Which of block_linear's optional inputs are given: (c0, m1, c1); any guided term needs guidance.
BLOCK_LINEAR_INPUTS = [(False, False, False), (True, False, False), (True, True, True), (False, True, False),
                       (True, False, True)]
BLOCK_LINEAR_IDS = ["m0", "m0-c0", "m0-c0-m1-c1", "m0-m1", "m0-c0-c1-guided-bias-only"]


def _geometry_lists(geom):
    return [list(v) for v in geom.values()]


def _block_linear_params(shape, geom, present, device, dtype=torch.float64, batch=2, channels=3, k=4, seed=5):
    """m0, c0, m1, c1 (None where absent) for `block_linear` on a (batch, channels, *shape) map."""
    blocks = R.window_geometry(shape, geom["window"], geom["block"], 0, geom["origin"])[-1]
    gen = torch.Generator().manual_seed(seed)
    draw = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(device, dtype)  # noqa: E731
    has_c0, has_m1, has_c1 = present
    return (draw(batch, *blocks, k, channels), draw(k) if has_c0 else None,
            draw(batch, *blocks, k, channels) if has_m1 else None, draw(k) if has_c1 else None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("shape,geom", GRAD_CASES, ids=GRAD_IDS)
def test_gradcheck_window_sums(device, guided, shape, geom):
    x, guidance = _inputs(shape, device, channels=3)
    x.requires_grad_(True)
    g = _geometry_lists(geom)
    assert torch.autograd.gradcheck(
        lambda x: torch.ops.omkit.window_sums(x, guidance if guided else None, *g), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("present", BLOCK_LINEAR_INPUTS, ids=BLOCK_LINEAR_IDS)
@pytest.mark.parametrize("shape,geom", GRAD_CASES, ids=GRAD_IDS)
def test_gradcheck_block_linear(device, present, shape, geom):
    x, guidance = _inputs(shape, device, channels=3)
    params = _block_linear_params(shape, geom, present, device)
    leaves = [x] + [t for t in params if t is not None]
    for t in leaves:
        t.requires_grad_(True)
    guided = present[1] or present[2]

    def fn(x, *given):
        it = iter(given)
        m0, c0, m1, c1 = (next(it) if t is not None else None for t in params)
        return torch.ops.omkit.block_linear(x, guidance if guided else None, m0, c0, m1, c1, list(geom["block"]),
                                            list(geom["origin"]))

    assert torch.autograd.gradcheck(fn, tuple(leaves))


def _grads(out, leaves, seed=7):
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.autograd.grad(out, leaves, grad.to(out.device, out.dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("shape,geom", CASES, ids=IDS)
def test_window_sums_gradient_matches_autograd_through_the_reference(device, guided, shape, geom):
    x, guidance = _inputs(shape, device, dtype=torch.float32)
    x.requires_grad_(True)
    with ops.use_backend("kernel"), ops.record_dispatch() as calls:
        out = ops.window_sums(x, guidance if guided else None, **geom)
    assert [c.path for c in calls] == ["kernel"]
    (got,) = _grads(out, [x])
    x_ref = x.detach().cpu().requires_grad_(True)
    ref = R.window_sums(x_ref, guidance.cpu() if guided else None, *geom.values())
    (want,) = _grads(ref, [x_ref])
    assert got.dtype == torch.float32 and got.shape == x.shape
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("present", BLOCK_LINEAR_INPUTS, ids=BLOCK_LINEAR_IDS)
@pytest.mark.parametrize("shape,geom", [CASES[0], CASES[3]], ids=[IDS[0], IDS[3]])
def test_block_linear_gradients_match_autograd_through_the_reference(device, present, shape, geom):
    x, guidance = _inputs(shape, device, dtype=torch.float32, channels=3)
    params = _block_linear_params(shape, geom, present, device, dtype=torch.float32)
    guided = present[1] or present[2]
    kw = dict(guidance=guidance if guided else None, block=geom["block"], origin=geom["origin"])

    def leaves_of(x, params):
        x = x.detach().clone().requires_grad_(True)
        params = [t.detach().clone().requires_grad_(True) if t is not None else None for t in params]
        return x, params, [x] + [t for t in params if t is not None]

    x_k, p_k, leaves_k = leaves_of(x, params)
    with ops.use_backend("kernel"), ops.record_dispatch() as calls:
        out = ops.block_linear(x_k, p_k[0], p_k[1], m1=p_k[2], c1=p_k[3], **kw)
    assert [c.path for c in calls] == ["kernel"]
    got = _grads(out, leaves_k)
    x_r, p_r, leaves_r = leaves_of(x.cpu(), [t.cpu() if t is not None else None for t in params])
    ref = R.block_linear(x_r, guidance.cpu() if guided else None, *p_r, geom["block"], geom["origin"])
    want = _grads(ref, leaves_r)
    for a, b, leaf in zip(got, want, leaves_k):
        assert a.dtype == leaf.dtype and a.shape == leaf.shape
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-4)
    if geom["origin"][0]:  # voxels before the origin get no gradient
        assert not got[0][:, :, :geom["origin"][0]].any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_no_gradient_reaches_the_guidance(device, backend):
    shape, geom = GRAD_CASES[0]
    x, guidance = _inputs(shape, device, channels=3)
    x.requires_grad_(True)
    guidance.requires_grad_(True)
    m0, c0, m1, c1 = _block_linear_params(shape, geom, (True, True, True), device)
    with ops.use_backend(backend):
        sums = ops.window_sums(x, guidance, **geom)
        out = ops.block_linear(x, m0, c0, guidance=guidance, m1=m1, c1=c1, block=geom["block"],
                               origin=geom["origin"])
    (sums.sum() + out.sum()).backward()
    assert guidance.grad is None and x.grad is not None and x.grad.abs().sum() > 0
    # the ops themselves: the autograd formulas give the guidance None
    g = _geometry_lists(geom)
    dx, dp = torch.autograd.grad(torch.ops.omkit.window_sums(x, guidance, *g).sum(), [x, guidance],
                                 allow_unused=True, materialize_grads=False)
    assert dx is not None and dp is None
    dx, dp = torch.autograd.grad(
        torch.ops.omkit.block_linear(x, guidance, m0, c0, m1, c1, g[1], g[3]).sum(), [x, guidance],
        allow_unused=True, materialize_grads=False)
    assert dx is not None and dp is None


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_gradients_are_close_to_float32(device):
    shape, geom = CASES[3]
    x, guidance = _inputs(shape, device, dtype=torch.float32, channels=3)
    params = _block_linear_params(shape, geom, (True, True, True), device, dtype=torch.float32)

    def gradients(dtype):
        xx = x.to(dtype).requires_grad_(True)
        pp = [t.to(dtype).requires_grad_(True) for t in params]
        sums = ops.window_sums(xx, guidance.to(dtype), **geom)
        out = ops.block_linear(xx, pp[0], pp[1], guidance=guidance.to(dtype), m1=pp[2], c1=pp[3],
                               block=geom["block"], origin=geom["origin"])
        assert sums.dtype == torch.float32 and out.dtype == dtype
        gen = torch.Generator().manual_seed(8)
        seeds = [torch.randn(t.shape, generator=gen).to(device, t.dtype) for t in (sums, out)]
        grads = torch.autograd.grad([sums, out], [xx, *pp], seeds)
        assert all(g.dtype == dtype for g in grads)
        return grads

    with ops.use_backend("kernel"):
        exact, low = gradients(torch.float32), gradients(torch.bfloat16)
    for i, (a, b) in enumerate(zip(low, exact)):
        rel = float((a.float() - b).abs().max() / b.abs().max())
        assert rel < 3e-2, (i, rel)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("guided", [False, True])
def test_opcheck_training(device, guided):
    """Forwards with inputs that require grad (autograd registration) and the backward ops."""
    shape, geom = GRAD_CASES[0]
    x, guidance = _inputs(shape, device, dtype=torch.float32, channels=3)
    p = guidance if guided else None
    g = _geometry_lists(geom)
    xg = x.clone().requires_grad_(True)
    torch.library.opcheck(torch.ops.omkit.window_sums.default, (xg, p, *g))
    sums = torch.ops.omkit.window_sums(x, p, *g)
    torch.library.opcheck(torch.ops.omkit.window_sums_backward.default, (torch.randn_like(sums), x, p, *g))
    m0, c0, m1, c1 = _block_linear_params(shape, geom, (True, guided, guided), device, dtype=torch.float32)
    params = [t.clone().requires_grad_(True) if t is not None else None for t in (m0, c0, m1, c1)]
    torch.library.opcheck(torch.ops.omkit.block_linear.default, (xg, p, *params, g[1], g[3]))
    grad_out = torch.randn(2, 4, *shape, device=device)
    torch.library.opcheck(torch.ops.omkit.block_linear_backward.default,
                          (grad_out, x, p, m0, c0, m1, c1, g[1], g[3]))
    # absent optional inputs give empty gradients
    grads = torch.ops.omkit.block_linear_backward(grad_out, x, None, m0, None, None, None, g[1], g[3])
    assert grads[0].shape == x.shape and grads[1].shape == m0.shape and all(t.numel() == 0 for t in grads[2:])


def test_backward_ops_check_the_incoming_gradient():
    shape, geom = GRAD_CASES[0]
    x, guidance = _inputs(shape, "cpu", channels=3)
    g = _geometry_lists(geom)
    sums = torch.ops.omkit.window_sums(x, guidance, *g)
    with pytest.raises(ValueError, match=r"grad must be \(B, nD, nH, nW, R, C\)"):
        torch.ops.omkit.window_sums_backward(sums, x, None, *g)  # R = 2 rows for R = 1
    m0 = _block_linear_params(shape, geom, (False, False, False), "cpu")[0]
    with pytest.raises(ValueError, match=r"grad_out must be \(B, K, D, H, W\)"):
        torch.ops.omkit.block_linear_backward(torch.zeros(2, 3, *shape, dtype=x.dtype), x, None, m0, None, None,
                                              None, g[1], g[3])
