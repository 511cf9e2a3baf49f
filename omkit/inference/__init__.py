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
from .tiling import keep_offset, tile_origins
from .tta import mirror_flips

__all__ = [
    "CaseResult", "DenseSettings", "Prediction", "SegmentationPredictor", "SpeedSettings", "TileSettings", "build_postprocessors", "dilate", "fuse",
    "keep_offset", "load_for_prediction", "mirror_flips", "overlap_tile_inference", "postprocess", "predict_case",
    "task1_labels", "tile_origins", "tiles_touching", "write_label_map", "write_probabilities",
]


def __getattr__(name: str):
    # one name, one thing: the tile ops are omkit.ops.gather_tiles / stitch_tiles (kernel or
    # reference, dispatched); their pure-PyTorch references are in omkit.ops.reference
    if name in ("gather_tiles", "stitch_tiles"):
        import warnings

        from omkit.ops import reference

        warnings.warn(f"omkit.inference.{name} (the pure-PyTorch reference) is deprecated: use omkit.ops.{name} "
                      f"(dispatched to the kernels) or omkit.ops.reference.{name}", DeprecationWarning, stacklevel=2)
        return getattr(reference, name)
    raise AttributeError(f"module 'omkit.inference' has no attribute {name!r}")
