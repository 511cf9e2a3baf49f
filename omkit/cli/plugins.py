"""List every plug-in, where it came from, and what it registered."""
from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("--block", action="append", default=[], metavar="NAME",
                        help="load without this plug-in (repeatable; also OMKIT_BLOCK_PLUGINS=a,b)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    from omkit.plugin_manager import get_plugins, setup_plugins

    plugins = setup_plugins(block=args.block) if args.block else get_plugins()
    rows = [
        {"name": info.name, "source": info.source, "registered": info.registered}
        for info in plugins.plugins.values()
    ]
    if args.json:
        print(json.dumps({"plugins": rows, "blocked": sorted(plugins.blocked)}, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']}  [{row['source']}]")
        for kind, names in sorted(row["registered"].items()):
            print(f"    {kind}: {', '.join(names)}")
        if not row["registered"]:
            print("    (registered nothing)")
    if plugins.blocked:
        print(f"blocked: {', '.join(sorted(plugins.blocked))}")
    return 0
