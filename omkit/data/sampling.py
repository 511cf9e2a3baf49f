"""Training patch sampling: the sampler interface, its base classes, the
sampler spec grammar and the per-case sampling regions (Sec. III-A of the
paper). The built-in samplers (``brain``, ``dilated_tumor``, ``core``,
``enhancing``) are a plug-in (``omkit.plugins.samplers``) built on these
classes; a third party registers its own through ``omkit_register_samplers``.

The sampler interface:

* built as ``cls(**options)`` from a spec such as ``dilated_tumor(radius=3)``;
  attribute ``task`` (the 0-based task it serves by default) and
  ``cache_key`` (a string naming the sampler and every option, used to cache
  its regions beside a preprocessed case);
* ``region(pre) -> bool (d, h, w)``: the allowed centres of a preprocessed case;
* ``draw(regions, shapes, count, rng) -> int64 (count, 4)`` rows ``(case, z, y, x)``
  where ``regions`` are the cases' flat region indices
  (``np.flatnonzero(region(pre))``). Vectorised: one pass per case, never one
  per voxel or per patch.

Subclass :class:`RegionSampler` (uniform centres inside a region: define
``region``) or :class:`LabelRegionSampler` (inside ground-truth classes: set
``classes``) to get ``draw`` and a ``cache_key`` that includes every option.

The spec grammar (``--samplers``, one spec per task)::

    SPEC := PART ('+' PART)*
    PART := NAME [ '(' KEY=VALUE (',' KEY=VALUE)* ')' ] [ ':' WEIGHT ]

A VALUE is read as a Python literal (number, string, bool, tuple, ...) and
otherwise kept as a bare string. One PART without a weight is that sampler;
several parts (or a weighted one) are a :class:`MixtureSampler`. The three
per-task specs are written as one string split on top-level commas
(:func:`split_task_specs`): commas inside parentheses belong to options.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import math
import re
from typing import Any, NamedTuple

import numpy as np

FLAG = "--samplers"


# -- the interface -------------------------------------------------------------------------

def _bound_options(cls, args, kwargs) -> dict[str, Any]:
    """The keyword options ``cls(*args, **kwargs)`` is built with, defaults included."""
    if cls.__init__ is object.__init__:
        return {}
    try:
        signature = inspect.signature(cls.__init__)
        bound = signature.bind(None, *args, **kwargs)  # None stands for self
    except (TypeError, ValueError):
        return dict(kwargs)  # __init__ reports the mistake itself
    bound.apply_defaults()
    names = list(signature.parameters)
    options: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if name == names[0]:
            continue
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            options.update(value)
        else:
            options[name] = tuple(value) if kind is inspect.Parameter.VAR_POSITIONAL else value
    return options


def _format_option(value) -> str:
    """One spelling per value: ``3``, ``3.0`` and ``np.int64(3)`` are all ``3``."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return repr(bool(value) if value is not None else None)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    return repr(value)


def generic_cache_key(name: str, options: dict[str, Any]) -> str:
    """``name`` followed by every option, sorted: ``name(a=1.0,b='x')`` (just
    ``name`` without options)."""
    if not options:
        return name
    return f"{name}({','.join(f'{k}={_format_option(v)}' for k, v in sorted(options.items()))})"


