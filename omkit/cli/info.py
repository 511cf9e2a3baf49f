"""Report versions, devices, and which backend each omkit op uses."""
from __future__ import annotations

import json
import platform


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def op_backends() -> dict:
    """Backend per op, as reported by omkit.ops when the kernels are part of this build."""
    try:
        from omkit import ops
    except ImportError:
        return {}
    return ops.backend_report()


def run(args) -> int:
    import torch

    import omkit

    info = {
        "omkit": omkit.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "threads": torch.get_num_threads(),
        "ops": op_backends(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0
