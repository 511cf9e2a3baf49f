"""One vocabulary across the commands: the same setting has the same flag and
default in every command that offers it, and help texts show defaults read
from the code, not restated by hand."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from omkit.cli import build_parser
from omkit.inference import DenseSettings
from omkit.training import TrainConfig


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def test_every_command_is_read():
    assert {"train", "predict", "evaluate", "explain", "demo", "ablation"} <= set(commands())


@pytest.mark.parametrize("flag", ["-i", "-o", "--device", "--max-minutes", "--tile-size", "--tile-keep",
                                  "--tile-stride", "--tile-batch", "--roi-dilation", "--no-postprocess",
                                  "--disable-step", "--enable-step", "--step-option", "--samplers", "--lr", "--width", "--force", "--precision",
                                  "--inference", "--dense-max-voxels", "--dense-halo"])
def test_a_flag_means_one_setting_everywhere(flag):
    found = {name: options(p)[flag] for name, p in commands().items() if flag in options(p)}
    assert len(found) >= 2, f"{flag} is offered by fewer than two commands: {sorted(found)}"
    dests = {a.dest for a in found.values()}
    assert len(dests) == 1, f"{flag} sets different settings: {dests}"
    if flag == "--device":
        assert {a.default for a in found.values()} == {"auto"}
    if flag in ("--inference", "--dense-halo"):  # predict, demo, ablation
        assert {"predict", "demo", "ablation"} <= set(found)
        assert {a.default for a in found.values()} == ({"auto"} if flag == "--inference" else {DenseSettings().halo})
        assert all("(default" in a.help for a in found.values())
    if flag in ("-i", "-o"):
        long = {"-i": "--input", "-o": "--output"}[flag]
        assert all(long in a.option_strings for a in found.values())


def test_retired_spellings_are_gone():
    retired = {"--data", "--out", "--dilation", "--roi-size", "--keep", "--stride", "--sw-batch-size",
               "--train-minutes", "--transfer-thresholds", "--pred", "--postprocess", "--curriculum"}
    for name, parser in commands().items():
        assert not retired & set(options(parser)), f"omkit {name}: {sorted(retired & set(options(parser)))}"
    # --preset builds a model wherever it appears; predict checks model files with --expect-preset
    assert "--preset" not in options(commands()["predict"]) and "--expect-preset" in options(commands()["predict"])


def test_training_flags_are_trainconfig_fields_with_their_defaults():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    train = options(commands()["train"])
    for name in ("lr", "momentum", "weight_decay", "lr_step_epochs", "lr_gamma", "batch_per_task", "patch_size",
                 "transfer_tumor_threshold", "transfer_core_threshold", "attention", "model_options", "samplers"):
        flag = "--" + name.replace("_", "-")
        assert flag in train, f"TrainConfig.{name} has no flag {flag}"
        assert train[flag].dest == name
        default = fields[name].default
        if default not in (None, dataclasses.MISSING):
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else f"{default:g}" \
                if isinstance(default, float) else str(default)
            assert f"(default {shown})" in train[flag].help, (flag, train[flag].help)


def test_the_demo_shows_its_recipes_defaults():
    from omkit.training.config import RECIPES

    demo = options(commands()["demo"])
    recipe = RECIPES["cpu-budget"]
    assert f"(default {recipe['width']:g})" in demo["--width"].help
    assert f"(default {recipe['optimizer']})" in demo["--optimizer"].help
