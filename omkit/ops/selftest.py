"""A quick check, on the user's own device, that every compiled op of the manifest
agrees with its pure-PyTorch reference: what ``omkit selftest`` prints.

For every op of :mod:`omkit.ops.manifest` and every dtype asked for (default: the
dtypes its kernel takes on that device, float32 first), on small odd shapes:

* a forward op: the kernel's outputs against its reference evaluated in float64 on
  the same (rounded) inputs;
* a backward op: the gradients the forward op's autograd formula (which runs the
  backward op) gives, against autograd through the float64 reference;
* ``autocast``: each forward op inside ``torch.autocast`` of every half dtype the
  device's kernels take, with float32 arguments (what a model under mixed precision
  passes), against the float64 reference, and that the kernel ran.

Errors are relative to the reference's largest magnitude, with the tolerance of the
dtype (:data:`TOLERANCE`); tile ops must match exactly. A check whose kernel is not
built or does not take the dtype is ``skip`` with the reason. Seconds in all.
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple, Sequence

import torch

from omkit.ops import _library
from omkit.ops import reference as ref
from omkit.ops.manifest import OPS, Op

# Largest error relative to the reference's largest magnitude, per dtype (half types
# are accumulated in float32, so this is about the rounding of the inputs and outputs).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
HALF = (torch.float16, torch.bfloat16)


class Check(NamedTuple):
    """One row of the table: ``status`` is ``pass``, ``fail`` or ``skip``."""

    op: str
    dtype: str
    path: str  # "kernel", "reference" or "" (skipped)
    status: str
    error: float | None
    tolerance: float | None
    ms: float | None
    detail: str = ""


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def kernel_dtypes(device_type: str) -> list[torch.dtype]:
    """The floating dtypes the CGA kernels take on ``device_type`` (the manifest), float32 first."""
    names = next((op.dtypes.get(device_type) for op in OPS if op.dtypes.get(device_type) is not None), None)
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    return [d for d in dtypes if names is None or _name(d) in names]


# ---- sample inputs (odd shapes: B = 2, C = 5, spatial 3 x 5 x 7, K = 3, K_out = 4) ---------------

def _cga_inputs(device, dtype, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 3, 5, 7, generator=g, dtype=torch.float64)
    guidance = torch.rand(2, 1, 3, 5, 7, generator=g, dtype=torch.float64)
    shapes = ((3, 5), (3,), (3, 5), (3,), (4, 3), (4,))
    weights = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    cast = [t.to(device=device, dtype=dtype) for t in (features, guidance, *weights)]
    if requires_grad:
        for t in cast[:1] + cast[2:]:
            t.requires_grad_(True)
    return cast[0], cast[1], cast[2:]


def _to64(tensors):
    return [t.detach().double().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
            for t in tensors]


def _rel_error(got, want) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    scale = float(want.abs().max()) if want.numel() else 0.0
    return float((got - want).abs().max()) / max(scale, 1e-12) if got.numel() else 0.0


def _max_error(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> float:
    if len(got) != len(want):
        raise AssertionError(f"{len(got)} outputs, the reference has {len(want)}")
    for g, w in zip(got, want):
        if tuple(g.shape) != tuple(w.shape):
            raise AssertionError(f"shape {tuple(g.shape)}, the reference's {tuple(w.shape)}")
    return max((_rel_error(g, w) for g, w in zip(got, want)), default=0.0)


# window, block, offset, origin of the window-consistent ops' checks
_WINDOWS = ([2, 4, 4], [1, 2, 3], [0, 1, 0], [0, 1, 0])


def _forward(op: Op, device, dtype):
    """(the op's arguments, float64 reference call) of a forward CGA op; the reference returns
    the op's outputs."""
    features, guidance, weights = _cga_inputs(device, dtype)
    f64, g64, w64 = features.double(), guidance.double(), [w.double() for w in weights]
    m = ref.cga_pool(f64, g64)[0].to(dtype)
    grid = ref.window_geometry(features.shape[2:], *_WINDOWS)[-1]
    blocks = torch.randn(features.shape[0], *grid, 3, features.shape[1], generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    calls = {
        "cga_pool": ((features, guidance, 1e-12), lambda: ref.cga_pool(f64, g64, 1e-12)),
        "cga_recalibrate": ((features, guidance, m, *weights, "full"),
                            lambda: ref.cga_recalibrate(f64, g64, m.double(), *w64, "full")),
        "cga": ((features, guidance, *weights, "full", 1e-12), lambda: ref.cga_head(f64, g64, *w64, "full", 1e-12)),
        # windows (2, 4, 4) around blocks (1, 2, 3) from voxel (0, 1, 0): borders and a partial block
        "window_sums": ((features, guidance, *_WINDOWS), lambda: ref.window_sums(f64, g64, *_WINDOWS)),
        "block_linear": ((features, guidance, blocks.to(dtype), weights[1], blocks.to(dtype), weights[3],
                          *_WINDOWS[1::2]),
                         lambda: ref.block_linear(f64, g64, blocks, w64[1], blocks, w64[3], *_WINDOWS[1::2])),
        "cga_windowed": ((features, guidance, *weights, *_WINDOWS, "full", 1e-12),
                         lambda: ref.cga_windowed(f64, g64, *w64, *_WINDOWS, "full", 1e-12)),
    }
    return calls[op.name]


def _window_backward(op: Op, device, dtype):
    """(kernel gradients, float64 reference gradients) of ``window_sums`` or ``block_linear`` (every
    optional input given) on the windows of ``_WINDOWS``; the same rounded inputs and output
    gradient for both."""
    features, guidance, weights = _cga_inputs(device, dtype)
    params = []
    if op.backward_of == "block_linear":
        grid = ref.window_geometry(features.shape[2:], *_WINDOWS)[-1]
        gen = torch.Generator().manual_seed(1)
        m0, m1 = (torch.randn(features.shape[0], *grid, 3, features.shape[1], generator=gen, dtype=torch.float64)
                  for _ in range(2))
        params = [m0, weights[1], m1, weights[3]]  # m0, c0, m1, c1

    def apply(fn, f, g, p):
        if op.backward_of == "window_sums":
            return fn(f, g, *_WINDOWS)
        return fn(f, g, *p, *_WINDOWS[1::2])

    def run(fn, cast):
        f = cast(features).requires_grad_(True)
        p = [cast(t).requires_grad_(True) for t in params]
        out = apply(fn, f, cast(guidance), p)
        seed = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        return torch.autograd.grad(out, [f, *p], seed.to(dtype).to(out.device, out.dtype))

    def kernel_grads():
        return run(getattr(torch.ops.omkit, op.backward_of), lambda t: t.detach().to(device, dtype))

    def reference_grads():
        return run(getattr(ref, op.backward_of), lambda t: t.detach().to(dtype).double().cpu())

    return kernel_grads, reference_grads


def _backward(op: Op, device, dtype):
    """(kernel gradients, float64 reference gradients) of the forward op whose backward ``op`` is."""
    if op.backward_of in ("window_sums", "block_linear"):
        return _window_backward(op, device, dtype)
    features, guidance, weights = _cga_inputs(device, dtype, requires_grad=True)
    grad_seed = torch.Generator().manual_seed(1)
    forward = getattr(torch.ops.omkit, op.backward_of)

    def run(f, g, w, fn):
        if op.backward_of == "cga_pool":
            outs, leaves = fn(f, g), [f]
        elif op.backward_of == "cga_recalibrate":
            m = ref.cga_pool(f.detach().double(), g.double())[0].to(f.dtype).requires_grad_(True)
            outs, leaves = (fn(f, g, m, w),), [f, m, *w]
        else:
            outs, leaves = fn(f, g, w)[:1], [f, *w]
        seeds = [torch.randn(o.shape, generator=grad_seed, dtype=torch.float64).to(o.device, o.dtype) for o in outs]
        return torch.autograd.grad(outs, leaves, seeds)

    def kernel_grads():
        grad_seed.manual_seed(1)
        if op.backward_of == "cga_pool":
            return run(features, guidance, weights, lambda f, g: forward(f, g, 1e-12))
        if op.backward_of == "cga_recalibrate":
            return run(features, guidance, weights, lambda f, g, m, w: forward(f, g, m, *w, "full"))
        return run(features, guidance, weights, lambda f, g, w: forward(f, g, *w, "full", 1e-12))

    def reference_grads():
        grad_seed.manual_seed(1)
        f64, w64 = _to64([features])[0], _to64(weights)
        g64 = guidance.detach().double()
        if op.backward_of == "cga_pool":
            return run(f64, g64, w64, lambda f, g: ref.cga_pool(f, g, 1e-12))
        if op.backward_of == "cga_recalibrate":
            return run(f64, g64, w64, lambda f, g, m, w: ref.cga_recalibrate(f, g, m, *w, "full"))
        return run(f64, g64, w64, lambda f, g, w: ref.cga_head(f, g, *w, "full", 1e-12))

    return kernel_grads, reference_grads


def _tiles(op: Op, device, dtype):
    """(kernel call, reference call) of a tile op; both return the result tensor (exact match)."""
    g = torch.Generator().manual_seed(2)
    volume = (torch.randn(3, 7, 9, 11, generator=g) * 10).to(device=device, dtype=dtype)
    origins = torch.tensor([[-2, 0, 3], [1, 4, -1], [5, 6, 8], [0, 0, 0]])
    tiles = (torch.randn(4, 3, 4, 5, 6, generator=g) * 10).to(device=device, dtype=dtype)
    kernel = getattr(torch.ops.omkit, op.schema)
    label_map = torch.tensor([7, 3, 1], dtype=torch.uint8)
    if op.name == "gather_tiles":
        return (lambda: kernel(volume, origins.to(device), [4, 5, 6]),
                lambda: ref.gather_tiles(volume.cpu(), origins, [4, 5, 6]))
    if op.name == "stitch_tiles":
        def stitch(fn, dev):
            out = torch.zeros(3, 7, 9, 11, device=dev, dtype=dtype)
            fn(out, tiles.to(dev), origins.to(dev), [1, 1, 1], [2, 3, 4])
            return out
        return lambda: stitch(kernel, device), lambda: stitch(ref.stitch_tiles, "cpu")

    def stitch_argmax(fn, dev):
        labels = torch.zeros(7, 9, 11, device=dev, dtype=torch.uint8)
        fn(labels, tiles.to(dev), origins.to(dev), [1, 1, 1], [2, 3, 4], label_map.to(dev))
        return labels
    return lambda: stitch_argmax(kernel, device), lambda: stitch_argmax(ref.stitch_tiles_argmax, "cpu")


# ---- running the checks ------------------------------------------------------------------------

def _timed(fn: Callable, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, (time.perf_counter() - start) * 1e3


def _skip_reason(op: Op, device: torch.device, dtype: torch.dtype) -> str:
    if not _library.extension_loaded():
        return _library.load_error() or "the compiled ops are not loaded"
    if not _library.has_kernel(op.name, device.type):
        return f"this build has no {device.type} kernels"
    if not _library.kernel_takes(op.name, device.type, dtype):
        return f"the {device.type} kernel does not take {_name(dtype)} (the reference runs)"
    return ""


def _check(op: Op, label: str, dtype: torch.dtype, device: torch.device, body: Callable[[], tuple]) -> Check:
    """Run ``body`` -> (error, tolerance, ms, path) and turn it into a row."""
    try:
        error, tolerance, ms, path = body()
    except Exception as exc:  # a failing kernel is a row, not a crash
        return Check(op.name, label, "kernel", "fail", None, None, None, f"{type(exc).__name__}: {exc}"[:200])
    status = "pass" if error <= tolerance else "fail"
    return Check(op.name, label, path, status, error, tolerance, ms)


def check_op(op: Op, device: torch.device, dtype: torch.dtype) -> Check:
    """One op in one dtype on ``device``, kernel against reference."""
    label = _name(dtype)
    reason = _skip_reason(op, device, dtype)
    if reason:
        return Check(op.name, label, "", "skip", None, None, None, reason)
    exact = op.dtypes.get(device.type) is None  # tile ops move elements: exact

    def body():
        if op.backward_of is not None:
            kernel, reference = _backward(op, device, dtype)
        elif exact:
            kernel, reference = _tiles(op, device, dtype)
        else:
            args, reference = _forward(op, device, dtype)

            def kernel():
                return getattr(torch.ops.omkit, op.schema)(*args)
        got, ms = _timed(kernel, device)
        want = reference()
        got = got if isinstance(got, (tuple, list)) else (got,)
        want = want if isinstance(want, (tuple, list)) else (want,)
        if exact:
            same = all(torch.equal(g.cpu(), w.cpu()) for g, w in zip(got, want)) and len(got) == len(want)
            return (0.0 if same else float("inf")), 0.0, ms, "kernel"
        return _max_error(got, want), TOLERANCE[dtype], ms, "kernel"

    return _check(op, label, dtype, device, body)


def check_autocast(op: Op, device: torch.device, dtype: torch.dtype) -> Check:
    """A forward CGA op under ``torch.autocast(device, dtype)`` with float32 arguments."""
    label = f"autocast {_name(dtype)}"
    reason = _skip_reason(op, device, dtype)
    if reason:
        return Check(op.name, label, "", "skip", None, None, None, reason)

    def body():
        args, reference = _forward(op, device, torch.float32)

        def run():
            # through the one dispatch path, as a model under mixed precision calls it
            with torch.autocast(device.type, dtype=dtype), _library.record_dispatch() as calls:
                out = _library.call(op.name, *args)
            return out, calls

        (got, calls), ms = _timed(run, device)
        got = got if isinstance(got, (tuple, list)) else (got,)
        # window sums stay in the accumulation dtype (float32)
        wrong = [g.dtype for g in got if g.dtype != (torch.float32 if op.name == "window_sums" else dtype)]
        if wrong:
            raise AssertionError(f"outputs in {wrong[0]}, not the autocast dtype {_name(dtype)}")
        path = calls[0].path if calls else "?"
        if path != "kernel":
            raise AssertionError(f"the {path} ran, not the kernel")
        want = reference()
        return _max_error(got, want if isinstance(want, (tuple, list)) else (want,)), TOLERANCE[dtype], ms, path

    return _check(op, label, dtype, device, body)


def run(device: str | torch.device = "cpu", dtypes: Sequence[torch.dtype] | None = None,
        autocast: bool = True) -> list[Check]:
    """Every op of the manifest on ``device`` in ``dtypes`` (default: :func:`kernel_dtypes`),
    plus the autocast checks; a list of :class:`Check` rows."""
    device = torch.device(device)
    dtypes = list(dtypes) if dtypes else kernel_dtypes(device.type)
    rows = []
    for op in OPS:
        for dtype in dtypes:
            rows.append(check_op(op, device, dtype))
    if autocast:
        for op in OPS:
            if op.backward_of is None and op.autocast == "lower":
                for dtype in dtypes:
                    if dtype in HALF:
                        rows.append(check_autocast(op, device, dtype))
    return rows


def format_table(rows: Sequence[Check]) -> str:
    """The rows as a fixed-width table with a summary line."""
    header = ("op", "dtype", "path", "max error", "tolerance", "ms", "result")
    lines = []
    for r in rows:
        lines.append((r.op, r.dtype, r.path or "-", "-" if r.error is None else f"{r.error:.2e}",
                      "-" if r.tolerance is None else ("exact" if r.tolerance == 0 else f"{r.tolerance:.0e}"),
                      "-" if r.ms is None else f"{r.ms:.1f}", r.status + (f": {r.detail}" if r.detail else "")))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "fail", "skip")}
    out.append(f"{len(rows)} checks: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return "\n".join(out)
