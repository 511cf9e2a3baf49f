"""Every registered attention module, built-in or plug-in, on the same features: forward,
and forward + backward, at the paper's training shape (20 patches x 32 channels x
16 x 32 x 32). The names come from the registry when the suite is collected, so a
plug-in installed in the environment (an entry point of group ``omkit``) is timed next
to CGA and SE by ``make bench`` without editing this file; ``omkit bench attention``
times the same step (``omkit.bench.attention_step``) from the command line.
"""
from __future__ import annotations

import pytest
import torch

import omkit
from omkit.bench import SHAPES, attention_step

from .conftest import SMOKE

SHAPE = (2, 8, 4, 8, 8) if SMOKE else SHAPES["paper"]


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("name", omkit.list_attention())
def test_attention(run_benchmark, device, name, backward):
    call, module = attention_step(name, SHAPE, backward, device)
    out = run_benchmark(call, rounds=10, group=f"attention-{'backward' if backward else 'forward'}",
                        shape=list(SHAPE), parameters=sum(p.numel() for p in module.parameters()))
    assert out.shape[0] == SHAPE[0] and bool(torch.isfinite(out).all())
