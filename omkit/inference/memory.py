"""Dense inference within a memory budget.

Dense inference holds whole-region maps: on a BraTS case at full width a 32-channel map
of the region is about 0.5 GB, and the backbone's plain ``forward`` keeps five or six of
them alive at its first and last levels (2.9 GB of tensors, 3.7 GB peak RSS measured).
A backbone that declares ``slab_forward(x, planes)`` (``FusionNet3D`` does: its
full-resolution levels in slabs of planes along D, the same values) needs one such map
and one slab's temporaries; its heads run their full-resolution convolutions in slabs too
(``omkit.models.slabs``).

The budget: ``DenseSettings.max_memory`` (``--max-memory``), the most the process may
hold (CPU: resident memory, of which what it holds already is taken off; CUDA: the
device memory PyTorch allocates, of which what is allocated already is taken off, and
never more than the device has free), else the memory available now (CPU: the machine's
available memory; CUDA: the device's free memory), times :data:`SAFETY`.

The need: the tensors' peak *measured on the meta device* (shapes only, no data, no
compute): the backbone, its heads, the softmax sums, on a region of the case's shape,
tracked by :class:`PeakTracker`. The whole-region ``forward`` runs when it fits, since
slabs recompute their reach; otherwise the largest slab that fits, else the smallest
(with a warning that the budget may be exceeded).
"""
from __future__ import annotations

import copy
import ctypes
import math
import os
import re
import weakref
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# the share of a budget planned for tensors: the rest is left to the allocators'
# fragmentation and the backends' scratch buffers, which the meta device does not see
SAFETY = 0.8
# slab sizes tried, in planes along D, largest first (a backbone's slab_forward rounds them as its levels need)
SLAB_PLANES = (64, 32, 16, 8, 4)

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str | int, what: str = "--max-memory") -> int:
    """Bytes from ``2G``, ``1500M``, ``2GiB``, ``512mb`` or a plain number of bytes
    (binary units); a one-line ``ValueError`` naming ``what`` otherwise."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{what}: expected a size such as 2G, 1500M or a number of bytes, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _meminfo(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def return_freed_memory() -> None:
    """Hand the C heap's freed pages back to the system (glibc's ``malloc_trim``; nothing
    elsewhere): reading and preprocessing a case leave freed pages resident, which would
    count against ``--max-memory`` and the later peak."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


# glibc's mallopt parameter: the size from which an allocation is its own mapping of the system's
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 << 20


def map_large_allocations() -> None:
    """Make glibc take every allocation of :data:`MMAP_THRESHOLD_BYTES` or more straight from
    the system and give it back when freed (``mallopt``; nothing elsewhere). By default the
    threshold grows up to 32 MiB, so slabs' maps of a few to tens of MB stay in the heap, and
    after a dense run with slabs the heap held about 0.2 GiB more than its tensors (measured:
    peak RSS 1.88 to 1.96 GiB, 1.72 GiB with this, full width, ``--max-memory 2G``). For the
    rest of the process: a ``--max-memory`` run asks for it."""
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


def resident_bytes() -> int:
    """The process's resident memory now (0 where the system does not say)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def dense_budget(device: torch.device, max_memory: int | None) -> int | None:
    """Bytes dense inference may plan for on ``device`` (see the module docstring); None
    where nothing bounds it (no ``max_memory`` and the system does not say)."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        if max_memory is not None:
            free = min(free, max_memory - torch.cuda.memory_allocated(device))
        return int(max(0, free) * SAFETY)
    if max_memory is not None:
        map_large_allocations()
        return_freed_memory()
        return int(max(0, max_memory - resident_bytes()) * SAFETY)
    available = _meminfo("MemAvailable")
    return None if available is None else int(available * SAFETY)


class PeakTracker(TorchDispatchMode):
    """The peak of the bytes held by the tensors the traced ops make (each storage once,
    held while a tensor of it lives). Inputs made before tracking are not counted."""

    def __init__(self):
        super().__init__()
        self.now = self.peak = 0
        self._bytes: dict[int, int] = {}
        self._refs: dict[int, dict[int, weakref.ref]] = {}

    def _release(self, key: int, ref: weakref.ref) -> None:
        refs = self._refs.get(key)
        if refs is None:
            return
        refs.pop(id(ref), None)
        if not refs:
            del self._refs[key]
            self.now -= self._bytes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._bytes:
                    self._bytes[key], self._refs[key] = storage.nbytes(), {}
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                ref = weakref.ref(t, lambda r, k=key: self._release(k, r))
                self._refs[key][id(ref)] = ref
        return out


def traced_peak(fn: Callable[[], object]) -> int:
    """The peak bytes of the tensors ``fn()`` makes (on the meta device: no data)."""
    with torch.no_grad(), PeakTracker() as tracker:
        fn()
    return tracker.peak


# a model -> its copy on the meta device, made once per model and kept while it lives
_META: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()


def meta_copy(model: nn.Module) -> nn.Module:
    """``model`` on the meta device, without the hooks its modules carry: a user's hook
    observes real inputs (a meta tensor has no values to read), and tracing the memory is no
    call of the model it should see."""
    copied = _META.get(model)
    if copied is None:
        copied = copy.deepcopy(model).to("meta")
        for module in copied.modules():
            for hooks in (module._forward_pre_hooks, module._forward_hooks, module._backward_hooks,
                          module._backward_pre_hooks):
                hooks.clear()
        _META[model] = copied
    return copied


def slab_candidates(depth: int) -> list[int | None]:
    """None (whole), then the slab sizes of :data:`SLAB_PLANES` that split ``depth``,
    largest first."""
    return [None, *(planes for planes in SLAB_PLANES if planes < depth)]


def choose_slab_planes(need: Callable[[int | None], int], candidates: Sequence[int | None],
                       budget: int | None) -> tuple[int | None, bool]:
    """The first of ``candidates`` whose ``need`` fits ``budget``, and whether it fits (the
    last candidate when none does; the first when nothing bounds the budget)."""
    if budget is None:
        return candidates[0], True
    for planes in candidates:
        if need(planes) <= budget:
            return planes, True
    return candidates[-1], False


def region_need(run: Callable[[Tensor, int | None], Sequence[Tensor]], in_channels: int,
                region: Sequence[int], dtype: torch.dtype, planes: int | None, runs: int = 1) -> int:
    """Bytes dense inference needs over a region of shape ``region`` (D, H, W) with slabs
    of ``planes`` (None: whole): the input, then the larger of ``run(x, planes)`` (one
    member's logits on the meta device) traced, with the running float32 softmax sum of
    the earlier of ``runs`` member (and mirror) runs beside it, and its logits turned
    into probabilities and added to that sum."""
    x = torch.empty((1, in_channels, *region), device="meta", dtype=dtype)
    logits: list[Tensor] = []
    peak = traced_peak(lambda: logits.extend(run(x, planes)))
    sums = sum(math.prod(lg.shape) * 4 for lg in logits)
    held = sum(lg.nbytes for lg in logits)
    return x.nbytes + max(peak + (sums if runs > 1 else 0), held + 2 * sums)
