"""What every check of the conformance kit shares: the one-line failure, the
plug-in's name, the run of checks, and the comparisons."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from omkit.models.plugin_checks import describe

# the window geometry the dense check pools: blocks of 2 x 4 x 4 in windows of 4 x 8 x 8
WINDOW = {"window": (4, 8, 8), "block": (2, 4, 4), "offset": (1, 2, 2), "origin": (0, 0, 0)}
VOLUME = (6, 12, 12)  # 3 x 3 x 3 blocks, windows running past every face
TOLERANCE = 1e-5


class ConformanceError(AssertionError):
    """A plug-in broke the contract of its hook kind: one line naming it and the check."""


def _resolve(kind: str, plugin) -> tuple[type, str]:
    """The class of ``plugin`` (a class or a name registered as ``kind``) and how to name it."""
    if isinstance(plugin, str):
        from omkit.factory import registered_by, registered_class

        cls = registered_class(kind, plugin)
        owner, source = registered_by(kind, plugin)
        return cls, describe((kind, plugin, owner, source))
    return plugin, f"{kind} {plugin.__module__}.{plugin.__qualname__}"


class _Checks:
    def __init__(self, who: str):
        self.who, self.passed = who, []

    def run(self, name: str, check: Callable[[], str | None]) -> None:
        try:
            problem = check()
        except ConformanceError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the plug-in is the finding
            problem = f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if problem:
            raise ConformanceError(f"{self.who}: check {name!r} failed: {problem}")
        self.passed.append(name)


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def _gradients(module: nn.Module, loss: Tensor) -> str | None:
    if not loss.requires_grad:
        trainable = [n for n, p in module.named_parameters() if p.requires_grad]
        return f"the output does not depend on {', '.join(trainable[:3])}" if trainable else None
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        return f"no gradient reaches {', '.join(missing[:3])}"
    bad = [n for n, p in module.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    return f"non-finite gradient in {', '.join(bad[:3])}" if bad else None


