"""Loading the compiled op library and choosing, per call, between it and the
pure-PyTorch reference: :func:`call` is the one path every public function of
``omkit.ops`` takes.

Backends (``OMKIT_OPS_BACKEND`` environment variable, or :func:`set_backend` /
:func:`use_backend`):

* ``auto`` (default): the compiled kernel when the extension is loaded and has
  one for the first argument's device and dtype (the op's entry), else
  the reference, with one warning per reason (a missing build once; a dtype the
  kernel does not take, e.g. float16 on a CPU, once per op, device and dtype), so
  a fallback is visible but not noisy; :func:`fallbacks` lists them;
* ``kernel``: always the compiled op; a missing extension or kernel is an error
  (what benchmarks and kernel tests want);
* ``reference``: always the pure-PyTorch reference (``omkit.ops.reference``).

Inside ``torch.autocast`` every call first applies the op's autocast rule
(``omkit.ops._autocast``), so the dtype that decides is the one the kernel would
get. :func:`record_dispatch` records each decision (op, device, dtype, kernel or
reference): what tests assert to know which path ran.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator, NamedTuple

import torch

from omkit.ops.spec import AUTOCAST_KEYS, DISPATCH_KEYS, Op

BACKENDS = ("auto", "kernel", "reference")
ENV_VAR = "OMKIT_OPS_BACKEND"


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
    # op name -> device types with a registered kernel, and op name -> torch.ops.omkit.<schema>;
    # computed once at load so the per-call decision is dict lookups that torch.compile can trace.
    kernels: dict = {}
    ops: dict = {}
    # from the manifest, at load: op name -> its entry, op name -> device type -> the torch dtypes
    # its kernel takes (None: any), op name -> its reference (backward ops have none)
    entries: dict = {}
    kernel_dtypes: dict = {}
    references: dict = {}
    module = None  # omkit.ops._C once this module imported it
    fallbacks: set = set()  # (op, device type, dtype name) that ran the reference for want of a kernel
    recorders: list = []  # lists that record_dispatch() is filling


STATE = _State()


def _load() -> None:
    """Load the compiled library, unless one is loaded already (torch.ops.load_library of a
    build under test, a C++ host): that one is used as it is."""
    # one op stands for the library here (the manifest is not imported yet: its families import this
    # module); register_ops then checks every op of the manifest
    if torch._C._dispatch_has_kernel("omkit::cga"):
        STATE.loaded = True
        return
    try:
        from omkit.ops import _C  # importing runs the library's TORCH_LIBRARY registrations
    except ImportError as exc:
        STATE.load_error = f"omkit.ops._C is not built ({exc})"
        return
    except OSError as exc:  # built against another torch, missing shared library, ...
        STATE.load_error = f"omkit.ops._C failed to load ({exc})"
        return
    STATE.module = _C
    STATE.loaded = True


def register_ops(ops) -> None:
    """Take the ops' entries (``omkit.ops.manifest.OPS``, which ``omkit.ops`` passes once its
    families are imported): their dtypes and references for the dispatch, which backends
    have kernels, and, with the library loaded, the fake kernels, autograd formulas and
    autocast rules (``omkit.ops`` imports ``_meta`` and ``_autocast`` then)."""
    for op in ops:
        STATE.entries[op.name] = op
        STATE.kernel_dtypes[op.name] = {
            device: None if names is None else frozenset(getattr(torch, n) for n in names)
            for device, names in op.dtypes.items()}
        if op.reference is not None:
            STATE.references[op.name] = op.reference
    if not STATE.loaded:
        return
    missing = [op.qualname for op in ops if not torch._C._dispatch_has_kernel(op.qualname)]
    if missing:
        STATE.loaded = False
        STATE.load_error = f"the loaded omkit op library lacks {', '.join(missing)} (built from other sources?)"
        return
    for op in ops:
        STATE.kernels[op.name] = frozenset(
            device for device, key in DISPATCH_KEYS.items()
            if torch._C._dispatch_has_kernel_for_dispatch_key(op.qualname, key)
        )
        STATE.ops[op.name] = getattr(torch.ops.omkit, op.schema)


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
    """Whether the loaded library has a kernel of ``op`` (public name) for ``device_type``."""
    if not STATE.loaded:
        return False
    if device_type == "meta":
        return True  # shapes only: the fake kernels answer
    return device_type in STATE.kernels.get(op, ())


def kernel_takes(op: str, device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``op``'s kernel for ``device_type`` takes ``dtype`` (the manifest's dtypes)."""
    if device_type == "meta":
        return True
    allowed = STATE.kernel_dtypes[op].get(device_type, frozenset())
    return allowed is None or dtype in allowed


