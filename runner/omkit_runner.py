"""Segment BraTS cases with a model exported by ``omkit export`` (ONNX), without omkit.

Needs numpy, scipy, scikit-learn, nibabel and onnxruntime only::

    omkit export -m runs/cga/model.pt -o cga.onnx
    pip install ./runner                       # or run this file with python
    omkit-runner -m cga.onnx -i BraTS2018/Brats18_CBICA_ABM_1 -o Brats18_CBICA_ABM_1.nii.gz

Everything it needs besides the graph comes from the file's metadata (key ``omkit``):
the input features, the tile or dense geometry, the preprocessing, how the three tasks
fuse, the post-processing steps with their options, mirroring, the label conventions. Its
labels are those of ``omkit predict`` with the model's default settings (``--tta`` as
``omkit predict --tta``): for a model trained window-consistently, which predict runs
dense, ``omkit export`` writes the dense graph and the runner runs it as predict does; a
file whose ``inference`` says otherwise (``omkit export --inference tiles`` of such a
model) makes the runner say so in one line. The steps:

1. read the four modalities (2018 names ``_flair/_t1/_t1ce/_t2`` or 2023 names
   ``-t2f/-t1n/-t1c/-t2w``, ``.nii`` or ``.nii.gz``) and put them in the network's
   axis order ``(4, Z, X, Y)``;
2. brain mask (any modality non-zero), crop to its bounding box, z-score each
   modality inside the brain; for an ``mri+asymmetry`` model, each modality minus its
   mirror image across the crop along the left-right axis (from the affine);
3. a tile graph: overlap tiles, only tiles whose kept centre touches the brain, in batches
   through onnxruntime (with ``--tta``, every flip of each tile, the probabilities
   averaged); softmax; each tile's kept centre reduced to labels (task 1: coarse tumor
   mask and label; task 2 and 3: argmax) and stitched. A dense graph: the region around
   the brain's blocks (metadata ``dense``) in one call per flip, the probabilities
   averaged, reduced to labels in the blocks that touch the brain;
4. fusion: task 2 inside the coarse tumor mask dilated by ``roi_dilation`` voxels,
   task 3 inside the core it finds; background outside the brain;
5. post-processing (unless ``--no-postprocess``): small tumor components removed, then
   edema of enhancing-poor components split by K-means (the paper's two steps);
6. labels in a BraTS convention (default: the input's file naming), back in the
   input's space, written with the FLAIR file's affine and header.

The functions can be imported: :func:`segment` takes the ``(4, X, Y, Z)`` array in memory.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

NAMINGS = {"2018": ("_", ("flair", "t1", "t1ce", "t2")), "2023": ("-", ("t2f", "t1n", "t1c", "t2w"))}
T1C_CHANNEL = 2
AXES = "DHW"
# the newest omkit export metadata this runner reads (3: dense graphs)
FORMAT_VERSION = 3


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


def left_right_axis(affine) -> int:
    """The axis of ``(D, H, W)`` that runs left-right in the scanner's frame (metadata ``input.left_right_axis``)."""
    directions = np.abs(np.asarray(affine, dtype=np.float64)[:3, :3])
    nifti_axis = int(np.argmax(directions[0] / np.maximum(np.linalg.norm(directions, axis=0), 1e-12)))
    return {0: 1, 1: 2, 2: 0}[nifti_axis]


def network_input(crop: np.ndarray, features: str, axis: int) -> np.ndarray:
    """What the network reads: the modalities, and for ``mri+asymmetry`` each minus its mirror image."""
    if features == "mri":
        return crop
    if features == "mri+asymmetry":
        return np.concatenate([crop, crop - np.flip(crop, axis + 1)])
    raise SystemExit(f"input features {features!r} are not ones this runner computes (mri, mri+asymmetry)")


def mirror_flips(axes: str | None) -> list[tuple[int, ...]]:
    """Every flip along ``axes`` (``"D,H,W"``, ``"all"``; None: only the identity), identity first."""
    if not axes:
        return [()]
    names = "DHW" if axes == "all" else axes.replace(",", "").upper()
    if not names or set(names) - set(AXES):
        raise SystemExit(f"--tta {axes!r}: expected axes among D, H, W")
    chosen = sorted({AXES.index(a) for a in names})
    return [flip for n in range(len(chosen) + 1) for flip in itertools.combinations(chosen, n)]


def tile_origins(shape, tiles: dict, mask: np.ndarray) -> list[tuple[int, int, int]]:
    """Origins of the tiles whose kept centre touches ``mask``, D-major."""
    keep, stride, offset = tiles["keep"], tiles["stride"], tiles["keep_offset"]
    axes = [range(0, n, s) for n, s in zip(shape, stride)]
    origins = []
    for start in itertools.product(*axes):
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


