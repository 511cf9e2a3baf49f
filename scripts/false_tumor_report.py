"""Where is the false tumor? Per case of a prediction folder: the whole-tumor components
that touch no true tumor (26-connectivity), their size, labels, depth below the brain's
surface and the modalities' z-scores inside them; optionally a figure of one case's
worst slice. Which task puts them there, and whether task 2 vetoes them, is
``scripts/task_veto_report.py``.

    python scripts/false_tumor_report.py PRED_DIR DATA [--figure OUT.png --case CASE_ID]
                                         [--compare OTHER_PRED_DIR --labels BEFORE,AFTER]
                                         [--probabilities CASE_ID_probabilities.npz]

PRED_DIR holds ``CASE_ID.nii.gz`` label maps (BraTS labels, as ``omkit predict``
writes them); DATA the case folders with ground truth. Depth: distance in voxels from
the nearest voxel outside the brain (every modality zero). With ``--compare`` the
figure shows both prediction folders side by side (e.g. before and after a change).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from omkit.morphology import depth_below_surface

MODALITIES = ("flair", "t1", "t1ce", "t2")


def _load(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def _case_files(data: Path, case_id: str) -> dict[str, Path]:
    folder = data / case_id
    files = {p.name[len(case_id) + 1:].split(".")[0].lower(): p for p in folder.glob(f"{case_id}_*.nii*")}
    return files


def false_components(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(component map of the predicted whole tumor, ids of the components touching no true tumor)."""
    labels, count = ndimage.label(pred > 0, structure=np.ones((3, 3, 3)))
    touched = set(np.unique(labels[(gt > 0) & (labels > 0)]).tolist())
    return labels, [k for k in range(1, count + 1) if k not in touched]


def report_case(pred_path: Path, data: Path) -> dict:
    case_id = pred_path.name.split(".")[0]
    files = _case_files(data, case_id)
    pred, gt = _load(pred_path), _load(files["seg"])
    images = [(_load(files[m]).astype(np.float32)) for m in MODALITIES]
    brain = np.any([im != 0 for im in images], axis=0)
    depth = depth_below_surface(brain)
    z = [np.where(brain, (im - im[brain].mean()) / max(float(im[brain].std()), 1e-6), 0.0) for im in images]
    labels, false = false_components(pred, gt)
    wt_p, wt_g = pred > 0, gt > 0
    tp = int((wt_p & wt_g).sum())
    comps = []
    for k in false:
        comp = labels == k
        values, counts = np.unique(pred[comp], return_counts=True)
        comps.append({"voxels": int(comp.sum()), "labels": dict(zip(values.tolist(), counts.tolist())),
                      "depth_median": float(np.median(depth[comp])), "within_8": float(np.mean(depth[comp] <= 8)),
                      "within_2": float(np.mean(depth[comp] <= 2)),  # the partial-volume rim
                      **{m: float(zz[comp].mean()) for m, zz in zip(MODALITIES, z)}})
    comps.sort(key=lambda c: -c["voxels"])
    return {"case": case_id, "precision": tp / max(int(wt_p.sum()), 1), "sensitivity": tp / max(int(wt_g.sum()), 1),
            "false_components": comps, "false_voxels": int(sum(c["voxels"] for c in comps)),
            "true_depth_median": float(np.median(depth[wt_g])) if wt_g.any() else float("nan")}


def coarse_mask(probabilities: Path) -> np.ndarray:
    """Task 1's coarse tumor mask, as the fusion takes it, from ``omkit predict
    --save-probabilities``' ``.npz`` (NIfTI axis order)."""
    import torch

    from omkit.inference.fusion import task1_labels

    with np.load(probabilities) as arrays:
        coarse, _ = task1_labels(torch.from_numpy(arrays["task1"][None]))
    return coarse[0].numpy().astype(bool)


