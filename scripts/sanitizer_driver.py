"""Call every op of omkit/ops/manifest.py forward and backward on odd shapes, in
every dtype its kernel takes on the device, and inside torch.autocast: the program
that compute-sanitizer (memcheck, racecheck, initcheck) runs in ``make gpu-check``.

Odd shapes on purpose: sizes that are not multiples of a warp, a block or a SIMD
width, single voxels, more output classes than a CUDA thread keeps in registers
(kMaxK = 8), long rows that the pooling splits over several blocks, and tile
origins before, inside and past the volume. Every result is compared with the
reference loosely (the selftest and the tests check values; this is about memory),
so a kernel that writes garbage still fails here.

Usage: python scripts/sanitizer_driver.py [--device cuda|cpu]   (exit 1 on a mismatch)
"""
from __future__ import annotations

import argparse
import sys

import torch


def cga_cases():
    """(B, C, spatial, K, K_out) shapes that exercise the kernels' edges."""
    return [
        (1, 1, (1, 1, 1), 1, None),     # one voxel, one channel, one class
        (2, 3, (3, 5, 7), 5, 4),        # odd everything
        (3, 33, (2, 17, 9), 9, 2),      # K > kMaxK: the register-group loop and the many-K input gradient
        (1, 7, (1, 1, 2051), 3, 3),     # a long row: the pooling splits it over blocks
        (65, 2, (1, 3, 1), 2, None),    # many samples, tiny maps
    ]


def window_cases():
    """(B, C, spatial, window, block, offset, origin, K) of the window ops: the grid shifted by the
    origin, windows clipped at the edges and past the volume, partial last blocks, one voxel, and
    no block at all."""
    return [
        (2, 3, (5, 7, 6), (3, 4, 4), (2, 2, 3), (1, 1, 0), (1, 0, 2), 4),
        (1, 33, (3, 17, 9), (4, 6, 6), (2, 5, 2), (1, 0, 2), (0, 0, 0), 9),
        (1, 1, (1, 1, 1), (3, 3, 3), (1, 1, 1), (1, 1, 1), (0, 0, 0), 1),
        (2, 2, (4, 3, 5), (2, 2, 2), (2, 2, 2), (0, 0, 0), (4, 0, 0), 2),
    ]


