"""Every registered attention module, built-in or plug-in, on the same features: forward,
and forward + backward, at the paper's training shape (20 patches x 32 channels x
16 x 32 x 32). The names come from the registry when the suite is collected, so a
plug-in installed in the environment (an entry point of group ``omkit``) is timed next
to CGA and SE by ``make bench`` without editing this file; ``omkit bench attention``
times the same modules (``omkit.bench.build_attention``) from the command line.
"""
from __future__ import annotations

import pytest
import torch

import omkit
from omkit.bench import SHAPES, build_attention

from .conftest import SMOKE

SHAPE = (2, 8, 4, 8, 8) if SMOKE else SHAPES["paper"]


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("name", omkit.list_attention())
def test_attention(run_benchmark, device, name, backward):
    b, c, *spatial = SHAPE
    g = torch.Generator().manual_seed(0)
    features = torch.randn((b, c, *spatial), generator=g).to(device).requires_grad_(backward)
    guidance = torch.rand((b, 1, *spatial), generator=g).to(device)
    torch.manual_seed(0)
    module = build_attention(name, c).to(device).train(backward)
    guided = bool(getattr(module, "guided", False))

    def call():
        with torch.set_grad_enabled(backward):
            out = module(features, guidance) if guided else module(features)
        if backward:
            out.square().mean().backward()
            module.zero_grad(set_to_none=True)
            features.grad = None
        return out

    out = run_benchmark(call, rounds=10, group=f"attention-{'backward' if backward else 'forward'}",
                        shape=list(SHAPE), parameters=sum(p.numel() for p in module.parameters()))
    assert out.shape[0] == b and bool(torch.isfinite(out).all())