def figure(out: Path, case_id: str, data: Path, folders: list[Path], names: list[str],
           probabilities: Path | None = None) -> None:
    """The slice with the most false tumor of the first map shown: FLAIR with the ground
    truth, then each folder's prediction; with ``probabilities`` (the first folder's),
    task 1's coarse mask first, coloured the same way."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    files = _case_files(data, case_id)
    flair, gt = _load(files["flair"]).astype(np.float32), _load(files["seg"])
    preds = [_load(folder / f"{case_id}.nii.gz") for folder in folders]
    if probabilities is not None:
        preds.insert(0, coarse_mask(probabilities).astype(np.uint8))
        names = ["task 1's coarse mask"] + list(names)
    labels, false = false_components(preds[0], gt)
    mask = np.isin(labels, false)
    z = int(np.argmax(mask.sum(axis=(0, 1)))) if mask.any() else int(np.argmax((gt > 0).sum(axis=(0, 1))))
    brain = flair[..., z] > 0
    lo, hi = np.percentile(flair[..., z][brain], [1, 99]) if brain.any() else (0, 1)
    grey = np.clip((flair[..., z] - lo) / max(hi - lo, 1e-6), 0, 1).T
    rows, cols = np.nonzero(brain.T) if brain.any() else (np.array([0, grey.shape[0] - 1]), np.array([0, grey.shape[1] - 1]))
    box = (slice(max(rows.min() - 5, 0), rows.max() + 6), slice(max(cols.min() - 5, 0), cols.max() + 6))  # the brain, zoomed
    fig, axes = plt.subplots(1, len(preds) + 1, figsize=(4.2 * (len(preds) + 1), 4.2))
    axes[0].imshow(grey[box], cmap="gray", origin="lower")
    axes[0].contour((gt[..., z] > 0).T[box], levels=[0.5], colors=["yellow"], linewidths=0.8, origin="lower")
    axes[0].set_title(f"{case_id}, slice {z}\nFLAIR; yellow: true whole tumor\n"
                      "then red: tumor called where there is none; green: true tumor found", fontsize=7)
    for ax, pred, name in zip(axes[1:], preds, names):
        _, fp = false_components(pred, gt)
        wt_p, wt_g = pred[..., z] > 0, gt[..., z] > 0
        overlay = np.dstack([grey] * 3)
        overlay[(wt_p & ~wt_g).T] = [1.0, 0.1, 0.1]
        overlay[(wt_p & wt_g).T] = [0.1, 0.8, 0.1]
        ax.imshow(overlay[box], origin="lower")
        ax.contour(wt_g.T[box], levels=[0.5], colors=["yellow"], linewidths=0.8, origin="lower")
        whole = pred > 0
        precision = (whole & (gt > 0)).sum() / max(whole.sum(), 1)
        ax.set_title(f"{name}\nWT precision {precision:.2f}; {len(fp)} components touch no true tumor", fontsize=7)
    for ax in axes:
        ax.axis("off")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pred", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--case")
    parser.add_argument("--compare", type=Path)
    parser.add_argument("--labels", default="before,after")
    parser.add_argument("--probabilities", type=Path,
                        help="the case's omkit predict --save-probabilities .npz: adds task 1's coarse mask to the figure")
    args = parser.parse_args(argv)
    for path in sorted(args.pred.glob("*.nii*")):
        r = report_case(path, args.data)
        print(f"{r['case']}: WT precision {r['precision']:.2f}, sensitivity {r['sensitivity']:.2f}, "
              f"{len(r['false_components'])} false components ({r['false_voxels']} voxels); "
              f"true tumor's median depth {r['true_depth_median']:.1f}")
        for c in r["false_components"][:5]:
            print(f"    {c['voxels']:6d} voxels, labels {c['labels']}, depth median {c['depth_median']:.1f} "
                  f"({100 * c['within_8']:.0f} % within 8 voxels of the surface, {100 * c['within_2']:.0f} % within 2), "
                  + ", ".join(f"{m} {c[m]:+.2f}" for m in MODALITIES))
    if args.figure:
        folders = [args.pred] + ([args.compare] if args.compare else [])
        names = args.labels.split(",")[:len(folders)]
        figure(args.figure, args.case, args.data, folders, names, args.probabilities)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
