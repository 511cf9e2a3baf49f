"""Shared fixtures. Real BraTS cases are read from ../shared/data (or
$OMKIT_SAMPLE_DATA); tests that need them skip with a reason when absent."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = Path(os.environ.get("OMKIT_SAMPLE_DATA", REPO.parent / "shared" / "data" / "brats2018-sample"))
SAMPLE_2023 = Path(os.environ.get("OMKIT_SAMPLE_DATA_2023", REPO.parent / "shared" / "data" / "brats2023-naming-sample"))

# Tiny tensors: thread start-up costs more than it saves, and on a loaded
# machine extra threads make it much worse (OMKIT_TEST_THREADS overrides).
torch.set_num_threads(int(os.environ.get("OMKIT_TEST_THREADS", "1")))

# Tests use width-reduced models on tiny patches (spatial sizes divisible by 8).
TINY_WIDTH = 0.125
TINY_PATCH = (8, 16, 16)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def sample_data() -> Path:
    if not SAMPLE_DATA.is_dir() or not any(SAMPLE_DATA.iterdir()):
        pytest.skip(f"BraTS 2018 sample cases not found at {SAMPLE_DATA} (set OMKIT_SAMPLE_DATA)")
    return SAMPLE_DATA


@pytest.fixture
def sample_2023() -> Path:
    if not SAMPLE_2023.is_dir():
        pytest.skip(f"BraTS 2023-naming sample not found at {SAMPLE_2023} (set OMKIT_SAMPLE_DATA_2023)")
    return SAMPLE_2023


def cli_in_process(args, capsys):
    """``(exit status, captured output)`` of ``omkit ARGS`` run in this process; torch's thread
    count (which ``--threads`` sets) put back after it."""
    from omkit.cli import main

    threads = torch.get_num_threads()
    try:
        code = main(args)
    finally:
        torch.set_num_threads(threads)
    return code, capsys.readouterr()


def model_workspace(root: Path, shape=(16, 40, 40), preset: str = "omnet_cga") -> Path:
    """``root`` with one synthetic case under ``data/`` and a tiny random ``preset`` model
    file ``model.pt`` (seeded): what the command-line tests predict with."""
    import omkit
    from omkit.checkpoint import save_model
    from omkit.data.synthetic import make_dataset

    make_dataset(root / "data", num_cases=1, shape=shape)
    torch.manual_seed(0)
    save_model(omkit.create_model(preset, width=TINY_WIDTH), root / "model.pt")
    return root


# -- a backbone without spatial context: the oracle of window-consistent computation ----------

class PointwiseBackbone(nn.Module):
    """Features of each voxel from that voxel alone (1x1x1 convs, no pooling)."""

    window_consistent = True

    def __init__(self, in_channels: int = 4, width: float = 1.0, min_divisor: int = 8):
        super().__init__()
        self.out_channels = max(2, int(32 * width))
        self.min_divisor = min_divisor
        c = self.out_channels
        self.net = nn.Sequential(nn.Conv3d(in_channels, c, 1), nn.ReLU(), nn.Conv3d(c, c, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def centre_taps_only(model: nn.Module) -> nn.Module:
    """Every 3x3x3 conv of the heads reduced to its centre tap (a 1x1x1 conv)."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d) and m.kernel_size == (3, 3, 3):
            with torch.no_grad():
                centre = m.weight[..., 1, 1, 1].clone()
                m.weight.zero_()
                m.weight[..., 1, 1, 1] = centre
    return model


class ScaleAttention(nn.Module):
    """An unguided attention plug-in that declares no window pooling (dense inference and
    window-consistent training cannot run it)."""

    guided = False

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1, 1)


# -- plug-ins registered in code for one test module ------------------------------------------

def plugin_fixture(name: str, scope: str = "module", **kinds: dict):
    """An autouse fixture registering the classes of ``kinds`` (hook kind, e.g. ``backbones`` or
    ``attention`` -> {registered name: class}) as the extra plug-in ``name`` for the tests of
    ``scope``, and the plug-ins as they were after them. Assign it to a module-level name."""
    import types

    import omkit

    def hook(classes):
        @omkit.hookimpl
        def register(registry):
            for key, cls in classes.items():
                registry.add(key, cls)
        return register

    plugin = types.SimpleNamespace(**{f"omkit_register_{kind}": hook(classes) for kind, classes in kinds.items()})

    @pytest.fixture(scope=scope, autouse=True)
    def registered():
        omkit.setup_plugins(extra_plugins={name: plugin})
        yield
        omkit.setup_plugins()

    return registered


RUNNER = REPO / "runner" / "omkit_runner.py"


def run_runner(*args) -> subprocess.CompletedProcess:
    """runner/omkit_runner.py (the exported model's runner) in a fresh interpreter where
    `import omkit` fails."""
    block = "import sys; sys.modules['omkit'] = None; sys.argv = sys.argv[1:]; import runpy; " \
            f"runpy.run_path({str(RUNNER)!r}, run_name='__main__')"
    return subprocess.run([sys.executable, "-c", block, str(RUNNER), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