def run(device: str) -> int:
    from omkit import ops
    from omkit.ops import reference as ref
    from omkit.ops.manifest import OPS

    if not ops.extension_loaded():
        print(f"sanitizer_driver: compiled ops not loaded ({ops.load_error()})", file=sys.stderr)
        return 1
    dtypes = [d for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
              if ops._library.kernel_takes("cga", device, d)]
    g = torch.Generator().manual_seed(0)
    errors, calls = [], 0

    def check(name, got, want, tol):
        nonlocal calls
        calls += 1
        got, want = got.detach().double().cpu(), want.detach().double().cpu()
        scale = max(float(want.abs().max()), 1e-6) if want.numel() else 1.0
        if got.shape != want.shape or (got.numel() and float((got - want).abs().max()) > tol * scale):
            errors.append(name)

    for b, c, spatial, k, k_out in cga_cases():
        for dtype in dtypes:
            tol = 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2
            f = torch.randn(b, c, *spatial, generator=g, dtype=torch.float64)
            p = torch.rand(b, 1, *spatial, generator=g, dtype=torch.float64)
            w = [torch.randn(k, c, generator=g, dtype=torch.float64), torch.randn(k, generator=g, dtype=torch.float64),
                 torch.randn(k, c, generator=g, dtype=torch.float64), torch.randn(k, generator=g, dtype=torch.float64)]
            w += [torch.randn(k_out, k, generator=g, dtype=torch.float64),
                  torch.randn(k_out, generator=g, dtype=torch.float64)] if k_out else [None, None]
            for variant in ("full", "minus", "pos", "neg"):
                tag = f"{variant} B{b} C{c} {spatial} K{k} {str(dtype)[6:]}"
                features = f.to(device, dtype).requires_grad_(True)
                weights = [t.to(device, dtype).requires_grad_(True) if t is not None else None for t in w]
                guidance = p.to(device, dtype)
                out, m, l1 = torch.ops.omkit.cga(features, guidance, *weights, variant, 1e-12)
                r_out, r_m, _ = ref.cga_head(features.double(), guidance.double(),
                                             *[t.double() if t is not None else None for t in weights], variant, 1e-12)
                check(f"cga {tag}", out, r_out, tol)
                grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device, dtype)
                leaves = [features] + [t for t in weights if t is not None]
                grads = torch.autograd.grad(out, leaves, grad, allow_unused=True)
                calls += sum(x is not None for x in grads)
                pm, pl = torch.ops.omkit.cga_pool(features.detach().requires_grad_(True), guidance, 1e-12)
                check(f"cga_pool {tag}", pm, r_m, tol)
                rec = torch.ops.omkit.cga_recalibrate(features, guidance, m.detach(), *weights, variant)
                check(f"cga_recalibrate {tag}", rec, r_out, tol)
                torch.autograd.grad(rec, [features], grad)
                dp = torch.ops.omkit.cga_pool_backward(torch.ones_like(pm), torch.ones_like(pl), pm, pl, guidance, 1e-12)
                calls += 2 + int(dp.numel() > 0)
    # the window ops forward and backward (every optional input of block_linear given)
    for b, c, spatial, window, block, offset, origin, k in window_cases():
        grid = ref.window_geometry(spatial, block, block, 0, origin)[-1]
        for dtype in dtypes:
            tol = 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2
            tag = f"B{b} C{c} {spatial} K{k} {str(dtype)[6:]}"
            x64 = torch.randn(b, c, *spatial, generator=g, dtype=torch.float64)
            p64 = torch.rand(b, 1, *spatial, generator=g, dtype=torch.float64)
            draw = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
            w64 = [draw(b, *grid, k, c), draw(k), draw(b, *grid, k, c), draw(k)]  # m0, c0, m1, c1
            for name, kernel_fn, ref_fn, params in (
                ("window_sums", lambda x, p, w: torch.ops.omkit.window_sums(x, p, window, block, offset, origin),
                 lambda x, p, w: ref.window_sums(x, p, window, block, offset, origin), []),
                ("block_linear", lambda x, p, w: torch.ops.omkit.block_linear(x, p, *w, block, origin),
                 lambda x, p, w: ref.block_linear(x, p, *w, block, origin), w64),
            ):
                x = x64.to(device, dtype).requires_grad_(True)
                w = [t.to(device, dtype).requires_grad_(True) for t in params]
                out = kernel_fn(x, p64.to(device, dtype), w)
                x_r = x.detach().double().cpu().requires_grad_(True)
                w_r = [t.detach().double().cpu().requires_grad_(True) for t in w]
                out_r = ref_fn(x_r, p64.to(dtype).double(), w_r)
                check(f"{name} {tag}", out, out_r, tol)
                seed = torch.randn(out.shape, generator=g, dtype=torch.float64)
                grads = torch.autograd.grad(out, [x, *w], seed.to(device, out.dtype))
                if out_r.requires_grad:
                    grads_r = torch.autograd.grad(out_r, [x_r, *w_r], seed.to(out.dtype).double(), allow_unused=True,
                                                  materialize_grads=True)
                else:  # no block at all: the reference's output is a constant
                    grads_r = [torch.zeros_like(t) for t in (x_r, *w_r)]
                for i, (got, want) in enumerate(zip(grads, grads_r)):
                    check(f"{name} backward {i} {tag}", got, want, tol)
    # the autocast rules, with float32 arguments, in each half dtype the device takes
    for dtype in [d for d in dtypes if d in (torch.float16, torch.bfloat16)]:
        f = torch.randn(2, 5, 3, 5, 7, generator=g).to(device).requires_grad_(True)
        p = torch.rand(2, 1, 3, 5, 7, generator=g).to(device)
        w = [torch.randn(*s, generator=g).to(device).requires_grad_(True) for s in ((3, 5), (3,), (3, 5), (3,), (3, 3), (3,))]
        with torch.autocast(device, dtype=dtype):
            out = ops.cga(f, p, *w)
        torch.autograd.grad(out.float().sum(), [f, *w])
        check(f"autocast cga {str(dtype)[6:]}", out, ref.cga(f.double(), p.double(), *[t.double() for t in w]), 5e-2)
    # tile ops: origins before, inside and past the volume; every dtype the predictor moves
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.float64):
        volume = (torch.randn(3, 7, 9, 11, generator=g) * 10).to(dtype).to(device)
        origins = torch.tensor([[-3, -1, 4], [5, 6, 9], [0, 0, 0], [6, 8, 10], [-4, -5, -6]])
        tiles = torch.ops.omkit.gather_tiles(volume, origins.to(device), [4, 5, 6])
        check(f"gather_tiles {dtype}", tiles.float(), ref.gather_tiles(volume.cpu(), origins, [4, 5, 6]).float(), 0)
        out = torch.zeros(3, 7, 9, 11, dtype=dtype, device=device)
        torch.ops.omkit.stitch_tiles_(out, tiles, origins.to(device), [1, 1, 1], [2, 3, 4])
        want = ref.stitch_tiles(torch.zeros(3, 7, 9, 11, dtype=dtype), tiles.cpu(), origins, [1, 1, 1], [2, 3, 4])
        check(f"stitch_tiles {dtype}", out.float(), want.float(), 0)
        if dtype.is_floating_point:
            labels = torch.zeros(7, 9, 11, dtype=torch.uint8, device=device)
            lut = torch.tensor([9, 4, 2], dtype=torch.uint8)
            torch.ops.omkit.stitch_tiles_argmax_(labels, tiles, origins.to(device), [1, 1, 1], [2, 3, 4], lut.to(device))
            want = ref.stitch_tiles_argmax(torch.zeros(7, 9, 11, dtype=torch.uint8), tiles.cpu(), origins, [1, 1, 1],
                                           [2, 3, 4], lut)
            check(f"stitch_tiles_argmax {dtype}", labels.float(), want.float(), 0)
    if device == "cuda":
        torch.cuda.synchronize()
    names = {op.name for op in OPS}
    print(f"sanitizer_driver: {calls} op calls on {device} ({', '.join(str(d)[6:] for d in dtypes)}), "
          f"covering {len(names)} ops; {len(errors)} mismatches")
    for name in errors[:20]:
        print(f"  mismatch: {name}", file=sys.stderr)
    return 1 if errors else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    return run(args.device)


if __name__ == "__main__":
    sys.exit(main())
