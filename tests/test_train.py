"""Training: curriculum plans, run folder, bit-exact resume, budgets, presets, k-fold, CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import omkit
from omkit.checkpoint import load_model
from omkit.cli import main as cli_main
from omkit.data import CaseError, synthetic
from omkit.training import TrainConfig, Trainer, plan_stages, train

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids
    spin-wait contention that makes multi-threaded CPU steps ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = dict(width=0.125, patch_size=(8, 16, 16), batch_per_task=2, patches_per_epoch=(4, 4, 2), log_every=1, progress=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.make_dataset(root / "data", num_cases=3, shape=(16, 32, 32), seed=10)
    return root / "data"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def config(data_dir, cache_dir, out, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "preset": "omnet_cga", "input": str(data_dir), "output": str(out),
                          "cache_dir": str(cache_dir), "stage_epochs": (1, 1, 1), **kw})


def _state(run_dir):
    # the training checkpoint is tensors and plain data: no pickled objects
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


# -- curriculum plans ------------------------------------------------------------------

def test_plan_stages_follow_presets():
    plan = lambda name, *a: [(s.tasks, s.epochs) for s in plan_stages(omkit.get_preset(name), *a)]  # noqa: E731
    assert plan("omnet_cga", (1, 1, 18)) == [((0,), 1), ((0, 1), 1), ((0, 1, 2), 18)]
    assert plan("omnet", (1, 1, 18), 30) == [((0,), 1), ((0, 1), 1), ((0, 1, 2), 28)]
    assert plan("omnet0", (1, 1, 18)) == [((0, 1, 2), 20)]
    assert plan("omnetd", (1, 1, 18)) == [((0, 1, 2), 20)]
    assert plan("mc1", (1, 1, 18)) == [((0,), 20)]
    assert plan("mc2", (1, 1, 18)) == [((0, 1), 20)]
    assert plan("omnet_cga", (0, 2, 3)) == [((0, 1), 2), ((0, 1, 2), 3)]
    with pytest.raises(ValueError, match="--epochs 2 leaves no epoch for stage 3"):
        plan_stages(omkit.get_preset("omnet"), (1, 1, 18), 2)


def test_config_validation_names_the_option():
    with pytest.raises(ValueError, match="--stage-epochs"):
        TrainConfig(stage_epochs=(1, 2))
    with pytest.raises(ValueError, match="--patch-size: each size must be divisible by 8"):
        TrainConfig(patch_size=(12, 16, 16))
    with pytest.raises(ValueError, match="--precision: fp16 .* needs --device cuda; on a CPU use bf16"):
        TrainConfig(precision="fp16", device="cpu")
    with pytest.raises(ValueError, match="--precision: must be one of fp32, bf16, fp16"):
        TrainConfig(precision="half")
    with pytest.raises(ValueError, match="--fold"):
        TrainConfig(folds=5)
    assert TrainConfig(patches_per_epoch=7).patches_per_epoch == (7, 7, 7)


@pytest.mark.parametrize("settings, message", [
    ({"lr_gamma": 0.0}, r"--lr-gamma: must be in \(0, 1\]"),
    ({"lr_gamma": 1.5}, r"--lr-gamma: must be in \(0, 1\]"),
    ({"lr": float("nan")}, "--lr: must be a finite number"),
    ({"lr": float("inf")}, "--lr: must be a finite number"),
    ({"width": float("nan")}, "--width: must be a finite number"),
    ({"transfer_tumor_threshold": float("nan")}, "--transfer-tumor-threshold: must be a finite number"),
    ({"transfer_core_threshold": 1.5}, r"--transfer-core-threshold: must be a fraction in \[0, 1\]"),
    ({"max_minutes": float("inf")}, "--max-minutes: must be a finite number"),
    ({"device": "gpu"}, "--device must be|--device: must be"),
    ({"samplers": ("brain", "dilated_tumor(radius=3", "core")}, "--samplers 'dilated_tumor\\(radius=3': unbalanced"),
    ({"attention": ""}, "--attention: must be the name of an attention plug-in"),
    ({"model_options": {"width": 2}}, "--model-options: width has its own option, --width"),
])
def test_config_validation_is_one_line_naming_the_flag(settings, message):
    with pytest.raises(ValueError, match=message) as info:
        TrainConfig(**settings)
    assert "\n" not in str(info.value)


def test_config_defaults_are_the_protocol():
    import dataclasses

    from omkit import protocol

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    assert defaults["stage_epochs"] == protocol.STAGE_EPOCHS and defaults["patch_size"] == protocol.PATCH_SIZE
    assert defaults["patches_per_epoch"] == protocol.PATCHES_PER_EPOCH
    assert (defaults["transfer_tumor_threshold"], defaults["transfer_core_threshold"]) == (
        protocol.TRANSFER_TUMOR_THRESHOLD, protocol.TRANSFER_CORE_THRESHOLD)
    assert (defaults["lr"], defaults["momentum"], defaults["weight_decay"], defaults["lr_step_epochs"],
            defaults["lr_gamma"], defaults["batch_per_task"]) == (
        protocol.LR, protocol.MOMENTUM, protocol.WEIGHT_DECAY, protocol.LR_STEP_EPOCHS, protocol.LR_GAMMA,
        protocol.BATCH_PER_TASK)
    assert defaults["device"] == "auto" and defaults["attention"] is None
    assert TrainConfig.defaults()["model_options"] == {}
    assert not {"data", "out", "dilation", "model_kw", "tumor_threshold", "core_threshold"} & set(TrainConfig.defaults())
    # every recipe is a valid configuration
    from omkit.training import RECIPES

    for name in RECIPES:
        TrainConfig.from_recipe(name, {})


def test_paper_optimiser_defaults(data_dir, cache_dir, tmp_path):
    trainer = Trainer(config(data_dir, cache_dir, tmp_path / "run"))
    group = trainer.optimizer.param_groups[0]
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-3, 0.99, 5e-4)
    assert (trainer.scheduler.step_size, trainer.scheduler.gamma) == (4, 0.5)
    assert trainer.transfer is not None and trainer.transfer.tumor_threshold == 0.4
    assert trainer.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")  # --device auto
    trainer.close()
    trainer = Trainer(config(data_dir, cache_dir, tmp_path / "g", lr_gamma=0.25, transfer_tumor_threshold=0.3,
                             transfer_core_threshold=0.7))
    assert trainer.scheduler.gamma == 0.25
    assert (trainer.transfer.tumor_threshold, trainer.transfer.core_threshold) == (0.3, 0.7)
    trainer.close()
    assert Trainer(config(data_dir, cache_dir, tmp_path / "r0", preset="omnet0")).transfer is None
    assert Trainer(config(data_dir, cache_dir, tmp_path / "rd", preset="omnetd")).transfer is not None


def test_short_budget_options_adam_and_sampler_mixture(data_dir, cache_dir, tmp_path):
    from omkit.data import MixtureSampler

    trainer = Trainer(config(data_dir, cache_dir, tmp_path / "run", optimizer="adam", lr=2e-3,
                             samplers=("brain:1+dilated_tumor:1", "dilated_tumor", "core")))
    assert isinstance(trainer.optimizer, torch.optim.Adam) and trainer.optimizer.param_groups[0]["lr"] == 2e-3
    assert isinstance(trainer.samplers[0], MixtureSampler)
    assert trainer.samplers[1].cache_key == "dilated_tumor(radius=5)"
    trainer.close()
    run = train(config(data_dir, cache_dir, tmp_path / "run2", optimizer="adam",
                       samplers=("brain:1+dilated_tumor:1", "dilated_tumor", "core")))
    assert (run / "model.pt").is_file()
    with pytest.raises(ValueError, match="--optimizer: must be sgd or adam"):
        config(data_dir, cache_dir, tmp_path / "bad", optimizer="rmsprop")


# -- a whole run ---------------------------------------------------------------------------

def test_run_folder_contents(data_dir, cache_dir, tmp_path):
    run = train(config(data_dir, cache_dir, tmp_path / "run"))
    # 3 stages x 1 epoch x 2 steps
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] and metrics["steps"] == 6 and metrics["epochs"] == 3
    assert [e["stage"] for e in metrics["per_epoch"]] == [1, 2, 3]
    assert metrics["per_epoch"][0]["loss_task2"] is None and metrics["per_epoch"][2]["loss_task3"] > 0
    assert metrics["patches_per_s"] > 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,stage,lr,loss_task1") and len(rows) == 7
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["config"]["width"] == 0.125 and resolved["stages"][2]["tasks"] == [1, 2, 3]
    assert resolved["cases"] == ["Synth18_000", "Synth18_001", "Synth18_002"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt", "stage1.pt", "stage2.pt", "stage3.pt"]
    ckpt = _state(run)
    assert {"model", "optimizer", "scheduler", "scaler", "sampler", "rng", "state", "config"} <= set(ckpt)
    assert ckpt["state"]["finished"] and ckpt["state"]["stage"] == 3
    model, meta = load_model(run / "model.pt", expect_preset="omnet_cga")
    assert meta.label_convention == "2018" and meta.patch_size == (8, 16, 16)
    assert meta.preprocessing["normalization"] == "zscore-nonzero" and meta.width == 0.125
    assert meta.training["steps"] == 6
    torch.testing.assert_close(model.state_dict(), ckpt["model"], rtol=0, atol=0)
    # an existing run folder is never overwritten silently
    with pytest.raises(FileExistsError, match="pass --force"):
        train(config(data_dir, cache_dir, run))
    train(config(data_dir, cache_dir, run, max_steps=1), force=True)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 1
    other = tmp_path / "not_a_run"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an omkit run folder"):
        train(config(data_dir, cache_dir, other), force=True)
    assert (other / "keep.txt").exists()


def test_resume_is_bit_exact(data_dir, cache_dir, tmp_path):
    straight = train(config(data_dir, cache_dir, tmp_path / "straight"))
    # stop after 3 steps: inside stage 2, mid-epoch state, dropout RNG in flight
    split = train(config(data_dir, cache_dir, tmp_path / "split", max_steps=3))
    stopped = _state(split)
    assert stopped["state"]["global_step"] == 3 and not stopped["state"]["finished"]
    assert stopped["state"]["stage"] == 1 and stopped["state"]["step"] == 1
    assert json.loads((split / "metrics.json").read_text())["stopped_by"] == "max_steps"
    restarted = tmp_path / "restarted"
    shutil.copytree(split, restarted)
    train(config(data_dir, cache_dir, tmp_path / "split"), resume=True)
    a, b = _state(straight), _state(split)
    assert a["state"]["global_step"] == b["state"]["global_step"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # the same from a fresh process: everything comes from the checkpoint
    result = subprocess.run(
        [sys.executable, "-m", "omkit", "train", "--resume", "-i", str(data_dir), "-o", str(restarted),
         "--threads", "1", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for key, value in a["model"].items():
        assert torch.equal(value, _state(restarted)["model"][key]), key
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    # the logged losses are the same too (timings aside)
    keys = ("step", "stage", "lr", "loss_task1", "loss_task2", "loss_task3", "loss_total", "patches")
    table = lambda ckpt: np.array([[row[k] for k in keys] for row in ckpt["state"]["rows"]], dtype=float)  # noqa: E731
    np.testing.assert_array_equal(table(a), table(b))
    # resuming a run with different training settings is refused, naming the option
    with pytest.raises(ValueError, match="--width: the run .* used 0.125, not 0.25"):
        train(config(data_dir, cache_dir, tmp_path / "split", width=0.25), resume=True)
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    (fewer / "Synth18_000").symlink_to(data_dir / "Synth18_000")
    with pytest.raises(ValueError, match="--input: .* gives other training cases"):
        train(config(fewer, cache_dir, tmp_path / "split"), resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(config(data_dir, cache_dir, tmp_path / "none"), resume=True)


class _Payload:
    """Unpickling this runs code: what a crafted checkpoint would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_crafted_checkpoint_is_refused_without_running_it(data_dir, cache_dir, tmp_path):
    run = train(config(data_dir, cache_dir, tmp_path / "run", max_steps=1))
    last = run / "checkpoints" / "last.pt"
    payload = _state(run)
    assert isinstance(payload["rng"]["per_rank"][0]["numpy"]["keys"], torch.Tensor)  # not a pickled numpy state
    marker = tmp_path / "ran.txt"
    payload["state"]["stopped_by"] = _Payload(marker)
    torch.save(payload, last)
    with pytest.raises(ValueError) as info:
        train(config(data_dir, cache_dir, run), resume=True)
    message = str(info.value)
    assert str(last) in message and "refusing" in message and "\n" not in message
    assert not marker.exists()
    # the command line says the same in one line, and runs nothing either
    result = subprocess.run(
        [sys.executable, "-m", "omkit", "train", "--resume", "-i", str(data_dir), "-o", str(run), "--no-progress",
         "--cache-dir", str(cache_dir), "--threads", "1"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 2 and str(last) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    # a file that is not a checkpoint at all: one line too
    last.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable training checkpoint"):
        train(config(data_dir, cache_dir, run), resume=True)


def test_attention_plugin_and_model_options_without_a_preset(data_dir, cache_dir, tmp_path):
    run = train(config(data_dir, cache_dir, tmp_path / "run", preset="omnet", attention="se", max_steps=1))
    model, meta = load_model(run / "model.pt")
    assert meta.model_options["attention"] == "se"
    assert "SE" in {type(m).__name__ for m in model.modules()}
    assert json.loads((run / "config.json").read_text())["config"]["attention"] == "se"
    with pytest.raises(ValueError, match="--attention: unknown attention 'nope'"):
        train(config(data_dir, cache_dir, tmp_path / "bad", attention="nope"))
    with pytest.raises(ValueError, match=r"--model-options bogus=1: cannot build 'omnet' with it \(TypeError: .*'bogus'"):
        train(config(data_dir, cache_dir, tmp_path / "bad", preset="omnet", model_options={"bogus": 1}))
    assert not (tmp_path / "bad").exists()  # settings errors come before the run folder is made


def test_asymmetry_input_is_trained_and_recorded(data_dir, cache_dir, tmp_path):
    from omkit.inference import SegmentationPredictor

    run = train(config(data_dir, cache_dir, tmp_path / "run", input_features="mri+asymmetry", max_steps=1))
    model, meta = load_model(run / "model.pt")
    assert meta.model_options["in_channels"] == 8
    assert meta.input_features == "mri+asymmetry"
    assert model.backbone.in_channels == 8
    assert SegmentationPredictor.from_files([run / "model.pt"]).input_features == "mri+asymmetry"


def test_workers_give_the_same_batches(data_dir, cache_dir, tmp_path):
    from omkit.training.patches import iterate_steps

    trainer = Trainer(config(data_dir, cache_dir, tmp_path / "run", patches_per_epoch=(6, 6, 6)))
    tasks = (0, 1, 2)
    in_process = list(iterate_steps(trainer.patches, 1, tasks, start=1, workers=0))
    rng_before = torch.get_rng_state()
    with_worker = list(iterate_steps(trainer.patches, 1, tasks, start=1, workers=1))
    # the loader must not draw from the global RNG (dropout), or resumed runs would diverge
    assert torch.equal(rng_before, torch.get_rng_state())
    assert [step for step, _ in with_worker] == [1, 2]
    for (_, a), (_, b) in zip(in_process, with_worker):
        for t in tasks:
            np.testing.assert_array_equal(a[t][0], np.asarray(b[t][0]))
            np.testing.assert_array_equal(a[t][1], np.asarray(b[t][1]))


def test_losses_fall(data_dir, cache_dir, tmp_path):
    run = train(config(data_dir, cache_dir, tmp_path / "run", preset="omnet0", stage_epochs=(0, 0, 6),
                       patches_per_epoch=(40, 40, 40), batch_per_task=4, lr=0.01, momentum=0.9, log_every=5))
    rows = json.loads((run / "metrics.json").read_text())["per_epoch"]
    for task in (1, 2, 3):
        assert rows[-1][f"loss_task{task}"] < rows[0][f"loss_task{task}"], task


def test_time_budget_stops_with_a_model(data_dir, cache_dir, tmp_path):
    run = train(config(data_dir, cache_dir, tmp_path / "run", max_minutes=1e-4))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped_by"] == "max_minutes" and not metrics["finished"] and metrics["steps"] == 1
    assert load_model(run / "model.pt")[1]["training"]["stopped_by"] == "max_minutes"


def test_plateau_rule_ends_stages_early(data_dir, cache_dir, tmp_path):
    # tolerance 1.0: every epoch improves by less than 100 %, so stages 1 and 2 end after two epochs
    run = train(config(data_dir, cache_dir, tmp_path / "run", stage_epochs=(3, 3, 1), plateau_tol=1.0))
    per_epoch = json.loads((run / "metrics.json").read_text())["per_epoch"]
    assert [e["stage"] for e in per_epoch] == [1, 1, 2, 2, 3]


def test_mc_preset_trains_independent_networks(data_dir, cache_dir, tmp_path):
    torch.manual_seed(0)
    initial = omkit.create_model("mc2", width=0.125).state_dict()
    run = train(config(data_dir, cache_dir, tmp_path / "run", preset="mc2", stage_epochs=(0, 0, 1)))
    model, _ = load_model(run / "model.pt")
    for t in (0, 1):  # both networks trained
        key = f"networks.{t}.head.classifier.weight"
        assert not torch.equal(model.state_dict()[key], initial[key])
    per_epoch = json.loads((run / "metrics.json").read_text())["per_epoch"]
    assert per_epoch[0]["loss_task3"] is None and per_epoch[0]["loss_task2"] > 0


def test_folds_hold_out_cases(data_dir, cache_dir, tmp_path):
    run = train(config(data_dir, cache_dir, tmp_path / "run", folds=3, fold=1, max_steps=1))
    resolved = json.loads((run / "config.json").read_text())
    assert len(resolved["cases"]) == 2 and len(resolved["held_out"]) == 1
    assert set(resolved["cases"]).isdisjoint(resolved["held_out"])


def test_bad_case_stops_or_is_skipped(tmp_path, cache_dir):
    good, bad = synthetic.make_dataset(tmp_path / "data", num_cases=2, shape=(16, 32, 32), seed=30)
    next(bad.glob("*_t2.nii.gz")).unlink()
    with pytest.raises(CaseError, match=r"_t2\.nii\.gz: missing"):
        train(config(tmp_path / "data", cache_dir, tmp_path / "run"))
    with pytest.warns(UserWarning, match=r"skipping case: .*_t2\.nii\.gz"):
        run = train(config(tmp_path / "data", cache_dir, tmp_path / "run2", skip_bad_cases=True, max_steps=1))
    assert json.loads((run / "config.json").read_text())["cases"] == [good.name]


# -- command line ----------------------------------------------------------------------------

def test_cli_train_2023_naming(tmp_path, cache_dir, capsys):
    synthetic.make_dataset(tmp_path / "data", num_cases=2, naming="2023", shape=(16, 32, 32), seed=40)
    args = ["train", "--preset", "omnet_cga", "-i", str(tmp_path / "data"), "-o", str(tmp_path / "run"),
            "--width", "0.125", "--patch-size", "8,16,16", "--stage-epochs", "1,1,1", "--patches-per-epoch", "2",
            "--batch-per-task", "2", "--cache-dir", str(cache_dir), "--seed", "3", "--no-progress"]
    assert cli_main(args) == 0
    assert "--recipe cpu-budget" not in capsys.readouterr().err  # no budget given: no hint
    model, meta = load_model(tmp_path / "run" / "model.pt")
    assert meta.label_convention == "2023" and meta.training["seed"] == 3
    # a budget of minutes with the paper's recipe gets a one-line hint, and still trains
    assert cli_main(args[:-1] + ["-o", str(tmp_path / "budget"), "--max-minutes", "5", "--no-progress"]) == 0
    assert "use --recipe cpu-budget" in capsys.readouterr().err
    assert cli_main(args) == 2
    assert "pass --force" in capsys.readouterr().err
    assert cli_main(args + ["--resume", "--max-steps", "5"]) == 0  # already finished: nothing to do
    assert cli_main(args + ["--resume", "--width", "0.5"]) == 2
    assert "--width" in capsys.readouterr().err
    assert cli_main(args[:-1] + ["--force", "--device", "cpu", "--precision", "fp16"]) == 2
    assert "--precision" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(args + ["--stage-epochs", "1,2"])


def test_progress_bar_shows_stage_epoch_losses_rate(data_dir, cache_dir, tmp_path, capsys):
    train(config(data_dir, cache_dir, tmp_path / "run", max_steps=3, progress=True))
    err = capsys.readouterr().err
    assert "stage 1/3 epoch 1/3" in err and "stage 2/3 epoch 2/3" in err
    assert "loss t1=" in err and "t2=" in err and "patches/s" in err and "step" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 mixed precision needs a CUDA device")
def test_fp16_on_gpu(data_dir, cache_dir, tmp_path):
    run = train(config(data_dir, cache_dir, tmp_path / "run", device="cuda", precision="fp16"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] and all(np.isfinite(e["loss_total"]) for e in metrics["per_epoch"])
    assert _state(run)["scaler"]["scale"] > 0


def test_cli_options_map_to_config(tmp_path):
    import argparse

    from omkit.cli import train as train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(["-i", "D", "-o", str(tmp_path / "R"), "--transfer-tumor-threshold", "0.3",
                              "--transfer-core-threshold", "0.6", "--lr-gamma", "0.25", "--attention", "se",
                              "--patches-per-epoch", "400,400,200", "--stage-epochs", "2,1,5", "--folds", "10",
                              "--fold", "3", "--no-progress", "--lr", "0.01", "--preset", "omnetd",
                              "--optimizer", "adam", "--samplers",
                              "brain:1+dilated_tumor(radius=3, scale=(1,2)):1,dilated_tumor,core"])
    cfg = train_cli.config_from_args(args)
    assert (cfg.transfer_tumor_threshold, cfg.transfer_core_threshold) == (0.3, 0.6)
    assert (cfg.lr_gamma, cfg.attention, cfg.input, cfg.output) == (0.25, "se", "D", str(tmp_path / "R"))
    assert cfg.patches_per_epoch == (400, 400, 200) and cfg.stage_epochs == (2, 1, 5)
    assert (cfg.folds, cfg.fold, cfg.progress, cfg.lr, cfg.preset) == (10, 3, False, 0.01, "omnetd")
    assert cfg.optimizer == "adam"
    assert cfg.samplers == ("brain:1+dilated_tumor(radius=3, scale=(1,2)):1", "dilated_tumor", "core")
    assert cfg.momentum == 0.99 and cfg.batch_per_task == 20 and cfg.patch_size == (16, 32, 32)  # paper defaults
    assert cfg.recipe == "paper"


def test_recipe_sets_defaults_that_explicit_options_override(tmp_path):
    import argparse

    from omkit.cli import CLIError
    from omkit.cli import train as train_cli
    from omkit.training import RECIPES

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(["-i", "D", "-o", str(tmp_path / "R"), "--recipe", "cpu-budget",
                              "--max-minutes", "25", "--lr", "5e-4"])
    cfg = train_cli.config_from_args(args)
    recipe = RECIPES["cpu-budget"]
    assert cfg.recipe == "cpu-budget" and cfg.max_minutes == 25
    assert cfg.lr == 5e-4  # given explicitly: not the recipe's
    assert (cfg.optimizer, cfg.width, cfg.batch_per_task) == (recipe["optimizer"], recipe["width"], recipe["batch_per_task"])
    assert cfg.samplers == recipe["samplers"] and cfg.stage_epochs == recipe["stage_epochs"]
    assert cfg.momentum == 0.99  # not in the recipe: the paper's default
    # the resolved settings and the recipe's name are what config.json keeps
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg

    with pytest.raises(ValueError, match="--recipe: unknown recipe 'fast'"):
        train_cli.config_from_args(parser.parse_args(["-i", "D", "-o", str(tmp_path / "R"), "--recipe", "fast"]))
    # a resumed run keeps the recipe it was made with
    run = tmp_path / "R"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))
    with pytest.raises(CLIError, match="made with recipe cpu-budget"):
        train_cli.config_from_args(parser.parse_args(["-i", "D", "-o", str(run), "--resume", "--recipe", "paper"]))
    resumed = train_cli.config_from_args(parser.parse_args(["-i", "D", "-o", str(run), "--resume"]))
    assert resumed.optimizer == "adam" and resumed.lr == 5e-4
