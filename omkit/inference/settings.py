"""The inference modes, the tile geometry, the speed settings and the input features: what ``SegmentationPredictor`` runs when its
caller leaves the choice to it (``inference="auto"``, tiles whose size or keep is None)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from omkit.data.features import input_channels
from omkit.model_card import ModelCard
from omkit.protocol import FAST_TILE_KEEP, PATCH_SIZE, TILE_KEEP, keep_for

from .tiling import check_geometry


# Inference modes of SegmentationPredictor (and --inference). The default, auto, runs dense
# inference only on models trained window-consistently (--train-mode windows), whose features
# are those dense inference computes; a model trained on patches loses accuracy dense (5 points
# of whole-tumor Dice after 25 minutes of training) and runs tiles keeping FAST_TILE_KEEP, as
# accurate as the paper's tiles and faster (docs/RESULTS.md, "Train as you infer").
INFERENCE_MODES = ("auto", "dense", "tiles")
DEFAULT_INFERENCE = "auto"


@dataclass
class TileSettings:
    """Overlap-tile geometry and batching. ``size``: the tile, ``(D, H, W)``;
    ``keep``: its centre whose prediction is kept; ``stride``: between tiles,
    default ``keep`` (every voxel predicted once); ``batch``: tiles per network
    call (memory against speed). On the command line these are ``--tile-size``,
    ``--tile-keep``, ``--tile-stride`` and ``--tile-batch``. ``size`` or ``keep``
    None: the predictor's choice for its mode (:func:`default_tiles`); the
    paper's are ``PATCH_SIZE`` and ``TILE_KEEP`` (``omkit.protocol``)."""

    size: Sequence[int] | None = None
    keep: Sequence[int] | None = None
    stride: Sequence[int] | None = None
    batch: int = 16

    def __post_init__(self):
        if self.size is not None and self.keep is not None:
            self.size, self.stride, self.keep = check_geometry(self.size, self.stride, self.keep)
        elif self.stride is not None:
            raise ValueError("a tile stride needs the tile size and keep too")
        if int(self.batch) < 1:
            raise ValueError(f"tile batch must be at least 1, got {self.batch}")
        self.batch = int(self.batch)

    @property
    def resolved(self) -> bool:
        return self.size is not None and self.keep is not None

    def with_defaults(self, size: Sequence[int], keep: Sequence[int]) -> "TileSettings":
        """These settings, ``size`` and ``keep`` filled in where they are None (``keep`` is
        for tiles of ``size``: with another given size, in proportion to it)."""
        if self.resolved:
            return self
        if self.size is not None and self.keep is None:  # the default keep, in proportion to the given size
            keep = keep_for(self.size, keep, size)
        return TileSettings(size=self.size if self.size is not None else size,
                            keep=self.keep if self.keep is not None else keep, batch=self.batch)


def trained_windows(model: nn.Module) -> dict | None:
    """The window grid a model was trained with window-consistently (``--train-mode
    windows``, on its card), or None for a model trained on patches."""
    card = ModelCard.of_model(model)
    if card.train_mode != "windows":
        return None
    return card.train_windows or {"window": list(PATCH_SIZE), "block": list(FAST_TILE_KEEP)}


def default_tiles(tiles: TileSettings, mode: str, models: Sequence[nn.Module]) -> TileSettings:
    """The tile geometry where ``tiles`` leaves it open, from the models' cards
    (:meth:`omkit.model_card.ModelCard.tiles_for`): for dense inference of models trained
    window-consistently, their training window and block; for the tiles that ``auto``
    chooses, the card's recommended tiles; for ``tiles``, the paper's (the training patch
    keeping ``TILE_KEEP``). Members whose cards disagree get the protocol's defaults."""
    choices = {ModelCard.of_model(m).tiles_for(mode) for m in models}
    if len(choices) == 1:
        size, keep = choices.pop()
    else:
        size, keep = PATCH_SIZE, FAST_TILE_KEEP if mode == "auto" else TILE_KEEP
    return tiles.with_defaults(size, keep)


def describe_box(size: Sequence[int]) -> str:
    return " x ".join(str(int(v)) for v in size)


@dataclass
class SpeedSettings:
    """GPU speed settings of the network calls, each off until measured (see the module
    docstring). ``cudnn_benchmark``: let cuDNN pick the fastest convolution algorithms for
    the one tile shape; ``channels_last``: models and tiles in channels-last-3d memory
    format; ``compile``: ``torch.compile`` mode of each network call (``"default"``,
    ``"reduce-overhead"`` = CUDA graphs, ``"max-autotune"``), or None. With cuDNN
    autotuning or compilation the last, smaller batch of tiles is padded to the full batch,
    so every call has one shape."""

    cudnn_benchmark: bool = False
    channels_last: bool = False
    compile: str | None = None

    COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")

    def __post_init__(self):
        if self.compile is not None and self.compile not in self.COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {', '.join(self.COMPILE_MODES)} or None, "
                             f"got {self.compile!r}")

    @property
    def fixed_shapes(self) -> bool:
        return self.cudnn_benchmark or self.compile is not None


def input_features_of(models: Sequence[nn.Module], given: str | None) -> str:
    """The feature set every model reads: its card's ``input_features``, or ``given``
    where the caller names one (checked against the cards' input channels)."""
    cards = [ModelCard.of_model(m) for m in models]
    features = {card.input_features for card in cards}
    channels = {input_channels(f) for f in features}
    if len(channels) != 1:
        raise ValueError(f"ensemble members must read the same input channels, got {sorted(channels)}")
    if given is None:
        if len(features) != 1:
            raise ValueError(f"ensemble members read different input features ({', '.join(sorted(features))}); "
                             "name one with input_features")
        return features.pop()
    count = channels.pop()
    if input_channels(given) != count:
        raise ValueError(f"input_features {given!r} has {input_channels(given)} channels; the models read {count}")
    return given
