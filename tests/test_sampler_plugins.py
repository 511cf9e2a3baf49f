"""A third-party sampler with an option, registered as a pluggy plug-in: it
keeps the sampler contract, its option comes from a ``--samplers`` spec, and
``omkit train`` trains with it."""
from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

import omkit
from omkit.cli import main as cli_main
from omkit.data import RegionSampler, parse_sampler_spec, synthetic

from test_samplers import check_sampler_contract


class MarginSampler(RegionSampler):
    """Centres inside the brain at least ``margin`` voxels from every border of
    the (cropped) volume, so a patch around it needs less padding."""

    task = 1
    key = "my_sampler"
    built: list = []  # the margins instances were made with (the test reads it)

    def __init__(self, margin: int = 0):
        if int(margin) != margin or margin < 0:
            raise ValueError(f"margin must be a whole number >= 0, got {margin!r}")
        self.margin = int(margin)
        type(self).built.append(self.margin)

    def region(self, pre) -> np.ndarray:
        inner = np.zeros(pre.shape, dtype=bool)
        m = self.margin
        inner[tuple(slice(m, n - m) for n in pre.shape)] = True
        return inner & np.asarray(pre.brain_mask, dtype=bool)


@omkit.hookimpl
def _register(registry):
    registry.add("my_sampler", MarginSampler)


PLUGIN = types.SimpleNamespace(omkit_register_samplers=_register)


@pytest.fixture
def with_plugin():
    """The plug-in registered through the plug-in manager, as an embedding
    pipeline would; every test ends with the default plug-ins again."""
    omkit.setup_plugins(extra_plugins={"margin_plugin": PLUGIN})
    MarginSampler.built.clear()
    yield
    omkit.setup_plugins()


@pytest.fixture(scope="module")
def cases():
    from omkit.data import preprocess_case

    return [preprocess_case(synthetic.make_case((24, 40, 40), seed=s)) for s in (0, 1)]


def test_plugin_sampler_registers_and_keeps_the_contract(with_plugin, cases):
    assert "my_sampler" in omkit.list_samplers()
    assert omkit.get_plugins().plugins["margin_plugin"].registered == {"sampler": ["my_sampler"]}
    check_sampler_contract("my_sampler", cases)
    registry = omkit.get_plugins().registry("sampler")
    sampler = parse_sampler_spec("my_sampler(margin=3)", registry)
    assert sampler.margin == 3 and sampler.cache_key == "my_sampler(margin=3)"
    assert not sampler.region(cases[0])[:3].any() and sampler.region(cases[0])[3:-3].any()
    mixture = parse_sampler_spec("brain:1+my_sampler(margin=2):1", registry)
    assert mixture.parts[1][0].margin == 2
    with pytest.raises(ValueError, match=r"sampler 'my_sampler' has no option 'margn'; it accepts margin \(default 0\)"):
        parse_sampler_spec("my_sampler(margn=2)", registry)
    with pytest.raises(ValueError, match="sampler 'my_sampler': margin must be a whole number >= 0, got 1.5"):
        parse_sampler_spec("my_sampler(margin=1.5)", registry)


def test_cli_trains_with_a_plugin_sampler_and_its_option(with_plugin, tmp_path, capsys):
    synthetic.make_dataset(tmp_path / "data", num_cases=2, shape=(16, 32, 32), seed=60)
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = ["train", "--preset", "omnet_cga", "-i", str(tmp_path / "data"), "-o", str(run),
            "--samplers", "brain,my_sampler(margin=2),core", "--width", "0.125", "--patch-size", "8,16,16",
            "--stage-epochs", "0,1,0", "--patches-per-epoch", "4", "--batch-per-task", "2", "--max-steps", "2",
            "--cache-dir", str(cache), "--seed", "1", "--threads", "1", "--device", "cpu", "--no-progress"]
    torch_threads = torch.get_num_threads()
    try:
        assert cli_main(args) == 0, capsys.readouterr().err
    finally:
        torch.set_num_threads(torch_threads)
    # the option reached the sampler ...
    assert 2 in MarginSampler.built
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["config"]["samplers"] == ["brain", "my_sampler(margin=2)", "core"]
    assert resolved["sampler_keys"][1] == "my_sampler(margin=2)"
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2
    # ... and its regions: cached per case under a key holding the option, 2 voxels clear of every border
    regions = sorted(cache.rglob("region-my_sampler(margin=2).npy"))
    assert len(regions) == 2
    for path in regions:
        shape = tuple(np.load(path.parent / "brain_mask.npy", mmap_mode="r").shape)
        index = np.stack(np.unravel_index(np.load(path), shape), axis=1)
        assert len(index) and (index >= 2).all() and (index < np.array(shape) - 2).all()
    # a misspelt option is a one-line error naming --samplers, the spec and what the sampler accepts
    bad = list(args)
    bad[bad.index("brain,my_sampler(margin=2),core")] = "brain,my_sampler(margn=2),core"
    bad[bad.index(str(run))] = str(tmp_path / "bad")
    capsys.readouterr()
    assert cli_main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--samplers 'my_sampler(margn=2)'" in err and "it accepts margin (default 0)" in err
    assert not (tmp_path / "bad").exists()


def test_options_with_commas_split_per_task_through_the_cli(with_plugin, tmp_path):
    import argparse

    from omkit.cli import train as train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(["-i", "D", "-o", str(tmp_path / "R"),
                              "--samplers", "brain:1+my_sampler(margin=1, size=(2, 3)):1,dilated_tumor(radius=3),core"])
    cfg = train_cli.config_from_args(args)
    assert cfg.samplers == ("brain:1+my_sampler(margin=1, size=(2, 3)):1", "dilated_tumor(radius=3)", "core")
    with pytest.raises(SystemExit):  # two specs: argparse refuses it
        parser.parse_args(["-i", "D", "-o", "R", "--samplers", "brain,my_sampler(margin=1, size=2)"])
