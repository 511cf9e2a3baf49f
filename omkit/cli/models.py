"""List the model presets (the rows of the paper's Table I), with parameter counts; or
print the model card of a trained model (``--card RUN/model.pt``)."""
from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("pattern", nargs="?", default=None, help="glob over preset names, e.g. 'omnet_cga*'")
    parser.add_argument("--params", action="store_true", help="build each model and count its parameters")
    from omkit.cli.options import finite_float
    from omkit.training.config import MAX_WIDTH

    parser.add_argument("--width", type=finite_float("--width", maximum=MAX_WIDTH), default=1.0,
                        help=f"width multiplier for --params, at most {MAX_WIDTH:g} (default 1.0)")
    parser.add_argument("--card", metavar="MODEL",
                        help="print the model card of this model file or run folder (omkit.model_card) instead")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def print_card(path, as_json: bool) -> int:
    """The card of a model file, read without building the model (the weights stay on disk)."""
    from omkit.checkpoint import ModelFileError, model_files, read_card_of
    from omkit.cli import CLIError

    try:
        files = model_files(path)
        cards = [(f, read_card_of(f)) for f in files]
    except ModelFileError as exc:
        raise CLIError(str(exc)) from None
    if as_json:
        print(json.dumps({str(f): card.to_dict() for f, card in cards}, indent=2))
        return 0
    for i, (f, card) in enumerate(cards):
        print(("\n" if i else "") + f"{f}\n{card.text()}")
    return 0


def run(args) -> int:
    import omkit

    if args.card is not None:
        return print_card(args.card, args.json)

    if args.width <= 0:
        raise ValueError(f"--width must be > 0, got {args.width:g}")
    rows = []
    for name in omkit.list_presets(args.pattern):
        preset = omkit.get_preset(name)
        row = {"preset": name, "title": preset.title, "description": preset.description}
        if args.params:
            row["parameters"] = omkit.count_parameters(omkit.create_model(name, width=args.width))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        params = f"{row['parameters'] / 1e6:9.3f} M" if "parameters" in row else ""
        print(f"{row['preset']:<16} {row['title']:<16} {params}  {row['description']}")
    return 0
