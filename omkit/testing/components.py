"""The conformance checks of backbones, samplers, post-processors and transforms; see
``omkit.testing``."""
from __future__ import annotations

import torch
from torch import Tensor

from ._core import ConformanceError, _Checks, _gradients, _resolve


# -- backbones -------------------------------------------------------------------------------

def check_backbone(plugin, in_channels: int = 4, width: float = 0.125, **options) -> list[str]:
    """The contract of a backbone plug-in (a registered name or the class), built as
    ``cls(in_channels=..., width=..., **options)``; returns the checks passed."""
    cls, who = _resolve("backbone", plugin)
    checks = _Checks(who)

    def build():
        torch.manual_seed(0)
        return cls(in_channels=in_channels, width=width, **options)

    def size(module):
        d = int(getattr(module, "min_divisor", 1))
        return tuple(d * k for k in (1, 2, 2)) if d > 1 else (4, 8, 8)

    def declarations():
        module = build()
        if not isinstance(getattr(module, "out_channels", None), int):
            return "no int attribute out_channels"
        d = getattr(module, "min_divisor", 1)
        if not isinstance(d, int) or d < 1:
            return f"min_divisor must be an int >= 1, got {d!r}"
        consistent = getattr(module, "window_consistent", False)
        return None if isinstance(consistent, bool) else f"window_consistent must be a bool, got {consistent!r}"

    def shapes():
        module = build().eval()
        x = torch.randn((1, in_channels, *size(module)))
        out = module(x)
        want = (1, module.out_channels, *x.shape[2:])
        return None if isinstance(out, Tensor) and tuple(out.shape) == want else \
            f"output {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}, expected {want}"

    def deterministic():
        module = build().eval()
        x = torch.randn((1, in_channels, *size(module)))
        return None if torch.equal(module(x), module(x)) else "two calls in eval mode differ"

    def gradients():
        module = build().train()
        return _gradients(module, module(torch.randn((2, in_channels, *size(module)))).square().mean())

    checks.run("declarations", declarations)
    checks.run("shapes", shapes)
    checks.run("deterministic", deterministic)
    checks.run("gradients", gradients)
    return checks.passed


# -- samplers and post-processors -------------------------------------------------------------

def _synthetic_case():
    """A small preprocessed synthetic case with a tumor (every class present)."""
    from omkit.data.preprocess import preprocess_case
    from omkit.data.synthetic import make_case

    return preprocess_case(make_case(shape=(24, 40, 40), seed=0))


def check_sampler(plugin, **options) -> list[str]:
    """The contract of a patch sampler plug-in (a registered name or the class), built as
    ``cls(**options)``; returns the checks passed."""
    import numpy as np

    cls, who = _resolve("sampler", plugin)
    checks = _Checks(who)
    pre = _synthetic_case()
    shape = tuple(pre.image.shape[1:])
    sampler = cls(**options)

    def attributes():
        task, key = getattr(sampler, "task", None), getattr(sampler, "cache_key", None)
        if not isinstance(task, int) or not 0 <= task <= 2:
            return f"task must be 0, 1 or 2, got {task!r}"
        if not isinstance(key, str) or not key:
            return f"cache_key must be a non-empty string, got {key!r}"
        return None

    def region():
        got = np.asarray(sampler.region(pre))
        if got.dtype != bool or got.shape != shape:
            return f"region: {got.dtype} {got.shape}, expected bool {shape}"
        return None if got.any() else "region is empty on a case with every tumor class"

    def draw():
        regions = [np.flatnonzero(np.asarray(sampler.region(pre)))]
        first = sampler.draw(regions, [shape], 64, np.random.default_rng(0))
        again = sampler.draw(regions, [shape], 64, np.random.default_rng(0))
        first = np.asarray(first)
        if first.dtype != np.int64 or first.shape != (64, 4):
            return f"draw: {first.dtype} {first.shape}, expected int64 (64, 4)"
        if not np.array_equal(first, np.asarray(again)):
            return "draw differs for the same random stream"
        flat = np.ravel_multi_index(tuple(first[:, 1:].T), shape)
        return None if (first[:, 0] == 0).all() and np.isin(flat, regions[0]).all() else \
            "draw returns centres outside the region"

    checks.run("attributes", attributes)
    checks.run("region", region)
    checks.run("draw", draw)
    return checks.passed


def check_postprocessor(plugin, **options) -> list[str]:
    """The contract of a post-processing step plug-in (a registered name or the class),
    built as ``cls(**options)``; returns the checks passed."""
    import numpy as np

    from omkit.labels import NUM_CLASSES_TASK

    cls, who = _resolve("postprocessor", plugin)
    checks = _Checks(who)
    pre = _synthetic_case()
    step = cls(**options)
    labels = pre.label.astype(np.uint8)

    def attributes():
        if not isinstance(getattr(step, "order", None), int) or isinstance(step.order, bool):
            return f"order must be an int, got {getattr(step, 'order', None)!r}"
        enabled = getattr(step, "default_enabled", None)
        return None if isinstance(enabled, bool) else f"default_enabled must be a bool, got {enabled!r}"

    def output():
        given = labels.copy()
        out = np.asarray(step(given, pre.image))
        if out.shape != labels.shape or out.dtype != labels.dtype:
            return f"output {out.dtype} {out.shape}, expected {labels.dtype} {labels.shape}"
        if not np.array_equal(given, labels):
            return "the input label map was changed in place"
        if out.max(initial=0) >= NUM_CLASSES_TASK[0]:
            return f"output holds class {int(out.max())}, not an internal class"
        return None if np.array_equal(out, np.asarray(step(labels.copy(), pre.image))) else "two calls differ"

    checks.run("attributes", attributes)
    checks.run("output", output)
    return checks.passed


# -- transforms ------------------------------------------------------------------------------

def check_transform(transform, name: str = "transform") -> list[str]:
    """The contract of an augmentation transform instance (``omkit.data.augment``)."""
    from omkit.data.augment import check_transform_contract

    try:
        check_transform_contract(transform, name)
    except (AssertionError, ValueError) as exc:
        raise ConformanceError(f"transform {name!r}: {exc}") from None
    return ["transform contract"]
