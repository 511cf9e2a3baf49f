"""The list of omkit's compiled ops: the op families' entries joined, one per op of
``torch.ops.omkit``.

Each op family's module holds all the Python pieces of its ops (public functions,
references, fake kernels, autograd formulas, and their :class:`~omkit.ops.spec.Op`
entries): ``omkit.ops.cga``, ``omkit.ops.window``, ``omkit.ops.tiles``. Everything that
needs the whole list reads it from here: the dispatch (``omkit.ops._library``), the
registration of fake kernels and autograd (``omkit.ops._meta``), the autocast rules,
``omkit selftest``, ``scripts/check_ops_registered.py`` and the tests. The C++ side
lists the same ops once, in ``csrc/ops.h`` (``OMKIT_OPS``), and every backend registers
all of them; ``tests/test_ops_manifest.py`` checks that the compiled library,
``csrc/ops.h`` and this list agree.
"""
from __future__ import annotations

from typing import Mapping

from omkit.ops import cga, tiles, window
from omkit.ops.cga import CGA_DTYPES
from omkit.ops.spec import AUTOCAST_POLICIES, DISPATCH_KEYS, KERNEL_BACKENDS, Op
from omkit.ops.tiles import TILE_DTYPES
from omkit.ops.window import WINDOW_DTYPES

__all__ = ["AUTOCAST_POLICIES", "BY_NAME", "BY_SCHEMA", "CGA_DTYPES", "DISPATCH_KEYS", "FAMILIES", "KERNEL_BACKENDS",
           "OPS", "Op", "TILE_DTYPES", "WINDOW_DTYPES", "op"]

# The op families, each a module with an ``OPS`` tuple.
FAMILIES = (cga, window, tiles)

OPS: tuple[Op, ...] = tuple(entry for family in FAMILIES for entry in family.OPS)
BY_NAME: Mapping[str, Op] = {entry.name: entry for entry in OPS}
BY_SCHEMA: Mapping[str, Op] = {entry.schema: entry for entry in OPS}


def op(name: str) -> Op:
    """The entry of the op with public name ``name``."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no omkit op {name!r}; the ops are {', '.join(BY_NAME)}") from None
