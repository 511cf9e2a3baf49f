"""Export a trained model for deployment without omkit, as ONNX or as a ``torch.export``
program (``.pt2``): the graph that gives ``omkit predict``'s default labels.

* A model trained window-consistently (``--train-mode windows``; predict runs it dense):
  the dense graph (:mod:`.dense`), ``region`` float32 ``(1, C, D, H, W)`` (the sides
  dynamic, multiples of the backbone's divisor) and ``flip`` int64 ``(3,)`` -> each
  task's logits ``(1, K, D, H, W)`` over the region, in its frame. ``--inference
  tiles`` writes such a model's tiles instead.
* The others: the network that maps one batch of tiles ``tiles`` float32 ``(batch, C, D,
  H, W)`` (FLAIR, T1, T1c, T2, then any further input features; z-scored inside the
  brain; D the axial axis = NIfTI Z, H = X, W = Y) -> ``task1`` ``(batch, 5, D, H, W)``,
  ``task2`` ``(batch, 5, D, H, W)``, ``task3`` ``(batch, 2, D, H, W)`` logits (MC1 / MC2
  models: their tasks only). The batch axis is dynamic, the tile size fixed
  (``tile_size``; CGA and SE heads pool over the whole tile, so keep the training patch
  size). An MC model's graph runs its networks side by side on every tile; the runner's
  fusion then gives what the cascade gives (each voxel's labels come from the same tile
  either way).
* omkit's ops are lowered to standard operators: the model is traced under
  ``omkit.ops.use_backend("reference")`` (the pure-PyTorch formulas), and the
  result is checked to hold no ``omkit`` op, so the file runs with onnxruntime or
  plain PyTorch alone.
* Metadata (:func:`export_metadata`, :mod:`.metadata`: preset, input features, tile or
  dense geometry, label conventions, preprocessing, fusion constants, post-processing,
  mirroring) travel with the file: ONNX metadata props
  (key ``omkit``, a JSON document), and for a ``.pt2`` a JSON file beside it
  (``FILE.json``) and the same document inside it (``extra_files["omkit.json"]``).

``runner/omkit_runner.py`` (``pip install ./runner``: ``omkit-runner``) segments a case
folder with an exported ONNX file as ``omkit predict`` does by default, with numpy, scipy,
scikit-learn, nibabel and onnxruntime.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from omkit.data.features import input_channels
from omkit.deprecation import renamed_keywords
from omkit.fileio import atomic_path, atomic_write_text
from omkit.protocol import PATCH_DIVISOR, ROI_DILATION

from .metadata import (EXPORT_FORMAT, EXPORT_FORMAT_VERSION, FLIP_NAME, INPUT_NAME, REGION_NAME, export_metadata,
                       inference_record)
from .metadata import postprocessing_steps

FORMATS = ("onnx", "torch-export")
SUFFIXES = {"onnx": ".onnx", "torch-export": ".pt2"}
METADATA_KEY = "omkit"  # ONNX metadata prop / the .pt2's extra file omkit.json
# the largest batch and region side the exported programs are specialised for (torch.export needs bounds)
MAX_BATCH = 65536
MAX_REGION = 4096
DENSE_AXES = ("D", "H", "W")  # the names of a dense graph's dynamic axes


@contextlib.contextmanager
def _quiet_exporter():
    """torch's exporters report their progress and their own deprecations (torchvision not
    installed, pytree renames): nothing a user of omkit export can act on."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", module=r"torch\.onnx.*")
            yield
    finally:
        logger.setLevel(level)


class ExportDependencyError(ImportError):
    """A package the chosen format needs is missing; the message says how to install it."""


class TileNetwork(nn.Module):
    """The exported graph: one batch of tiles ``(B, 4, D, H, W)`` -> the model's tasks'
    logits as a tuple (``task1``, ``task2``, ``task3``; an MC1/MC2 model has fewer)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_tasks = int(getattr(model, "num_tasks", 3))

    @property
    def output_names(self) -> list[str]:
        return [f"task{t + 1}" for t in range(self.num_tasks)]

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(tiles)
        return tuple(outputs[t] for t in range(self.num_tasks))


def _check_tiles(tile_size, keep, stride):
    from omkit.inference.tiling import check_geometry

    tile_size, stride, keep = check_geometry(tile_size, stride, keep)
    if any(s % PATCH_DIVISOR for s in tile_size):
        raise ValueError(f"tile size {list(tile_size)}: each side must be divisible by {PATCH_DIVISOR}")
    return tile_size, keep, stride


def _check_lowered(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    foreign = sorted({str(node.target) for node in program.graph.nodes
                      if node.op == "call_function" and "omkit" in str(node.target)})
    if foreign:
        raise RuntimeError(f"the exported program still calls omkit ops: {', '.join(foreign)}")
    return program


def export_program(model: nn.Module, tile_size: Sequence[int], in_channels: int = 4) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`TileNetwork` (``model`` on the CPU, eval mode) with the
    batch axis dynamic and omkit's ops lowered to their PyTorch references."""
    from omkit import ops

    network = TileNetwork(model).eval()
    example = torch.zeros(2, in_channels, *tile_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with ops.use_backend("reference"), torch.no_grad(), _quiet_exporter():
        program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},), strict=False)
    return _check_lowered(program)


