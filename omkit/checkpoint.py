"""Self-describing model files: weights plus the model card (``omkit.model_card``),
everything needed to rebuild the model, preprocess its inputs and predict with it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fileio import UnsafeFileError, atomic_torch_save, torch_load_weights_only
from .model_card import CardError, ModelCard

FORMAT = "omkit-model"
# 1: the metadata fields at the top level; 2: one model card (omkit.model_card) under "card"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def save_model(model: nn.Module, path: str | os.PathLike, force: bool = True, card: ModelCard | None = None,
               **fields: Any) -> Path:
    """Write ``{"meta": {format, format_version, card}, "state_dict": ...}`` atomically: the
    model's card (``card``, else :meth:`ModelCard.of_model`) with ``fields`` replaced."""
    model = getattr(model, "module", model)  # unwrap DDP
    card = (card if card is not None else ModelCard.of_model(model))
    card = card.replace(**fields) if fields else card
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "card": card.to_dict()}
    return atomic_torch_save({"meta": meta, "state_dict": model.state_dict()}, path, force=force)


class ModelFileError(ValueError):
    pass


def read_card(path: Path, meta: Any) -> ModelCard:
    """The :class:`ModelCard` of a file's metadata, or a :class:`ModelFileError` naming
    ``path`` and the first malformed field."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an omkit model file (no '{FORMAT}' metadata)")
    version = meta.get("format_version", 1)
    if version not in READABLE_VERSIONS:
        raise ModelFileError(f"{path}: malformed model metadata: format_version is {version!r}; this omkit reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))} (a newer omkit wrote it: upgrade omkit)")
    try:
        return ModelCard.from_dict(meta.get("card")) if version >= 2 else ModelCard.from_legacy(meta)
    except (CardError, TypeError) as exc:
        raise ModelFileError(f"{path}: malformed model metadata: {exc}") from None


def _read_payload(path: Path, map_location) -> dict:
    """The unpickled model file (``weights_only=True``: a crafted file cannot run code), or a
    one-line :class:`ModelFileError` naming it."""
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
    return payload


def read_card_of(path: str | os.PathLike) -> ModelCard:
    """The card of the model file ``path``, without building the model."""
    path = Path(path)
    return read_card(path, _read_payload(path, "cpu").get("meta"))


def _stamp_training(model: nn.Module, card: ModelCard) -> None:
    """The card, and what it says of how the model was trained as the attributes that code
    written before cards reads: ``train_mode`` and ``train_windows``."""
    model.card = card
    model.train_mode = card.train_mode
    model.train_windows = card.train_windows


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
    """Rebuild the model saved by :func:`save_model`; returns ``(model, card)`` (its
    :class:`~omkit.model_card.ModelCard`, also ``model.card``) with the model in eval
    mode. The file is unpickled with ``weights_only=True`` (a crafted file cannot run
    code), its card checked field by field, and every error is one line naming the file."""
    from .models.build import create_model

    path = Path(path)
    payload = _read_payload(path, map_location)
    card = read_card(path, payload.get("meta"))
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelFileError(f"{path}: malformed model file: state_dict must map names to tensors")
    if expect_preset is not None and card.preset != expect_preset:
        raise ModelFileError(f"{path}: holds preset {card.preset!r}, expected {expect_preset!r}")
    try:
        model = create_model(card.preset, width=card.width, **card.model_options)
    except Exception as exc:  # unknown names, options that break construction (IndexError, ZeroDivisionError...)
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ModelFileError(f"{path}: cannot build preset {card.preset!r} "
                             f"({type(exc).__name__}: {' '.join(text.split())})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFileError(f"{path}: weights do not match preset {card.preset!r}: {first}") from None
    _stamp_training(model, card)
    model.to(map_location).eval()
    return model, card
