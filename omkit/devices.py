"""The device types omkit runs on and resolving a ``--device`` setting (the one rule for
every command and the Python API): ``auto`` is the first accelerator available (CUDA),
else the CPU; under torchrun (``LOCAL_RANK`` set) a bare ``cuda`` means this process's
own GPU. And the ``--precision`` setting (fp32, bf16, fp16) of training and inference:
which autocast dtype it means and which devices can run it.

:data:`KERNEL_BACKENDS` is the one table of the device types omkit's compiled ops have
kernels for: read by the ops' dispatch and autocast rules (``omkit.ops``), by the device
setting here and by the build (``setup.py`` loads this file by its path: no torch, no omkit
at module level).
"""
from __future__ import annotations

import os
from typing import Mapping, NamedTuple


class KernelBackend(NamedTuple):
    device_type: str  # torch's device type of its tensors ("cpu", "cuda")
    dispatch_key: str  # where its kernels register (torch.library dispatch key)
    autocast_key: str  # where the ops' autocast rules register for this device type
    sources: tuple[str, ...]  # globs, relative to the repository root
    compiler: str  # "cxx" (always built) or "nvcc" (built when CUDA is available or forced)
    # The feature dtypes its arithmetic passes take (the CGA and window kernel families:
    # kCgaDtypes, kWindowDtypes in csrc/<device type>/); half types accumulate in float32.
    # The tile kernels move raw elements of any dtype.
    float_dtypes: tuple[str, ...]


KERNEL_BACKENDS: tuple[KernelBackend, ...] = (
    # bfloat16 is what torch.autocast gives on a CPU
    KernelBackend("cpu", "CPU", "AutocastCPU", ("csrc/cpu/*.cpp",), "cxx", ("float32", "float64", "bfloat16")),
    KernelBackend("cuda", "CUDA", "AutocastCUDA", ("csrc/cuda/*.cu", "csrc/cuda/*.cpp"), "nvcc",
                  ("float32", "float64", "float16", "bfloat16")),
)
# device type -> dispatch key of its kernels
DISPATCH_KEYS: Mapping[str, str] = {b.device_type: b.dispatch_key for b in KERNEL_BACKENDS}
# device type -> dispatch key of the autocast rules
AUTOCAST_KEYS: Mapping[str, str] = {b.device_type: b.autocast_key for b in KERNEL_BACKENDS}
# The sources every backend shares: the op list, the ops' device-independent bodies, the Python module stub.
COMMON_SOURCES: tuple[str, ...] = ("csrc/*.cpp",)

# Device types besides the CPU, in the order ``auto`` tries them.
ACCELERATORS: tuple[str, ...] = tuple(b.device_type for b in KERNEL_BACKENDS if b.device_type != "cpu")
DEVICE_CHOICES = "cpu, " + ", ".join(f"{a}, {a}:N" for a in ACCELERATORS) + " or auto"


def _available(device_type: str) -> bool:
    import torch

    module = getattr(torch, device_type, None)
    return bool(module is not None and module.is_available())


def resolve_device(name: str = "auto", local_rank: int | None = None):
    """The ``torch.device`` that ``name`` means on this machine; a one-line
    ``ValueError`` naming ``--device`` when it is malformed or unavailable. A
    ``torch.device`` is taken as resolved already and returned as it is."""
    import torch

    if isinstance(name, torch.device):
        return name
    name = str(name).strip().lower()
    if local_rank is None and os.environ.get("LOCAL_RANK") is not None:
        local_rank = int(os.environ["LOCAL_RANK"])
    if name == "auto":
        name = next((a for a in ACCELERATORS if _available(a)), "cpu")
    if name == "cpu":
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind in ACCELERATORS and (not index or index.isdigit()) and name.count(":") <= 1:
        if not _available(kind):
            raise ValueError(f"--device {name}: {kind.upper()} is not available on this machine")
        if not index and local_rank is not None:
            name = f"{kind}:{local_rank}"  # one accelerator per torchrun process
        return torch.device(name)
    raise ValueError(f"--device must be {DEVICE_CHOICES}, got {name!r}")


def is_valid_device_name(name: str) -> bool:
    """Whether ``name`` is spelled as a device setting (without checking the machine)."""
    name = str(name).strip().lower()
    kind, colon, index = name.partition(":")
    if not colon:
        return name in ("auto", "cpu") or name in ACCELERATORS
    return kind in ACCELERATORS and index.isdigit()


# -- numeric precision ----------------------------------------------------------------------

# ``--precision``: fp32, or mixed precision with torch.autocast to bfloat16 / float16
# (float16 with a gradient scaler in training; float16 autocast runs on CUDA only).
PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_dtype(precision: str):
    """The ``torch.autocast`` dtype of ``precision`` (None for fp32)."""
    import torch

    check_precision_name(precision)
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def check_precision_name(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def check_precision(precision: str, device) -> None:
    """A one-line ``ValueError`` naming ``--precision`` when ``device`` (a torch.device)
    cannot run it: fp16 needs CUDA, bf16 on CUDA needs a GPU that supports it."""
    import torch

    check_precision_name(precision)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"--precision fp16: float16 mixed precision needs a CUDA device (--device cuda); "
                         f"on {device.type} use --precision bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                         "use --precision fp16")


def autocast(device, precision: str):
    """The ``torch.autocast`` context of ``precision`` on ``device`` (a no-op for fp32)."""
    import torch

    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def convolution_guard(device, precision: str):
    """What a training step (forward and backward) runs under besides :func:`autocast`.

    bf16 on a CPU: torch's oneDNN convolutions off. The oneDNN bfloat16 conv3d
    weight gradient of torch's CPU builds (measured with torch 2.13, oneDNN 3.12)
    returns wrong values, at times inf or NaN, and different ones on every call,
    for feature maps of depth 2 -- OM-Net's bottleneck at the paper's 16 x 32 x 32
    patch (relative error 1.2 at 20 x 256 x 2 x 4 x 4; correct at depth 4). torch's
    own convolutions are right but far slower, so bf16 on a CPU is for checking the
    mixed-precision path; train on a GPU for speed. A no-op otherwise."""
    import contextlib

    import torch

    if precision != "bf16" or device.type != "cpu":
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def without_onednn():  # torch.backends.mkldnn.flags would also reset (and warn about) TF32 settings
        previous = torch._C._get_mkldnn_enabled()
        torch._C._set_mkldnn_enabled(False)
        try:
            yield
        finally:
            torch._C._set_mkldnn_enabled(previous)

    return without_onednn()
