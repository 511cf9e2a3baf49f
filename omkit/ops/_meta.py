"""Registers every op's fake (shape-only) kernel and autograd formula, from the ops'
entries (``omkit.ops.manifest``; each family's module defines them next to the op's
reference).

The schemas live in ``csrc/ops.h``; ``csrc/ops.cpp`` names this module
(``set_python_module``), so torch imports it whenever it needs a fake kernel, and
``omkit.ops._library`` imports it once the compiled library is loaded. The fake kernels
repeat the C++ argument checks that concern shapes, so a wrong call fails the same way
eagerly and under ``torch.compile``. The backward formulas call the backward ops, which
are ops themselves (with fake kernels), so AOTAutograd can trace them.
"""
from __future__ import annotations

import torch

from omkit.ops.manifest import OPS

_undefined = [op.qualname for op in OPS if not torch._C._dispatch_has_kernel(op.qualname)]
if _undefined:  # imported by torch for a library that failed to load, or before loading it
    raise ImportError(f"omkit.ops._meta needs the compiled omkit ops loaded; missing {', '.join(_undefined)}")

for _op in OPS:
    torch.library.register_fake(_op.qualname)(_op.fake)
    if _op.trains:
        torch.library.register_autograd(_op.qualname, _op.backward, setup_context=_op.setup_context)
