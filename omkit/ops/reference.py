"""Every pure-PyTorch reference of omkit's ops under one name each: what the public
functions of ``omkit.ops`` run when the compiled ops are not available (or do not take
the inputs' device or dtype), and the oracle of the kernel tests. Each reference lives
in its op family's module (``omkit.ops.cga``, ``omkit.ops.window``, ``omkit.ops.tiles``);
this module gives them the ops' names, for tests and for code that wants the reference
explicitly (``omkit.functional`` re-exports the CGA ones).

The geometry of the window-consistent ops is described in ``omkit.ops.window``.
"""
from __future__ import annotations

from omkit.ops.cga import CGA_VARIANTS, DEFAULT_EPS, branch_weights, cga_block_maps, cga_head, check_cga_inputs
from omkit.ops.cga import category_importance_reference as category_importance
from omkit.ops.cga import cga_pool_reference as cga_pool
from omkit.ops.cga import cga_recalibrate_reference as cga_recalibrate
from omkit.ops.cga import cga_reference as cga
from omkit.ops.cga import check_features_guidance, check_variant, importance_from_sums, num_outputs
from omkit.ops.tiles import _triple
from omkit.ops.tiles import gather_tiles_reference as gather_tiles
from omkit.ops.tiles import stitch_tiles_argmax_reference as stitch_tiles_argmax
from omkit.ops.tiles import stitch_tiles_reference as stitch_tiles
from omkit.ops.window import block_linear_reference as block_linear
from omkit.ops.window import cga_windowed_reference as cga_windowed
from omkit.ops.window import window_geometry
from omkit.ops.window import window_sums_reference as window_sums

__all__ = [
    "CGA_VARIANTS", "DEFAULT_EPS", "block_linear", "branch_weights", "category_importance", "cga", "cga_block_maps",
    "cga_head", "cga_pool", "cga_recalibrate", "cga_windowed", "check_cga_inputs", "check_features_guidance",
    "check_variant", "gather_tiles", "importance_from_sums", "num_outputs", "stitch_tiles", "stitch_tiles_argmax",
    "window_geometry", "window_sums", "_triple",
]
