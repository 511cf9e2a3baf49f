"""omkit's network modules for use in your own PyTorch code.

Each is a plain ``torch.nn.Module`` for 3-D volumes (``spatial_dims=3``, the
default and the paper's) or 2-D images (``spatial_dims=2``), as MONAI's
blocks take it; each works under ``torch.autocast`` and ``torch.compile``
(``fullgraph=True``), and :class:`CGA` runs the fused ``omkit::cga`` op (one
autograd node) where the compiled ops take the tensors' device and dtype, its
pure-PyTorch reference elsewhere (``omkit.ops.use_backend("reference")``
forces it, e.g. to export a model to ONNX).

* :class:`CGA` ``(channels, num_classes, variant="full")``: Cross-task Guided
  Attention (CSCI + CompSeg). ``cga(features (B, C, *S), guidance (B, 1, *S))
  -> scores (B, num_classes, *S)``; ``guidance`` is a preceding prediction's
  probability of the positive category. ``variant``: ``full`` (CGA), ``minus``
  (CGA-), ``pos`` (CGAt), ``neg`` (CGAn).
* :class:`SE` ``(channels, reduction=16)``: squeeze-and-excitation,
  ``(B, C, *S) -> (B, C, *S)``.
* :class:`FusionNet3D` ``(in_channels=4, width=1.0)``: the paper's backbone,
  ``(B, in_channels, *S) -> (B, out_channels, *S)``, every side of ``S``
  divisible by 8.
* :class:`OMNet` ``(width=1.0, attention=(None, "cga", "cga"))``: the one-pass
  multi-task network, ``(B, 4, *S) ->`` :class:`TaskOutputs` of logits
  ``(B, 5, *S)``, ``(B, 5, *S)``, ``(B, 2, *S)``.

``S`` is ``(D, H, W)`` with ``spatial_dims=3`` and ``(H, W)`` with
``spatial_dims=2``. The same classes are what ``omkit.create_model`` builds and
what the built-in plug-ins register (``fusionnet3d``, ``se``, ``cga``, ...).
"""
from __future__ import annotations

from omkit.models.attention import CGA, SE
from omkit.models.backbone import FusionNet3D
from omkit.models.omnet import OMNet, TaskOutputs, positive_probability

__all__ = ["CGA", "SE", "FusionNet3D", "OMNet", "TaskOutputs", "positive_probability"]
