"""The window ops with their backward passes, as window-consistent training runs them
(``--train-mode windows``): a CGA head pooled per window as it declares itself
(``omkit.models.window_protocol``: ``omkit.ops.window_sums`` of F * Pt and F, the per-block
maps, ``omkit.ops.block_linear`` with the guided term), forward +
backward, on one training crop of the default grid (3 crops of 32 x 72 x 72, 2 x 2 x 2
blocks of 8 x 24 x 24 in 16 x 32 x 32 windows, at width 0.25: 8 channels; and at the
paper's width: 32 channels). ``impl``: ``kernel`` (the compiled ops and their backward
kernels) or ``reference`` (autograd through the pure-PyTorch references). Group
``window heads``.
"""
from __future__ import annotations

import pytest
import torch

from omkit.models.attention import CGA
from omkit.models.window_protocol import head_window_logits
from omkit.ops import _library

from .conftest import SMOKE

# (crops, channels, crop) with the default grid's geometry
SHAPES = {"width-0.25": (3, 8, (32, 72, 72)), "width-1": (3, 32, (32, 72, 72))}
GEOMETRY = {"window": (16, 32, 32), "block": (8, 24, 24), "offset": (4, 4, 4), "origin": (8, 12, 12)}
if SMOKE:
    SHAPES = {"smoke": (1, 4, (16, 32, 32))}
    GEOMETRY = {"window": (8, 16, 16), "block": (4, 8, 8), "offset": (2, 4, 4), "origin": (4, 8, 8)}


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_window_heads_forward_backward(benchmark, run_benchmark, device, shape_name, impl):
    if impl == "kernel" and not _library.has_kernel("block_linear_backward", device):
        pytest.skip(f"no compiled window kernels for {device}")
    torch.manual_seed(0)
    crops, channels, size = SHAPES[shape_name]
    head = CGA(channels, 5).to(device)
    features = torch.randn(crops, channels, *size, device=device, requires_grad=True)
    guidance = torch.rand(crops, 1, *size, device=device)

    def step():
        with _library.use_backend("auto" if impl == "kernel" else "reference"):
            out = head_window_logits(head, features, guidance, GEOMETRY)[0]
            out.square().mean().backward()
        features.grad = None
        head.zero_grad(set_to_none=True)

    run_benchmark(step, rounds=5, group=f"window heads forward+backward {shape_name}", impl=impl,
                  shape=shape_name)
