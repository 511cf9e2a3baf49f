"""Loading the compiled op library and choosing, per call, between it and the
pure-PyTorch reference.

Backends (``OMKIT_OPS_BACKEND`` environment variable, or :func:`set_backend` /
:func:`use_backend`):

* ``auto`` (default): the compiled kernel when the extension is loaded and has
  one for the tensors' device and dtype, else the reference (with one warning
  per reason, so a missing build is visible but not noisy);
* ``kernel``: always the compiled op; a missing extension or kernel is an error
  (what benchmarks and kernel tests want);
* ``reference``: always the pure-PyTorch reference.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import torch

BACKENDS = ("auto", "kernel", "reference")
ENV_VAR = "OMKIT_OPS_BACKEND"

# Public op name -> schema name in torch.ops.omkit.
OPS = {
    "cga": "cga",
    "cga_backward": "cga_backward",
    "cga_pool": "cga_pool",
    "cga_pool_backward": "cga_pool_backward",
    "cga_recalibrate": "cga_recalibrate",
    "cga_recalibrate_backward": "cga_recalibrate_backward",
    "gather_tiles": "gather_tiles",
    "stitch_tiles": "stitch_tiles_",
    "stitch_tiles_argmax": "stitch_tiles_argmax_",
}
# The CPU kernels of the CGA ops are written for these dtypes; others use the reference.
CPU_CGA_DTYPES = (torch.float32, torch.float64)
CUDA_CGA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _read_env_backend() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {BACKENDS}")
    return value


class _State:
    backend: str = _read_env_backend()
    loaded: bool = False
    load_error: str | None = None
    warned: set = set()
    # op -> device types with a registered kernel; computed once at load so the
    # per-call decision is a dict lookup that torch.compile can trace.
    kernels: dict = {}


STATE = _State()


def _load() -> None:
    try:
        from omkit import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)
    except ImportError as exc:
        STATE.load_error = f"omkit._C is not built ({exc})"
        return
    except OSError as exc:  # built against another torch, missing shared library, ...
        STATE.load_error = f"omkit._C failed to load ({exc})"
        return
    STATE.loaded = True
    for op, schema in OPS.items():
        STATE.kernels[op] = frozenset(
            device for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
            if torch._C._dispatch_has_kernel_for_dispatch_key(f"omkit::{schema}", key)
        )
    from . import _meta  # noqa: F401  fake kernels and autograd formulas


def extension_loaded() -> bool:
    """True when the compiled ops are registered in ``torch.ops.omkit``."""
    return STATE.loaded


def load_error() -> str | None:
    """Why the compiled ops are not available (None when they are)."""
    return STATE.load_error


def get_backend() -> str:
    return STATE.backend


def set_backend(backend: str) -> None:
    """Select ``auto``, ``kernel`` or ``reference`` for every later call."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown omkit ops backend {backend!r}; choose one of {BACKENDS}")
    STATE.backend = backend


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`."""
    previous = STATE.backend
    set_backend(backend)
    try:
        yield
    finally:
        STATE.backend = previous


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the loaded library has a kernel of ``op`` for ``device_type``."""
    if not STATE.loaded:
        return False
    if device_type == "meta":
        return True  # shapes only: the fake kernels answer
    return device_type in STATE.kernels.get(op, ())


def _warn_once(key: str, message: str) -> None:
    if key not in STATE.warned:
        STATE.warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def use_kernel(op: str, tensor: torch.Tensor, dtypes: tuple | None = None) -> bool:
    """Decide whether a call of ``op`` on ``tensor`` goes to the compiled kernel."""
    backend = STATE.backend
    if backend == "reference":
        return False
    device_type = tensor.device.type
    if backend == "kernel":
        if not STATE.loaded:
            raise RuntimeError(f"{ENV_VAR}=kernel but {STATE.load_error}")
        return True  # the op itself raises a clear error for an unsupported device or dtype
    if not STATE.loaded:
        _warn_once("load", f"omkit: {STATE.load_error}; running the pure-PyTorch reference ops "
                           f"(slower; set {ENV_VAR}=reference to silence)")
        return False
    if not has_kernel(op, device_type):
        _warn_once(f"{op}:{device_type}", f"omkit: no compiled {op} kernel for {device_type} tensors in this "
                                          "build; running the pure-PyTorch reference")
        return False
    if dtypes is not None and device_type != "meta":
        allowed = CUDA_CGA_DTYPES if device_type == "cuda" else CPU_CGA_DTYPES
        if tensor.dtype not in allowed:
            return False  # e.g. bfloat16 on CPU: the reference handles it, silently
    return True


def backend_report() -> dict:
    """Op name -> backend a call on the default device would use:
    ``"cuda-kernel"``, ``"cpu-kernel"`` or ``"reference"``."""
    report = {}
    cuda = torch.cuda.is_available()
    for op in OPS:
        if STATE.backend == "reference" or not STATE.loaded:
            report[op] = "reference"
        elif cuda and has_kernel(op, "cuda"):
            report[op] = "cuda-kernel"
        elif has_kernel(op, "cpu"):
            report[op] = "cpu-kernel"
        else:
            report[op] = "reference"
    return report


_load()
