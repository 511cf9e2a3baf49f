"""Run the registered post-processing steps (the ``postprocessor`` registry:
built-ins in ``omkit.plugins.postprocess``, third-party steps through the
``omkit_register_postprocessors`` hook) in their ``order``.

The selection has one vocabulary everywhere: ``enable_steps`` (steps run besides the
default ones; ``--enable-step NAME``), ``disable_steps`` (``--disable-step NAME``),
``step_options`` (``{name: {option: value}}``; ``--step-option NAME.KEY=VALUE``), and
``only`` (exactly these steps, the Python API's list of names).

A step is called ``step(labels, image)``, and ``step(labels, image, spacing=...)`` when
its ``__call__`` takes a ``spacing`` keyword: the voxel size in mm along ``(D, H, W)``.
"""
from __future__ import annotations

import inspect
import json
import warnings
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

Step = Callable[[np.ndarray, np.ndarray], np.ndarray]


def default_steps() -> list[str]:
    """The registered steps that run unless disabled (``default_enabled``)."""
    from omkit.plugin_manager import get_plugins

    registry = get_plugins().registry("postprocessor")
    return [n for n in registry.names() if getattr(registry.get(n), "default_enabled", True)]


def build_postprocessors(
    enable_steps: Iterable[str] = (),
    disable_steps: Iterable[str] = (),
    step_options: Mapping[str, Mapping] | None = None,
    only: Iterable[str] | None = None,
    **old,
) -> list[tuple[str, Step]]:
    """The steps to run, sorted by ``order``: the default ones (exactly ``only`` when
    given) and ``enable_steps``, minus ``disable_steps``; ``step_options[name]`` are
    keyword arguments for that step. The keywords before this vocabulary (``enable``:
    exactly these, ``disable``, ``options``) still work, with a ``DeprecationWarning``."""
    from omkit.plugin_manager import get_plugins

    renamed = {"enable": "only", "disable": "disable_steps", "options": "step_options"}
    for key, value in old.items():
        if key not in renamed:
            raise TypeError(f"build_postprocessors() got an unexpected keyword argument {key!r}")
        warnings.warn(f"build_postprocessors({key}=...) is deprecated: use {renamed[key]}=", DeprecationWarning,
                      stacklevel=2)
    only = old.get("enable", only)
    disable = set(old.get("disable", disable_steps))
    options = dict(old.get("options", step_options) or {})
    registry = get_plugins().registry("postprocessor")
    enable = list(enable_steps)
    for name in [*disable, *options, *enable, *(only or ())]:
        registry.get(name)  # unknown names are an error naming the choices
    names = list(only) if only is not None else default_steps()
    names += [n for n in enable if n not in names]
    names = [n for n in names if n not in disable]
    steps = [(n, registry.get(n)(**options.get(n, {}))) for n in names]
    return sorted(steps, key=lambda item: getattr(item[1], "order", 0))


def parse_step_options(items: Iterable[str], what: str = "--step-option") -> dict[str, dict]:
    """``NAME.KEY=VALUE`` items as ``{name: {key: value}}``; VALUE is read as JSON where it
    parses (numbers, true/false, lists), else as a string. One-line error naming the item."""
    out: dict[str, dict] = {}
    for item in items:
        target, sep, raw = item.partition("=")
        name, dot, key = target.partition(".")
        if not sep or not dot or not name or not key.isidentifier():
            raise ValueError(f"{what} {item!r}: expected NAME.KEY=VALUE, e.g. remove_small_components.max_voxels=500")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(name, {})[key] = value
    return out


def _takes_spacing(step: Step) -> bool:
    try:
        parameters = inspect.signature(step).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return "spacing" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def postprocess(labels: np.ndarray, image: np.ndarray, steps: Sequence[tuple[str, Step]],
                spacing: Sequence[float] | None = None) -> np.ndarray:
    """Apply ``steps`` to an internal class map ``(D, H, W)`` given the z-scored image
    and, to the steps that take it, the voxel ``spacing`` (mm, ``(D, H, W)``)."""
    labels = np.asarray(labels)
    for name, step in steps:
        if spacing is not None and _takes_spacing(step):
            result = np.asarray(step(labels, image, spacing=tuple(float(s) for s in spacing)))
        else:
            result = np.asarray(step(labels, image))
        if result.shape != labels.shape:
            raise ValueError(f"post-processing step {name!r} changed the shape {labels.shape} -> {result.shape}")
        labels = result.astype(np.uint8, copy=False)
    return labels
