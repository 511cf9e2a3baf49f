"""The autocast rule of every omkit op, registered at the autocast dispatch key of every
kernel backend (``omkit.ops.spec.KERNEL_BACKENDS``: ``AutocastCPU``, ``AutocastCUDA``), so
that the ops work inside ``torch.autocast`` (training with ``--precision bf16|fp16`` and
inference alike).

Each op's rule is its entry's ``autocast`` policy (``omkit.ops.spec``):
``lower`` casts every floating-point tensor argument on the autocast device
(float64 excepted) to the autocast dtype in force when the op is called, so half
precision features and float32 weights reach the kernel in one dtype, and the
kernel accumulates in float32; ``keep`` passes the arguments unchanged. The rule
then runs the op with that autocast key excluded, as torch's own autocast
wrappers do. It is one Python function per op for both keys, so the rule a GPU
runs is the rule the CPU tests exercise; ``_library.call`` applies
the same ``cast_args`` before it chooses between kernel and reference, so the
reference fallback sees the same arguments.

Imported by ``omkit.ops`` once the compiled library is loaded (it needs the ops'
schemas).
"""
from __future__ import annotations

import torch

from omkit.ops._library import cast_args
from omkit.ops.manifest import OPS
from omkit.ops.spec import AUTOCAST_KEYS, Op

_undefined = [op.qualname for op in OPS if not torch._C._dispatch_has_kernel(op.qualname)]
if _undefined:
    raise ImportError(f"omkit.ops._autocast needs the compiled omkit ops loaded; missing {', '.join(_undefined)}")


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