def tile_probabilities(session, tiles: np.ndarray, flips, centre) -> list[np.ndarray]:
    """Per task, the softmax over each tile's kept ``centre``, averaged over ``flips``."""
    batch = np.concatenate([np.flip(tiles, [2 + a for a in flip]) if flip else tiles for flip in flips])
    logits = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(batch)})
    n, out = len(tiles), []
    for task_logits in logits:
        total = None
        for f, flip in enumerate(flips):
            part = task_logits[f * n:(f + 1) * n].astype(np.float32)
            part = np.flip(part, [2 + a for a in flip]) if flip else part
            probs = softmax(part[(slice(None), slice(None), *centre)])
            total = probs if total is None else total + probs
        out.append(total / len(flips) if len(flips) > 1 else total)
    return out


def task_labels(probs: list[np.ndarray], fusion: dict) -> list[np.ndarray]:
    """Per-voxel maps of probabilities ``(n, K, ...)`` per task: the coarse tumor mask and
    task 1's label, then each further task's argmax."""
    tumor, non_tumor = np.array(fusion["tumor_classes"]), np.array(fusion["non_tumor_classes"])
    p1 = probs[0]
    coarse = p1[:, tumor].sum(1) > fusion["coarse_tumor_threshold"]
    label1 = np.where(coarse, tumor[p1[:, tumor].argmax(1)], non_tumor[p1[:, non_tumor].argmax(1)])
    return [coarse, label1] + [p.argmax(1) for p in probs[1:]]


def tile_maps(session, features: np.ndarray, mask: np.ndarray, tiles: dict, fusion: dict, flips,
              batch: int, maps: np.ndarray) -> None:
    """Fill ``maps`` (coarse, task-1 label, task-2 label, ...) over the crop tile by tile."""
    size, keep, offset = tiles["size"], tiles["keep"], tiles["keep_offset"]
    shape = features.shape[1:]
    origins = tile_origins(shape, tiles, mask)
    centre = tuple(slice(o, o + k) for o, k in zip(offset, keep))
    for start in range(0, len(origins), batch):
        chunk = origins[start:start + batch]
        probs = tile_probabilities(session, np.stack([gather(features, o, size) for o in chunk]), flips, centre)
        reduced = task_labels(probs, fusion)
        for i, origin in enumerate(chunk):
            dst, src = [], []
            for o, off, k, n in zip(origin, offset, keep, shape):  # the kept centre, clipped to the crop
                lo = o + off
                a, b = max(lo, 0), min(lo + k, n)
                dst.append(slice(a, b))
                src.append(slice(a - lo, b - lo))
            for m, values in enumerate(reduced):
                maps[(m, *dst)] = values[(i, *src)]


