"""SYNTHETIC BraTS-like cases, for tests, demos and users without data.

These volumes are made up: an ellipsoidal "brain" of grey and white matter
with a smooth bias field and noise, and one tumor of nested, irregular
regions (edema contains the core; the core is an enhancing rim around
necrosis), drawn in four modalities with contrasts that roughly follow real
MRI (edema bright in FLAIR and T2, enhancing rim bright in T1c, necrosis dark
in T1/T1c). They exercise the whole pipeline, but numbers measured on them say
nothing about performance on real BraTS data.

``make_case`` returns a :class:`omkit.data.Case`; ``write_case`` and
``make_dataset`` write case folders in either BraTS file naming.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from omkit.fileio import OutputExistsError, atomic_path
from omkit.labels import BACKGROUND, EDEMA, ENHANCING, NCR_NET, NORMAL, get_convention

from .brats import MODALITIES, NAMINGS, Case, to_nifti_axes

# Mean intensity per tissue and modality (FLAIR, T1, T1c, T2); raw scanner-like units.
_TISSUES = ("grey", "white", "edema", "necrosis", "enhancing")
_CONTRAST = np.array([
    # FLAIR  T1    T1c   T2
    [380.0, 450.0, 470.0, 500.0],   # grey matter
    [300.0, 600.0, 620.0, 350.0],   # white matter
    [700.0, 380.0, 400.0, 850.0],   # edema
    [450.0, 250.0, 260.0, 950.0],   # necrosis
    [550.0, 420.0, 1000.0, 650.0],  # enhancing rim
])


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (np.abs(field).max() + 1e-12)


def _ellipsoid_distance(shape, centre, radii) -> np.ndarray:
    """Normalised ellipsoidal distance: < 1 inside the ellipsoid."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)))


def make_case(
    shape: tuple[int, int, int] = (32, 64, 64),
    seed: int = 0,
    tumor: bool = True,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    case_id: str | None = None,
    noise: float = 0.05,
) -> Case:
    """A synthetic case in omkit's ``(D, H, W)`` order with internal labels.

    The tumor is placed at a random position in one hemisphere; its size
    scales with the volume, so tiny volumes still hold all three tumor classes.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    if min(shape) < 8:
        raise ValueError(f"synthetic volume shape {shape} is too small (each side >= 8)")
    centre = np.array(shape, dtype=np.float64) / 2 - 0.5
    brain_radii = np.array(shape) * np.array([0.40, 0.42, 0.36])
    wobble = _smooth_noise(rng, shape, sigma=max(shape) / 8)
    brain_dist = _ellipsoid_distance(shape, centre, brain_radii) + 0.06 * wobble
    brain = brain_dist < 1.0
    white = brain & (brain_dist + 0.25 * _smooth_noise(rng, shape, sigma=max(shape) / 16) < 0.65)

    label = np.full(shape, BACKGROUND, dtype=np.uint8)
    label[brain] = NORMAL
    tissue = np.full(shape, -1, dtype=np.int8)
    tissue[brain] = 0
    tissue[white] = 1
    if tumor:
        side = rng.choice([-1.0, 1.0])
        offset = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.15, 0.15), side * rng.uniform(0.12, 0.2)])
        t_centre = centre + offset * np.array(shape)
        t_radii = np.array(shape) * rng.uniform(0.16, 0.22, size=3)
        t_dist = _ellipsoid_distance(shape, t_centre, t_radii) + 0.15 * _smooth_noise(rng, shape, sigma=max(shape) / 12)
        edema = brain & (t_dist < 1.0)
        core = edema & (t_dist < 0.6)
        necrosis = core & (t_dist < 0.35)
        label[edema] = EDEMA
        label[core] = ENHANCING
        label[necrosis] = NCR_NET
        tissue[edema] = 2
        tissue[core] = 4
        tissue[necrosis] = 3

    image = np.zeros((4,) + shape, dtype=np.float32)
    bias = 1.0 + 0.1 * _smooth_noise(rng, shape, sigma=max(shape) / 4)
    for c in range(4):
        channel = np.zeros(shape, dtype=np.float64)
        for t in range(len(_TISSUES)):
            channel[tissue == t] = _CONTRAST[t, c]
        channel = channel * bias * (1.0 + noise * rng.standard_normal(shape))
        channel[~brain] = 0.0
        image[c] = np.where(brain, np.maximum(channel, 1.0), 0.0)

    spacing = tuple(float(s) for s in spacing)
    # NIfTI axes (X, Y, Z) = omkit (H, W, D)
    affine = np.diag([spacing[1], spacing[2], spacing[0], 1.0])
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((shape[1], shape[2], shape[0]))
    header.set_zooms((spacing[1], spacing[2], spacing[0]))
    return Case(
        case_id=case_id or f"Synthetic_{seed:04d}",
        image=np.round(image),
        label=label,
        affine=affine,
        header=header,
        spacing=spacing,
        convention="2018",
        paths={},
        naming="synthetic",
    )


def write_case(
    case: Case,
    out_dir: str | os.PathLike,
    naming: str = "2018",
    compress: bool = True,
    with_label: bool = True,
    force: bool = False,
) -> Path:
    """Write ``case`` as a BraTS case folder ``out_dir/<case_id>/`` in the given
    naming ("2018" or "2023", whose label convention the seg file uses)."""
    import nibabel as nib

    if naming not in NAMINGS:
        raise ValueError(f"unknown naming {naming!r}; choose one of {sorted(NAMINGS)}")
    sep, suffixes = NAMINGS[naming]
    folder = Path(out_dir) / case.case_id
    ext = ".nii.gz" if compress else ".nii"
    targets = {key: folder / f"{case.case_id}{sep}{suffixes[key]}{ext}" for key in list(MODALITIES) + ["seg"]}
    if not with_label:
        targets.pop("seg")
    if not force:
        for target in targets.values():
            if target.exists():
                raise OutputExistsError(None, None, str(target))
    for c, key in enumerate(MODALITIES):
        _write_nifti(nib, to_nifti_axes(case.image[c]).astype(np.int16), case.affine, targets[key])
    if with_label:
        if case.label is None:
            raise ValueError(f"case {case.case_id} has no label to write")
        seg = get_convention(naming).from_internal(case.label)
        _write_nifti(nib, to_nifti_axes(seg).astype(np.uint8), case.affine, targets["seg"])
    return folder


def _write_nifti(nib, array: np.ndarray, affine: np.ndarray, target: Path) -> None:
    img = nib.Nifti1Image(np.ascontiguousarray(array), affine)
    with atomic_path(target) as tmp:
        nib.save(img, str(tmp))


def make_dataset(
    out_dir: str | os.PathLike,
    num_cases: int = 4,
    naming: str = "2018",
    shape: tuple[int, int, int] = (32, 64, 64),
    seed: int = 0,
    compress: bool = True,
    force: bool = False,
) -> list[Path]:
    """Write ``num_cases`` synthetic case folders; returns their paths."""
    prefix = "Synth18" if naming == "2018" else "Synth-GLI"
    sep = "_" if naming == "2018" else "-"
    folders = []
    for i in range(num_cases):
        case = make_case(shape=shape, seed=seed + i, case_id=f"{prefix}{sep}{i:03d}")
        folders.append(write_case(case, out_dir, naming=naming, compress=compress, force=force))
    return folders
