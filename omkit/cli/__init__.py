"""The ``omkit`` command line. Set OMKIT_DEBUG=1 for tracebacks. Each subcommand lives in its own module
``omkit.cli.<name>`` with ``add_arguments(parser)`` and ``run(args) -> int``
(and a module docstring whose first line is the command's help)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand name -> module under omkit.cli
COMMANDS = {
    "plugins": "plugins",
    "models": "models",
    "info": "info",
    "selftest": "selftest",
    "train": "train",
    "predict": "predict",
    "evaluate": "evaluate",
    "explain": "explain",
    "demo": "demo",
    "ablation": "ablation",
}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _available_commands():
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"omkit.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"omkit.cli.{module_name}":
                continue  # not part of this build
            raise
        yield name, module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omkit",
        description="One-pass multi-task brain tumor segmentation (OM-Net + CGA). "
        "Set OMKIT_DEBUG=1 for full tracebacks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in _available_commands():
        doc = (module.__doc__ or name).strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=doc)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from omkit.registry import PluginError, UnknownNameError

    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (CLIError, PluginError, UnknownNameError, OSError, ValueError) as exc:
        if os.environ.get("OMKIT_DEBUG"):
            raise  # full traceback for developers
        print(f"omkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"omkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
