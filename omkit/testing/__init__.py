"""The plug-in conformance kit: the contract of each hook kind, as functions a third
party calls in their own tests (and omkit calls on its built-ins)::

    from omkit.testing import check_attention, check_backbone

    def test_my_attention_conforms():
        check_attention("my_attention")        # a registered name, or the class

Each check raises :class:`ConformanceError` (an ``AssertionError``, so pytest shows it
as a failed test) with one line naming the plug-in and the check that failed, and
returns the names of the checks that passed. What is checked:

* attention (:func:`check_attention`): output shape and dtype; the same output twice
  in eval mode; gradients reach every parameter; guided modules: no gradient reaches
  the guidance; bf16 autocast runs and stays finite; where the export packages are
  installed (``omkit[export]``), ``torch.export`` and ONNX with the ops lowered to their
  references, run by onnxruntime, give the eager output (1e-4); where the class claims
  ``compiles_fullgraph = True``, ``torch.compile(fullgraph=True)`` (graph capture with
  AOTAutograd, no code generation) gives the eager output and input gradient. With a declared window pooling
  (``omkit.models.window_protocol``): the declaration pooled over the whole input is
  the module's ``forward`` (1e-5), and pooled per window it is the module run on each
  window's tile (dense equals tiles, 1e-5, float64).
* backbone (:func:`check_backbone`): ``out_channels`` and the output shape at sizes
  divisible by ``min_divisor``; the same output twice in eval mode; gradients reach
  every parameter; ``window_consistent``, if declared, is a bool.
* sampler (:func:`check_sampler`): ``task`` and ``cache_key`` (which names every
  option); ``region`` a bool map of the case's shape; ``draw`` int64 ``(count, 4)``
  rows inside the regions, the same for the same random stream.
* post-processor (:func:`check_postprocessor`): ``order`` and ``default_enabled``;
  the output a label map of the input's shape and dtype, of internal classes only, the
  same twice, the input left as it was.
* transform (:func:`check_transform`): ``omkit.data.augment.check_transform_contract``.
"""
from __future__ import annotations

from ._core import ConformanceError
from .attention import check_attention, onnx_available
from .components import check_backbone, check_postprocessor, check_sampler, check_transform

__all__ = ["ConformanceError", "check_attention", "check_backbone", "check_postprocessor", "check_sampler",
           "check_transform", "onnx_available"]
