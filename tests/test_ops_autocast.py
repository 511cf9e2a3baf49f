"""Every omkit op inside torch.autocast: the manifest's rule is registered at the
AutocastCPU and AutocastCUDA keys, mixed half/float32 inputs reach the kernel in one
dtype (the kernel path is asserted through omkit.ops.record_dispatch), and the
results agree with float32.

Tolerance (stated once, used everywhere below): an autocast result may differ from
the float32 result by at most ``REL[dtype]`` of the float32 result's largest
magnitude: 2 % for bfloat16 (8-bit mantissa: the inputs alone are rounded by up to
0.4 %), 0.5 % for float16. The same tests run on CUDA with float16 and bfloat16
when a GPU and the CUDA kernels are there.
"""
from __future__ import annotations

import pytest
import torch

from omkit import functional as OF
from omkit import ops
from omkit.ops import _library, manifest, reference

pytestmark = pytest.mark.skipif(not ops.extension_loaded(), reason=f"compiled ops not built: {ops.load_error()}")

REL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
CUDA = torch.cuda.is_available() and "cuda" in _library.STATE.kernels.get("cga", ())
# (device, autocast dtype): the CPU's autocast dtype is bfloat16; CUDA takes both.
CASES = [("cpu", torch.bfloat16)] + ([("cuda", torch.float16), ("cuda", torch.bfloat16)] if CUDA else [])
CASE_IDS = [f"{d}-{str(t).removeprefix('torch.')}" for d, t in CASES]


