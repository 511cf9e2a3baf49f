"""The autocast rule of every omkit op, registered at the ``AutocastCPU`` and
``AutocastCUDA`` dispatch keys, so that the ops work inside ``torch.autocast``
(training with ``--precision bf16|fp16`` and inference alike).

Each op's rule is the manifest's ``autocast`` policy (``omkit.ops.manifest``):
``lower`` casts every floating-point tensor argument on the autocast device
(float64 excepted) to the autocast dtype in force when the op is called, so half
precision features and float32 weights reach the kernel in one dtype, and the
kernel accumulates in float32; ``keep`` passes the arguments unchanged. The rule
then runs the op with that autocast key excluded, as torch's own autocast
wrappers do. It is one Python function per op for both keys, so the rule a GPU
runs is the rule the CPU tests exercise; ``_library.call`` applies
:func:`cast_args` too before it chooses between kernel and reference, so the
reference fallback sees the same arguments.

Imported by ``omkit.ops._library`` once the compiled library is loaded (it
needs the ops' schemas).
"""
from __future__ import annotations

import torch

from omkit.ops.manifest import OPS, Op

# torch.autocast device type -> the dispatch key its rules register under.
AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}

_undefined = [op.qualname for op in OPS if not torch._C._dispatch_has_kernel(op.qualname)]
if _undefined:
    raise ImportError(f"omkit.ops._autocast needs the compiled omkit ops loaded; missing {', '.join(_undefined)}")


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` casts to on ``device_type`` now, or None when it is off there."""
    if device_type not in AUTOCAST_KEYS or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _cast(value, device_type: str, dtype: torch.dtype):
    if (isinstance(value, torch.Tensor) and value.is_floating_point() and value.device.type == device_type
            and value.dtype != torch.float64 and value.dtype != dtype):
        return value.to(dtype)
    return value


def cast_args(op: Op, device_type: str, dtype: torch.dtype, args: tuple) -> tuple:
    """``args`` of ``op`` as its autocast rule passes them on under autocast to ``dtype`` on ``device_type``."""
    if op.autocast == "keep":
        return args
    if op.autocast == "lower":
        return tuple(_cast(a, device_type, dtype) for a in args)
    raise ValueError(f"{op.name}: unknown autocast policy {op.autocast!r}")


def _register(lib: torch.library.Library, op: Op, device_type: str, key_name: str) -> None:
    overload = getattr(torch.ops.omkit, op.schema).default
    key = getattr(torch._C.DispatchKey, key_name)
    excluded = torch._C.DispatchKeySet(key)

    def rule(*args):
        dtype = torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return overload(*cast_args(op, device_type, dtype, args))

    def kernel(_keyset, *args):
        return rule(*args)

    # The Python dispatcher (tracing, torch.compile) looks up py_kernels first; the C++
    # dispatcher calls the library impl. Both run the same rule.
    overload.py_kernels.pop(key, None)
    overload.py_impl(key)(rule)
    lib.impl(op.schema, kernel, key_name, with_keyset=True)


_LIB = torch.library.Library("omkit", "IMPL")
for _op in OPS:
    for _device_type, _key_name in AUTOCAST_KEYS.items():
        _register(_LIB, _op, _device_type, _key_name)