def dense_region(mask: np.ndarray, dense: dict):
    """``(start, shape, kept)`` of the region a dense graph runs on (metadata ``dense.region``):
    its first voxel in crop coordinates (negative before the crop), its sides, and the
    voxels of the blocks that touch ``mask`` (bool, the region's shape)."""
    window, block, offset, divisor = dense["window"], dense["block"], dense["offset"], dense["divisor"]
    start, shape, blocks, first = [], [], [], []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        k0, k1 = int(hits[0]) // block[axis], int(hits[-1]) // block[axis]
        n = k1 - k0 + 1
        start.append(k0 * block[axis] - offset[axis])
        shape.append(-(-((n - 1) * block[axis] + window[axis]) // divisor) * divisor)
        blocks.append(n)
        first.append(k0 * block[axis])
    cells = np.zeros([n * b for n, b in zip(blocks, block)], dtype=bool)
    src = tuple(slice(f, min(f + n * b, s)) for f, n, b, s in zip(first, blocks, block, mask.shape))
    cells[tuple(slice(0, s.stop - s.start) for s in src)] = mask[src]
    touched = cells.reshape(blocks[0], block[0], blocks[1], block[1], blocks[2], block[2]).any(axis=(1, 3, 5))
    kept = np.zeros(shape, dtype=bool)
    cube = touched
    for axis in range(3):
        cube = np.repeat(cube, block[axis], axis=axis)
    kept[tuple(slice(o, o + n) for o, n in zip(offset, cube.shape))] = cube
    return start, shape, kept


def dense_maps(session, features: np.ndarray, mask: np.ndarray, dense: dict, fusion: dict, flips,
               maps: np.ndarray) -> None:
    """Fill ``maps`` over the crop from one dense graph call per flip over the brain's region."""
    start, shape, kept = dense_region(mask, dense)
    region = gather(features, start, shape)[None]
    inputs = [i.name for i in session.get_inputs()]
    total = None
    for flip in flips:
        flags = np.array([1 if a in flip else 0 for a in range(3)], dtype=np.int64)
        logits = session.run(None, {inputs[0]: region, inputs[1]: flags})
        probs = [softmax(lg.astype(np.float32)) for lg in logits]
        total = probs if total is None else [t + p for t, p in zip(total, probs)]
    probs = [t / len(flips) for t in total] if len(flips) > 1 else total
    dst = tuple(slice(max(0, s), min(n, s + r)) for s, r, n in zip(start, shape, mask.shape))
    src = tuple(slice(d.start - s, d.stop - s) for d, s in zip(dst, start))
    for m, values in enumerate(task_labels(probs, fusion)):
        maps[(m, *dst)] = np.where(kept, values[0], 0)[src]


def dilate_ball(mask: np.ndarray, radius: float) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    if radius <= 0 or not mask.any():
        return mask.copy()
    return distance_transform_edt(~mask) <= radius


# -- post-processing (omkit's two built-in steps; metadata "postprocessing") ------------------

def tumor_components(labels: np.ndarray, fusion: dict, connectivity: int):
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    return ndimage.label(np.isin(labels, fusion["tumor_classes"]), structure=structure)


def remove_small_components(labels, image, spacing, fusion, max_voxels, fraction, connectivity, max_volume_mm3=None):
    """Tumor components under min(max_voxels, fraction * the largest) voxels become normal tissue."""
    components, count = tumor_components(labels, fusion, connectivity)
    if count == 0:
        return labels.copy()
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    limit = max_voxels if max_volume_mm3 is None else max_volume_mm3 / float(np.prod(spacing))
    small = np.flatnonzero(sizes < min(limit, fraction * float(sizes.max()))) + 1
    out = labels.copy()
    out[np.isin(components, small)] = fusion["classes"]["normal"]
    return out


def kmeans_edema_to_necrosis(labels, image, spacing, fusion, global_ratio, component_ratio, max_enhancing,
                             connectivity, seed):
    """Where enhancing tumor is scarce, each enhancing-poor component's edema split in two by
    K-means on the four z-scored modalities; the cluster darker in T1c becomes NCR/NET."""
    from sklearn.cluster import KMeans

    classes = fusion["classes"]
    out = labels.copy()
    tumor_volume = int(np.isin(labels, fusion["tumor_classes"]).sum())
    if tumor_volume == 0 or (labels == classes["enhancing"]).sum() / tumor_volume >= global_ratio:
        return out
    components, count = tumor_components(labels, fusion, connectivity)
    ids = components.ravel()
    tumor_n = np.bincount(ids, minlength=count + 1)
    enhancing_n = np.bincount(ids, weights=(labels.ravel() == classes["enhancing"]), minlength=count + 1)
    for n in range(1, count + 1):
        if enhancing_n[n] / tumor_n[n] >= component_ratio or enhancing_n[n] >= max_enhancing:
            continue
        edema = (components == n) & (labels == classes["edema"])
        features = image[:, edema].T
        if features.shape[0] < 2 or np.ptp(features, axis=0).max() == 0:
            continue
        assignment = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(features)
        darker = int(np.argmin([features[assignment == c, T1C_CHANNEL].mean() for c in (0, 1)]))
        coords = np.nonzero(edema)
        out[tuple(c[assignment == darker] for c in coords)] = classes["ncr_net"]
    return out


STEPS = {"remove_small_components": remove_small_components, "kmeans_edema_to_necrosis": kmeans_edema_to_necrosis}


def check_steps(metadata: dict) -> list[dict]:
    steps = metadata.get("postprocessing", {}).get("steps", [])
    unknown = [s["name"] for s in steps if s["name"] not in STEPS]
    if unknown:
        raise SystemExit(f"post-processing step {unknown[0]!r} is not one this runner implements "
                         f"({', '.join(STEPS)}); run with --no-postprocess")
    return steps


def segment(session, metadata: dict, image_xyz: np.ndarray, label_convention: str | None = None,
            batch: int | None = None, postprocess: bool = True, tta: str | None = None, affine=None,
            spacing_xyz=(1.0, 1.0, 1.0)) -> np.ndarray:
    """The label map ``(X, Y, Z)`` uint8 of an image ``(4, X, Y, Z)`` (FLAIR, T1, T1c, T2);
    ``affine``: the NIfTI affine (the left-right axis of an asymmetry model; default identity)."""
    tiles, fusion = metadata["tiles"], metadata["fusion"]
    classes = fusion["classes"]
    num_tasks = len(metadata["outputs"])
    steps = check_steps(metadata) if postprocess else []
    flips = mirror_flips(tta)

    image = np.transpose(image_xyz, (0, 3, 1, 2))  # (4, X, Y, Z) -> (4, Z, X, Y) = (4, D, H, W)
    brain, box, crop, mask = preprocess(image)
    axis = left_right_axis(np.eye(4) if affine is None else affine)
    features = network_input(crop, metadata["input"].get("features", "mri"), axis)
    # per task, uint8 maps over the crop: coarse tumor, task-1 label, task-2 label, task-3 label
    maps = np.zeros((1 + num_tasks, *crop.shape[1:]), dtype=np.uint8)
    if metadata.get("inference", {}).get("runner") == "dense":
        dense_maps(session, features, mask, metadata["dense"], fusion, flips, maps)
    else:
        tile_maps(session, features, mask, tiles, fusion, flips, batch or tiles["batch"], maps)

    coarse, labels = maps[0].astype(bool), maps[1].copy()
    roi = dilate_ball(coarse, fusion["roi_dilation"]) & mask
    if num_tasks >= 2:
        labels[roi] = maps[2][roi]
        if num_tasks >= 3:
            core = roi & np.isin(labels, fusion["core_classes"])
            labels[core] = np.where(maps[3][core] == 1, classes["enhancing"], classes["ncr_net"])
    labels[~mask] = classes["background"]
    spacing = (spacing_xyz[2], spacing_xyz[0], spacing_xyz[1])
    for step in steps:
        labels = STEPS[step["name"]](labels, crop, spacing, fusion, **step["options"])

    full = np.zeros(image.shape[1:], dtype=np.uint8)
    full[box] = labels
    convention = metadata["label_conventions"][label_convention or metadata["label_convention"]]
    out = np.zeros_like(full)
    for name in ("ncr_net", "edema", "enhancing"):
        out[full == classes[name]] = convention[name]
    return np.transpose(out, (1, 2, 0))  # back to (X, Y, Z)


def open_session(path: str):
    """``(onnxruntime session, metadata)`` of an exported file. A dense graph runs without
    onnxruntime's CPU memory arena: the region's maps change size from case to case and
    flip to flip, and the arena kept the largest of each (measured on a real case: 6.2 GB
    against 3.7 GB with --tta, 15 % faster; at full width without --tta 7.3 against 5.4 GB,
    as fast); a tile graph keeps it (5 % faster, as small)."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    session = ort.InferenceSession(path, providers=providers)
    metadata = json.loads(session.get_modelmeta().custom_metadata_map["omkit"])
    if metadata.get("inference", {}).get("runner") == "dense":
        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = False
        session = ort.InferenceSession(path, options, providers=providers)
    return session, metadata


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="omkit-runner", description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", required=True, help="ONNX file written by omkit export")
    parser.add_argument("-i", "--input", required=True, help="a BraTS case folder")
    parser.add_argument("-o", "--output", required=True, help="label map to write (.nii.gz)")
    parser.add_argument("--label-convention", choices=("2018", "2023", "2024"),
                        help="labels written (default: the input's file naming)")
    parser.add_argument("--tta", nargs="?", const="all", default=None, metavar="AXES",
                        help="test-time mirroring along AXES (D,H,W; alone: all three, 8 flips), as omkit predict --tta")
    parser.add_argument("--no-postprocess", action="store_true", help="skip the post-processing steps")
    parser.add_argument("--tile-batch", type=int, help="a tile graph's tiles per onnxruntime call (default: the file's)")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.exists() and not args.force:
        raise SystemExit(f"{output}: exists; pass --force to overwrite it")

    import nibabel as nib

    session, metadata = open_session(args.model)
    if metadata.get("format_version", 1) > FORMAT_VERSION:
        raise SystemExit(f"{args.model}: omkit export format_version {metadata['format_version']} is newer than this "
                         f"runner reads ({FORMAT_VERSION}); install the runner of the omkit that wrote it")
    inference = metadata.get("inference", {})
    if not inference.get("same_as_predict_default", True):
        print(f"omkit-runner: {args.model}: {inference.get('runner', 'tiles')}; omkit predict runs this model "
              f"{inference['predict_default']} by default, so the labels can differ from its", file=sys.stderr)
    image, flair, naming = read_case(Path(args.input))
    zooms = tuple(float(z) for z in flair.header.get_zooms()[:3])
    labels = segment(session, metadata, image, args.label_convention or naming, args.tile_batch,
                     postprocess=not args.no_postprocess, tta=args.tta, affine=flair.affine, spacing_xyz=zooms)
    header = flair.header.copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(labels, flair.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    partial = output.with_name(f".{output.name}.partial.nii.gz")  # written whole, then moved into place
    nib.save(out, str(partial))
    partial.replace(output)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