def assert_near(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    expected = expected.detach().float()
    scale = expected.abs().max().clamp_min(1e-6)
    err = (actual.detach().float() - expected).abs().max()
    assert err <= REL[dtype] * scale, f"{what}: max error {float(err):.3g} > {REL[dtype]} x {float(scale):.3g}"


def _sample(device: str):
    """float32 features, guidance and CGA weights (K = 3 classes, C = 6 channels)."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 6, 3, 5, 7, generator=g)
    guidance = torch.rand(2, 1, 3, 5, 7, generator=g)
    weights = [torch.randn(3, 6, generator=g), torch.randn(3, generator=g), torch.randn(3, 6, generator=g),
               torch.randn(3, generator=g), torch.randn(3, 3, generator=g), torch.randn(3, generator=g)]
    return features.to(device), guidance.to(device), [w.to(device) for w in weights]


def _op_args(op: manifest.Op, device: str) -> tuple:
    """Arguments of every op of the manifest, in float32 (what a model under autocast hands on:
    float32 weights, and features that the autocast rule casts)."""
    features, guidance, weights = _sample(device)
    m, l1 = reference.cga_pool(features, guidance)
    grad_out = torch.randn(2, 3, 3, 5, 7, generator=torch.Generator().manual_seed(1)).to(device)
    origins = torch.tensor([[-1, 0, 2], [1, 1, 1]], device=device)
    tiles = torch.randn(2, 2, 3, 3, 3, generator=torch.Generator().manual_seed(2)).to(device)
    args = {
        "cga": (features, guidance, *weights, "full", 1e-12),
        "cga_backward": (grad_out, None, None, features, guidance, m, l1, *weights, "full", 1e-12),
        "cga_pool": (features, guidance, 1e-12),
        "cga_pool_backward": (torch.randn_like(m), torch.randn_like(l1), m, l1, guidance, 1e-12),
        "cga_recalibrate": (features, guidance, m, *weights, "full"),
        "cga_recalibrate_backward": (grad_out, features, guidance, m, *weights, "full"),
        "gather_tiles": (torch.randn(2, 4, 5, 6).to(device), origins, [3, 3, 3]),
        "stitch_tiles": (torch.zeros(2, 4, 5, 6, device=device), tiles, origins, [1, 1, 1], [1, 2, 2]),
        "stitch_tiles_argmax": (torch.zeros(4, 5, 6, dtype=torch.uint8, device=device), tiles, origins, [1, 1, 1],
                                [1, 2, 2], None),
        # blocks of (1, 2, 3) voxels in windows of (2, 3, 4): a grid of (3, 3, 2) blocks
        "window_sums": (features, guidance, [2, 3, 4], [1, 2, 3], [0, 1, 0], [0, 0, 1]),
        "window_sums_backward": (torch.randn(2, 3, 3, 2, 2, 6, generator=torch.Generator().manual_seed(4)).to(device),
                                 features, guidance, [2, 3, 4], [1, 2, 3], [0, 1, 0], [0, 0, 1]),
        "block_linear": (features, guidance, torch.randn(2, 3, 3, 2, 3, 6, generator=torch.Generator().manual_seed(3))
                         .to(device), weights[1], None, None, [1, 2, 3], [0, 0, 1]),
        "block_linear_backward": (grad_out, features, guidance,
                                  torch.randn(2, 3, 3, 2, 3, 6, generator=torch.Generator().manual_seed(3)).to(device),
                                  weights[1], torch.randn(2, 3, 3, 2, 3, 6, generator=torch.Generator().manual_seed(5))
                                  .to(device), weights[3], [1, 2, 3], [0, 0, 1]),
        "cga_windowed": (features, guidance, *weights, [2, 3, 4], [1, 2, 3], [0, 1, 0], [0, 0, 1], "full", 1e-12),
    }
    assert set(args) == set(manifest.BY_NAME), "a sample call per op of the manifest"
    return args[op.name]


def _outputs(value) -> list:
    if value is None:
        return []
    return [v for v in (value if isinstance(value, (tuple, list)) else (value,)) if v is not None and v.numel()]


def _clone(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def test_every_op_has_an_autocast_rule_at_both_keys():
    assert {op.autocast for op in manifest.OPS} <= set(manifest.AUTOCAST_POLICIES)
    for op in manifest.OPS:
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.qualname, key), (op.name, key)
    # the CGA ops cast (their inputs must share one dtype); the tile ops move any dtype
    assert {op.name for op in manifest.OPS if op.autocast == "lower"} == {
        op.name for op in manifest.OPS if op.dtypes["cpu"] is not None}


@pytest.mark.parametrize("device,dtype", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("op", manifest.OPS, ids=lambda op: op.name)
def test_op_under_autocast_matches_float32(op, device, dtype):
    """torch.ops.omkit.<op> called under autocast with float32 arguments: the rule casts
    (\"lower\": every output in the autocast dtype) or keeps them, the kernel runs,
    and the outputs agree with the op outside autocast."""
    args = _op_args(op, device)
    schema_op = getattr(torch.ops.omkit, op.schema)
    expected_args = _clone(args)
    expected = schema_op(*expected_args)
    got_args = _clone(args)
    with torch.autocast(device, dtype=dtype):
        got = schema_op(*got_args)
    if op.inplace:  # the result is the first argument
        expected, got = expected_args[0], got_args[0]
    for i, (a, e) in enumerate(zip(_outputs(got), _outputs(expected), strict=True)):
        if op.name == "window_sums":  # sums stay in the accumulation dtype
            assert a.dtype == torch.float32, (op.name, i, a.dtype)
        elif op.autocast == "lower":
            assert a.dtype == dtype, (op.name, i, a.dtype)
        else:
            assert a.dtype == e.dtype, (op.name, i, a.dtype)
        if a.dtype == torch.uint8:
            assert torch.equal(a, e), op.name
        else:
            assert_near(a, e, dtype, f"{op.name} output {i}")


@pytest.mark.parametrize("device,dtype", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("function", sorted({f for op in manifest.OPS for f in op.functions}))
def test_public_function_takes_the_kernel_path_under_autocast(function, device, dtype):
    """Every public function of omkit.ops inside autocast: the dispatch decision is the
    kernel, for the autocast dtype (CGA) or the input's own dtype (tiles)."""
    features, guidance, weights = _sample(device)
    m = reference.cga_pool(features, guidance)[0]
    volume = torch.randn(2, 4, 5, 6, device=device)
    origins = torch.tensor([[-1, 0, 2], [1, 1, 1]], device=device)
    tiles = torch.randn(2, 2, 3, 3, 3, device=device, dtype=dtype)  # half-precision scores, as a network gives
    calls = {
        "cga": lambda: ops.cga(features, guidance, *weights),
        "category_importance": lambda: ops.category_importance(features, guidance),
        "cga_pool": lambda: ops.cga_pool(features, guidance),
        "cga_recalibrate": lambda: ops.cga_recalibrate(features, guidance, m, *weights),
        "gather_tiles": lambda: ops.gather_tiles(volume, origins, (3, 3, 3)),
        "stitch_tiles": lambda: ops.stitch_tiles(torch.zeros(2, 4, 5, 6, device=device), tiles, origins,
                                                 (1, 1, 1), (1, 2, 2)),
        "stitch_tiles_argmax": lambda: ops.stitch_tiles_argmax(torch.zeros(4, 5, 6, dtype=torch.uint8, device=device),
                                                               tiles, origins, (1, 1, 1), (1, 2, 2)),
        "window_sums": lambda: ops.window_sums(features, guidance, window=(2, 3, 4), block=(1, 2, 3)),
        "block_linear": lambda: ops.block_linear(features, torch.randn(2, 3, 3, 3, 3, 6, device=device), block=(1, 2, 3)),
        "cga_windowed": lambda: ops.cga_windowed(features, guidance, *weights, window=(2, 3, 4), block=(1, 2, 3)),
    }
    with ops.use_backend("auto"), torch.autocast(device, dtype=dtype), ops.record_dispatch() as decisions:
        calls[function]()
    assert len(decisions) == 1, decisions
    (decision,) = decisions
    assert decision.path == "kernel" and decision.device == device, decision
    # "lower": the autocast dtype decides; "keep": the first argument's own dtype (volume, out, labels)
    own = {"gather_tiles": "float32", "stitch_tiles": "float32", "stitch_tiles_argmax": "uint8"}
    lowered = manifest.BY_NAME[decision.op].autocast == "lower"
    assert decision.dtype == (str(dtype).removeprefix("torch.") if lowered else own[function]), decision


@pytest.mark.parametrize("device,dtype", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("variant", OF.CGA_VARIANTS)
def test_cga_head_trains_under_autocast(device, dtype, variant):
    """The CGA head as a model uses it: half-precision features (what a conv gives under
    autocast), float32 weights (leaves), float32 guidance. Forward and every gradient agree
    with float32; weight gradients arrive in float32, the kernel ran."""
    features, guidance, weights = _sample(device)
    weights = [w.requires_grad_(True) for w in weights]
    leaves = [features.requires_grad_(True)] + weights
    names = ["w_pos", "b_pos", "w_neg", "b_neg", "w_out", "b_out"]
    used = [w for n, w in zip(names, weights)
            if not ((variant == "pos" and n.endswith("neg")) or (variant == "neg" and n.endswith("pos")))]
    want_out = OF.cga(features, guidance, *weights, variant=variant)
    want = torch.autograd.grad(want_out.square().sum(), [features] + used)
    with torch.autocast(device, dtype=dtype), ops.record_dispatch() as decisions:
        half_features = features.to(dtype)  # a conv's output under autocast
        out = OF.cga(half_features, guidance, *weights, variant=variant)
    assert out.dtype == dtype
    assert [(d.op, d.dtype, d.path) for d in decisions] == [("cga", str(dtype).removeprefix("torch."), "kernel")]
    got = torch.autograd.grad(out.float().square().sum(), [features] + used)
    assert_near(out, want_out, dtype, "output")
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == torch.float32, i  # the leaves' dtype: autograd casts back through the rule's .to()
        assert_near(g, w, dtype, f"gradient {i}")
    assert len(leaves) == 7


def test_autocast_rule_survives_torch_compile():
    """A CGA module compiled with fullgraph under CPU autocast: no graph break, same result."""
    torch._dynamo.reset()
    features, guidance, weights = _sample("cpu")

    def head(f, g):
        return OF.cga(f, g, *weights)

    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(features, guidance)
        eager = head(features, guidance)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, eager)
