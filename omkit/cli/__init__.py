"""The ``omkit`` command line. Set OMKIT_DEBUG=1 for tracebacks. Each subcommand lives in its own module
``omkit.cli.<name>`` with ``add_arguments(parser)`` and ``run(args) -> int``
(and a module docstring whose first line is the command's help)."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
import warnings

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
    "export": "export",
    "demo": "demo",
    "ablation": "ablation",
    "bench": "bench",
}


# an error line quotes what it is about; a value of megabytes (a pasted array, a crafted file's
# field) is cut in its middle so that the line stays readable and names the file at its start
MAX_MESSAGE_CHARS = 1000


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if len(text) <= limit:
        return text
    tail = limit // 5
    return f"{text[: limit - tail - 40]} ... [{len(text) - limit + 40} characters left out] ... {text[-tail:]}"


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


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage text) pointing at ``--help``."""

    def error(self, message: str):
        # "argument --x: --x expects ..." says the flag twice
        message = re.sub(r"^argument (\S+): (?:\S+/)?\1\b ?", r"\1 ", message)
        self.exit(2, f"{self.prog}: error: {shorten(message)} (see {self.prog} --help)\n")


# a value that starts with "-" but is a number or a list of them ("-1", "-1,1,1", "-1e3", "-inf", "-nan"):
# argparse would take it for an option
_NEGATIVE_VALUE = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)


def _join_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--flag -1,1,1`` as ``--flag=-1,1,1`` for the options that take one value."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    command = sub.choices.get(argv[0]) if sub is not None and argv else None
    if command is None:
        return argv
    out, i = [argv[0]], 1
    while i < len(argv):
        action = command._option_string_actions.get(argv[i])
        if action is not None and action.nargs is None and i + 1 < len(argv) and _NEGATIVE_VALUE.match(argv[i + 1]) \
                and argv[i].startswith("--"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Warnings printed as ``omkit COMMAND: warning: ...`` (one line, no source line)."""
    original = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *a, **k: \
        f"omkit {command}: warning: {shorten(' '.join(str(message).split()))}\n"
    try:
        yield
    finally:
        warnings.formatwarning = original


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="omkit",
        description="One-pass multi-task brain tumor segmentation (OM-Net + CGA). "
        "Set OMKIT_DEBUG=1 for full tracebacks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, module in _available_commands():
        doc = (module.__doc__ or name).strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=doc)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from omkit.registry import PluginError, UnknownNameError

    parser = build_parser()
    args = parser.parse_args(_join_negative_values(parser, list(sys.argv[1:] if argv is None else argv)))
    try:
        with _one_line_warnings(args.command):
            return int(args._run(args) or 0)
    except (CLIError, PluginError, UnknownNameError, OSError, ValueError, MemoryError) as exc:
        if os.environ.get("OMKIT_DEBUG"):
            raise  # full traceback for developers
        text = shorten(" ".join(str(exc).split()) or type(exc).__name__)
        if isinstance(exc, MemoryError):
            text = f"out of memory ({text})"
        print(f"omkit {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"omkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
