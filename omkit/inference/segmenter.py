"""In-memory segmentation: an image in, a label map out, with everything in
between (preprocessing, overlap-tile inference, fusion of the three tasks,
post-processing, putting the crop back).

``omkit.Segmenter`` is the one path from an image to labels: ``omkit predict``
and ``omkit demo`` load a case folder and call :meth:`Segmenter.segment_case`;
an image held in memory becomes a case (:func:`omkit.data.arrays.case_from_arrays`)
and takes the same call. Either way :func:`omkit.inference.pipeline.predict_case`
does the work.

::

    seg = omkit.Segmenter.from_files(["run/model.pt"], device="auto")
    labels = seg(image)                  # (4, X, Y, Z) -> (X, Y, Z) uint8, BraTS labels
    labels = seg({"flair": f, "t1": t1, "t1c": t1c, "t2": t2}, affine=affine)
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from omkit.data import Case, to_nifti_axes
from omkit.labels import get_convention, output_convention
from omkit.protocol import ROI_DILATION

from .dense import DenseSettings
from .pipeline import CaseResult, predict_case
from .postprocess import Step, build_postprocessors
from .predictor import DEFAULT_INFERENCE, SegmentationPredictor, TileSettings


@dataclass
class Segmentation:
    """What :meth:`Segmenter.segment` returns. ``labels``: the label map ``(X, Y, Z)`` in
    ``label_convention``, in the input's axis order, of the input's kind (a numpy
    array, or a torch tensor on the input's device); ``probabilities``: per task
    (``"task1"``, ...) ``(K, X, Y, Z)`` float32 numpy arrays when asked for;
    ``affine`` and ``spacing`` (mm, ``(X, Y, Z)``) as given or derived; ``result``:
    the pipeline's :class:`~omkit.inference.pipeline.CaseResult` (internal classes,
    omkit's axis order, before and after post-processing)."""

    labels: Any
    probabilities: dict[str, np.ndarray] | None
    label_convention: str
    affine: np.ndarray
    spacing: tuple[float, float, float]
    result: CaseResult

    def to_nifti(self):
        """The label map as a ``nibabel.Nifti1Image`` (uint8) with the input's affine."""
        import nibabel as nib

        labels = self.labels.cpu().numpy() if hasattr(self.labels, "cpu") else np.asarray(self.labels)
        header = self.result.case.header.copy()
        header.set_data_dtype(np.uint8)
        image = nib.Nifti1Image(np.ascontiguousarray(labels, dtype=np.uint8), self.affine, header)
        image.header.set_slope_inter(1.0, 0.0)
        return image


def resolve_postprocess(postprocess) -> list[tuple[str, Step]]:
    """The post-processing steps ``postprocess`` asks for: True (the default steps), False
    or None (none), names of registered steps (exactly those), or ``(name, step)`` pairs
    (as they are)."""
    if postprocess is True:
        return build_postprocessors()
    if postprocess is False or postprocess is None or (not isinstance(postprocess, str) and not postprocess):
        return []
    if isinstance(postprocess, str):
        postprocess = [postprocess]
    postprocess = list(postprocess)
    if all(isinstance(item, str) for item in postprocess):
        return build_postprocessors(only=postprocess)
    if all(isinstance(item, tuple) and len(item) == 2 and callable(item[1]) for item in postprocess):
        return postprocess
    raise ValueError("postprocess must be True, False, names of post-processing steps or (name, step) pairs, "
                     f"got {postprocess!r}")


class Segmenter:
    """Segment brain MRI held in memory with a trained model or an ensemble.

    ``segmenter(image, affine=None, spacing=None)`` takes a ``(4, X, Y, Z)`` array
    (FLAIR, T1, T1c, T2) or a dict of modality volumes ``(X, Y, Z)``, in the NIfTI
    axis order (as nibabel reads the files), numpy or torch on any device, and
    returns the label map ``(X, Y, Z)`` uint8 in ``label_convention``, of the
    input's kind (numpy, or a torch tensor on the input's device). It preprocesses
    as the model was trained (z-score inside the brain, crop to the brain), runs
    the overlap-tile (or dense) inference (``predictor``: one pass, cascade or ensemble),
    fuses the tasks, post-processes and puts the crop back. ``affine`` and
    ``spacing`` describe the voxels; omkit does not resample, so they change no
    label: they travel into :meth:`segment`'s result (``to_nifti()``).

    Build one with :meth:`from_files`, or from a
    :class:`~omkit.inference.SegmentationPredictor` of models in memory.
    ``postprocess``: see :func:`resolve_postprocess`; ``label_convention``:
    ``"2018"`` (4 = enhancing), ``"2023"`` or ``"2024"`` (3 = enhancing), default
    (:func:`omkit.labels.output_convention`): for a case read from files, the one of its
    file naming (:meth:`convention_for`), for arrays the one the (first) model was trained
    with (:attr:`label_convention`).
    """

    def __init__(self, predictor: SegmentationPredictor, postprocess=True, label_convention: str | None = None,
                 metadata: Sequence[Mapping] = ()):
        self.predictor = predictor
        self.steps = resolve_postprocess(postprocess)
        if metadata:
            warnings.warn("Segmenter(metadata=...) is deprecated: the models' cards (model.card, omkit.model_card) "
                          "are read from the predictor", DeprecationWarning, stacklevel=2)
        self.cards = predictor.cards
        self.requested_convention = get_convention(label_convention).name if label_convention is not None else None
        # what arrays in memory (no file naming) are labelled in
        self.label_convention = self.convention_for(None)

    def convention_for(self, case: Case | None) -> str:
        """The label convention this segmenter writes ``case``'s labels in (None: arrays in
        memory): :func:`omkit.labels.output_convention` of the one asked for, the case's
        file naming and the model's."""
        naming = case.convention if case is not None and case.naming else None
        return output_convention(self.requested_convention, input_convention=naming,
                                 model_convention=self.cards[0].label_convention).name

    @property
    def metadata(self) -> list:
        """The models' cards (the name before cards)."""
        return self.cards

    @classmethod
    def from_files(cls, models: str | os.PathLike | Sequence[str | os.PathLike], device: Any = "auto",
                   tiles: TileSettings | Mapping | None = None, tta=None, postprocess=True,
                   label_convention: str | None = None, roi_dilation: float = ROI_DILATION,
                   expect_preset: str | None = None, inference: str = DEFAULT_INFERENCE,
                   dense: DenseSettings | Mapping | None = None, **predictor_kw) -> "Segmenter":
        """A segmenter of the model files ``models`` (one, or several for an ensemble whose
        probabilities are averaged). ``device``: ``auto`` (CUDA when available), ``cpu``,
        ``cuda``, ``cuda:N``; ``tiles``: a :class:`TileSettings` or its fields as a dict
        (default: the inference mode's, see :class:`SegmentationPredictor`); ``tta``:
        test-time mirroring (None, True for the 8 flips, or axes such as ``"H,W"``);
        ``roi_dilation``: task 2's ROI; ``inference``: ``"auto"`` (dense for models trained
        with ``--train-mode windows``, else tiles keeping 8 x 24 x 24; ``predictor.inference_note``
        says which and why), ``"dense"`` (window-consistent dense inference, :mod:`.dense`) or
        ``"tiles"`` (the paper's unless ``tiles`` says otherwise), with ``dense`` a :class:`DenseSettings`
        or its fields as a dict; further keywords go to
        :class:`SegmentationPredictor`."""
        paths = [models] if isinstance(models, (str, os.PathLike)) else list(models)
        if not paths:
            raise ValueError("Segmenter.from_files needs at least one model file")
        if isinstance(tiles, Mapping):
            tiles = TileSettings(**tiles)
        predictor = SegmentationPredictor.from_files(paths, device=device, expect_preset=expect_preset,
                                                     tiles=tiles if tiles is not None else TileSettings(),
                                                     roi_dilation=roi_dilation, tta=tta, inference=inference,
                                                     dense=dense if dense is not None else DenseSettings(),
                                                     **predictor_kw)
        return cls(predictor, postprocess=postprocess, label_convention=label_convention)

    # -- the one path ---------------------------------------------------------------------
    def segment_case(self, case: Case, return_probabilities: bool = False) -> CaseResult:
        """Segment a loaded case (``omkit.data.load_case``, or :meth:`case_from` for arrays):
        the internal classes in omkit's axis order, before and after post-processing."""
        return predict_case(case, self.predictor, self.steps, return_probabilities=return_probabilities)

    @staticmethod
    def case_from(image, affine=None, spacing=None, case_id: str = "in-memory") -> Case:
        """The validated case an in-memory image makes (:func:`omkit.data.arrays.case_from_arrays`)."""
        from omkit.data.arrays import case_from_arrays

        return case_from_arrays(image, affine=affine, spacing=spacing, case_id=case_id)

    def segment(self, image, affine=None, spacing=None, return_probabilities: bool = False) -> Segmentation:
        """Like calling the segmenter, with the probabilities on request and the affine
        and spacing kept: a :class:`Segmentation`."""
        case = self.case_from(image, affine=affine, spacing=spacing)
        result = self.segment_case(case, return_probabilities=return_probabilities)
        labels = to_nifti_axes(get_convention(self.label_convention).from_internal(result.labels))
        labels = _like_input(np.ascontiguousarray(labels, dtype=np.uint8), image)
        probabilities = None
        if result.probabilities is not None:
            probabilities = {k: np.ascontiguousarray(np.transpose(v, (0, 2, 3, 1)), dtype=np.float32)
                             for k, v in result.probabilities.items()}
        spacing_xyz = (case.spacing[1], case.spacing[2], case.spacing[0])
        return Segmentation(labels, probabilities, self.label_convention, case.affine, spacing_xyz, result)

    def __call__(self, image, affine=None, spacing=None):
        return self.segment(image, affine=affine, spacing=spacing).labels

    def __repr__(self) -> str:
        presets = [card.preset for card in self.cards]
        steps = ", ".join(name for name, _ in self.steps) or "none"
        return (f"Segmenter(models={len(self.predictor.models)} ({', '.join(map(str, presets))}), "
                f"device={self.predictor.device}, label_convention={self.label_convention!r}, "
                f"postprocess=[{steps}])")


def _like_input(labels: np.ndarray, image):
    """``labels`` as the kind of array ``image`` is (or holds): a torch tensor on its device, else numpy."""
    first = next(iter(image.values())) if isinstance(image, Mapping) else image
    if hasattr(first, "detach") and hasattr(first, "device"):
        import torch

        return torch.from_numpy(labels).to(first.device)
    return labels
