"""Whole-volume prediction with one model or an ensemble: OM-Net in one pass,
the MC baseline as a real cascade.

* OM-Net (and any model whose ``forward`` returns all three tasks): every
  tile that touches the brain is predicted once; each tile's three outputs
  are reduced on the compute device to four uint8 maps (coarse tumor mask,
  task-1 label, task-2 label, task-3 label), stitched, then fused.
* MC (``MCNet``): network 1 on the brain tiles; network 2 only on the tiles
  whose kept centre touches the dilated coarse mask; network 3 only on the
  tiles touching the core that network 2 found.
* Ensembles average the softmax probabilities of their members per task
  before anything is reduced (the paper's OM-Net + CGA* averages ten).
* Test-time mirroring (``tta``, :mod:`.tta`): every flip of a tile batch
  goes through the network as one batch; each copy's logits are flipped back
  and the softmax is averaged over flips and members before the reduction.

Full-volume float buffers (one channel per class and task) exist only when
probabilities are asked for.

``inference="dense"`` (:mod:`.dense`, :class:`DenseSettings`) replaces the tiles
by window-consistent dense inference: the backbone once per voxel over the
mask's region (in slabs along D when ``DenseSettings.max_voxels`` says so),
each head's attention pooled per block (kept centre) over the tile that would
have predicted it; the same reductions, fusion, ensembles, mirroring and
outputs. It needs ``stride == keep`` and OM-Net (plain, SE, CGA heads) or MC
models; the default, ``inference="auto"``, runs it where those hold and tiles
elsewhere.

``precision`` (``fp32``, ``bf16``, ``fp16``) runs the networks under
``torch.autocast`` of that dtype (softmax and everything after it in float32);
:class:`SpeedSettings` holds the GPU speed settings (cuDNN autotuning for the
fixed tile shape, channels-last-3d, ``torch.compile`` / CUDA-graph capture of the
network call), all off by default until a GPU benchmark shows their gain
(``benchmarks/test_bench_case.py`` measures each; ``make gpu-check`` reports).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from omkit.data.brats import MODALITIES
from omkit.data.features import DEFAULT_LEFT_RIGHT_AXIS, MRI, network_input
from omkit.deprecation import renamed_keywords
from omkit.devices import check_precision, resolve_device
from omkit.labels import BACKGROUND, NUM_CLASSES_TASK
from omkit.model_card import ModelCard
from omkit.models.omnet import MCNet

from omkit.protocol import ROI_DILATION

from .dense import DenseFallbackWarning, DenseSettings, check_dense, dense_model_problem
from .runners import DenseRunner, Ensemble, Runner, TileRunner
from .fusion import argmax_labels, core_mask, dilate, fuse, task1_labels
from .settings import (DEFAULT_INFERENCE, INFERENCE_MODES, SpeedSettings, TileSettings,  # noqa: F401
                       default_tiles, describe_box, input_features_of,
                       trained_windows)
from .tta import mirror_flips


class Prediction(NamedTuple):
    """``labels``: internal classes uint8 ``(D, H, W)`` on the CPU; ``roi``: the
    dilated coarse tumor mask (task 2's ROI); ``probabilities``: per task
    (``"task1"``, ...) ``(K, D, H, W)`` float32 when asked for, else None (for
    a cascade, zero where that task's network did not run); ``tile_counts``: tiles
    computed per task (dense inference: the blocks computed, one per tile the
    tile path would compute)."""

    labels: Tensor
    roi: Tensor
    probabilities: dict[str, Tensor] | None
    tile_counts: dict[str, int]

    @property
    def tiles(self) -> dict[str, int]:
        """The name of ``tile_counts`` before one vocabulary ("tiles" is a ``TileSettings``)."""
        warnings.warn("Prediction.tiles is deprecated: use Prediction.tile_counts", DeprecationWarning, stacklevel=2)
        return self.tile_counts


def _model_kind(model: nn.Module) -> tuple[str, int]:
    if isinstance(model, MCNet):
        return "cascade", model.num_tasks
    return "onepass", int(getattr(model, "num_tasks", 3))


@dataclass
class SegmentationPredictor:
    """Predict internal class maps of preprocessed (z-scored) images.

    ``models``: one model or an ensemble of the same architecture (all OM-Net
    like, or all MC with the same number of tasks). ``device``: where the
    networks run (default: where the first model's parameters are), as in
    :meth:`from_files` and ``omkit.Segmenter``; ``output_device``: where the
    stitched maps live (default: ``device``). ``sw_device`` (deprecated, MONAI's
    pair): where the networks run, ``device`` then meaning the output's device; ``tta``:
    test-time mirroring (:func:`omkit.inference.tta.mirror_flips`: ``True`` for
    the 8 flips of D, H, W, ``"H,W"`` for a subset of axes, None for none);
    ``flips`` is the resolved list; ``precision``: ``fp32``, or autocast to
    ``bf16`` / ``fp16`` (CUDA) for the network calls; ``speed``:
    :class:`SpeedSettings`; ``inference``: ``"dense"`` (window-consistent dense
    inference, :mod:`.dense`: the backbone once per voxel; needs ``tiles.stride ==
    tiles.keep`` and OM-Net or MC models with plain, SE or CGA heads; ``speed.compile``
    does not apply), ``"tiles"`` (overlap tiles) or ``"auto"`` (the default: dense for
    models trained window-consistently, ``--train-mode windows``, when those hold; else
    tiles, keeping ``FAST_TILE_KEEP`` unless ``tiles`` says otherwise). ``inference`` then
    holds the mode chosen, ``tiles`` the geometry, and ``inference_note`` why. ``tiles``
    None (or with ``size`` / ``keep`` None): the mode's default (:func:`default_tiles`).
    ``dense``: :class:`~omkit.inference.dense.DenseSettings` (or its fields as a dict).
    """

    models: Sequence[nn.Module]
    tiles: TileSettings | None = None
    roi_dilation: float = ROI_DILATION
    sw_device: torch.device | str | None = None  # deprecated: see the docstring
    device: torch.device | str | None = None
    progress: bool = False
    tta: bool | str | Sequence | None = None
    precision: str = "fp32"
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    inference: str = DEFAULT_INFERENCE
    dense: DenseSettings = field(default_factory=DenseSettings)
    # what the networks read (omkit.data.features); None: what their input channels say
    input_features: str | None = None
    output_device: torch.device | str | None = None

    INFERENCE_MODES = INFERENCE_MODES

    def __post_init__(self):
        if self.inference not in self.INFERENCE_MODES:
            raise ValueError(f"inference must be one of {', '.join(self.INFERENCE_MODES)}, got {self.inference!r}")
        if isinstance(self.dense, Mapping):
            self.dense = DenseSettings(**self.dense)
        self.flips = mirror_flips(self.tta)
        if isinstance(self.models, nn.Module):
            self.models = [self.models]
        self.models = list(self.models)
        if not self.models:
            raise ValueError("an ensemble needs at least one model")
        kinds = {_model_kind(m) for m in self.models}
        if len(kinds) != 1:
            raise ValueError(f"ensemble members must share an architecture, got {sorted(kinds)}")
        self.kind, self.num_tasks = kinds.pop()
        self.input_features = input_features_of(self.models, self.input_features)
        if self.sw_device is not None:  # the deprecated MONAI-style pair: sw_device computes, device holds
            warnings.warn("SegmentationPredictor(sw_device=...) is deprecated: device= is where the networks run "
                          "(as in from_files and omkit.Segmenter), output_device= where the maps go",
                          DeprecationWarning, stacklevel=3)
            if self.output_device is None:
                self.output_device = self.device
            self.device = self.sw_device
        # the one place a predict path resolves its --device (from_files resolves it here first, to load onto it)
        self.device = (resolve_device(self.device) if self.device is not None
                       else next(self.models[0].parameters()).device)
        self.output_device = torch.device(self.output_device) if self.output_device is not None else self.device
        self.sw_device = self.device  # read by code written for the old pair
        check_precision(self.precision, self.device)
        self._choose_inference(self.tiles if self.tiles is not None else TileSettings())
        for model in self.models:
            model.eval()
            if self.speed.channels_last:
                model.to(memory_format=torch.channels_last_3d)
        # the network calls: per member, the whole model (one pass) or task -> its network (cascade)
        self._calls = [model if self.kind == "onepass" else dict(enumerate(model.networks)) for model in self.models]
        if self.speed.compile is not None:
            compile_ = lambda m: torch.compile(m, mode=self.speed.compile, dynamic=False)  # noqa: E731
            self._calls = [compile_(c) if self.kind == "onepass" else {t: compile_(n) for t, n in c.items()}
                           for c in self._calls]

    def _choose_inference(self, tiles: TileSettings) -> None:
        """Resolve ``inference`` and ``tiles``, with ``inference_note`` saying which and why:
        ``auto`` runs dense only where every model was trained window-consistently (and dense
        can run it), else tiles (see :data:`DEFAULT_INFERENCE`)."""
        if self.inference != "auto":
            self.tiles = default_tiles(tiles, self.inference, self.models)
            self.inference_note = f"{self.inference} inference, as asked"
            if self.inference == "dense":
                check_dense(self.tiles, self.speed, self.models)
            return
        patch_trained = [m for m in self.models if trained_windows(m) is None]
        problem = dense_model_problem(self.models)
        if not patch_trained and problem is None:
            self.inference, self.tiles = "dense", default_tiles(tiles, "dense", self.models)
            try:
                check_dense(self.tiles, self.speed, self.models)
                self.inference_note = ("dense inference (auto): the model was trained window-consistently "
                                       "(--train-mode windows)")
                return
            except ValueError as exc:
                why = str(exc)
        elif patch_trained and problem is None:
            why = (f"{'the model was' if len(self.models) == 1 else 'ensemble members were'} trained on patches, "
                   "whose features dense inference does not reproduce (train with --train-mode windows for dense)")
        else:
            why = problem
        self.inference, self.tiles = "tiles", default_tiles(tiles, "auto", self.models)
        self.inference_note = (f"tile inference (auto), tiles {describe_box(self.tiles.size)} keeping "
                               f"{describe_box(self.tiles.keep)}: {why}")
        if problem is not None:  # a module off the fast path is said, not only recorded
            # stacklevel: the caller of SegmentationPredictor(...), past __init__ and __post_init__
            warnings.warn(self.inference_note, DenseFallbackWarning, stacklevel=4)

    @classmethod
    @renamed_keywords(paths="models")
    def from_files(cls, models: Sequence[str | os.PathLike], device: str | torch.device = "auto",
                   expect_preset: str | None = None, **kw) -> "SegmentationPredictor":
        """Load the model files (``omkit.checkpoint``) of one model or an ensemble onto
        ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``); each
        model carries its card (``model.card``, ``omkit.model_card``), whose recommended
        settings fill in what the keywords leave open (:attr:`cards`)."""
        from omkit.checkpoint import load_model, model_files

        device = resolve_device(device)
        paths = model_files(models)  # run folders and --fold all folders too
        models = []
        for path in paths:
            model, card = load_model(path, map_location=device, expect_preset=expect_preset)
            if models and _model_kind(model) != _model_kind(models[0]):
                raise ValueError(
                    f"{path}: preset {card.preset!r} cannot join an ensemble with {paths[0]} "
                    f"(members must share an architecture: {_model_kind(models[0])} vs {_model_kind(model)})"
                )
            models.append(model)
        return cls(models, device=device, **kw)

    @property
    def cards(self) -> list:
        """The members' model cards (``omkit.model_card``), read from the models."""
        return [ModelCard.of_model(m) for m in self.models]

    @property
    def metadata(self) -> list:
        """The members' cards (the name before model cards)."""
        return self.cards

    # -- the runners (tiles, dense) ----------------------------------------------
    def ensemble(self) -> Ensemble:
        """The ensemble core the runners compute with (:mod:`.runners`)."""
        return Ensemble(self.models, self._calls, self.kind, self.flips, self.precision, self.speed,
                        self.device, self.output_device, self.progress)

    def runner(self) -> Runner:
        """The runner of the resolved inference mode."""
        return DenseRunner(self.tiles, self.dense) if self.inference == "dense" else TileRunner(self.tiles)

    def _run(self, image: Tensor, tasks: Sequence[int], reduce, out_channels: int, out_dtype,
             mask: Tensor, tile_counts: dict[str, int]) -> Tensor:
        """Tasks ``tasks`` where ``mask`` is, reduced by ``reduce`` to ``out_channels`` maps; the
        tiles (or dense blocks) computed go to ``tile_counts``."""
        out, computed = self.runner().run(self.ensemble(), image, tasks, reduce, out_channels, out_dtype, mask)
        for task in tasks:
            tile_counts[f"task{task + 1}"] = computed
        return out

    # -- whole volume ------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: Tensor | np.ndarray, brain_mask: Tensor | np.ndarray | None = None,
                return_probabilities: bool = False, left_right_axis: int = DEFAULT_LEFT_RIGHT_AXIS) -> Prediction:
        """``image (4, D, H, W)`` z-scored; ``brain_mask (D, H, W)``: only tiles
        touching it are computed and voxels outside it are background (default:
        the whole volume). ``left_right_axis``: the spatial axis that runs
        left-right (:func:`omkit.data.features.left_right_axis` of the case's
        affine), for networks that read the image's asymmetry."""
        image = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image, dtype=torch.float32)
        if image.dim() != 4:
            raise ValueError(f"image must be (C, D, H, W), got shape {tuple(image.shape)}")
        if self.input_features != MRI:
            if image.shape[0] != len(MODALITIES):
                raise ValueError(f"image must hold the {len(MODALITIES)} modalities ({', '.join(MODALITIES)}), "
                                 f"got {image.shape[0]} channels")
            image = network_input(image, self.input_features, left_right_axis)
        if brain_mask is None:
            brain_mask = torch.ones(image.shape[1:], dtype=torch.bool)
        brain_mask = torch.as_tensor(np.asarray(brain_mask, dtype=bool) if not isinstance(brain_mask, Tensor) else brain_mask).bool()
        run = self._predict_onepass if self.kind == "onepass" else self._predict_cascade
        with self._cudnn_benchmark():
            result = run(image, brain_mask, return_probabilities)
        # the volumes are skull-stripped: outside the brain is background by definition
        result.labels[~brain_mask] = BACKGROUND
        return result

    @contextlib.contextmanager
    def _cudnn_benchmark(self):
        """``torch.backends.cudnn.benchmark`` as ``speed`` says, for the duration of a prediction."""
        if not self.speed.cudnn_benchmark:
            yield
            return
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = previous

    def _predict_onepass(self, image: Tensor, brain_mask: Tensor, with_probs: bool) -> Prediction:
        tasks = list(range(self.num_tasks))
        tiles: dict[str, int] = {}
        if with_probs:
            channels = [NUM_CLASSES_TASK[t] for t in tasks]
            stacked = self._run(image, tasks, lambda probs: torch.cat(probs, 1), sum(channels), torch.float32,
                                brain_mask, tiles)
            probs = list(stacked.split(channels))
            task_labels = self._reduce_volume(probs)
            probabilities = {f"task{t + 1}": p for t, p in zip(tasks, probs)}
        else:
            def reduce(probs):
                coarse, label1 = task1_labels(probs[0])
                return torch.stack([coarse, label1] + [argmax_labels(p) for p in probs[1:]], 1)

            compact = self._run(image, tasks, reduce, len(tasks) + 1, torch.uint8, brain_mask, tiles)
            task_labels = list(compact)  # coarse, task-1 label, task-2 label, task-3 label
            probabilities = None
        coarse, label1, *rest = task_labels
        roi = self._task2_roi(coarse, brain_mask)
        labels, _ = fuse(label1, coarse, *rest, roi=roi)
        return Prediction(labels.cpu(), roi.cpu(), _cpu(probabilities), tiles)

    def _task2_roi(self, coarse: Tensor, brain_mask: Tensor) -> Tensor:
        """Task 2's ROI: the coarse mask dilated, within the brain (what lies
        outside it is background whatever task 2 would say)."""
        return dilate(coarse.bool(), self.roi_dilation) & brain_mask.to(coarse.device)

    @staticmethod
    def _reduce_volume(probs: list[Tensor]) -> list[Tensor]:
        """Per-task uint8 maps of whole-volume probabilities (K, D, H, W)."""
        coarse, label1 = task1_labels(probs[0][None])
        return [coarse[0], label1[0]] + [argmax_labels(p[None])[0] for p in probs[1:]]

    def _predict_cascade(self, image: Tensor, brain_mask: Tensor, with_probs: bool) -> Prediction:
        probabilities: dict[str, Tensor] | None = {} if with_probs else None
        tiles: dict[str, int] = {}

        def stage(task: int, mask: Tensor) -> list[Tensor]:
            k = NUM_CLASSES_TASK[task]
            if with_probs:
                prob = self._run(image, [task], lambda p: p[0], k, torch.float32, mask, tiles)
                probabilities[f"task{task + 1}"] = prob
                return self._reduce_volume([prob]) if task == 0 else [argmax_labels(prob[None])[0]]
            if task == 0:
                out = self._run(image, [0], lambda p: torch.stack(task1_labels(p[0]), 1), 2, torch.uint8, mask, tiles)
                return [out[0], out[1]]
            return [self._run(image, [task], lambda p: argmax_labels(p[0])[:, None], 1, torch.uint8, mask, tiles)[0]]

        coarse, label1 = stage(0, brain_mask)
        roi = self._task2_roi(coarse, brain_mask)
        labels, _ = fuse(label1, coarse, roi=roi)
        if self.num_tasks >= 2 and bool(roi.any()):
            (label2,) = stage(1, roi)
            labels, _ = fuse(label1, coarse, label2, roi=roi)
            core = roi & core_mask(labels)
            if self.num_tasks >= 3 and bool(core.any()):
                (label3,) = stage(2, core)
                labels, _ = fuse(label1, coarse, label2, label3, roi=roi)
        return Prediction(labels.cpu(), roi.cpu(), _cpu(probabilities), tiles)


def _cpu(probabilities: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
    return None if probabilities is None else {k: v.cpu() for k, v in probabilities.items()}

