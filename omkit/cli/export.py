"""Export a trained model to ONNX or torch.export, to run without omkit.

Examples::

    omkit export -m runs/cga/model.pt -o cga.onnx                  # format from the suffix
    omkit export -m runs/cga/model.pt -o cga.pt2 --format torch-export
    omkit-runner -m cga.onnx -i BraTS2018/Brats18_CBICA_ABM_1 -o seg.nii.gz   # pip install ./runner

Writes the graph that gives ``omkit predict``'s default labels, with omkit's fused ops
lowered to standard operators: for a model trained window-consistently (which predict runs
dense), the dense graph, ``(region (1, C, D, H, W), flip (3,))`` (dynamic sides) to the
tasks' logits over the region; for the others (and with ``--inference tiles``), the network
that maps one batch of tiles ``(batch, C, D, H, W)`` (dynamic batch, the tile size fixed:
``--tile-size``, default the tiles ``omkit predict`` runs for the model) to the tasks'
logits. The metadata the runner needs (preset, input features, tile geometry,
preprocessing, fusion, post-processing steps, mirroring, label conventions;
``--tile-keep``, ``--tile-stride``, ``--tile-batch`` and ``--roi-dilation`` are
recorded as its defaults) are ONNX metadata props, or ``FILE.json`` beside a ``.pt2``.
ONNX needs ``pip install 'omkit[export]'`` (onnx, onnxscript; onnxruntime to run it).
"""
from __future__ import annotations

from omkit.cli import CLIError
from omkit.cli.options import add_tile_arguments, tile_settings


def add_arguments(parser):
    from omkit.export import FORMATS, INFERENCE_CHOICES

    parser.add_argument("-m", "--model", required=True, metavar="MODEL", help="model file (RUN/model.pt)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="file to write (.onnx or .pt2; the suffix gives the format unless --format does)")
    parser.add_argument("--format", choices=FORMATS, help="onnx or torch-export (default: from the suffix of -o)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.add_argument("--inference", choices=INFERENCE_CHOICES, default="auto",
                        help="the graph: dense (the region, as omkit predict --inference dense runs it; OM-Net with "
                             "plain, SE or CGA heads), tiles (a batch of tiles), auto: what omkit predict runs by "
                             "default: dense for models trained with --train-mode windows (default auto)")
    add_tile_arguments(parser, mode_defaults=True)  # predict's defaults: the file gives its default labels


def run(args) -> int:
    from omkit.export import ExportDependencyError, export_model, format_of

    tiles = tile_settings(args)  # size and keep left open: the card's paper tiles
    try:
        export_format = format_of(args.output, args.format)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    try:
        metadata = export_model(args.model, args.output, export_format, tile_size=tiles.size, tile_keep=tiles.keep,
                                tile_stride=tiles.stride, tile_batch=tiles.batch, roi_dilation=args.roi_dilation,
                                force=args.force, inference=args.inference)
    except ExportDependencyError as exc:
        raise CLIError(str(exc)) from None
    shapes = ", ".join(f"{name} {tuple(shape)}" for name, shape in metadata["outputs"].items())
    graph = "dense region" if metadata["inference"]["runner"] == "dense" else "tiles"
    print(f"wrote {args.output} ({export_format}): {metadata['preset']}, {graph} {tuple(metadata['input']['shape'])} "
          f"-> {shapes}")
    if export_format == "torch-export":
        from omkit.export import sidecar_path

        print(f"wrote {sidecar_path(args.output)} (metadata)")
    return 0
