"""The conformance checks of attention plug-ins (``check_attention``); see ``omkit.testing``."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from omkit import ops
from omkit.models.window_protocol import (GUIDED_DECLARATION, UNGUIDED_DECLARATION, declares, guidance_weighted,
                                          head_window_logits, window_channel_scale)

from ._core import TOLERANCE, VOLUME, WINDOW, _Checks, _gradients, _max_diff, _resolve


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


