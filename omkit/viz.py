"""Figures in the style of the paper: label overlays (Fig. 7: FLAIR with the
ground truth and the prediction side by side; edema green, NCR/NET blue,
enhancing red) and CGA channel-importance maps (Fig. 6). Matplotlib with the
Agg backend (no display needed); files are written atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .fileio import atomic_path
from .labels import EDEMA, ENHANCING, NCR_NET

# RGB of the tumor classes, as in the paper's Fig. 7
CLASS_COLOURS = {EDEMA: (0.0, 0.8, 0.0), NCR_NET: (0.1, 0.3, 1.0), ENHANCING: (1.0, 0.0, 0.0)}
CLASS_LEGEND = {EDEMA: "edema", NCR_NET: "NCR/NET", ENHANCING: "enhancing"}


def _figure(**kw):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, plt.figure(**kw)


def _save(plt, fig, target: str | os.PathLike, force: bool) -> Path:
    try:
        with atomic_path(target, force=force) as tmp:
            fig.savefig(tmp, format="png", dpi=fig.dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(target)


def _grey(image_slice: np.ndarray) -> np.ndarray:
    """A slice scaled to [0, 1] by its 1st and 99th percentiles inside the brain."""
    values = image_slice[image_slice != 0]
    if values.size == 0:
        return np.zeros_like(image_slice, dtype=np.float32)
    lo, hi = np.percentile(values, (1, 99))
    return np.clip((image_slice - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def overlay_rgb(flair_slice: np.ndarray, label_slice: np.ndarray | None, alpha: float = 0.6) -> np.ndarray:
    """RGB image: the grey FLAIR slice with the tumor classes painted in colour."""
    grey = _grey(flair_slice)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if label_slice is not None:
        for cls, colour in CLASS_COLOURS.items():
            where = label_slice == cls
            rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(colour)
    return rgb


def tumor_slice(*labels: np.ndarray | None) -> int:
    """The axial slice (axis 0) with the most tumor in the given maps (the middle one without tumor)."""
    counts = sum(np.count_nonzero(np.isin(l, tuple(CLASS_COLOURS)), axis=(1, 2)) for l in labels if l is not None)
    if np.isscalar(counts) or not np.any(counts):
        shape = next(l.shape for l in labels if l is not None)
        return shape[0] // 2
    return int(np.argmax(counts))


def save_overlay(
    target: str | os.PathLike,
    flair: np.ndarray,
    prediction: np.ndarray,
    ground_truth: np.ndarray | None = None,
    slice_index: int | None = None,
    title: str = "",
    force: bool = True,
) -> Path:
    """Fig. 7 style PNG of one axial slice of ``(D, H, W)`` volumes (internal
    classes): FLAIR, [ground truth,] prediction side by side."""
    from matplotlib.patches import Patch

    if slice_index is None:
        slice_index = tumor_slice(ground_truth, prediction)
    panels = [("FLAIR", None)]
    if ground_truth is not None:
        panels.append(("ground truth", ground_truth))
    panels.append(("prediction", prediction))
    plt, fig = _figure(figsize=(3.2 * len(panels), 3.6), dpi=100)
    for i, (name, labels) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        # rows of a (H, W) slice are NIfTI X; show them as image columns (radiological-like view)
        rgb = overlay_rgb(flair[slice_index], None if labels is None else labels[slice_index])
        ax.imshow(np.transpose(rgb, (1, 0, 2)), origin="lower", interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    handles = [Patch(color=CLASS_COLOURS[c], label=CLASS_LEGEND[c]) for c in CLASS_COLOURS]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"{title} (axial slice {slice_index})".strip(), fontsize=10)
    return _save(plt, fig, target, force)


def save_channel_importance(
    target: str | os.PathLike,
    flair_slice: np.ndarray,
    guidance_slice: np.ndarray,
    features_slice: np.ndarray,
    importance: np.ndarray,
    count: int = 5,
    title: str = "",
    category_names: Sequence[str] = ("tumor", "non-tumor"),
    force: bool = True,
) -> Path:
    """Fig. 6 style PNG: the FLAIR slice, the guidance P, and the feature maps
    ``(C, H, W)`` of the ``count`` channels with the largest and the smallest
    importance in ``m_t`` and ``m_n`` (``importance (2, C)``)."""
    channels = features_slice.shape[0]
    count = min(count, channels)
    # panels: (title, 2-D map, colour map, value range or None for auto)
    rows = [("input", [("FLAIR", _grey(flair_slice), "gray", (0, 1)), ("P (guidance)", guidance_slice, "viridis", (0, 1))])]
    for row, name in enumerate(category_names):
        order = np.argsort(importance[row])
        for which, picked in (("largest", order[::-1][:count]), ("smallest", order[:count])):
            rows.append((f"m_{name[0]} {which}",
                         [(f"ch {c}: {importance[row, c]:.3f}", features_slice[c], "magma", None) for c in picked]))
    ncols = max(len(r[1]) for r in rows)
    plt, fig = _figure(figsize=(2.0 * ncols, 2.1 * len(rows)), dpi=100)
    for r, (row_name, panels) in enumerate(rows):
        for c, (name, data, cmap, value_range) in enumerate(panels):
            ax = fig.add_subplot(len(rows), ncols, r * ncols + c + 1)
            vmin, vmax = value_range or (None, None)
            ax.imshow(np.asarray(data).T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(name, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row_name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(plt, fig, target, force)
