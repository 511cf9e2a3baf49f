"""List the model presets (the rows of the paper's Table I), with parameter counts."""
from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("pattern", nargs="?", default=None, help="glob over preset names, e.g. 'omnet_cga*'")
    parser.add_argument("--params", action="store_true", help="build each model and count its parameters")
    from omkit.cli.options import finite_float
    from omkit.training.config import MAX_WIDTH

    parser.add_argument("--width", type=finite_float("--width", maximum=MAX_WIDTH), default=1.0,
                        help=f"width multiplier for --params, at most {MAX_WIDTH:g} (default 1.0)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    import omkit

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