def _warn_once(key: str, message: str) -> None:
    if key not in STATE.warned and not torch.compiler.is_compiling():
        STATE.warned.add(key)
        # 1 this function, 2 use_kernel, 3 call, 4 the public function, 5 its caller
        warnings.warn(message, RuntimeWarning, stacklevel=5)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def use_kernel(op: str, tensor: torch.Tensor) -> bool:
    """Decide whether a call of ``op`` (public name) whose first argument is ``tensor``
    goes to the compiled kernel: the backend setting, the extension, a kernel for the
    tensor's device and the manifest's dtypes for it."""
    backend = STATE.backend
    if backend == "reference":
        return False
    if backend == "kernel":
        if not STATE.loaded:
            raise RuntimeError(f"{ENV_VAR}=kernel but {STATE.load_error}")
        return True  # the op itself raises a clear error for an unsupported device or dtype
    if not STATE.loaded:
        _warn_once("load", f"omkit: {STATE.load_error}; running the pure-PyTorch reference ops "
                           f"(slower; set {ENV_VAR}=reference to silence)")
        return False
    device_type = tensor.device.type
    if not has_kernel(op, device_type):
        _warn_once(f"{op}:{device_type}", f"omkit: no compiled {op} kernel for {device_type} tensors in this "
                                          "build; running the pure-PyTorch reference")
        return False
    if kernel_takes(op, device_type, tensor.dtype):
        return True
    # e.g. float16 on a CPU: the reference handles it, more slowly; say so once
    name = _dtype_name(tensor.dtype)
    if not torch.compiler.is_compiling():
        STATE.fallbacks.add((op, device_type, name))
    _warn_once(f"{op}:{device_type}:{name}", f"omkit: the compiled {op} kernel for {device_type} does not take "
                                             f"{name}; running the pure-PyTorch reference (slower)")
    return False


class Dispatch(NamedTuple):
    """One decision of :func:`call`: the op, the first argument's device type and dtype
    (after the autocast rule), and ``"kernel"`` or ``"reference"``."""

    op: str
    device: str
    dtype: str
    path: str


@contextlib.contextmanager
def record_dispatch() -> Iterator[list]:
    """``with record_dispatch() as calls: ...``: ``calls`` receives a :class:`Dispatch`
    for every :func:`call` made inside the block (eagerly; not while torch.compile traces)."""
    calls: list = []
    STATE.recorders.append(calls)
    try:
        yield calls
    finally:
        STATE.recorders.remove(calls)


def fallbacks() -> list[tuple[str, str, str]]:
    """(op, device type, dtype) of every call in this process that ran the reference
    because the kernel does not take the dtype."""
    return sorted(STATE.fallbacks)


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


def autocast_args(op: str, args: tuple) -> tuple:
    """``args`` as op ``op``'s autocast rule passes them on, when ``torch.autocast`` is on
    for the first argument's device (unchanged otherwise)."""
    if not STATE.loaded or not isinstance(args[0], torch.Tensor):
        return args
    device_type = args[0].device.type
    dtype = autocast_dtype(device_type)
    if dtype is None:
        return args
    return cast_args(STATE.entries[op], device_type, dtype, args)


def call(op: str, *args):
    """Run op ``op`` (its public name in the manifest) on its schema's arguments: the
    compiled kernel when :func:`use_kernel` says so for the first argument, else the
    op's reference. Inside ``torch.autocast`` the op's autocast rule is applied first.
    Returns the op's outputs (None for the in-place tile kernels)."""
    args = autocast_args(op, args)
    kernel = use_kernel(op, args[0])
    if STATE.recorders and not torch.compiler.is_compiling():
        first = args[0]
        decision = Dispatch(op, first.device.type, _dtype_name(first.dtype), "kernel" if kernel else "reference")
        for calls in STATE.recorders:
            calls.append(decision)
    if kernel:
        return STATE.ops[op](*args)
    return STATE.references[op](*args)


def build_info() -> dict | None:
    """What the loaded library was built with (``omkit.ops._C.build_info()``): ``torch`` (the
    version built against), ``cuda`` (has CUDA kernels), ``cuda_archs`` (the CUDA code
    targets compiled: ``sm_XY`` cubins, ``compute_XY`` PTX), ``debug``; None when the
    library is not loaded."""
    if not STATE.loaded:
        return None
    module = STATE.module  # None when the library was loaded by another route (torch.ops.load_library)
    info = dict(module.build_info()) if hasattr(module, "build_info") else {}
    info["cuda_archs"] = [a for a in str(info.get("cuda_archs", "")).split("+") if a]
    return info


def cuda_arch_runs(archs: list[str], capability: tuple[int, int]) -> bool:
    """Whether kernels compiled for ``archs`` run on a GPU of compute ``capability``: a cubin
    of the same major version and no newer minor one, or PTX no newer than the GPU (JIT)."""
    major, minor = capability
    for arch in archs:
        kind, _, number = arch.partition("_")
        digits = number.rstrip("abf")
        if not digits.isdigit():
            continue
        a_major, a_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def backend_report() -> dict:
    """Op name -> backend a call on the default device would use:
    ``"cuda-kernel"``, ``"cpu-kernel"`` or ``"reference"``."""
    report = {}
    cuda = torch.cuda.is_available()
    for op in STATE.entries.values():
        if STATE.backend == "reference" or not STATE.loaded:
            report[op.name] = "reference"
        elif cuda and has_kernel(op.name, "cuda"):
            report[op.name] = "cuda-kernel"
        elif has_kernel(op.name, "cpu"):
            report[op.name] = "cpu-kernel"
        else:
            report[op.name] = "reference"
    return report


_load()
