"""Whole-volume inference: overlap-tile geometry (:mod:`.tiling`), batched tile
prediction (:mod:`.sliding`), fusion of the three tasks (:mod:`.fusion`), the
one-pass / cascade / ensemble predictor (:mod:`.predictor`) with test-time
mirroring (:mod:`.tta`) and window-consistent dense inference (:mod:`.dense`),
post-processing
(:mod:`.postprocess`) and the case-to-label-map pipeline (:mod:`.pipeline`)."""
from .dense import DenseSettings
from .fusion import dilate, fuse, task1_labels
from .pipeline import CaseResult, load_for_prediction, predict_case, write_label_map, write_probabilities
from .postprocess import build_postprocessors, postprocess
from .predictor import Prediction, SegmentationPredictor, SpeedSettings, TileSettings
from .sliding import overlap_tile_inference, tiles_touching
from .tiling import gather_tiles, keep_offset, stitch_tiles, tile_origins
from .tta import mirror_flips

__all__ = [
    "CaseResult", "DenseSettings", "Prediction", "SegmentationPredictor", "SpeedSettings", "TileSettings", "build_postprocessors", "dilate", "fuse",
    "gather_tiles", "keep_offset", "load_for_prediction", "mirror_flips", "overlap_tile_inference", "postprocess", "predict_case",
    "stitch_tiles", "task1_labels", "tile_origins", "tiles_touching", "write_label_map", "write_probabilities",
]
