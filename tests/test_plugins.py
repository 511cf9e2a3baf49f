"""The pluggy plug-in core: built-ins, entry points, blocking, errors, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest
import torch

import omkit
from omkit import hookspecs, plugin_manager
from omkit.registry import PluginError

from conftest import REPO, TINY_PATCH, TINY_WIDTH


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch):
    """Every test starts and ends with the default plug-ins."""
    monkeypatch.delenv(plugin_manager.BLOCK_ENV, raising=False)
    omkit.setup_plugins()
    yield
    monkeypatch.undo()  # drop fake entry points and env before reloading
    os.environ.pop(plugin_manager.BLOCK_ENV, None)
    omkit.setup_plugins()


def _plugin(**hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: omkit.hookimpl(fn) for name, fn in hooks.items()})


def _fake_entry_points(monkeypatch, *eps):
    real = metadata.entry_points

    def entry_points(**kw):
        if kw.get("group") == plugin_manager.ENTRY_POINT_GROUP:
            return list(eps)
        return real(**kw)

    monkeypatch.setattr(plugin_manager.metadata, "entry_points", entry_points)


def test_builtins_register_through_the_hooks():
    plugins = omkit.get_plugins()
    assert {"backbones", "attention", "presets"} <= set(plugins.plugins)
    assert all(plugins.plugins[n].source == "builtin" for n in ("backbones", "attention", "presets"))
    assert plugins.plugins["attention"].registered["attention"] == ["cga", "cga_minus", "cga_n", "cga_t", "se"]
    # the built-ins are ordinary pluggy plug-ins implementing the specs
    impls = {impl.plugin_name for impl in plugins.pm.hook.omkit_register_attention.get_hookimpls()}
    assert "attention" in impls


def test_every_hookspec_is_documented():
    specs = [name for name in dir(hookspecs) if name.startswith("omkit_")]
    assert set(plugin_manager.REGISTER_HOOKS) == set(specs)
    for name in specs:
        assert len((getattr(hookspecs, name).__doc__ or "").strip()) > 40, f"{name} lacks a docstring"


def test_third_party_plugin_in_code_registers_and_builds():
    class Gate(torch.nn.Module):
        guided = False

        def __init__(self, channels):
            super().__init__()
            self.gate = torch.nn.Parameter(torch.ones(channels))

        def forward(self, x):
            return x * self.gate.view(1, -1, 1, 1, 1)

    plugin = _plugin(omkit_register_attention=lambda registry: registry.add("gate", Gate))
    omkit.setup_plugins(extra_plugins={"gate_plugin": plugin})
    assert "gate" in omkit.list_attention()
    assert omkit.get_plugins().plugins["gate_plugin"].registered == {"attention": ["gate"]}
    out = omkit.create_model("omnet", width=TINY_WIDTH, attention="gate")(torch.randn(1, 4, *TINY_PATCH))
    assert out.task2.shape[1] == 5


def test_duplicate_name_is_an_error_naming_both_plugins():
    plugin = _plugin(omkit_register_attention=lambda registry: registry.add("se", torch.nn.Identity))
    with pytest.raises(PluginError, match=r"attention 'se' is registered by two plug-ins: 'attention' and 'copycat'"):
        omkit.setup_plugins(extra_plugins={"copycat": plugin})


def test_exception_inside_a_hook_names_the_plugin_and_how_to_disable_it():
    def broken(registry):
        raise ZeroDivisionError("oops")

    with pytest.raises(PluginError) as info:
        omkit.setup_plugins(extra_plugins={"fragile": _plugin(omkit_register_backbones=broken)})
    message = str(info.value)
    assert "'fragile'" in message and "omkit_register_backbones" in message and "ZeroDivisionError: oops" in message
    assert "OMKIT_BLOCK_PLUGINS=fragile" in message


def test_broken_entry_point_names_the_plugin_and_core_works_when_blocked(monkeypatch):
    ep = metadata.EntryPoint(name="broken_attention", value="omkit_no_such_module.plugin", group="omkit")
    _fake_entry_points(monkeypatch, ep)
    with pytest.raises(PluginError, match=r"'broken_attention'.*failed to import.*ModuleNotFoundError.*OMKIT_BLOCK_PLUGINS=broken_attention"):
        omkit.setup_plugins()
    # blocked by argument, then by environment: the core keeps working
    omkit.setup_plugins(block=["broken_attention"])
    assert "cga" in omkit.list_attention()
    monkeypatch.setenv(plugin_manager.BLOCK_ENV, "broken_attention")
    omkit.setup_plugins()
    assert omkit.create_model("omnet_cga", width=TINY_WIDTH) is not None


def test_blocking_a_builtin_removes_what_it_registered():
    omkit.setup_plugins(block=["attention"])
    assert omkit.list_attention() == []
    with pytest.raises(KeyError, match="unknown attention 'se'; available: \\(none\\)"):
        omkit.create_attention("se", 8)


def test_cli_plugins_json_lists_builtins():
    result = subprocess.run([sys.executable, "-m", "omkit", "plugins", "--json"], capture_output=True, text=True, check=True)
    data = json.loads(result.stdout)
    names = {p["name"]: p for p in data["plugins"]}
    assert names["presets"]["registered"]["preset"][:3] == ["mc1", "mc2", "mc3"]


def test_cli_models_params_prints_table_one_counts():
    result = subprocess.run([sys.executable, "-m", "omkit", "models", "mc1", "--params", "--json"],
                            capture_output=True, text=True, check=True)
    (row,) = json.loads(result.stdout)
    assert row["preset"] == "mc1" and abs(row["parameters"] / 13.813e6 - 1) < 1e-3


# -- the example third-party package, really pip-installed -------------------------

EXAMPLES = {"omkit-eca": REPO / "examples" / "omkit-eca", "omkit-srm": REPO / "examples" / "omkit-srm"}


@pytest.fixture(scope="module")
def installed_example():
    """The two example packages, pip-installed for this module and removed after it."""
    pip = [sys.executable, "-m", "pip"]
    if subprocess.run(pip + ["--version"], capture_output=True).returncode != 0:
        pytest.skip("pip is not available in this interpreter")
    cmd = pip + ["install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", *map(str, EXAMPLES.values())]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    yield
    subprocess.run(pip + ["uninstall", "--yes", "--quiet", *EXAMPLES], capture_output=True)
    omkit.setup_plugins()


def _omkit_cli(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != plugin_manager.BLOCK_ENV}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "omkit", *args], capture_output=True, text=True, env=env)


def test_installed_example_plugin_is_discovered_and_drives_omnet_heads(installed_example):
    listing = _omkit_cli("plugins")
    assert listing.returncode == 0, listing.stderr
    assert "eca  [omkit-eca 0.1.0: omkit_eca.plugin]" in listing.stdout
    assert "attention: eca" in listing.stdout

    omkit.setup_plugins()
    assert "eca" in omkit.list_attention()
    model = omkit.create_model("omnet", width=TINY_WIDTH, attention="eca")
    assert all(type(h.attention).__name__ == "ECABlock" for h in model.heads)
    outputs = model.forward_tasks([torch.randn(2, 4, *TINY_PATCH)] * 3)
    sum(o.mean() for o in outputs).backward()
    assert model.heads[2].attention.conv.weight.grad is not None


def test_installed_example_plugin_can_be_blocked(installed_example):
    blocked = _omkit_cli("plugins", env_extra={plugin_manager.BLOCK_ENV: "eca"})
    assert blocked.returncode == 0, blocked.stderr
    assert "eca  [" not in blocked.stdout and "blocked: eca" in blocked.stdout
    via_flag = _omkit_cli("plugins", "--block", "eca")
    assert "eca  [" not in via_flag.stdout


@pytest.mark.parametrize("attention", ["eca", "srm"])
def test_installed_examples_train_window_consistently_predict_dense_and_tiles_and_export(installed_example, tmp_path,
                                                                                         attention):
    """Each example declares its pooling and nothing else: trained as dense inference infers,
    ``auto`` predicts it dense, and tiles and export run it too."""
    from omkit.data.synthetic import make_dataset

    make_dataset(tmp_path / "data", num_cases=1, shape=(16, 32, 32))
    run = tmp_path / "run"
    trained = _omkit_cli("train", "--preset", "omnet", "--attention", attention, "-i", str(tmp_path / "data"),
                         "-o", str(run), "--width", "0.125", "--train-mode", "windows", "--patch-size", "8,16,16",
                         "--window-block", "4,8,8", "--window-blocks", "1,2,2", "--window-context", "0,4,4",
                         "--stage-epochs", "1,1,1", "--patches-per-epoch", "2", "--batch-per-task", "1",
                         "--device", "cpu", "--no-progress")
    assert trained.returncode == 0, trained.stderr[-2000:]
    case = next(p for p in (tmp_path / "data").iterdir() if p.is_dir())
    for mode, said in (("auto", "omkit predict: dense inference (auto)"), ("tiles", "wrote 1 case(s)")):
        predicted = _omkit_cli("predict", "--no-progress", "-i", str(case), "-m", str(run / "model.pt"),
                               "-o", str(tmp_path / mode), "--inference", mode)
        assert predicted.returncode == 0, predicted.stderr[-2000:]
        assert said in predicted.stdout and "DenseFallbackWarning" not in predicted.stderr
        assert len(list((tmp_path / mode).glob("*.nii.gz"))) == 1
    from omkit.testing import onnx_available

    formats = {"net.pt2": "torch-export", **({"net.onnx": "onnx"} if onnx_available() else {})}
    for name, format_ in formats.items():
        exported = _omkit_cli("export", "-m", str(run / "model.pt"), "-o", str(tmp_path / name),
                              "--format", format_, "--tile-size", "8,16,16", "--tile-keep", "4,8,8")
        assert exported.returncode == 0, exported.stderr[-2000:]
        assert (tmp_path / name).stat().st_size > 0
