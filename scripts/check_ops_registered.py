"""Load a built omkit op library and check that every op is registered with the
kernels it should have; run a tiny CPU call against its formula as a smoke test.

Usage: python scripts/check_ops_registered.py path/to/_C.so [--no-cuda]
"""
from __future__ import annotations

import sys

import torch

OPS = ("cga", "cga_backward", "cga_pool", "cga_pool_backward", "cga_recalibrate", "cga_recalibrate_backward", "gather_tiles",
       "stitch_tiles_", "stitch_tiles_argmax_")


def main(argv: list[str]) -> int:
    paths = [a for a in argv if not a.startswith("--")]
    if len(paths) != 1:
        print("usage: check_ops_registered.py LIBRARY [--no-cuda]", file=sys.stderr)
        return 2
    keys = ("CPU",) if "--no-cuda" in argv else ("CPU", "CUDA")
    torch.ops.load_library(paths[0])
    missing = [f"omkit::{op} ({key})" for op in OPS for key in keys
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"omkit::{op}", key)]
    if missing:
        print(f"missing kernels: {', '.join(missing)}", file=sys.stderr)
        return 1
    features = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    guidance = torch.rand(2, 1, 4, 5, 6, dtype=torch.float64)
    m, _ = torch.ops.omkit.cga_pool(features, guidance, 1e-12)
    flat, pt = features.flatten(2), guidance.flatten(2)
    z = torch.stack(((flat * pt).sum(-1), (flat * (1 - pt)).sum(-1)), dim=1)
    expected = z / z.abs().sum(-1, keepdim=True)
    if not torch.allclose(m, expected):
        print("cga_pool smoke test disagrees with its formula", file=sys.stderr)
        return 1
    print(f"{len(OPS)} ops registered with {' and '.join(keys)} kernels in {paths[0]} (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
