"""Self-describing model files: weights plus everything needed to rebuild the
model and to preprocess its inputs (preset, width, model options, label
convention, preprocessing, patch geometry)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fileio import UnsafeFileError, atomic_torch_save, torch_load_weights_only
from .protocol import PATCH_SIZE

FORMAT = "omkit-model"
# how a model's features were trained (omkit.training.windows): on patches (the paper's) or
# window-consistently, as dense inference computes them
TRAIN_MODES = ("patches", "windows")
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


# the widest model a file may ask for (4x the paper's 32-256 feature maps; TrainConfig's limit of --width)
MAX_WIDTH = 4.0


def check_metadata(path: Path, meta: Any) -> dict:
    """``meta`` as :func:`model_metadata` writes it, or a :class:`ModelFileError`
    naming ``path`` and the first malformed field."""
    import math

    def bad(field, why):
        raise ModelFileError(f"{path}: malformed model metadata: {field} {why}")

    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an omkit model file (no '{FORMAT}' metadata)")
    if meta.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        bad("format_version", f"is {meta.get('format_version')!r}; this omkit reads {FORMAT_VERSION}")
    if not isinstance(meta.get("preset"), str) or not meta["preset"]:
        bad("preset", f"must be a preset name, got {meta.get('preset')!r}")
    width = meta.get("width", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) \
            or not 0 < width <= MAX_WIDTH:
        bad("width", f"must be a number in (0, {MAX_WIDTH:g}], got {width!r}")
    model_kw = meta.get("model_kw", {})
    if not isinstance(model_kw, dict) or not all(isinstance(k, str) and k.isidentifier() for k in model_kw):
        bad("model_kw", f"must map option names to values, got {model_kw!r}")
    convention = meta.get("label_convention", "2018")
    if convention not in ("2018", "2023", "2024"):
        bad("label_convention", f"must be 2018, 2023 or 2024, got {convention!r}")
    patch = meta.get("patch_size", list(PATCH_SIZE))
    if not isinstance(patch, (list, tuple)) or len(patch) != 3 or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in patch):
        bad("patch_size", f"must be three positive sizes, got {patch!r}")
    if not isinstance(meta.get("preprocessing", {}), dict):
        bad("preprocessing", f"must be a mapping, got {meta.get('preprocessing')!r}")
    if meta.get("train_mode", "patches") not in TRAIN_MODES:
        bad("train_mode", f"must be one of {', '.join(TRAIN_MODES)}, got {meta.get('train_mode')!r}")
    windows = meta.get("train_windows")
    if windows is not None and not (isinstance(windows, dict) and all(
            isinstance(windows.get(k), list) and len(windows[k]) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in windows[k])
            for k in ("window", "block"))):
        bad("train_windows", f"must give the window and block as three positive sizes each, got {windows!r}")
    return meta


def _stamp_training(model: nn.Module, meta: dict) -> None:
    """What the model file says of how the model was trained, as attributes that inference
    reads: ``train_mode`` and, for window-consistent training, ``train_windows``."""
    model.train_mode = meta.get("train_mode", "patches")
    model.train_windows = meta.get("train_windows")


MODEL_FILE = "model.pt"  # a run folder's final model
FOLD_FOLDERS = "fold_*"  # omkit train --fold all: RUN/fold_0, RUN/fold_1, ...


def model_files(paths) -> list[Path]:
    """The model files ``paths`` name: a file is itself; a run folder, its ``model.pt``; the folder of
    ``omkit train --fold all``, every ``fold_k/model.pt`` in it (an ensemble of the folds). Anything else is
    a one-line error naming it."""
    found: list[Path] = []
    for raw in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        path = Path(raw)
        if not path.is_dir():
            found.append(path)  # load_model names a missing file
        elif (path / MODEL_FILE).is_file():
            found.append(path / MODEL_FILE)
        else:
            folds = sorted(path.glob(f"{FOLD_FOLDERS}/{MODEL_FILE}"), key=lambda p: (len(p.parent.name), p.parent.name))
            if not folds:
                raise ModelFileError(f"{path}: a folder without {MODEL_FILE} or {FOLD_FOLDERS}/{MODEL_FILE} "
                                     "(a run that has not finished, or not a run folder)")
            found.extend(folds)
    return found


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", expect_preset: str | None = None):
    """Rebuild the model saved by :func:`save_model`; returns ``(model, meta)``
    with the model in eval mode. The file is unpickled with
    ``weights_only=True`` (a crafted file cannot run code), its metadata
    checked field by field, and every error is one line naming the file."""
    from .models.build import create_model

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        payload = torch_load_weights_only(path, map_location=map_location)
    except UnsafeFileError as exc:
        raise ModelFileError(str(exc)) from None
    except ValueError as exc:
        reason = str(exc).split(": unreadable ", 1)[-1]
        raise ModelFileError(f"{path}: not a readable omkit model file {reason}") from None
    if not isinstance(payload, dict):
        raise ModelFileError(f"{path}: not an omkit model file (no '{FORMAT}' metadata)")
    meta = check_metadata(path, payload.get("meta"))
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelFileError(f"{path}: malformed model file: state_dict must map names to tensors")
    if expect_preset is not None and meta.get("preset") != expect_preset:
        raise ModelFileError(f"{path}: holds preset {meta.get('preset')!r}, expected {expect_preset!r}")
    try:
        model = create_model(meta["preset"], width=meta.get("width", 1.0), **meta.get("model_kw", {}))
    except Exception as exc:  # unknown names, options that break construction (IndexError, ZeroDivisionError...)
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ModelFileError(f"{path}: cannot build preset {meta['preset']!r} "
                             f"({type(exc).__name__}: {' '.join(text.split())})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFileError(f"{path}: weights do not match preset {meta['preset']!r}: {first}") from None
    _stamp_training(model, meta)
    model.to(map_location).eval()
    return model, meta
