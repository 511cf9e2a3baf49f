"""The vocabulary of omkit's op layer: what an op's entry holds, and the kernel backends.

* :data:`KERNEL_BACKENDS` (defined in ``omkit.devices``, with the device setting that
  chooses among them): every backend the compiled library can have, with its device type,
  the dispatch key its kernels register under (``OMKIT_REGISTER_BACKEND(<key>, <device
  type>)`` in ``csrc/<device type>/register.cpp``), the ``torch.autocast`` key its autocast
  rules register under, its sources and the compiler that builds them. Read by the
  dispatch (``omkit.ops._library``), the autocast rules (``omkit.ops._autocast``), the
  device setting, the build (``setup.py``) and the tests; ``CMakeLists.txt`` globs the same
  folders.
* :class:`Op`: one op of ``torch.ops.omkit``: its names, public functions, reference,
  fake kernel, autograd formula, dtypes per backend and autocast rule. Each op family's
  module (``omkit.ops.cga``, ``omkit.ops.window``, ``omkit.ops.tiles``) defines its ops'
  pieces and lists them as ``OPS``; ``omkit.ops.manifest`` joins the families.

"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

from omkit.devices import AUTOCAST_KEYS, COMMON_SOURCES, DISPATCH_KEYS, KERNEL_BACKENDS, KernelBackend

__all__ = ["AUTOCAST_KEYS", "AUTOCAST_POLICIES", "COMMON_SOURCES", "DISPATCH_KEYS", "KERNEL_BACKENDS", "KernelBackend",
           "Op"]


# Autocast rules (torch.autocast on a device of KERNEL_BACKENDS):
# * "lower": every floating-point tensor argument on the autocast device, float64 excepted, is
#   cast to the autocast dtype (float16 / bfloat16), so features that arrive in half precision
#   meet weights in the same dtype; the kernels accumulate in float32 and return the autocast
#   dtype (torch's rule for convolutions);
# * "keep": the arguments pass unchanged (the tile ops move elements of any dtype).
AUTOCAST_POLICIES: tuple[str, ...] = ("lower", "keep")


class Op(NamedTuple):
    """One op of ``torch.ops.omkit``.

    * ``name``: its public name (``backend_report`` key, ``omkit info``);
    * ``schema``: its name in ``torch.ops.omkit`` (``stitch_tiles_`` for an in-place op); its
      schema is in ``csrc/ops.h``;
    * ``functions``: the public functions of ``omkit.ops`` that run it;
    * ``dtypes``: per kernel backend (device type), the dtypes of the first argument its
      kernel takes, or None for any; a call with another dtype runs the reference;
    * ``reference``: the pure-PyTorch function with the op's arguments and outputs (what runs
      when the kernel does not, and the kernels' oracle); None for a backward op, whose
      reference is autograd through the forward's;
    * ``fake``: its fake (shape-only) kernel, for torch.compile and the meta device;
    * ``backward``/``setup_context``: its autograd formula (``torch.library.register_autograd``),
      None for an op that does not train;
    * ``backward_of``: for a backward op, the op whose gradient it computes;
    * ``inplace``: the op writes into its first argument;
    * ``autocast``: its rule inside ``torch.autocast``, one of :data:`AUTOCAST_POLICIES`.

    The first argument of every op is a tensor: its device and dtype choose between kernel
    and reference.
    """

    name: str
    schema: str
    functions: tuple[str, ...]
    dtypes: Mapping[str, tuple[str, ...] | None]
    reference: Callable | None
    fake: Callable
    backward: Callable | None = None
    setup_context: Callable | None = None
    backward_of: str | None = None
    inplace: bool = False
    autocast: str = "lower"

    @property
    def qualname(self) -> str:
        """``omkit::<schema>``, the dispatcher's name of the op."""
        return f"omkit::{self.schema}"

    @property
    def trains(self) -> bool:
        """Whether the op has an autograd formula."""
        return self.backward is not None
