"""Model options checked by what they do: the model is built on the meta device
(shapes only: no memory, no weights, milliseconds at any width), so an option
that passes its type check but breaks construction (``levels=()``, an attention
``reduction`` of 0) is one line naming the option before anything starts."""
from __future__ import annotations

from typing import Any

import torch

from omkit.registry import PluginError


def _build_on_meta(preset: str, width: float, kw: dict) -> None:
    from .build import create_model

    with torch.device("meta"):
        create_model(preset, width=width, **kw)


def _fault(exc: BaseException) -> str:
    text = " ".join((str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def check_model_options(preset: str, width: float, options: dict[str, Any], fixed: dict[str, Any] | None = None,
                        flag: str = "--model-options") -> None:
    """Build ``preset`` with ``options`` (and the ``fixed`` keyword arguments that
    have options of their own) on the meta device; a failure is a ``ValueError``
    naming ``flag`` and the option it comes from (each option is tried alone to
    find it). Plug-in faults stay :class:`PluginError`."""
    fixed = dict(fixed or {})
    try:
        _build_on_meta(preset, width, {**fixed, **options})
        return
    except (PluginError, KeyboardInterrupt):
        raise
    except Exception as exc:  # any exception a constructor may raise
        whole = exc
    for key, value in options.items():
        try:
            _build_on_meta(preset, width, {**fixed, key: value})
        except (PluginError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise ValueError(f"{flag} {key}={value!r}: cannot build {preset!r} with it ({_fault(exc)})") from None
    given = " ".join(f"{k}={v!r}" for k, v in options.items()) or "(none)"
    raise ValueError(f"{flag} {given}: cannot build {preset!r} with them ({_fault(whole)})")
