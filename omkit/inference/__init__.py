"""Whole-volume inference: overlap-tile geometry (:mod:`.tiling`), batched tile
prediction (:mod:`.sliding`), fusion of the three tasks (:mod:`.fusion`), the
one-pass / cascade / ensemble predictor (:mod:`.predictor`) and post-processing
(:mod:`.postprocess`)."""
from .fusion import PAPER_DILATION, dilate, fuse, task1_labels
from .postprocess import build_postprocessors, postprocess
from .predictor import Prediction, SegmentationPredictor, TileSettings
from .sliding import overlap_tile_inference, tiles_touching
from .tiling import PAPER_KEEP, PAPER_ROI_SIZE, PAPER_STRIDE, gather_tiles, keep_offset, stitch_tiles, tile_origins

__all__ = [
    "PAPER_DILATION", "PAPER_KEEP", "PAPER_ROI_SIZE", "PAPER_STRIDE", "Prediction", "SegmentationPredictor",
    "TileSettings", "build_postprocessors", "dilate", "fuse", "gather_tiles", "keep_offset",
    "overlap_tile_inference", "postprocess", "stitch_tiles", "task1_labels", "tile_origins", "tiles_touching",
]
