"""The plug-in conformance kit: the contract of each hook kind, as functions a third
party calls in their own tests (and omkit calls on its built-ins)::

    from omkit.testing import check_attention, check_backbone

    def test_my_attention_conforms():
        check_attention("my_attention")        # a registered name, or the class

Each check raises :class:`ConformanceError` (an ``AssertionError``, so pytest shows it
as a failed test) with one line naming the plug-in and the check that failed, and
returns the names of the checks that passed. What is checked:

* attention (:func:`check_attention`): output shape and dtype; the same output twice
  in eval mode; gradients reach every parameter; guided modules: no gradient reaches
  the guidance; bf16 autocast runs and stays finite; where the export packages are
  installed (``omkit[export]``), ``torch.export`` and ONNX with the ops lowered to their
  references, run by onnxruntime, give the eager output (1e-4); where the class claims
  ``compiles_fullgraph = True``, ``torch.compile(fullgraph=True)`` (graph capture with
  AOTAutograd, no code generation) gives the eager output and input gradient. With a declared window pooling
  (``omkit.models.window_protocol``): the declaration pooled over the whole input is
  the module's ``forward`` (1e-5), and pooled per window it is the module run on each
  window's tile (dense equals tiles, 1e-5, float64).
* backbone (:func:`check_backbone`): ``out_channels`` and the output shape at sizes
  divisible by ``min_divisor``; the same output twice in eval mode; gradients reach
  every parameter; ``window_consistent``, if declared, is a bool.
* sampler (:func:`check_sampler`): ``task`` and ``cache_key`` (which names every
  option); ``region`` a bool map of the case's shape; ``draw`` int64 ``(count, 4)``
  rows inside the regions, the same for the same random stream.
* post-processor (:func:`check_postprocessor`): ``order`` and ``default_enabled``;
  the output a label map of the input's shape and dtype, of internal classes only, the
  same twice, the input left as it was.
* transform (:func:`check_transform`): ``omkit.data.augment.check_transform_contract``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from omkit import ops
from omkit.models.plugin_checks import describe
from omkit.models.window_protocol import (GUIDED_DECLARATION, UNGUIDED_DECLARATION, declares, guidance_weighted,
                                          head_window_logits, window_channel_scale)

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


# -- attention -------------------------------------------------------------------------------

def check_attention(plugin, channels: int = 8, num_classes: int = 5, **options) -> list[str]:
    """The contract of an attention plug-in (a registered name or the class), built as
    omkit's heads build it; returns the checks passed (see the module docstring)."""
    cls, who = _resolve("attention", plugin)
    guided = bool(getattr(cls, "guided", False))
    checks = _Checks(who)

    def build(dtype=torch.float32):
        torch.manual_seed(0)
        module = cls(channels, num_classes=num_classes, **options) if guided else cls(channels, **options)
        return module.to(dtype)

    def inputs(dtype=torch.float32, size=VOLUME):
        g = torch.Generator().manual_seed(1)
        x = torch.randn((2, channels, *size), generator=g, dtype=dtype)
        guidance = torch.rand((2, 1, *size), generator=g, dtype=dtype)
        return x, guidance

    def call(module, x, guidance):
        return module(x, guidance) if guided else module(x)

    def shapes():
        x, guidance = inputs()
        out = call(build().eval(), x, guidance)
        want = (2, num_classes, *VOLUME) if guided else tuple(x.shape)
        if not isinstance(out, Tensor) or tuple(out.shape) != want or out.dtype != x.dtype:
            got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
            return f"output {got}, expected {want} {x.dtype}"
        return None

    def deterministic():
        module, (x, guidance) = build().eval(), inputs()
        return None if torch.equal(call(module, x, guidance), call(module, x, guidance)) else \
            "two calls in eval mode differ"

    def gradients():
        module, (x, guidance) = build().train(), inputs()
        guidance.requires_grad_(True)
        problem = _gradients(module, call(module, x, guidance).square().mean())
        if problem is None and guided and guidance.grad is not None and bool(guidance.grad.abs().sum() > 0):
            return "a gradient reaches the guidance (cross-task guidance is forward-only)"
        return problem

    def bf16_autocast():
        module, (x, guidance) = build().eval(), inputs()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = call(module, x, guidance)
        return None if bool(torch.isfinite(out.float()).all()) else "non-finite output under bf16 autocast"

    checks.run("shapes", shapes)
    checks.run("deterministic", deterministic)
    checks.run("gradients", gradients)
    checks.run("bf16 autocast", bf16_autocast)
    if onnx_available():
        checks.run("ONNX export", lambda: _onnx_matches(build().eval(), guided, inputs()))
    if getattr(cls, "compiles_fullgraph", False) is True:
        checks.run("torch.compile fullgraph", lambda: _compiles(build().eval(), guided, inputs()))
    declaration = GUIDED_DECLARATION if guided else UNGUIDED_DECLARATION
    if declares(build(), declaration):
        if guided and declares(build(), ("guided_terms",)):
            checks.run("guided terms are the pooled terms",
                       lambda: _guided_terms_match(build(torch.float64), inputs(torch.float64)))
        checks.run("declared pooling is the forward", lambda: _declaration_is_forward(build(torch.float64), guided,
                                                                                     inputs(torch.float64)))
        checks.run("dense equals tiles", lambda: _dense_equals_tiles(build(torch.float64), guided,
                                                                     inputs(torch.float64)))
    return checks.passed


