"""Self-describing model files: weights plus everything needed to rebuild the
model and to preprocess its inputs (preset, width, model options, label
convention, preprocessing, patch geometry)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fileio import atomic_torch_save
from .protocol import PATCH_SIZE

FORMAT = "omkit-model"
FORMAT_VERSION = 1


def model_metadata(model: nn.Module, **extra: Any) -> dict:
    """What :func:`load_model` needs to rebuild ``model`` (built by ``create_model``)."""
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preset": getattr(model, "preset", None),
        "width": getattr(model, "width", 1.0),
        "model_kw": getattr(model, "model_kw", {}),
        "label_convention": "2018",
        "preprocessing": {"normalization": "zscore-nonzero", "crop": "brain-bbox"},
        "patch_size": list(PATCH_SIZE),
    }
    meta.update(extra)
    return meta


def save_model(model: nn.Module, path: str | os.PathLike, force: bool = True, **meta: Any) -> Path:
    """Write ``{"meta": ..., "state_dict": ...}`` atomically."""
    model = getattr(model, "module", model)  # unwrap DDP
    payload = {"meta": model_metadata(model, **meta), "state_dict": model.state_dict()}
    return atomic_torch_save(payload, path, force=force)


class ModelFileError(ValueError):
    pass


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", expect_preset: str | None = None):
    """Rebuild the model saved by :func:`save_model`; returns ``(model, meta)``
    with the model in eval mode. Errors name the file."""
    from .models.build import create_model

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]  # torch's messages run over many lines
        raise ModelFileError(f"{path}: not a readable omkit model file ({type(exc).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("meta", {}).get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an omkit model file (no '{FORMAT}' metadata)")
    meta = payload["meta"]
    if expect_preset is not None and meta.get("preset") != expect_preset:
        raise ModelFileError(f"{path}: holds preset {meta.get('preset')!r}, expected {expect_preset!r}")
    model = create_model(meta["preset"], width=meta.get("width", 1.0), **meta.get("model_kw", {}))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFileError(f"{path}: weights do not match preset {meta['preset']!r}: {first}") from None
    model.to(map_location).eval()
    return model, meta