def export_dense_program(model: nn.Module, tile_size: Sequence[int], tile_keep: Sequence[int], in_channels: int = 4,
                         divisor: int = 1) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`~omkit.export.dense.DenseNetwork` (OM-Net ``model`` on the
    CPU, eval mode): the region's sides dynamic (multiples of ``divisor``, at least a window,
    at most :data:`MAX_REGION`), the flip an input, omkit's ops lowered to their references."""
    from omkit import ops

    from .dense import DenseNetwork

    network = DenseNetwork(model, tile_size, tile_keep).eval()
    # distinct sides a few blocks long: the trace must not take two sides or a side and a window for equal
    sides = [-(-(w + (3 + a) * k + a) // divisor) * divisor for a, (w, k) in enumerate(zip(tile_size, tile_keep))]
    example = (torch.zeros(1, in_channels, *sides), torch.zeros(3, dtype=torch.long))
    dims = [torch.export.Dim(name, min=-(-w // divisor), max=MAX_REGION // divisor)
            for name, w in zip(DENSE_AXES, tile_size)]
    spatial = {2 + a: dim if divisor == 1 else divisor * dim for a, dim in enumerate(dims)}
    with ops.use_backend("reference"), torch.no_grad(), _quiet_exporter():
        program = torch.export.export(network, example, dynamic_shapes=(spatial, None), strict=False)
    return _check_lowered(program)


def _onnx_modules():
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportDependencyError(
            f"--format onnx needs the packages onnx and onnxscript ({exc.name} is missing): "
            "pip install 'omkit[export]'") from None
    import onnx

    return onnx


def save_onnx(program: torch.export.ExportedProgram, input_names: Sequence[str], output_names: Sequence[str],
              target: str | os.PathLike, metadata: dict, axis_names: dict[int, str], force: bool = False) -> Path:
    """Translate ``program`` to ONNX (torch's exporter, optimised graph), name the dynamic
    axes of its first input (``axis_names``: axis -> name, wherever that size appears),
    attach ``metadata`` and write ``target`` atomically."""
    onnx = _onnx_modules()
    with _quiet_exporter():
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=list(input_names),
                                         output_names=list(output_names), optimize=True, verbose=False)
    proto = onnx_program.model_proto
    first = next(n for n in program.graph.nodes if n.op == "placeholder"
                 and n.name == program.graph_signature.user_inputs[0]).meta["val"]
    renamed = {str(first.shape[axis]): name for axis, name in axis_names.items()}
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renamed:
                dim.dim_param = renamed[dim.dim_param]
    foreign = sorted({node.domain for node in proto.graph.node if node.domain not in ("", "ai.onnx")})
    if foreign:
        raise RuntimeError(f"the ONNX graph uses operators outside the standard domain: {', '.join(foreign)}")
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    onnx.checker.check_model(proto)
    with atomic_path(target, force=force) as tmp:
        onnx.save_model(proto, str(tmp))
    return Path(target)


def sidecar_path(target: str | os.PathLike) -> Path:
    """The metadata JSON beside a ``.pt2``: ``FILE.json``."""
    return Path(target).with_suffix(".json")


def save_torch_export(program: torch.export.ExportedProgram, target: str | os.PathLike, metadata: dict,
                      force: bool = False) -> Path:
    """Write ``program`` (``torch.export.save``, metadata inside as ``omkit.json``) and the
    metadata beside it as ``FILE.json``, both atomically."""
    text = json.dumps(metadata, indent=2, sort_keys=True) + "\n"
    sidecar = sidecar_path(target)
    if not force and sidecar.exists():
        from omkit.fileio import OutputExistsError

        raise OutputExistsError(None, None, str(sidecar))
    with atomic_path(target, force=force) as tmp:
        torch.export.save(program, str(tmp), extra_files={f"{METADATA_KEY}.json": text})
    atomic_write_text(sidecar, text, force=True)
    return Path(target)


def format_of(target: str | os.PathLike, export_format: str | None = None) -> str:
    """``export_format``, else the one the file name's suffix says (``.onnx``, ``.pt2``)."""
    if export_format is not None:
        if export_format not in FORMATS:
            raise ValueError(f"unknown export format {export_format!r}; choose one of {', '.join(FORMATS)}")
        return export_format
    suffix = Path(target).suffix.lower()
    for name, known in SUFFIXES.items():
        if suffix == known:
            return name
    raise ValueError(f"{target}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
                     f"give --format {' or '.join(FORMATS)}")


@dataclass
class PreparedExport:
    """A traced model ready to be written in either format: the ``program``
    (:func:`export_program` or :func:`export_dense_program`), its ``metadata``
    (:func:`export_metadata`) and the names of its inputs and outputs. :meth:`save` writes
    it; tracing once serves both formats."""

    program: torch.export.ExportedProgram
    metadata: dict
    output_names: list[str]
    input_names: tuple[str, ...] = (INPUT_NAME,)

    @property
    def dense(self) -> bool:
        return self.metadata["inference"]["runner"] == "dense"

    def save(self, target: str | os.PathLike, export_format: str | None = None, force: bool = False) -> dict:
        """Write ``target`` as ``export_format`` (default: from the suffix); returns its metadata."""
        export_format = format_of(target, export_format)
        metadata = {**self.metadata, "export_format": export_format}
        if export_format == "onnx":
            axis_names = {2 + a: name for a, name in enumerate(DENSE_AXES)} if self.dense else {0: "batch"}
            save_onnx(self.program, self.input_names, self.output_names, target, metadata, axis_names, force=force)
        else:
            save_torch_export(self.program, target, metadata, force=force)
        return metadata


INFERENCE_CHOICES = ("auto", "tiles", "dense")


@renamed_keywords(model_path="model", keep="tile_keep", stride="tile_stride", batch="tile_batch")
def prepare_export(model: str | os.PathLike, tile_size: Sequence[int] | None = None,
                   tile_keep: Sequence[int] | None = None, tile_stride: Sequence[int] | None = None,
                   tile_batch: int = 16, roi_dilation: float = ROI_DILATION, inference: str = "auto") -> PreparedExport:
    """Load the model file ``model`` (``omkit.checkpoint``) and trace the graph that gives
    ``omkit predict``'s default labels: for a model predict runs dense by default (trained
    window-consistently), the dense graph (:func:`export_dense_program`, the region and its
    flip in, the logits over the region out); for the others, and with ``inference="tiles"``,
    the tile network. The tile size and keep default to the tiles (or windows and blocks)
    ``omkit predict`` runs for the model by default (a given size alone keeps in
    proportion); ``tile_keep``, ``tile_stride``, ``tile_batch`` and ``roi_dilation`` are the
    runner's defaults, and the default post-processing steps with their options are recorded
    in the metadata. ``inference="dense"`` insists on the dense graph (a one-line error
    where the model cannot have one)."""
    from omkit.checkpoint import load_model
    from omkit.inference import SegmentationPredictor
    from omkit.inference.dense import min_divisor
    from omkit.inference.postprocess import build_postprocessors
    from omkit.inference.settings import TileSettings
    from omkit.models.omnet import MCNet

    from .dense import dense_export_problem

    if inference not in INFERENCE_CHOICES:
        raise ValueError(f"export inference must be one of {', '.join(INFERENCE_CHOICES)}, got {inference!r}")
    network_model, card = load_model(model, map_location="cpu")
    if int(getattr(network_model, "spatial_dims", 3)) != 3:
        raise ValueError(f"{model}: only 3-D models export to tiles (this one has spatial_dims=2)")
    # what `omkit predict` runs (by default, or with --inference as asked): the predictor's own choice
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the predictor says why it falls back to tiles; the metadata record it
        default = SegmentationPredictor([network_model], device="cpu")
        chosen = default if inference == "auto" else SegmentationPredictor([network_model], device="cpu",
                                                                           inference=inference)
    problem = dense_export_problem(network_model)
    dense, note = chosen.inference == "dense", chosen.inference_note
    if dense and problem is not None:
        if inference == "dense":
            raise ValueError(f"{model}: dense export cannot express this model: {problem}")
        dense, note = False, f"{note}; the file holds tiles: dense export cannot express this model: {problem}"
    if tile_size is None or tile_keep is None:
        recommended = (chosen.tiles.size, chosen.tiles.keep) if dense or chosen.inference == "tiles" \
            else card.tiles_for("auto")
        tiles = TileSettings(size=tile_size, keep=tile_keep).with_defaults(*recommended)
        tile_size, tile_keep = tiles.size, tiles.keep
    tile_size, tile_keep, tile_stride = _check_tiles(tuple(tile_size), tile_keep, tile_stride)
    if dense and tuple(tile_stride) != tuple(tile_keep):
        raise ValueError(f"the dense graph needs the tile stride equal to the kept centre, got stride "
                         f"{list(tile_stride)} and keep {list(tile_keep)}")
    channels = input_channels(card.input_features)
    divisor = min_divisor(network_model)
    metadata = export_metadata(card, tile_size, tile_keep, tile_stride, tile_batch=tile_batch,
                               roi_dilation=roi_dilation, num_tasks=int(getattr(network_model, "num_tasks", 3)),
                               architecture="cascade" if isinstance(network_model, MCNet) else "onepass",
                               postprocessing=postprocessing_steps(build_postprocessors()),
                               inference=inference_record(default.inference, note, "dense" if dense else "tiles"),
                               divisor=divisor)
    if dense:
        program = export_dense_program(network_model, tile_size, tile_keep, channels, divisor)
        return PreparedExport(program, metadata, TileNetwork(network_model).output_names, (REGION_NAME, FLIP_NAME))
    program = export_program(network_model, tile_size, channels)
    return PreparedExport(program, metadata, TileNetwork(network_model).output_names)


@renamed_keywords(model_path="model", keep="tile_keep", stride="tile_stride", batch="tile_batch")
def export_model(model: str | os.PathLike, target: str | os.PathLike, export_format: str | None = None,
                 tile_size: Sequence[int] | None = None, tile_keep: Sequence[int] | None = None,
                 tile_stride: Sequence[int] | None = None, tile_batch: int = 16, roi_dilation: float = ROI_DILATION,
                 force: bool = False, inference: str = "auto") -> dict:
    """Export the model file ``model`` to ``target`` as ``export_format`` (``onnx`` or
    ``torch-export``; default from the suffix): :func:`prepare_export` (``inference``: the
    graph, as there), then
    :meth:`PreparedExport.save`. Returns the metadata."""
    export_format = format_of(target, export_format)
    if export_format == "onnx":
        _onnx_modules()  # before the tracing
    if not force and Path(target).exists():
        from omkit.fileio import OutputExistsError

        raise OutputExistsError(None, None, str(target))
    prepared = prepare_export(model, tile_size, tile_keep, tile_stride, tile_batch=tile_batch,
                              roi_dilation=roi_dilation, inference=inference)
    return prepared.save(target, export_format, force=force)


# a .pt2's own metadata is small; a bigger member is not one omkit wrote
MAX_METADATA_BYTES = 1 << 20


def _pt2_metadata(path: Path) -> str:
    """The ``extra/omkit.json`` member of the ``.pt2`` archive ``path``, read with
    ``zipfile``: ``torch.export.load`` would unpickle the archive's legacy weights
    member (``weights_only=False``), so a crafted file could run code."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist()
                       if m.filename.split("/", 1)[-1] == f"extra/{METADATA_KEY}.json"]
            if not members:
                raise ValueError(f"{path}: no omkit metadata (not exported by omkit export)")
            if members[0].file_size > MAX_METADATA_BYTES:
                raise ValueError(f"{path}: its omkit metadata is {members[0].file_size} bytes, "
                                 f"more than omkit writes ({MAX_METADATA_BYTES})")
            return archive.read(members[0]).decode("utf-8")
    except (zipfile.BadZipFile, UnicodeDecodeError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .pt2 archive ({type(exc).__name__}: {exc})") from None


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of an exported file: an ONNX file's ``omkit`` prop, a ``.pt2``'s
    JSON (the sidecar ``FILE.json``, else the archive's member). Nothing is unpickled;
    malformed metadata is one line naming the file."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        onnx = _onnx_modules()
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if METADATA_KEY not in props:
            raise ValueError(f"{path}: no omkit metadata (not exported by omkit export)")
        source, text = path, props[METADATA_KEY]
    else:
        sidecar = sidecar_path(path)
        if sidecar.is_file():
            source, text = sidecar, sidecar.read_text(encoding="utf-8", errors="replace")
        else:
            source, text = path, _pt2_metadata(path)
    try:
        metadata = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{source}: omkit metadata is not JSON ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{source}: not omkit export metadata (no 'format': {EXPORT_FORMAT!r})")
    version = metadata.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= EXPORT_FORMAT_VERSION:
        raise ValueError(f"{source}: omkit export format_version {version!r} is not one this omkit reads "
                         f"(1 to {EXPORT_FORMAT_VERSION}; a newer omkit wrote it?)")
    if version == 1 and "model_kw" in metadata:  # read as the current version names it
        metadata["model_options"] = metadata.pop("model_kw")
    return metadata
