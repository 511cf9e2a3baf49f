"""From a BraTS case folder to a label map on disk: load and validate
(``omkit.data``), preprocess, predict, post-process, put back into the input's
space, write with the input's affine and header (atomically)."""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from omkit.data import Case, Preprocessed, case_files, load_case, preprocess_case, to_nifti_axes, uncrop
from omkit.data.features import left_right_axis
from omkit.fileio import atomic_path
from omkit.labels import BACKGROUND, get_convention

from .postprocess import Step, postprocess
from .predictor import SegmentationPredictor


@dataclass
class CaseResult:
    """``labels``: post-processed internal classes of the full input volume
    ``(D, H, W)``; ``raw_labels``: the same before post-processing (the same
    array when no step ran); ``probabilities``: per task ``(K, D, H, W)``
    float32 or None; ``tile_counts``: tiles computed per task."""

    case: Case
    preprocessed: Preprocessed
    labels: np.ndarray
    raw_labels: np.ndarray
    probabilities: dict[str, np.ndarray] | None
    tile_counts: dict[str, int]
    # seconds spent on each stage: preprocess, network (with fusion), postprocess
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tiles(self) -> dict[str, int]:
        """The name of ``tile_counts`` before one vocabulary ("tiles" is a ``TileSettings``)."""
        warnings.warn("CaseResult.tiles is deprecated: use CaseResult.tile_counts", DeprecationWarning, stacklevel=2)
        return self.tile_counts


def case_id_of(case_dir: str | os.PathLike) -> str:
    """The case id of a case folder (without reading its volumes)."""
    return case_files(case_dir, with_label=False)[1]


def label_map_problem(path: str | os.PathLike, case_dir: str | os.PathLike) -> str | None:
    """Why the existing label map ``path`` cannot stand for case ``case_dir``'s
    prediction (unreadable, truncated, not integer labels, another shape than the
    case's images), or None when it can: what ``--skip-existing`` checks before it
    keeps a file."""
    import nibabel as nib

    from omkit.data.brats import load_nifti

    try:
        _, data = load_nifti(Path(path))  # reads every voxel: a truncated file fails here
        files = case_files(case_dir, with_label=False)[2]
        shape = tuple(int(n) for n in nib.load(str(files["flair"])).shape)
    except Exception as exc:  # whatever is wrong with it, the case is predicted again
        text = " ".join(str(exc).split())
        return text.removeprefix(f"{path}: ")[:300] or type(exc).__name__
    if data.dtype.kind not in "iu":
        return f"voxel type {data.dtype} is not a label map's"
    if tuple(data.shape) != shape:
        return f"shape {tuple(data.shape)} differs from the case's images {shape}"
    return None


def load_for_prediction(case_dir: str | os.PathLike, label_convention: str | None = None,
                        with_label: bool | None = False) -> Case:
    """Load a case; ``with_label=None`` reads the segmentation when the folder
    has one, and a problem with it is a warning (the images are what is predicted)."""
    return load_case(case_dir, label_convention=label_convention, with_label=with_label)


def predict_case(case: Case, predictor: SegmentationPredictor, steps: Sequence[tuple[str, Step]] = (),
                 return_probabilities: bool = False) -> CaseResult:
    """The one path from a loaded case to label maps in the input's space:
    preprocess, predict (one pass, cascade or ensemble), post-process with
    ``steps`` (on the brain crop, with the z-scored image), uncrop."""
    start = time.perf_counter()
    pre = preprocess_case(case)
    preprocessed = time.perf_counter()
    result = predictor.predict(pre.image, pre.brain_mask, return_probabilities=return_probabilities,
                               left_right_axis=left_right_axis(pre.affine))
    raw = result.labels.numpy()
    predicted = time.perf_counter()
    post = postprocess(raw, pre.image, steps, spacing=pre.spacing) if steps else raw
    timings = {"preprocess": preprocessed - start, "network": predicted - preprocessed,
               "postprocess": time.perf_counter() - predicted}
    raw_full = uncrop(raw, pre.bbox, pre.full_shape, fill=BACKGROUND)
    full = uncrop(post, pre.bbox, pre.full_shape, fill=BACKGROUND) if steps else raw_full
    probabilities = None
    if result.probabilities is not None:
        probabilities = {k: uncrop(v.numpy(), pre.bbox, pre.full_shape) for k, v in result.probabilities.items()}
    return CaseResult(case, pre, full, raw_full, probabilities, result.tile_counts, timings)


def write_label_map(labels: np.ndarray, case: Case, target: str | os.PathLike, label_convention: str,
                    force: bool = False) -> Path:
    """Write internal classes ``(D, H, W)`` as a BraTS label map in
    ``label_convention``, in the input's space with its affine and header."""
    import nibabel as nib

    seg = to_nifti_axes(get_convention(label_convention).from_internal(labels))
    header = case.header.copy()
    header.set_data_dtype(np.uint8)
    image = nib.Nifti1Image(np.ascontiguousarray(seg, dtype=np.uint8), case.affine, header)
    # scaling stored in the input's header would turn labels into floats
    image.header.set_slope_inter(1.0, 0.0)
    with atomic_path(target, force=force) as tmp:
        nib.save(image, str(tmp))
    return Path(target)


def write_probabilities(probabilities: dict[str, np.ndarray], target: str | os.PathLike, force: bool = False) -> Path:
    """Per-task probabilities as a compressed ``.npz`` (arrays ``task1``, ...;
    ``(K, X, Y, Z)`` in the input's NIfTI axis order, float32)."""
    # (K, D, H, W) = (K, Z, X, Y) -> (K, X, Y, Z), as to_nifti_axes does for one channel
    arrays = {k: np.ascontiguousarray(np.transpose(v, (0, 2, 3, 1)), dtype=np.float32) for k, v in probabilities.items()}
    with atomic_path(target, force=force) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return Path(target)
