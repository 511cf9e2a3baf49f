"""Load a built omkit op library and check that it registers exactly the ops of
omkit/ops/manifest.py, each with the kernels it should have; then run each
forward CGA op and the tile gather on CPU against its reference as a smoke test;
and that the module's build_info() says what it was built with (CUDA kernels and
their code targets, unless --no-cuda).

Runs where omkit may not be installed (a venv with another torch, and torch's own
dependencies only): the library is loaded first, then ``omkit.ops`` is imported
from this source tree, which uses the library already loaded (never an in-tree
build for another torch) and registers the ops' fake kernels, autograd and
autocast rules against it.

Usage: python scripts/check_ops_registered.py path/to/_C.so [--no-cuda]
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def registration_errors(manifest, devices) -> list[str]:
    """What the loaded library lacks or has beyond the manifest, for the kernel backends `devices`."""
    registered = {name for name in torch._C._dispatch_get_all_op_names() if name.startswith("omkit::")}
    expected = {op.qualname for op in manifest.OPS}
    errors = [f"not in the manifest: {name}" for name in sorted(registered - expected)]
    errors += [f"not registered: {name}" for name in sorted(expected - registered)]
    keys = manifest.DISPATCH_KEYS
    errors += [f"no {keys[device]} kernel: {op.qualname}" for op in manifest.OPS
               for device in devices if op.qualname in registered
               and not torch._C._dispatch_has_kernel_for_dispatch_key(op.qualname, keys[device])]
    return errors


def _outputs(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def smoke_errors(manifest) -> list[str]:
    """The forward CGA ops and gather_tiles on small CPU inputs against their references."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, generator=g)
    guidance = torch.rand(2, 1, 4, 5, 6, dtype=torch.float64, generator=g)
    shapes = ((2, 3), (2,), (2, 3), (2,), (2, 2), (2,))  # w_pos, b_pos, w_neg, b_neg, w_out, b_out
    weights = [torch.randn(*shape, dtype=torch.float64, generator=g) for shape in shapes]
    m, _ = manifest.op("cga_pool").reference(features, guidance, 1e-12)
    samples = {
        "cga_pool": (features, guidance, 1e-12),
        "cga_recalibrate": (features, guidance, m, *weights, "full"),
        "cga": (features, guidance, *weights, "full", 1e-12),
        "gather_tiles": (torch.randn(2, 5, 6, 7, generator=g), torch.tensor([[-1, 0, 2], [3, 4, 5]]), [3, 3, 3]),
    }
    errors = []
    for schema, args in samples.items():
        got = _outputs(getattr(torch.ops.omkit, schema)(*args))
        want = _outputs(manifest.BY_SCHEMA[schema].reference(*args))
        if len(got) != len(want) or not all(torch.allclose(a, b) for a, b in zip(got, want)):
            errors.append(f"omkit::{schema} disagrees with its reference")
    return errors


def build_info_errors(path: str, cuda: bool) -> list[str]:
    """What is wrong with the library's ``build_info()`` (it is importable as ``omkit.ops._C``)."""
    spec = importlib.util.spec_from_file_location("omkit.ops._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    info = module.build_info()
    errors = []
    if info.get("torch") != torch.__version__.split("+")[0]:
        errors.append(f"build_info() torch {info.get('torch')!r}, the library was loaded by torch {torch.__version__}")
    if bool(info.get("cuda")) != cuda:
        errors.append(f"build_info() cuda={info.get('cuda')!r}, expected {cuda}")
    archs = [a for a in str(info.get("cuda_archs", "")).split("+") if a]
    if cuda and (not archs or not all(re.fullmatch(r"(sm|compute)_\d+[a-z]?", a) for a in archs)):
        errors.append(f"build_info() cuda_archs {info.get('cuda_archs')!r} are not CUDA code targets (sm_90, ...)")
    return errors


def main(argv: list[str]) -> int:
    paths = [a for a in argv if not a.startswith("--")]
    if len(paths) != 1:
        print("usage: check_ops_registered.py LIBRARY [--no-cuda]", file=sys.stderr)
        return 2
    torch.ops.load_library(paths[0])
    sys.path.insert(0, str(ROOT))
    import omkit.ops
    from omkit.ops import manifest

    if not omkit.ops.extension_loaded():
        print(f"omkit.ops did not take the loaded library: {omkit.ops.load_error()}", file=sys.stderr)
        return 1
    devices = ["cpu"] if "--no-cuda" in argv else list(manifest.DISPATCH_KEYS)
    errors = registration_errors(manifest, devices) + smoke_errors(manifest)
    errors += build_info_errors(paths[0], cuda="--no-cuda" not in argv)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    keys = " and ".join(manifest.DISPATCH_KEYS[d] for d in devices)
    print(f"{len(manifest.OPS)} ops registered with {keys} kernels in {paths[0]} (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
