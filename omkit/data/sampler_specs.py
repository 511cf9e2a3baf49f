"""The sampler spec grammar (``--samplers``, one spec per task) and building
samplers from specs::

    SPEC := PART ('+' PART)*
    PART := NAME [ '(' KEY=VALUE (',' KEY=VALUE)* ')' ] [ ':' WEIGHT ]

A VALUE is read as a Python literal (number, string, bool, tuple, ...) and
otherwise kept as a bare string (:func:`literal_value`, which ``--model-options``
uses too). One PART without a weight is that sampler; several parts (or a
weighted one) are a :class:`~omkit.data.sampling.MixtureSampler`. The three
per-task specs are written as one string split on top-level commas
(:func:`split_task_specs`): commas inside parentheses belong to options.
Names are looked up in a registry the caller passes in (the plug-ins'
``sampler`` registry), so this module needs nothing of the plug-in core.
"""
from __future__ import annotations

import ast
import inspect
import re
from typing import Any, NamedTuple

from .sampling import FLAG, MixtureSampler


# -- the spec grammar ----------------------------------------------------------------------

class SpecPart(NamedTuple):
    name: str
    options: dict
    weight: float | None  # None: no ':WEIGHT' given


_OPEN, _CLOSE = "([{", ")]}"
_NAME = re.compile(r"[A-Za-z_][\w.-]*")


def _outside_quotes(text: str):
    """``(index, char, depth)`` of each character outside quotes, ``depth`` the
    bracket depth before it; a one-line ``ValueError`` when brackets or quotes
    do not balance."""
    depth, quote, i = 0, "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        else:
            yield i, ch, depth
            if ch in _OPEN:
                depth += 1
            elif ch in _CLOSE:
                depth -= 1
                if depth < 0:
                    raise ValueError(f"unbalanced {ch!r}")
        i += 1
    if quote:
        raise ValueError(f"unclosed quote {quote}")
    if depth:
        raise ValueError("unbalanced parentheses")


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at each ``sep`` outside brackets and quotes."""
    cuts = [i for i, ch, depth in _outside_quotes(text) if ch == sep and depth == 0]
    return [text[a + 1:b] for a, b in zip([-1, *cuts], [*cuts, len(text)])]


def _closing_bracket(text: str) -> int:
    """Index of the bracket closing the one that opens ``text`` (it balances)."""
    return next(i for i, ch, depth in _outside_quotes(text) if ch in _CLOSE and depth == 1)


def literal_value(text: str) -> Any:
    """``text`` as a Python literal, else the bare string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text  # a bare string


def _parse_part(raw: str, kind: str = "sampler") -> SpecPart:
    text = raw.strip()
    match = _NAME.match(text)
    if not match:
        raise ValueError(f"expected a {kind} name, got {text!r}")
    name, rest = match.group(), text[match.end():].strip()
    options: dict[str, Any] = {}
    if rest.startswith("("):
        close = _closing_bracket(rest)
        inner, rest = rest[1:close], rest[close + 1:].strip()
        if inner.strip():
            for item in _split_top(inner, ","):
                key, eq, value = item.partition("=")
                key, value = key.strip(), value.strip()
                if not eq or not key.isidentifier():
                    raise ValueError(f"{name}: option {item.strip()!r} is not KEY=VALUE")
                if not value:
                    raise ValueError(f"{name}: option {key!r} has no value")
                if key in options:
                    raise ValueError(f"{name}: option {key!r} is given twice")
                options[key] = literal_value(value)
    weight = None
    if rest.startswith(":"):
        text_weight, rest = rest[1:].strip(), ""
        try:
            weight = float(text_weight)
        except ValueError:
            raise ValueError(f"{text_weight!r} is not a weight (expected NAME:WEIGHT+NAME:WEIGHT)") from None
    if rest:
        raise ValueError(f"unexpected {rest!r} after {name!r} (expected NAME(KEY=VALUE,...):WEIGHT)")
    return SpecPart(name, options, weight)


def parse_spec(spec: str, flag: str = FLAG, kind: str = "sampler") -> list[SpecPart]:
    """The parts of a spec (grammar only: names are not looked up); a malformed
    spec is a one-line ``ValueError`` naming ``flag`` (``--samplers``, or
    ``--augment`` for patch transforms) and the spec."""
    try:
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"empty {kind} spec")
        return [_parse_part(part, kind) for part in _split_top(spec, "+")]
    except ValueError as exc:
        raise ValueError(f"{flag} {spec!r}: {exc}") from None


def split_task_specs(text: str) -> tuple[str, str, str]:
    """The three per-task specs of ``text`` (``S1,S2,S3``), split on top-level
    commas only: ``brain,dilated_tumor(radius=3,x=1),core`` has three."""
    try:
        specs = tuple(piece.strip() for piece in _split_top(text, ","))
    except ValueError as exc:
        raise ValueError(f"{FLAG} {text!r}: {exc}") from None
    if len(specs) != 3 or not all(specs):
        raise ValueError(
            f"{FLAG} expects three sampler specs S1,S2,S3 (commas inside parentheses belong to options), got {text!r}"
        )
    return specs  # type: ignore[return-value]


def accepted_options(cls) -> tuple[dict[str, Any], bool]:
    """``({option: default or inspect.Parameter.empty}, takes_any)`` of a sampler class."""
    if cls.__init__ is object.__init__:
        return {}, False
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}, True
    named = {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def _describe(options: dict[str, Any], takes_any: bool) -> str:
    if not options:
        return "any KEY=VALUE" if takes_any else "no options"
    described = [k if v is inspect.Parameter.empty else f"{k} (default {v!r})" for k, v in options.items()]
    return ", ".join(described) + (" and any KEY=VALUE" if takes_any else "")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def build_sampler(part: SpecPart, registry, spec: str | None = None, flag: str = FLAG, kind: str = "sampler"):
    """The sampler (or other plug-in of ``kind``) ``part`` names, built as ``cls(**options)``."""
    from omkit.registry import UnknownNameError

    where = f"{flag} {spec!r}" if spec is not None else f"{flag} {part.name!r}"
    try:
        cls = registry.get(part.name)
    except UnknownNameError as exc:
        raise ValueError(f"{where}: {exc}") from None
    accepted, takes_any = accepted_options(cls)
    if not takes_any:
        unknown = [k for k in part.options if k not in accepted]
        if unknown:
            raise ValueError(
                f"{where}: {kind} {part.name!r} has no option {unknown[0]!r}; it accepts {_describe(accepted, takes_any)}"
            )
    try:
        return cls(**part.options)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{where}: {kind} {part.name!r}: {_one_line(exc)}; it accepts {_describe(accepted, takes_any)}"
        ) from None


def parse_sampler_spec(spec: str, registry):
    """The sampler a spec describes: ``"brain"``, ``"dilated_tumor(radius=3)"``,
    or a weighted mixture ``"brain:1+dilated_tumor(radius=3):1"``. Names are
    looked up in ``registry`` (the plug-ins' ``sampler`` registry:
    ``omkit.get_plugins().registry("sampler")``)."""
    parts = parse_spec(spec)
    built = [(build_sampler(part, registry, spec), part.weight) for part in parts]
    if len(parts) == 1 and parts[0].weight is None:
        return built[0][0]
    try:
        return MixtureSampler([(sampler, 1.0 if w is None else w) for sampler, w in built])
    except ValueError as exc:
        raise ValueError(f"{FLAG} {spec!r}: {exc}") from None


def build_task_samplers(specs, registry) -> list:
    """One sampler per spec (the three tasks' ``--samplers``)."""
    return [parse_sampler_spec(spec, registry) for spec in specs]
