"""Plug-in modules checked where omkit calls them, so that a faulty plug-in is named
instead of passing silently or surfacing as a traceback deep inside a model.

A module built from a registry entry carries its origin (:func:`mark_origin`). Every
eager call of it goes through :func:`call_plugin_module`: an exception it raises
becomes a :class:`PluginError` naming the plug-in and how to block it, and its first
call's output is checked by :func:`check_plugin_output` (a tensor of the expected
shape, finite where its inputs are): one reduction, once per module. Traced and
compiled calls (``torch.export``, ``torch.compile``) run the module as it is.
:func:`check_plugin_output` is the one check, for the plug-in conformance kit too.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from omkit.registry import PluginError

ORIGIN_ATTR = "omkit_plugin_origin"  # (kind, registered name, plug-in name, where it came from)
CHECKED_ATTR = "_omkit_output_checked"


def mark_origin(module: nn.Module, kind: str, name: str) -> nn.Module:
    """Record which plug-in registered ``module``'s class as ``kind`` ``name``."""
    from omkit.factory import registered_by

    object.__setattr__(module, ORIGIN_ATTR, (kind, name, *registered_by(kind, name)))
    return module


def describe(origin: tuple[str, str, str, str] | None, module: object = None) -> str:
    """``attention 'eca' of plug-in 'omkit_eca' (omkit-eca 0.1: ...)``."""
    if origin is None:
        return f"module {type(module).__name__}"
    kind, name, owner, source = origin
    return f"{kind} {name!r} of plug-in {owner!r} ({source})"


def _hint(origin) -> str:
    if origin is None:
        return ""
    from omkit.factory import block_hint

    return f"; {block_hint(origin[2])}"


def check_plugin_output(output: object, expected_shape: Sequence[int], who: str,
                        inputs_finite: bool = True) -> None:
    """A :class:`PluginError` naming ``who`` unless ``output`` is a tensor of
    ``expected_shape`` whose values are finite (checked when ``inputs_finite``:
    NaN in, NaN out is not the module's fault)."""
    if not isinstance(output, torch.Tensor):
        raise PluginError(f"{who} returned {type(output).__name__}, not a tensor")
    if tuple(output.shape) != tuple(expected_shape):
        raise PluginError(f"{who} returned shape {tuple(output.shape)}, expected {tuple(expected_shape)}")
    if inputs_finite and output.is_floating_point() and not bool(torch.isfinite(output).all()):
        raise PluginError(f"{who} returned non-finite values (NaN or infinity) from finite inputs")


def _tracing(tensors: Sequence[torch.Tensor]) -> bool:
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    from torch._subclasses.fake_tensor import is_fake

    return any(t.device.type == "meta" or is_fake(t) for t in tensors if isinstance(t, torch.Tensor))


def call_plugin_module(module: nn.Module, args: Sequence[torch.Tensor], expected_shape: Sequence[int]):
    """``module(*args)``, its faults named (see the module docstring)."""
    if _tracing(args):
        return module(*args)
    origin = getattr(module, ORIGIN_ATTR, None)
    try:
        output = module(*args)
    except (PluginError, MemoryError, torch.OutOfMemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:300]
        raise PluginError(f"{describe(origin, module)} raised {type(exc).__name__}: {text}{_hint(origin)}") from exc
    if not getattr(module, CHECKED_ATTR, False):
        finite = all(bool(torch.isfinite(a).all()) for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
        try:
            check_plugin_output(output, expected_shape, describe(origin, module), inputs_finite=finite)
        except PluginError as exc:
            raise PluginError(f"{exc} at its first call{_hint(origin)}") from None
        object.__setattr__(module, CHECKED_ATTR, True)
    return output
