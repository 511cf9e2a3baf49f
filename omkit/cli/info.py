"""Report versions, devices, what the op library was built with, and which backend each omkit op uses."""
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


def extension_status() -> dict:
    """Whether the compiled ops loaded (and why not), what they were built with, whether their
    CUDA code runs on each visible GPU, the dtypes each device's kernels take (others run the
    reference, with a warning) and the fallbacks this process has made."""
    import torch

    from omkit import ops

    info = ops.build_info()
    status = {"loaded": ops.extension_loaded(), "why_not": ops.load_error(), "backend": ops.get_backend()}
    if info is not None:
        status.update(built_for_torch=info.get("torch"), cuda_kernels=bool(info.get("cuda")),
                      cuda_archs=info.get("cuda_archs", []), debug_build=info.get("debug"))
        gpus = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
        if gpus and not info.get("cuda"):
            status["why_not"] = ("built without CUDA kernels: the ops run their reference on the GPU; rebuild on this "
                                 "machine (pip install --no-build-isolation -e .) or with FORCE_CUDA=1")
        elif info.get("cuda"):
            missing = [f"sm_{a}{b}" for a, b in gpus if not ops._library.cuda_arch_runs(info["cuda_archs"], (a, b))]
            if missing:
                status["why_not"] = (f"the CUDA kernels were built for {'+'.join(info['cuda_archs'])}, not for "
                                     f"{', '.join(missing)}: rebuild with TORCH_CUDA_ARCH_LIST set for this GPU")
    status["kernel_dtypes"] = {
        device: sorted({d for op in ops.manifest.OPS if op.dtypes.get(device) for d in op.dtypes[device]})
        for device in ops.manifest.DISPATCH_KEYS
    }
    status["fallbacks"] = [f"{op} on {device} in {dtype}" for op, device, dtype in ops.fallbacks()]
    return status


def run(args) -> int:
    import torch

    import omkit

    info = {
        "omkit": omkit.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "devices": [f"{torch.cuda.get_device_name(i)} (sm_{'{}{}'.format(*torch.cuda.get_device_capability(i))})"
                    for i in range(torch.cuda.device_count())],
        "threads": torch.get_num_threads(),
        "extension": extension_status(),
        "ops": op_backends(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if isinstance(value, dict):
                print(f"{key}:")
                for k, v in value.items():
                    print(f"  {k}: {v}")
            else:
                print(f"{key}: {value}")
    return 0