class RegionSampler:
    """Uniform centres inside a per-case region; subclasses define ``region``.

    The keyword options a sampler is built with (defaults included) are
    recorded in :attr:`options`, and :attr:`cache_key` is ``key`` (or, when a
    subclass leaves ``key`` empty, its import path) followed by every option,
    so two samplers with different options never share a cached region.
    """

    task = 0
    key = ""  # a short name for cache keys; empty: the class's import path

    def __new__(cls, *args, **kwargs):
        if cls.__init__ is object.__init__ and (args or kwargs):
            raise TypeError(f"{cls.__name__} takes no options, got {', '.join(map(str, [*args, *kwargs]))}")
        self = super().__new__(cls)
        self._sampler_options = _bound_options(cls, args, kwargs)
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The options this sampler was built with (defaults included)."""
        return dict(getattr(self, "_sampler_options", {}))

    @property
    def cache_key(self) -> str:
        name = self.key or f"{type(self).__module__}.{type(self).__qualname__}"
        return generic_cache_key(name, self.options)

    def region(self, pre) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must define region(pre)")

    def draw(self, regions, shapes, count: int, rng: np.random.Generator) -> np.ndarray:
        """A case uniformly among those with a non-empty region, then a voxel
        uniformly inside its region."""
        sizes = np.array([len(r) for r in regions], dtype=np.int64)
        eligible = np.flatnonzero(sizes > 0)
        if count and not len(eligible):
            raise ValueError(f"{type(self).__name__}: no case has a non-empty sampling region")
        cases = eligible[rng.integers(len(eligible), size=count)]
        positions = np.floor(rng.random(count) * sizes[cases]).astype(np.int64)
        flat = np.empty(count, dtype=np.int64)
        for case in np.unique(cases):
            chosen = cases == case
            flat[chosen] = np.asarray(regions[case])[positions[chosen]]
        hw = np.array([s[1] * s[2] for s in shapes], dtype=np.int64)[cases]
        w = np.array([s[2] for s in shapes], dtype=np.int64)[cases]
        return np.stack([cases, flat // hw, (flat % hw) // w, flat % w], axis=1)


def label_region(pre, classes, purpose: str = "sampling") -> np.ndarray:
    """The ground-truth voxels of ``classes`` (internal class indices) of a
    preprocessed case; a case without ground truth is an error naming it."""
    if pre.label is None:
        raise ValueError(f"case {pre.case_id}: {purpose} needs the ground truth")
    return np.isin(pre.label, classes)


class LabelRegionSampler(RegionSampler):
    """Centres inside the ground-truth voxels of ``classes``."""

    classes: tuple[int, ...] = ()
    purpose = "sampling"  # for the error message

    def region(self, pre) -> np.ndarray:
        return label_region(pre, self.classes, self.purpose)


def sampler_cache_key(sampler) -> str:
    """The cache key of any sampler: its ``cache_key``, else ``key``, else the
    class path with the options it was built with."""
    key = getattr(sampler, "cache_key", "") or getattr(sampler, "key", "")
    if key:
        return key
    cls = type(sampler)
    return generic_cache_key(f"{cls.__module__}.{cls.__qualname__}", getattr(sampler, "options", {}) or {})


class MixtureSampler:
    """Centres drawn from several samplers in fixed proportions, e.g. half of
    task 1's patches uniformly in the brain and half in the (dilated) tumor.

    The paper samples task 1 uniformly in the brain; with a budget of minutes
    instead of 400k patches per epoch, so few of those patches touch tumor
    that task 1 learns to say "normal" everywhere (the SegResNet baseline
    draws half its crops around the tumor for the same reason). Spelled in a
    run's settings as ``"brain:1+dilated_tumor:1"`` (see :func:`parse_sampler_spec`).

    Its region of a case is the tuple of its parts' regions; ``draw`` splits the
    count multinomially by weight and shuffles the parts' centres together.
    """

    def __init__(self, parts):
        parts = [(sampler, float(weight)) for sampler, weight in parts]
        if len(parts) < 2:
            raise ValueError("a sampler mixture needs at least two parts")
        weights = [w for _, w in parts]
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"sampler mixture weights must be > 0, got {weights}")
        self.parts = parts
        self.task = parts[0][0].task
        total = sum(weights)
        self.weights = np.array([w / total for w in weights])
        self.key = "+".join(f"{sampler_cache_key(s)}:{w:g}" for s, w in parts)

    @property
    def cache_key(self) -> str:
        return self.key

    def region(self, pre):
        return tuple(sampler.region(pre) for sampler, _ in self.parts)

    def draw(self, regions, shapes, count: int, rng: np.random.Generator) -> np.ndarray:
        counts = rng.multinomial(count, self.weights)
        drawn = [
            sampler.draw([case_regions[i] for case_regions in regions], shapes, int(n), rng)
            for i, ((sampler, _), n) in enumerate(zip(self.parts, counts))
        ]
        centres = np.concatenate(drawn) if drawn else np.empty((0, 4), dtype=np.int64)
        return centres[rng.permutation(len(centres))]


# -- regions -------------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"[A-Za-z0-9_.,+=()-]{1,120}")


def region_file_name(key: str) -> str:
    """A file name for the cached region of ``key``: the key itself when it is
    plain, else a cleaned prefix and a digest of the whole key."""
    if _SAFE_NAME.fullmatch(key):
        return f"region-{key}"
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:60]
    return f"region-{clean}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def region_indices(sampler, pre, cache=None, case_dir=None, cache_settings=None):
    """Flat indices of the sampler's region of one case (a tuple, one per part,
    for a mixture); cached beside the preprocessed case when ``cache`` and
    ``case_dir`` are given, under the sampler's :func:`sampler_cache_key`."""
    if isinstance(sampler, MixtureSampler) or hasattr(sampler, "parts"):
        return tuple(region_indices(part, pre, cache, case_dir, cache_settings) for part, _ in sampler.parts)

    def compute():
        region = sampler.region(pre)
        # int32 halves the cache for any volume under 2**31 voxels
        return np.flatnonzero(region).astype(np.int32 if region.size < 2**31 else np.int64)

    if cache is not None and case_dir is not None:
        name = region_file_name(sampler_cache_key(sampler))
        return cache.derived(case_dir, name, compute, **(cache_settings or {}))
    return compute()


def region_size(region) -> int:
    """Voxels a case offers a sampler (summed over a mixture's parts)."""
    return sum(len(r) for r in region) if isinstance(region, tuple) else len(region)


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


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text  # a bare string


def _parse_part(raw: str) -> SpecPart:
    text = raw.strip()
    match = _NAME.match(text)
    if not match:
        raise ValueError(f"expected a sampler name, got {text!r}")
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
                options[key] = _literal(value)
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


def parse_spec(spec: str) -> list[SpecPart]:
    """The parts of a sampler spec (grammar only: names are not looked up); a
    malformed spec is a one-line ``ValueError`` naming ``--samplers`` and the spec."""
    try:
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError("empty sampler spec")
        return [_parse_part(part) for part in _split_top(spec, "+")]
    except ValueError as exc:
        raise ValueError(f"{FLAG} {spec!r}: {exc}") from None


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


def build_sampler(part: SpecPart, registry, spec: str | None = None):
    """The sampler ``part`` names, built as ``cls(**options)``."""
    from omkit.registry import UnknownNameError

    where = f"{FLAG} {spec if spec is not None else part.name!r}"
    try:
        cls = registry.get(part.name)
    except UnknownNameError as exc:
        raise ValueError(f"{where}: {exc}") from None
    accepted, takes_any = accepted_options(cls)
    if not takes_any:
        unknown = [k for k in part.options if k not in accepted]
        if unknown:
            raise ValueError(
                f"{where}: sampler {part.name!r} has no option {unknown[0]!r}; it accepts {_describe(accepted, takes_any)}"
            )
    try:
        return cls(**part.options)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{where}: sampler {part.name!r}: {_one_line(exc)}; it accepts {_describe(accepted, takes_any)}"
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
