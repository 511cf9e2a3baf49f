"""Functional form of Cross-task Guided Attention (Zhou et al., TIP 2020, Sec. III-C).

Explicit weights, no modules: for embedding in other code and as the oracle in
tests. The CGA plug-in modules call these functions. A thin layer over
``omkit.ops``, where each function is defined:

* :func:`category_importance` (the CSCI block's m) and :func:`cga` (CSCI +
  CompSeg: the CGA head's scores) run the fused ops of ``omkit.ops`` (one pass
  over F for the pooling, one for recalibration + CompSeg, no U/S maps in
  memory) when the compiled extension is loaded and has a kernel for the
  tensors' device and dtype, and their pure-PyTorch references otherwise (see
  ``omkit.ops`` for forcing either);
* :func:`category_importance_reference`, :func:`cga_reference` and
  :func:`recalibrate_reference` are those references (``omkit.ops.reference``),
  the test oracle;
* :data:`CGA_VARIANTS` (``full``, ``minus``, ``pos``, ``neg``) and :data:`DEFAULT_EPS`.

Shapes: features ``F`` (B, C, D, H, W); guidance ``Pt`` (B, 1, D, H, W) (2-D:
(B, C, H, W) and (B, 1, H, W), on the kernels and the references alike) is the
preceding task's probability of the positive category (tumor for CGA-tumor,
core for CGA-core), and ``Pn = 1 - Pt``.
"""
from __future__ import annotations

from omkit.ops import CGA_VARIANTS, DEFAULT_EPS, category_importance, cga
from omkit.ops.reference import category_importance as category_importance_reference
from omkit.ops.reference import cga as cga_reference
from omkit.ops.reference import cga_recalibrate as recalibrate_reference

__all__ = [
    "CGA_VARIANTS", "DEFAULT_EPS", "category_importance", "category_importance_reference", "cga", "cga_reference",
    "recalibrate_reference",
]