def onnx_available() -> bool:
    """Whether the ONNX check runs: onnx, onnxscript and onnxruntime are installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))


def _onnx_matches(module: nn.Module, guided: bool, xs) -> str | None:
    """The module through ``torch.export`` and ONNX (omkit's ops lowered to their references,
    as ``omkit export`` does), run by onnxruntime, against its eager output."""
    import warnings

    import onnxruntime

    x, guidance = xs
    args = (x, guidance) if guided else (x,)
    with torch.no_grad():
        want = module(*args)
    with ops.use_backend("reference"), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, args, strict=False)
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    proto = onnx_program.model_proto.SerializeToString()
    session = onnxruntime.InferenceSession(proto, providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    got = torch.from_numpy(session.run(None, feeds)[0])
    diff = _max_diff(got, want)
    return None if diff <= 1e-4 else f"the ONNX graph run by onnxruntime differs from forward by {diff:.3g}"


def _compiles(module: nn.Module, guided: bool, xs) -> str | None:
    """``torch.compile(fullgraph=True)`` (AOTAutograd graphs, no code generation) against eager:
    the output and the gradient reaching the features."""
    x, guidance = xs
    x = x.clone().requires_grad_(True)
    args = (x, guidance) if guided else (x,)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    got, want = compiled(*args), module(*args)
    (g_got,) = torch.autograd.grad(got.square().sum(), x)
    (g_want,) = torch.autograd.grad(want.square().sum(), x)
    diff = max(_max_diff(got, want), _max_diff(g_got, g_want) / max(1.0, float(g_want.abs().max())))
    return None if diff <= TOLERANCE else f"compiled, it differs from eager by {diff:.3g}"


def _declaration_is_forward(module: nn.Module, guided: bool, xs) -> str | None:
    """The declaration pooled over the whole input, applied as the protocol applies it,
    against the module's own forward."""
    module.eval()
    x, guidance = xs
    whole = {"window": VOLUME, "block": VOLUME, "offset": (0, 0, 0), "origin": (0, 0, 0)}
    with torch.no_grad():
        if guided:
            got = head_window_logits(module, x, guidance, whole)[0] if not declares(module, ("fused_window_logits",)) \
                else _unfused(module, x, guidance, whole)
            want = module(x, guidance)
        else:
            got = x * window_channel_scale(module, x, whole).reshape(x.shape[0], -1, 1, 1, 1)
            want = module(x)
    diff = _max_diff(got, want)
    return None if diff <= TOLERANCE else f"pooled over the whole input it differs from forward by {diff:.3g}"


def _guided_terms_match(module: nn.Module, xs) -> str | None:
    """A guided head's ``guided_terms`` weighted by the guidance against its ``pooled_terms``
    (the window path pools the first, a tile's sums the second)."""
    x, guidance = xs
    with torch.no_grad():
        want, got = module.pooled_terms(x, guidance), guidance_weighted(module.guided_terms(x), guidance)
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        return (f"guided_terms weighted by the guidance give shapes {[tuple(g.shape) for g in got]}, "
                f"pooled_terms {[tuple(w.shape) for w in want]}")
    diff = max(_max_diff(g, w) for g, w in zip(got, want))
    return None if diff <= TOLERANCE else f"guided_terms weighted by the guidance differ from pooled_terms by {diff:.3g}"


def _unfused(module, x, guidance, geometry):
    """A guided head's declaration without its fused shortcut (gradient on, then detached)."""
    with torch.enable_grad():
        return head_window_logits(module, x, guidance, geometry)[0].detach()


def _dense_equals_tiles(module: nn.Module, guided: bool, xs) -> str | None:
    """Every block of the window pooling against the module run on that block's tile."""
    module.eval()
    x, guidance = xs
    window, block, offset = WINDOW["window"], WINDOW["block"], WINDOW["offset"]
    with torch.no_grad():
        if guided:
            dense = head_window_logits(module, x, guidance, WINDOW)[0]
        else:
            scale = window_channel_scale(module, x, WINDOW)  # (B, nD, nH, nW, C)
            dense = x * scale.repeat_interleave(block[0], 1).repeat_interleave(block[1], 2) \
                .repeat_interleave(block[2], 3).permute(0, 4, 1, 2, 3)[..., :x.shape[2], :x.shape[3], :x.shape[4]]
        worst = 0.0
        blocks = [math.ceil(s / b) for s, b in zip(VOLUME, block)]
        origins = torch.cartesian_prod(*(torch.arange(n) * b - o for n, b, o in zip(blocks, block, offset)))
        for n in range(x.shape[0]):
            tiles = ops.gather_tiles(x[n], origins, window)
            out = module(tiles, ops.gather_tiles(guidance[n], origins, window)) if guided else module(tiles)
            for t, origin in enumerate(origins.tolist()):
                start = [o + f for o, f in zip(origin, offset)]
                box = tuple(slice(s, min(s + b, v)) for s, b, v in zip(start, block, VOLUME))
                kept = tuple(slice(f, f + sl.stop - sl.start) for f, sl in zip(offset, box))
                worst = max(worst, _max_diff(dense[(n, slice(None)) + box], out[(t, slice(None)) + kept]))
    return None if worst <= TOLERANCE else \
        f"pooled per window it differs from the module run on the window's tile by {worst:.3g}"


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
