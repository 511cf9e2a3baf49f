"""Segment a BraTS case with a model exported by ``omkit export`` (ONNX), without omkit.

Needs numpy, scipy, nibabel and onnxruntime only::

    omkit export -m runs/cga/model.pt -o cga.onnx
    python examples/onnx_runner.py -m cga.onnx -i BraTS2018/Brats18_CBICA_ABM_1 -o Brats18_CBICA_ABM_1.nii.gz

Everything it needs besides the graph comes from the file's metadata (key
``omkit``): the tile geometry, the preprocessing, how the three tasks fuse, the
label conventions. The steps are omkit's (``omkit predict --no-postprocess --inference tiles``):

1. read the four modalities (2018 names ``_flair/_t1/_t1ce/_t2`` or 2023 names
   ``-t2f/-t1n/-t1c/-t2w``, ``.nii`` or ``.nii.gz``) and put them in the network's
   axis order ``(4, Z, X, Y)``;
2. brain mask (any modality non-zero), crop to its bounding box, z-score each
   modality inside the brain;
3. overlap tiles: only tiles whose kept centre touches the brain, in batches
   through onnxruntime; softmax; each tile's kept centre reduced to labels (task 1:
   coarse tumor mask and label; task 2 and 3: argmax) and stitched;
4. fusion: task 2 inside the coarse tumor mask dilated by ``roi_dilation`` voxels,
   task 3 inside the core it finds; background outside the brain;
5. labels in a BraTS convention, back in the input's space, written with the FLAIR
   file's affine and header.

omkit's post-processing steps (small components, K-means) and test-time
mirroring are not part of the runner. The functions below can be imported:
:func:`segment` takes the ``(4, X, Y, Z)`` array in memory.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

NAMINGS = {"2018": ("_", ("flair", "t1", "t1ce", "t2")), "2023": ("-", ("t2f", "t1n", "t1c", "t2w"))}


def read_case(case_dir: Path):
    """``(image (4, X, Y, Z) float32, FLAIR image, naming)`` of a BraTS case folder."""
    import nibabel as nib

    for naming, (sep, suffixes) in NAMINGS.items():
        found = []
        for suffix in suffixes:
            hits = sorted(p for p in case_dir.iterdir()
                          if p.name.endswith((f"{sep}{suffix}.nii.gz", f"{sep}{suffix}.nii")))
            if len(hits) != 1:
                break
            found.append(hits[0])
        if len(found) == 4:
            images = [nib.load(str(p)) for p in found]
            volumes = [np.asarray(np.asanyarray(img.dataobj), dtype=np.float32) for img in images]
            return np.stack(volumes), images[0], naming
    raise SystemExit(f"{case_dir}: no BraTS case (four modalities named as in 2018 or 2023)")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def preprocess(image_dhw: np.ndarray):
    """Brain mask, bounding box, and the z-scored crop ``(4, d, h, w)`` float32."""
    brain = np.any(image_dhw != 0, axis=0)
    if not brain.any():
        raise ValueError("the image is zero everywhere (no brain)")
    box = []
    for axis in range(3):
        hit = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    box = tuple(box)
    crop, mask = image_dhw[(slice(None), *box)], brain[box]
    out = np.zeros(crop.shape, dtype=np.float32)
    for c in range(crop.shape[0]):
        values = crop[c][mask].astype(np.float64)
        mean, std = values.mean(), values.std()
        if std > 0:
            out[c][mask] = ((values - mean) / std).astype(np.float32)
    return brain, box, out, mask


def tile_origins(shape, tiles: dict, mask: np.ndarray) -> list[tuple[int, int, int]]:
    """Origins of the tiles whose kept centre touches ``mask``, D-major."""
    size, keep, stride, offset = tiles["size"], tiles["keep"], tiles["stride"], tiles["keep_offset"]
    axes = [range(0, n, s) for n, s in zip(shape, stride)]
    origins = []
    for z in axes[0]:
        for y in axes[1]:
            for x in axes[2]:
                start = (z, y, x)
                box = tuple(slice(s, min(s + k, n)) for s, k, n in zip(start, keep, shape))
                if mask[box].any():
                    origins.append(tuple(s - o for s, o in zip(start, offset)))
    return origins


def gather(volume: np.ndarray, origin, size) -> np.ndarray:
    """The tile of ``size`` at ``origin`` (zero outside the volume)."""
    tile = np.zeros((volume.shape[0], *size), dtype=np.float32)
    src, dst = [], []
    for o, n, limit in zip(origin, size, volume.shape[1:]):
        lo, hi = max(o, 0), min(o + n, limit)
        if lo >= hi:
            return tile
        src.append(slice(lo, hi))
        dst.append(slice(lo - o, hi - o))
    tile[(slice(None), *dst)] = volume[(slice(None), *src)]
    return tile


def dilate_ball(mask: np.ndarray, radius: float) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    if radius <= 0 or not mask.any():
        return mask.copy()
    return distance_transform_edt(~mask) <= radius


def segment(session, metadata: dict, image_xyz: np.ndarray, label_convention: str | None = None,
            batch: int | None = None) -> np.ndarray:
    """The label map ``(X, Y, Z)`` uint8 of an image ``(4, X, Y, Z)`` (FLAIR, T1, T1c, T2)."""
    tiles, fusion = metadata["tiles"], metadata["fusion"]
    size, keep, offset = tiles["size"], tiles["keep"], tiles["keep_offset"]
    batch = batch or tiles["batch"]
    classes = fusion["classes"]
    tumor, non_tumor = np.array(fusion["tumor_classes"]), np.array(fusion["non_tumor_classes"])
    num_tasks = len(metadata["outputs"])

    image = np.transpose(image_xyz, (0, 3, 1, 2))  # (4, X, Y, Z) -> (4, Z, X, Y) = (4, D, H, W)
    brain, box, crop, mask = preprocess(image)
    shape = crop.shape[1:]
    # per task, stitched uint8 maps: coarse tumor, task-1 label, task-2 label, task-3 label
    maps = np.zeros((1 + num_tasks, *shape), dtype=np.uint8)
    origins = tile_origins(shape, tiles, mask)
    centre = tuple(slice(o, o + k) for o, k in zip(offset, keep))
    input_name = session.get_inputs()[0].name
    for start in range(0, len(origins), batch):
        chunk = origins[start:start + batch]
        logits = session.run(None, {input_name: np.stack([gather(crop, o, size) for o in chunk])})
        probs = [softmax(lg[(slice(None), slice(None), *centre)].astype(np.float32)) for lg in logits]
        p1 = probs[0]
        coarse = p1[:, tumor].sum(1) > fusion["coarse_tumor_threshold"]
        label1 = np.where(coarse, tumor[p1[:, tumor].argmax(1)], non_tumor[p1[:, non_tumor].argmax(1)])
        reduced = [coarse, label1] + [p.argmax(1) for p in probs[1:]]
        for i, origin in enumerate(chunk):
            dst, src = [], []
            for o, off, k, n in zip(origin, offset, keep, shape):  # the kept centre, clipped to the crop
                lo = o + off
                a, b = max(lo, 0), min(lo + k, n)
                dst.append(slice(a, b))
                src.append(slice(a - lo, b - lo))
            for m, values in enumerate(reduced):
                maps[(m, *dst)] = values[(i, *src)]

    coarse, labels = maps[0].astype(bool), maps[1].copy()
    roi = dilate_ball(coarse, fusion["roi_dilation"]) & mask
    if num_tasks >= 2:
        labels[roi] = maps[2][roi]
        if num_tasks >= 3:
            core = roi & np.isin(labels, fusion["core_classes"])
            labels[core] = np.where(maps[3][core] == 1, classes["enhancing"], classes["ncr_net"])
    labels[~mask] = classes["background"]

    full = np.zeros(image.shape[1:], dtype=np.uint8)
    full[box] = labels
    convention = metadata["label_conventions"][label_convention or metadata["label_convention"]]
    out = np.zeros_like(full)
    for name in ("ncr_net", "edema", "enhancing"):
        out[full == classes[name]] = convention[name]
    return np.transpose(out, (1, 2, 0))  # back to (X, Y, Z)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", required=True, help="ONNX file written by omkit export")
    parser.add_argument("-i", "--input", required=True, help="a BraTS case folder")
    parser.add_argument("-o", "--output", required=True, help="label map to write (.nii.gz)")
    parser.add_argument("--label-convention", choices=("2018", "2023", "2024"),
                        help="labels written (default: the input's file naming)")
    parser.add_argument("--tile-batch", type=int, help="tiles per onnxruntime call (default: the file's)")
    args = parser.parse_args(argv)

    import nibabel as nib
    import onnxruntime as ort

    session = ort.InferenceSession(args.model, providers=ort.get_available_providers())
    metadata = json.loads(session.get_modelmeta().custom_metadata_map["omkit"])
    image, flair, naming = read_case(Path(args.input))
    labels = segment(session, metadata, image, args.label_convention or naming, args.tile_batch)
    header = flair.header.copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(labels, flair.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    nib.save(out, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
