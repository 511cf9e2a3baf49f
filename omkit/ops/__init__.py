"""Fused C++/CUDA ops of omkit, registered as ``torch.ops.omkit.*``, and the
public functions that run them.

* CGA (Zhou et al., TIP 2020, Sec. III-C): :func:`cga` (the whole head: CSCI
  pooling + recalibration + CompSeg + final conv, one autograd node),
  :func:`category_importance` (the CSCI block's m), :func:`cga_pool` (CSCI
  pooling, both categories in one pass over the features, with the L1 norms)
  and :func:`cga_recalibrate` (recalibration + CompSeg + optional final 1x1x1
  conv in one pass, with m folded into per-sample weights); each op has its
  own backward op. ``omkit.functional`` is the documented functional API over
  these.
* Overlap-tile inference: :func:`gather_tiles`, :func:`stitch_tiles` (in place)
  and :func:`stitch_tiles_argmax` (stitches uint8 class labels straight from
  the tiles' scores, without a float full-volume buffer); contract of
  ``omkit.inference.tiling``.
* Window-consistent (dense) inference and training: :func:`window_sums` (every
  block's window summed, with and without the guidance, by separable prefix
  sums), :func:`block_linear` (a 1x1x1 convolution whose weights change per
  block), both with a backward op, and :func:`cga_windowed` (the CGA head with
  each block's m pooled over its window: both passes fused; inference only); the
  geometry is described in ``omkit.ops.reference``.

Each op family's module holds every Python piece of its ops (public functions,
references, fake kernels, autograd, entries): :mod:`omkit.ops.cga`,
:mod:`omkit.ops.window`, :mod:`omkit.ops.tiles`; :mod:`omkit.ops.manifest` joins their
entries and :mod:`omkit.ops.spec` lists the kernel backends. Every public function
checks its arguments and goes through ``_library.call``, which runs the
compiled op when the extension is loaded and has a kernel for the first
argument's device and dtype, else its pure-PyTorch reference in
:mod:`omkit.ops.reference` (warning once); ``OMKIT_OPS_BACKEND=auto|kernel|reference``
or :func:`set_backend` / :func:`use_backend` force either. :func:`backend_report`
tells which one each op uses (``omkit info``), :func:`record_dispatch` which one
each call took, :func:`fallbacks` which calls ran the reference for want of a
kernel for their dtype. Every op has an autocast rule (its entry's policy, registered by
``omkit.ops._autocast``):
inside ``torch.autocast`` its floating-point inputs are cast to the autocast dtype
and the kernels accumulate in float32.
"""
from __future__ import annotations

from omkit.ops._library import BACKENDS, backend_report, build_info, extension_loaded, fallbacks, get_backend
from omkit.ops._library import load_error
from omkit.ops._library import record_dispatch, set_backend, use_backend

# The op families (each imports `call` from _library), joined by the manifest, whose entries
# the dispatch then takes (and registers their fake kernels, autograd and autocast rules).
from omkit.ops import _library, manifest, reference, spec  # noqa: E402  (isort: skip)
from omkit.ops.cga import CGA_VARIANTS, DEFAULT_EPS, category_importance, cga, cga_pool, cga_recalibrate
from omkit.ops.tiles import gather_tiles, stitch_tiles, stitch_tiles_argmax
from omkit.ops.window import block_linear, cga_windowed, window_sums

_library.register_ops(manifest.OPS)
if _library.extension_loaded():
    from omkit.ops import _autocast, _meta  # noqa: E402,F401  register the autocast rules, fake kernels, autograd

__all__ = [
    "BACKENDS", "CGA_VARIANTS", "DEFAULT_EPS", "backend_report", "build_info", "category_importance", "cga",
    "cga_pool", "cga_recalibrate", "extension_loaded", "fallbacks", "gather_tiles", "get_backend", "load_error",
    "manifest", "record_dispatch", "reference", "set_backend", "spec", "stitch_tiles", "stitch_tiles_argmax",
    "use_backend", "block_linear", "cga_windowed", "window_sums",
]
