"""What the network reads per voxel: the four z-scored modalities (the paper's
input, ``"mri"``), or those plus their left-right asymmetry (``"mri+asymmetry"``,
an omkit option the paper does not describe).

Why asymmetry: a training patch or inference tile (16 x 32 x 32 voxels) cannot
see the other hemisphere. Tissue that is FLAIR-bright on both sides (the
posterior fossa, the band under the skull-stripped surface, around the
ventricles) then looks like edema to task 1, and the false tumor it produces
there survives the fusion and post-processing (docs/RESULTS.md, "False tumor
along the brain's edge"). Its mirror image is as bright; a tumor's is not.
The extra channels are ``image - mirror(image)``, the mirror taken across the
brain's bounding box along the left-right axis (the crop is that box, so the
mirror of the crop is the crop flipped): near zero for symmetric tissue, the
lesion's contrast for a one-sided lesion.

The left-right axis is the voxel axis that runs closest to the scanner's x
axis (the affine's first row). Flipping an axis does not change a mirror, so
only the axis order matters; for BraTS volumes (and any volume omkit reads
in its ``(D, H, W) = (Z, X, Y)`` order from an axis-aligned NIfTI) it is H.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

MRI = "mri"
MRI_ASYMMETRY = "mri+asymmetry"
# input feature set -> network input channels
INPUT_FEATURES = {MRI: 4, MRI_ASYMMETRY: 8}
DEFAULT_INPUT_FEATURES = MRI
# omkit's (D, H, W) = NIfTI (Z, X, Y): spatial axis of omkit for each NIfTI voxel axis
_OMKIT_AXIS_OF_NIFTI = {0: 1, 1: 2, 2: 0}
DEFAULT_LEFT_RIGHT_AXIS = 1  # H


def check_input_features(name, what: str = "--input-features") -> str:
    """``name`` if it is a known feature set, else a one-line ``ValueError`` naming ``what``."""
    if name not in INPUT_FEATURES:
        raise ValueError(f"{what}: unknown input features {name!r}; known: {', '.join(INPUT_FEATURES)}")
    return name


def input_channels(name: str) -> int:
    """The network input channels of feature set ``name``."""
    return INPUT_FEATURES[check_input_features(name)]


def model_input_channels(model_kw: dict) -> int:
    """The input channels of a model built by ``create_model(..., **model_kw)`` (its
    ``model_kw``, as model files record it): 4 unless ``in_channels`` says otherwise."""
    return int(model_kw.get("in_channels", INPUT_FEATURES[MRI]))


def features_of_channels(channels: int) -> str:
    """The feature set a network with ``channels`` input channels reads."""
    for name, count in INPUT_FEATURES.items():
        if count == channels:
            return name
    raise ValueError(f"a network with {channels} input channels reads no known input features "
                     f"({', '.join(f'{n}: {c}' for n, c in INPUT_FEATURES.items())})")


def left_right_axis(affine) -> int:
    """The spatial axis (0, 1, 2 of omkit's ``(D, H, W)``) that runs left-right
    in the scanner's frame, given the NIfTI ``affine`` (4 x 4)."""
    directions = np.abs(np.asarray(affine, dtype=np.float64)[:3, :3])
    nifti_axis = int(np.argmax(directions[0] / np.maximum(np.linalg.norm(directions, axis=0), 1e-12)))
    return _OMKIT_AXIS_OF_NIFTI[nifti_axis]


def mirrored(image, axis: int = DEFAULT_LEFT_RIGHT_AXIS):
    """``image (C, D, H, W)`` mirrored along spatial ``axis``: a view for numpy
    arrays (a memory map stays on disk), a copy for tensors."""
    if isinstance(image, Tensor):
        return image.flip(axis + 1)
    return np.flip(image, axis + 1)


def network_input(image, features: str, axis: int = DEFAULT_LEFT_RIGHT_AXIS, mirror=None):
    """What a network reading ``features`` takes for ``image (C, ...)`` (a whole
    crop, or patches with their ``mirror``: the same patches cut from the
    mirrored crop). numpy in, numpy out; tensors likewise."""
    check_input_features(features, "input features")
    if features == MRI:
        return image
    if mirror is None:
        mirror = mirrored(image, axis)
    if isinstance(image, Tensor):
        return torch.cat([image, image - mirror], dim=-4)
    return np.concatenate([image, np.asarray(image) - np.asarray(mirror)], axis=-4)
