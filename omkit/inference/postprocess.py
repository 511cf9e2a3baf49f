"""Run the registered post-processing steps (the ``postprocessor`` registry:
built-ins in ``omkit.plugins.postprocess``, third-party steps through the
``omkit_register_postprocessors`` hook) in their ``order``."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

Step = Callable[[np.ndarray, np.ndarray], np.ndarray]


def build_postprocessors(
    enable: Iterable[str] | None = None,
    disable: Iterable[str] = (),
    options: Mapping[str, Mapping] | None = None,
) -> list[tuple[str, Step]]:
    """The steps to run, sorted by ``order``: every step whose
    ``default_enabled`` is true (or exactly ``enable`` when given), minus
    ``disable``; ``options[name]`` are keyword arguments for that step."""
    from omkit.plugin_manager import get_plugins

    registry = get_plugins().registry("postprocessor")
    options = dict(options or {})
    disable = set(disable)
    for name in [*disable, *options, *(enable or ())]:
        registry.get(name)  # unknown names are an error naming the choices
    names = list(enable) if enable is not None else [n for n in registry.names() if getattr(registry.get(n), "default_enabled", True)]
    names = [n for n in names if n not in disable]
    steps = [(n, registry.get(n)(**options.get(n, {}))) for n in names]
    return sorted(steps, key=lambda item: getattr(item[1], "order", 0))


def postprocess(labels: np.ndarray, image: np.ndarray, steps: Sequence[tuple[str, Step]]) -> np.ndarray:
    """Apply ``steps`` to an internal class map ``(D, H, W)`` given the z-scored image."""
    labels = np.asarray(labels)
    for name, step in steps:
        result = np.asarray(step(labels, image))
        if result.shape != labels.shape:
            raise ValueError(f"post-processing step {name!r} changed the shape {labels.shape} -> {result.shape}")
        labels = result.astype(np.uint8, copy=False)
    return labels
