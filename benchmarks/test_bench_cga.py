"""CGA head (CSCI + CompSeg + final 1x1x1 conv): four formulations of the same math.

* ``eager``: the unfused composition as the paper draws it (U_t = m_t * F and
  U_n = m_n * F materialised, two 1x1x1 conv3d, soft masks, final conv3d);
* ``compiled``: ``torch.compile`` of that composition (inductor);
* ``folded``: the best pure-PyTorch form, m folded into per-sample weights
  (``omkit.functional.cga_reference``);
* ``fused``: the omkit ops (``omkit.functional.cga`` with the compiled kernels).

At the paper's training shapes, 20 and 60 patches x 32 channels x 16 x 32 x 32
(forward and forward + backward), and an inference batch of 4 tiles x 32
channels x 32 x 64 x 64 (forward); K = 5 classes. ``bytes_moved`` is the traffic of the fused ops (the floor all
four formulations are compared against): forward = 2 reads of F and Pt + the
output; forward + backward adds a read of F, the output gradient and Pt, and
two writes plus one re-read of dF (the pooling and recalibration gradients are
summed by autograd).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf

from omkit import functional as OF
from omkit import ops

from .conftest import SMOKE, record_bandwidth

# (batch, channels, spatial): training batches (forward and forward+backward) ...
TRAIN_SHAPES = {"paper-20": (20, 32, (16, 32, 32)), "paper-60": (60, 32, (16, 32, 32))}
# ... and an inference batch (forward only): 4 large tiles as a CPU run would use
INFERENCE_SHAPES = {"inference-4": (4, 32, (32, 64, 64))}
if SMOKE:
    TRAIN_SHAPES, INFERENCE_SHAPES = {"smoke": (2, 8, (4, 8, 8))}, {"smoke-inference": (1, 8, (8, 16, 16))}
SHAPES = {**TRAIN_SHAPES, **INFERENCE_SHAPES}
NUM_CLASSES = 5


def eager_composition(features, guidance, w_pos, b_pos, w_neg, b_neg, w_out, b_out):
    """CSCI + CompSeg written module by module, every intermediate map materialised."""
    guidance = guidance.detach()
    m = OF.category_importance_reference(features, guidance)
    u_t = features * m[:, 0, :, None, None, None]
    u_n = features * m[:, 1, :, None, None, None]
    s_t = nnf.conv3d(u_t, w_pos[:, :, None, None, None], b_pos)
    s_n = nnf.conv3d(u_n, w_neg[:, :, None, None, None], b_neg)
    merged = guidance * s_t + (1 - guidance) * s_n
    return nnf.conv3d(merged, w_out[:, :, None, None, None], b_out)


def fused(*args):
    with ops.use_backend("kernel"):
        return OF.cga(*args)


_compiled = {}


def compiled(*args):
    if "fn" not in _compiled:
        # smoke runs only check that the path works; inductor's C++ build is the slow part
        _compiled["fn"] = torch.compile(eager_composition, backend="aot_eager" if SMOKE else "inductor", dynamic=False)
    return _compiled["fn"](*args)


IMPLEMENTATIONS = {"eager": eager_composition, "compiled": compiled, "folded": OF.cga_reference, "fused": fused}


def make_inputs(shape_name, device, requires_grad):
    b, c, spatial = SHAPES[shape_name]
    g = torch.Generator().manual_seed(0)
    features = torch.randn(b, c, *spatial, generator=g).to(device)
    guidance = torch.rand(b, 1, *spatial, generator=g).to(device)
    params = [torch.randn(NUM_CLASSES, c, generator=g), torch.randn(NUM_CLASSES, generator=g),
              torch.randn(NUM_CLASSES, c, generator=g), torch.randn(NUM_CLASSES, generator=g),
              torch.randn(NUM_CLASSES, NUM_CLASSES, generator=g), torch.randn(NUM_CLASSES, generator=g)]
    params = [p.to(device) for p in params]
    if requires_grad:
        for t in [features, *params]:
            t.requires_grad_(True)
    return features, guidance, params


def traffic(shape_name, backward: bool) -> int:
    b, c, spatial = SHAPES[shape_name]
    voxels = b * torch.Size(spatial).numel()
    f, p, out = 4 * c * voxels, 4 * voxels, 4 * NUM_CLASSES * voxels
    forward = 2 * (f + p) + out
    return forward + (f + out + p + 3 * f if backward else 0)


def prepare(impl, shape_name, device, requires_grad):
    """The implementation under test and its inputs; skips the fused one without the compiled ops."""
    if impl == "fused" and not ops.extension_loaded():
        pytest.skip(f"compiled ops not built: {ops.load_error()}")
    return IMPLEMENTATIONS[impl], *make_inputs(shape_name, device, requires_grad)


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_cga_forward(benchmark, run_benchmark, device, shape_name, impl):
    fn, features, guidance, params = prepare(impl, shape_name, device, requires_grad=False)
    with torch.no_grad():
        reference = OF.cga_reference(features, guidance, *params)
        torch.testing.assert_close(fn(features, guidance, *params), reference, rtol=1e-4, atol=1e-4)

        def step():
            return fn(features, guidance, *params)

        run_benchmark(step, rounds=15, group=f"cga forward {shape_name}", impl=impl, shape=shape_name)
    record_bandwidth(benchmark, traffic(shape_name, backward=False))


@pytest.mark.parametrize("shape_name", list(TRAIN_SHAPES))
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_cga_forward_backward(benchmark, run_benchmark, device, shape_name, impl):
    fn, features, guidance, params = prepare(impl, shape_name, device, requires_grad=True)
    leaves = [features, *params]
    grad_out = torch.randn(features.shape[0], NUM_CLASSES, *features.shape[2:], device=device)

    def step():
        out = fn(features, guidance, *params)
        return torch.autograd.grad(out, leaves, grad_out)

    expected = torch.autograd.grad(OF.cga_reference(features, guidance, *params), leaves, grad_out)
    for got, want in zip(step(), expected):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    run_benchmark(step, rounds=9, group=f"cga forward+backward {shape_name}", impl=impl, shape=shape_name)
    record_bandwidth(benchmark, traffic(shape_name, backward=True))
