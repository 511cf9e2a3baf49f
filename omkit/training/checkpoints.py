"""Training checkpoints (``checkpoints/last.pt``): everything a resumed run needs
to continue bit-exactly on CPU, and the metadata of the models a run writes.

``last.pt`` holds the model, optimiser, scheduler and AMP-scaler states, the
sampler position, the :class:`~omkit.training.state.TrainState`, the config and
every process's RNG states, all as tensors, numbers, strings, lists and dicts:
it loads with ``torch.load(..., weights_only=True)``, so a crafted file cannot
run code on ``--resume`` (numpy's and Python's RNG states are stored as
tensors, not pickled objects). It is rewritten atomically.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from omkit.data.preprocess import PREPROCESSING
from omkit.fileio import UnsafeFileError, atomic_torch_save, torch_load_weights_only
from omkit.model_card import ModelCard, recommended_inference

from . import windows
from .curriculum import stages_record

CHECKPOINT_FORMAT = "omkit-train-checkpoint"
# 2: RNG states as tensors (loadable with weights_only=True); 1 pickled numpy/Python objects
CHECKPOINT_VERSION = 2


def weights_digest(model: nn.Module) -> str:
    """sha256 of every parameter and buffer, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# -- RNG states as plain data -------------------------------------------------------------

def rng_state(device: torch.device) -> dict:
    """This process's torch (and CUDA), numpy and Python RNG states as tensors and numbers."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))


# -- last.pt ----------------------------------------------------------------------------

def save_training_checkpoint(path: Path, *, config: dict, world_size: int, model: nn.Module, optimizer, scheduler,
                             scaler, sampler: dict, state: dict, rng_per_rank: list) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config,
        "world_size": world_size,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "sampler": sampler,
        "state": state,
        "rng": {"per_rank": rng_per_rank},
    }
    atomic_torch_save(payload, path)


def load_training_checkpoint(path: Path) -> dict:
    """The payload of ``last.pt``, unpickled with ``weights_only=True``: a file
    holding anything but tensors and plain data is refused (one line naming
    it) without running any of it."""
    try:
        payload = torch_load_weights_only(path)
    except UnsafeFileError as exc:
        raise ValueError(f"{exc}; it was not written by this omkit version, start a new run") from None
    except ValueError as exc:
        raise ValueError(f"{path}: unreadable training checkpoint {str(exc).split(': unreadable ', 1)[-1]}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an omkit training checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: training checkpoint version {payload.get('version')!r}, this omkit reads "
                         f"{CHECKPOINT_VERSION}; start a new run")
    kinds = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "state": dict, "rng": dict,
             "world_size": int, "sampler": dict}
    for key, kind in kinds.items():
        if not isinstance(payload.get(key), kind):
            raise ValueError(f"{path}: malformed training checkpoint ({key!r} is not a {kind.__name__})")
    if not isinstance(payload["rng"].get("per_rank"), list) or not payload["rng"]["per_rank"]:
        raise ValueError(f"{path}: malformed training checkpoint (no RNG states)")
    return payload


# -- the models a run writes ---------------------------------------------------------------

def model_card(config, model: nn.Module, label_convention: str, state, stages, cases, held_out) -> ModelCard:
    """The card ``model.pt`` and ``checkpoints/stageK.pt`` carry beside the weights
    (``omkit.model_card``; read back by ``load_model``)."""
    grid = windows.grid_of(config).to_dict() if config.train_mode == "windows" else None
    return ModelCard.of_model(
        getattr(model, "module", model),
        input_features=config.input_features,
        label_convention=label_convention,
        preprocessing={k: v for k, v in PREPROCESSING.items() if k != "version"},
        patch_size=tuple(config.patch_size),
        # how the features were trained: dense inference matches them only for "windows"
        # (omkit.training.windows); --inference auto reads it
        train_mode=config.train_mode,
        train_windows=grid,
        inference=recommended_inference(config.patch_size),
        training={
            "epochs": state.epoch,
            "steps": state.global_step,
            "stage": state.stage + (0 if state.finished else 1),
            "stages": stages_record(stages),
            "cases": [pre.case_id for pre in cases],
            "held_out": [p.name for p in held_out],
            "fold": config.fold,
            "folds": config.folds,
            "samplers": list(config.samplers),
            "augment": config.augment,  # training-patch augmentation (omkit.data.augment); "" = none
            "seed": config.seed,
            "precision": config.precision,
            "stopped_by": state.stopped_by,
        },
    )
