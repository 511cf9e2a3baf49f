"""The model card: what omkit knows of a model besides its weights, in one object.

Training writes it into the model file (``omkit.checkpoint.save_model``); everything that
loads a model reads it back from there (``load_model`` attaches it as ``model.card``):
the predictor (input features, the tile geometry ``auto`` and ``tiles`` run with, dense
inference's window grid), ``Segmenter`` (the label convention), ensembles, export,
explain and the ablation runner. A model built in memory (``omkit.create_model``) has
the card :meth:`ModelCard.of_model` derives from it, so no reader re-derives a fact a
card holds. ``omkit models --card MODEL`` prints it.

Fields (also the keys of the file's ``card``):

- ``preset``, ``width``, ``model_options``: the architecture, rebuilt as
  ``create_model(preset, width=width, **model_options)`` (``--preset``, ``--width``,
  ``--model-options``; ``attention``, ``backbone`` and ``in_channels`` are options too);
- ``input_features``: what the network reads (``omkit.data.features``, ``--input-features``);
- ``label_convention``: the labels it was trained on (``2018``, ``2023``, ``2024``);
- ``preprocessing``: how its inputs were made (normalisation, crop, version);
- ``patch_size``: the training patch (the paper's tile is the training patch);
- ``train_mode`` (``patches`` or ``windows``) and, for windows, ``train_windows``
  (``window`` and ``block``): dense inference reproduces window-trained features only;
- ``inference``: the recommended settings, ``mode`` and the tiles ``auto`` runs with
  (``tile_size``, ``tile_keep``); an explicit argument or flag wins;
- ``training``: the provenance record (steps, cases, folds, samplers, seed...).

Files written before the card (``format_version`` 1) are read into a card field by field.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from .labels import CONVENTIONS
from .protocol import FAST_TILE_KEEP, PATCH_SIZE, TILE_KEEP, keep_for

TRAIN_MODES = ("patches", "windows")
INFERENCE_MODES = ("auto", "dense", "tiles")
DEFAULT_PREPROCESSING = {"normalization": "zscore-nonzero", "crop": "brain-bbox"}
# the widest model a card may ask for (4x the paper's 32-256 feature maps; TrainConfig's limit of --width)
MAX_WIDTH = 4.0


class CardError(ValueError):
    """A malformed card field; the message names it."""


def recommended_inference(patch_size=PATCH_SIZE) -> dict:
    """What a model trained on ``patch_size`` is best predicted with: ``auto`` (dense for
    window-trained models, on their training grid), its tiles the training patch keeping
    ``FAST_TILE_KEEP`` (in proportion, for another patch) when ``auto`` runs tiles."""
    size = [int(s) for s in patch_size]
    return {"mode": "auto", "tile_size": size, "tile_keep": list(keep_for(size, FAST_TILE_KEEP))}


def _sizes(name: str, value) -> tuple[int, int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value):
        raise CardError(f"{name} must be three positive sizes, got {value!r}")
    return tuple(int(n) for n in value)


@dataclass(frozen=True)
class ModelCard:
    """See the module docstring. Mappings are plain dicts; compare with ``==``."""

    preset: str
    width: float = 1.0
    model_options: Mapping[str, Any] = field(default_factory=dict)
    input_features: str = "mri"
    label_convention: str = "2018"
    preprocessing: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    patch_size: tuple[int, int, int] = PATCH_SIZE
    train_mode: str = "patches"
    train_windows: Mapping[str, list] | None = None
    inference: Mapping[str, Any] = field(default_factory=recommended_inference)
    training: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        from .data.features import check_input_features

        if not isinstance(self.preset, str) or not self.preset:
            raise CardError(f"preset must be a preset name, got {self.preset!r}")
        width = self.width
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) \
                or not 0 < width <= MAX_WIDTH:
            raise CardError(f"width must be a number in (0, {MAX_WIDTH:g}], got {width!r}")
        if not isinstance(self.model_options, Mapping) or \
                not all(isinstance(k, str) and k.isidentifier() for k in self.model_options):
            raise CardError(f"model_options must map option names to values, got {self.model_options!r}")
        try:
            check_input_features(self.input_features, "input_features")
        except ValueError as exc:
            raise CardError(str(exc)) from None
        if self.label_convention not in CONVENTIONS:
            names = list(CONVENTIONS)
            raise CardError(f"label_convention must be {', '.join(names[:-1])} or {names[-1]}, "
                            f"got {self.label_convention!r}")
        if not isinstance(self.preprocessing, Mapping):
            raise CardError(f"preprocessing must be a mapping, got {self.preprocessing!r}")
        object.__setattr__(self, "patch_size", _sizes("patch_size", self.patch_size))
        if self.train_mode not in TRAIN_MODES:
            raise CardError(f"train_mode must be one of {', '.join(TRAIN_MODES)}, got {self.train_mode!r}")
        windows = self.train_windows
        if windows is not None:
            if not isinstance(windows, Mapping):
                raise CardError(f"train_windows must give the window and block, got {windows!r}")
            windows = {**windows, **{k: list(_sizes(f"train_windows.{k}", windows.get(k))) for k in ("window", "block")}}
            object.__setattr__(self, "train_windows", windows)
        inference = self.inference
        if not isinstance(inference, Mapping) or inference.get("mode", "auto") not in INFERENCE_MODES:
            raise CardError(f"inference must give a mode among {', '.join(INFERENCE_MODES)}, got {inference!r}")
        size = _sizes("inference.tile_size", inference.get("tile_size", list(self.patch_size)))
        keep = _sizes("inference.tile_keep", inference.get("tile_keep", list(keep_for(size, FAST_TILE_KEEP))))
        object.__setattr__(self, "inference", {"mode": inference.get("mode", "auto"), "tile_size": list(size),
                                               "tile_keep": list(keep)})
        if any(k > s for k, s in zip(self.inference["tile_keep"], self.inference["tile_size"])):
            raise CardError(f"inference.tile_keep {self.inference['tile_keep']} exceeds inference.tile_size "
                            f"{self.inference['tile_size']}")
        if not isinstance(self.training, Mapping):
            raise CardError(f"training must be a mapping, got {self.training!r}")
        object.__setattr__(self, "model_options", dict(self.model_options))
        object.__setattr__(self, "preprocessing", dict(self.preprocessing))
        object.__setattr__(self, "training", dict(self.training))

    # -- reading and writing ---------------------------------------------------------------
    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["patch_size"] = list(self.patch_size)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "ModelCard":
        """The card of a file's ``card`` mapping; :class:`CardError` on an unknown or bad field."""
        if not isinstance(data, Mapping):
            raise CardError(f"must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CardError(f"unknown field {unknown[0]!r} (a newer omkit wrote it?)")
        if "preset" not in data:
            raise CardError("preset is missing")
        return cls(**data)

    @classmethod
    def from_legacy(cls, meta: Mapping) -> "ModelCard":
        """The card of a model file written before cards (``format_version`` 1): its fields
        read one by one, the input features from its preprocessing record or, where older
        still, from the input channels of its options."""
        from .data.features import features_of_channels, model_input_channels

        options = meta.get("model_kw", {})
        if not isinstance(options, Mapping):
            raise CardError(f"model_kw must map option names to values, got {options!r}")
        preprocessing = meta.get("preprocessing", DEFAULT_PREPROCESSING)
        features = None
        if isinstance(preprocessing, Mapping):  # format 1 kept the input features with the preprocessing
            preprocessing = dict(preprocessing)
            features = preprocessing.pop("input_features", None)
        features = features or features_of_channels(model_input_channels(dict(options)))
        patch = meta.get("patch_size", list(PATCH_SIZE))
        windows = meta.get("train_windows")
        return cls(preset=meta.get("preset"), width=meta.get("width", 1.0), model_options=options,
                   input_features=features, label_convention=meta.get("label_convention", "2018"),
                   preprocessing=preprocessing, patch_size=patch, train_mode=meta.get("train_mode", "patches"),
                   train_windows=windows, inference=recommended_inference(PATCH_SIZE),
                   training=meta.get("training", {}))

    @classmethod
    def of_model(cls, model, **fields) -> "ModelCard":
        """``model``'s card (``model.card``, attached by ``load_model``), or for a model built
        in memory the one its build attributes give; ``fields`` replace card fields."""
        from .data.features import features_of_channels, model_input_channels

        card = getattr(model, "card", None)
        if not isinstance(card, ModelCard):
            options = dict(getattr(model, "model_kw", {}))
            card = cls(preset=getattr(model, "preset", None) or type(model).__name__,
                       width=getattr(model, "width", 1.0), model_options=options,
                       input_features=features_of_channels(model_input_channels(options)),
                       train_mode=getattr(model, "train_mode", "patches"),
                       train_windows=getattr(model, "train_windows", None))
        return card.replace(**fields) if fields else card

    def replace(self, **fields) -> "ModelCard":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise TypeError(f"ModelCard has no field {unknown[0]!r}; fields: {', '.join(sorted(known))}")
        if "patch_size" in fields and "inference" not in fields and \
                self.inference == recommended_inference(self.patch_size):
            fields["inference"] = recommended_inference(fields["patch_size"])  # the recommendation follows the patch
        return dataclasses.replace(self, **fields)

    # -- what inference reads --------------------------------------------------------------
    def tiles_for(self, mode: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(size, keep)`` of the tiles ``mode`` runs where the caller leaves them open:
        ``dense``: the training window and block of a window-trained model (else its
        recommended tiles); ``auto`` (running tiles): the recommended tiles; ``tiles``: the
        paper's, the training patch keeping ``TILE_KEEP`` (in proportion, for another patch)."""
        if mode == "dense" and self.train_mode == "windows" and self.train_windows:
            return tuple(self.train_windows["window"]), tuple(self.train_windows["block"])
        if mode == "tiles":
            return self.patch_size, keep_for(self.patch_size, TILE_KEEP)
        return tuple(self.inference["tile_size"]), tuple(self.inference["tile_keep"])

    # -- the printed card --------------------------------------------------------------------
    def text(self) -> str:
        def box(v):
            return " x ".join(str(int(n)) for n in v)

        options = ", ".join(f"{k}={v!r}" for k, v in sorted(self.model_options.items())) or "none"
        lines = [
            f"preset            {self.preset} (width {self.width:g})",
            f"model options     {options}",
            f"input features    {self.input_features}",
            f"label convention  {self.label_convention}",
            f"preprocessing     {', '.join(f'{k}={v}' for k, v in self.preprocessing.items())}",
            f"training patch    {box(self.patch_size)}",
            f"trained on        {self.train_mode}" + (
                f" (windows {box(self.train_windows['window'])}, blocks {box(self.train_windows['block'])})"
                if self.train_windows else ""),
            f"inference         {self.inference['mode']}; tiles {box(self.inference['tile_size'])} keeping "
            f"{box(self.inference['tile_keep'])}",
        ]
        record = self.training
        if record:
            shown = [f"{k}={record[k]}" for k in ("steps", "epochs", "fold", "folds", "augment", "seed", "precision")
                     if record.get(k) not in (None, "")]
            lines.append(f"training          {', '.join(shown)}")
            if record.get("cases"):
                lines.append(f"training cases    {len(record['cases'])}")
        return "\n".join(lines)

    # -- the metadata dict of format 1, for code written against it ----------------------------
    _LEGACY = {"preset": "preset", "width": "width", "model_kw": "model_options",
               "label_convention": "label_convention", "preprocessing": "preprocessing", "patch_size": "patch_size",
               "train_mode": "train_mode", "train_windows": "train_windows", "training": "training"}

    def __getitem__(self, key: str):
        if key not in self._LEGACY:
            raise KeyError(key)
        warnings.warn(f"reading a model's metadata as a dict (meta[{key!r}]) is deprecated: use the ModelCard "
                      f"attribute .{self._LEGACY[key]}", DeprecationWarning, stacklevel=2)
        value = getattr(self, self._LEGACY[key])
        return list(value) if key == "patch_size" else value

    def get(self, key: str, default=None):
        if key not in self._LEGACY:
            return default
        warnings.warn(f"reading a model's metadata as a dict (meta.get({key!r})) is deprecated: use the ModelCard "
                      f"attribute .{self._LEGACY[key]}", DeprecationWarning, stacklevel=2)
        value = getattr(self, self._LEGACY[key])
        return list(value) if key == "patch_size" else value
