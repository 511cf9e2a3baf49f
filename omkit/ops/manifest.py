"""The list of omkit's compiled ops: one entry per op of ``torch.ops.omkit``.

Everything in Python that needs the list reads it from here: ``omkit.ops._library``
(which kernels exist, which dtypes they take, ``backend_report``), the fake
kernels' module ``omkit.ops._meta``, ``scripts/check_ops_registered.py`` and the
tests. The C++ side lists the same ops once, in ``csrc/ops.h`` (``OMKIT_OPS``),
and every backend registers all of them; ``tests/test_ops_manifest.py`` checks
that the compiled library, ``csrc/ops.h`` and this list agree.

Pure Python on purpose: no torch import, and no import of omkit, so that the
check script can load this file by its path in an environment without omkit.

Per op:

* ``name``: the op's public name (``backend_report`` key, ``omkit info``);
* ``schema``: its name in ``torch.ops.omkit`` (``stitch_tiles_`` for the in-place op);
* ``functions``: the public functions of ``omkit.ops`` that run it;
* ``reference``: the function of ``omkit.ops.reference`` with the op's arguments and
  outputs (what runs when the kernel does not); None for a backward op, whose
  reference is autograd through the forward's;
* ``backward_of``: for a backward op, the op whose gradient it computes;
* ``trains``: the op has an autograd formula (in ``omkit.ops._meta``);
* ``inplace``: the op writes into its first argument;
* ``dtypes``: per kernel backend (a device type of ``KERNEL_BACKENDS``), the dtypes
  of the first argument its kernel takes, or None for any dtype; a call with
  another dtype runs the reference (``OMKIT_OPS_BACKEND=auto``), with a warning
  once per op, device and dtype;
* ``autocast``: how the op casts its arguments inside ``torch.autocast``, one of
  ``AUTOCAST_POLICIES`` (``omkit.ops._autocast`` registers the rule at the
  ``AutocastCPU`` and ``AutocastCUDA`` keys, and ``_library.call`` applies the same
  rule before it chooses between kernel and reference).

The first argument of every op is a tensor, and its device and dtype choose
between kernel and reference.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

# Kernel backends: device type -> the dispatch key its kernels register under
# (OMKIT_REGISTER_BACKEND(<key>, <namespace>) in csrc/<device type>/register.cpp).
KERNEL_BACKENDS: Mapping[str, str] = {"cpu": "CPU", "cuda": "CUDA"}

# The CGA passes are written for these feature dtypes (csrc/<backend>/cga_kernel.*, kCgaDtypes);
# half types are accumulated in float32 (bfloat16 is what torch.autocast gives on a CPU).
CGA_DTYPES: Mapping[str, tuple[str, ...] | None] = {
    "cpu": ("float32", "float64", "bfloat16"),
    "cuda": ("float32", "float64", "float16", "bfloat16"),
}
# The tile kernels move raw elements (1, 2, 4 or 8 bytes): any dtype.
TILE_DTYPES: Mapping[str, tuple[str, ...] | None] = {"cpu": None, "cuda": None}

# Autocast rules (torch.autocast on a CPU or a CUDA device):
# * "lower": every floating-point tensor argument on the autocast device, float64
#   excepted, is cast to the autocast dtype (float16 / bfloat16), so features that
#   arrive in half precision meet weights in the same dtype; the kernels accumulate
#   in float32 and return the autocast dtype (torch's rule for convolutions);
# * "keep": the arguments pass unchanged (the tile ops move elements of any dtype and
#   cast the tiles to the output's dtype themselves).
AUTOCAST_POLICIES: tuple[str, ...] = ("lower", "keep")


class Op(NamedTuple):
    name: str
    schema: str
    functions: tuple[str, ...]
    reference: str | None
    dtypes: Mapping[str, tuple[str, ...] | None]
    backward_of: str | None = None
    trains: bool = False
    inplace: bool = False
    autocast: str = "lower"

    @property
    def qualname(self) -> str:
        """``omkit::<schema>``, the dispatcher's name of the op."""
        return f"omkit::{self.schema}"


OPS: tuple[Op, ...] = (
    # The whole CGA head as one autograd node (omkit.ops.cga, omkit.functional.cga).
    Op("cga", "cga", ("cga",), "cga_head", CGA_DTYPES, trains=True),
    Op("cga_backward", "cga_backward", (), None, CGA_DTYPES, backward_of="cga"),
    # CSCI pooling; category_importance returns its m.
    Op("cga_pool", "cga_pool", ("cga_pool", "category_importance"), "cga_pool", CGA_DTYPES, trains=True),
    Op("cga_pool_backward", "cga_pool_backward", (), None, CGA_DTYPES, backward_of="cga_pool"),
    # Recalibration + CompSeg (+ final conv) for given m.
    Op("cga_recalibrate", "cga_recalibrate", ("cga_recalibrate",), "cga_recalibrate", CGA_DTYPES, trains=True),
    Op("cga_recalibrate_backward", "cga_recalibrate_backward", (), None, CGA_DTYPES, backward_of="cga_recalibrate"),
    # Overlap-tile inference (contract: omkit.inference.tiling).
    Op("gather_tiles", "gather_tiles", ("gather_tiles",), "gather_tiles", TILE_DTYPES, autocast="keep"),
    Op("stitch_tiles", "stitch_tiles_", ("stitch_tiles",), "stitch_tiles", TILE_DTYPES, inplace=True,
       autocast="keep"),
    Op("stitch_tiles_argmax", "stitch_tiles_argmax_", ("stitch_tiles_argmax",), "stitch_tiles_argmax", TILE_DTYPES,
       inplace=True, autocast="keep"),
    # Window-consistent (dense) ops: each block's window summed (SE's mean, CGA's pooling) and a
    # 1x1x1 conv with per-block weights, both with autograd (their backward ops), so the
    # window-consistent training mode trains through them; the whole windowed CGA head is
    # inference only.
    Op("window_sums", "window_sums", ("window_sums",), "window_sums", CGA_DTYPES, trains=True),
    Op("window_sums_backward", "window_sums_backward", (), None, CGA_DTYPES, backward_of="window_sums"),
    Op("block_linear", "block_linear", ("block_linear",), "block_linear", CGA_DTYPES, trains=True),
    Op("block_linear_backward", "block_linear_backward", (), None, CGA_DTYPES, backward_of="block_linear"),
    Op("cga_windowed", "cga_windowed", ("cga_windowed",), "cga_windowed", CGA_DTYPES),
)

BY_NAME: Mapping[str, Op] = {op.name: op for op in OPS}
BY_SCHEMA: Mapping[str, Op] = {op.schema: op for op in OPS}


def op(name: str) -> Op:
    """The manifest entry of the op with public name ``name``."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no omkit op {name!r}; the ops are {', '.join(BY_NAME)}") from None
