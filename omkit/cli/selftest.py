"""Check every compiled op against its reference on this machine's device and dtypes (seconds; exit 1 on failure).

Examples::

    omkit selftest                      # the default device (CUDA when available), every dtype its kernels take
    omkit selftest --device cpu
    omkit selftest --device cuda --dtype float16 --dtype bfloat16

Each row is one op of ``omkit.ops.manifest`` in one dtype: the kernel's outputs
(or, for a backward op, the gradients of its forward op) against the pure-PyTorch
reference in float64 on the same inputs, and each forward CGA op inside
``torch.autocast`` of the half dtypes. ``skip`` says why a kernel did not run
(not built, no kernel for the device, a dtype it does not take).
"""
from __future__ import annotations

import json
import platform

DTYPES = ("float32", "float64", "float16", "bfloat16")


def add_arguments(parser):
    from omkit.cli.options import add_device_argument

    add_device_argument(parser)
    parser.add_argument("--dtype", action="append", choices=DTYPES, metavar="DTYPE",
                        help=f"check this dtype ({', '.join(DTYPES)}); repeatable (default: every dtype the device's "
                             "kernels take)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def describe(device) -> str:
    """One line: the device, torch and what the op library was built with."""
    import torch

    from omkit import ops

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = f"{device} ({props.name}, sm_{props.major}{props.minor})"
    else:
        where = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    info = ops.build_info()
    if info is None:
        built = f"compiled ops not loaded: {ops.load_error()}"
    else:
        built = f"omkit.ops._C built for torch {info.get('torch', '?')}"
        built += f", CUDA code {'+'.join(info['cuda_archs']) or '?'}" if info.get("cuda") else ", CPU kernels only"
    return f"device {where}; torch {torch.__version__}; {built}"


def run(args) -> int:
    import torch

    from omkit.devices import resolve_device
    from omkit.ops import selftest

    device = resolve_device(args.device)
    dtypes = [getattr(torch, name) for name in args.dtype] if args.dtype else None
    rows = selftest.run(device, dtypes)
    failed = any(r.status == "fail" for r in rows)
    if args.json:
        print(json.dumps({"device": str(device), "summary": describe(device),
                          "checks": [r._asdict() for r in rows], "ok": not failed}, indent=2))
    else:
        print(f"omkit selftest: {describe(device)}")
        print(selftest.format_table(rows))
    return 1 if failed else 0
