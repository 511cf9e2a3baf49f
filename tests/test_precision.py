"""Mixed precision (--precision fp32|bf16|fp16) in training and inference, on the CPU
with bfloat16 autocast and, when a GPU is there, on CUDA with float16 (and a gradient
scaler) and bfloat16: the kernel path is asserted (omkit.ops.record_dispatch), the
results are compared with float32.

Tolerances, stated once:

* a training step (width 0.125, patches 8 x 16 x 16, two per task): the loss within
  ``LOSS_REL`` (1 %) of float32's; the gradients of the task heads (the parameters
  nearest the logits) with cosine similarity above ``HEAD_COS`` (0.95) to float32's, and
  every gradient finite.
  The backbone's gradients are not compared one by one: at these toy patches they pass
  through many BatchNorms over a handful of voxels, where half-precision rounding is
  amplified (measured: a plain 6-layer conv/BN stack differs by 14 % in its first
  layer's gradient in bfloat16; the heads agree to a cosine of 0.98-0.999). The step runs
  under ``omkit.devices.convolution_guard``, as the trainer's does: on a CPU, oneDNN's
  bfloat16 conv3d weight gradient is wrong (at times inf or NaN) for depth-2 maps;
* inference (the paper's tile contract on a synthetic case): every probability within
  ``PROB_ABS`` (0.05) of float32's, at least ``LABEL_AGREEMENT`` (98 %) of the voxels
  with the same label (random weights sit near ties; measured 99.4-99.7 %).
"""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

import omkit
from omkit import ops
from omkit.checkpoint import load_model, save_model
from omkit.cli import main as cli_main
from omkit.data import preprocess_case, synthetic
from omkit.devices import PRECISIONS, autocast, check_precision, convolution_guard
from omkit.inference import SegmentationPredictor, SpeedSettings, TileSettings
from omkit.labels import NUM_CLASSES_TASK
from omkit.training import TrainConfig, train

LOSS_REL, HEAD_COS, PROB_ABS, LABEL_AGREEMENT = 1e-2, 0.95, 0.05, 0.98
CUDA = torch.cuda.is_available() and ops.extension_loaded() and "cuda" in ops._library.STATE.kernels.get("cga", ())
CASES = [("cpu", "bf16")] + ([("cuda", "fp16"), ("cuda", "bf16")] if CUDA else [])
GUIDED = {name for name in omkit.list_presets() if "cga" in name}  # presets whose heads run omkit::cga


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(preset: str, device: str):
    n = omkit.get_preset(preset).num_tasks
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(2, 4, 8, 16, 16, generator=g).to(device) for _ in range(n)] + [None] * (3 - n)
    labels = [torch.randint(0, k, (2, 8, 16, 16), generator=g).to(device) for k in NUM_CLASSES_TASK[:n]]
    return inputs, labels


def _train_step(model, inputs, labels, device, precision):
    """One step as the trainer takes it: autocast forward, float32 losses, scaled backward for
    fp16; returns (loss, {parameter: gradient}, dispatch decisions)."""
    model.zero_grad(set_to_none=True)
    # a modest scale: the default 2**16 may overflow float16 on a first step, which a scaler then
    # skips (the trainer's behaviour); this compares one step's gradients
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10, enabled=precision == "fp16")
    with convolution_guard(torch.device(device), precision):  # as the trainer's step (see the module docstring)
        with autocast(torch.device(device), precision), ops.record_dispatch() as calls:
            outputs = model.forward_tasks(inputs, None)
        loss = sum(F.cross_entropy(o.float(), y) for o, y in zip(outputs, labels) if o is not None)
        scaler.scale(loss).backward()
    scale = scaler.get_scale() if precision == "fp16" else 1.0
    grads = {k: p.grad.detach().float() / scale for k, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, calls


@pytest.mark.parametrize("device,precision", CASES)
@pytest.mark.parametrize("preset", omkit.list_presets())
def test_train_step_of_every_preset_matches_float32(preset, device, precision):
    torch.manual_seed(0)
    model = omkit.create_model(preset, width=0.125).to(device).train()
    inputs, labels = _batch(preset, device)
    loss32, grads32, _ = _train_step(model, inputs, labels, device, "fp32")
    loss, grads, calls = _train_step(model, inputs, labels, device, precision)
    assert abs(loss - loss32) <= LOSS_REL * loss32, (loss, loss32)
    assert set(grads) == set(grads32) and all(torch.isfinite(g).all() for g in grads.values())
    heads = [k for k in grads32 if k.startswith("heads.") or ".head." in k]
    assert heads, "every preset has task heads"
    cos = F.cosine_similarity(torch.cat([grads[k].flatten() for k in heads]),
                              torch.cat([grads32[k].flatten() for k in heads]), dim=0)
    assert cos > HEAD_COS, float(cos)
    dtype = {"bf16": "bfloat16", "fp16": "float16"}[precision]
    decisions = {(c.op, c.dtype, c.path) for c in calls}
    if preset in GUIDED:  # the CGA heads ran the fused kernel in the autocast dtype
        assert decisions == {("cga", dtype, "kernel")}, decisions
    else:
        assert not decisions, decisions


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    synthetic.make_dataset(root / "data", num_cases=2, shape=(16, 32, 32), seed=21)
    return root / "data"


@pytest.mark.parametrize("device,precision", CASES)
def test_trainer_records_precision_and_trains(data_dir, tmp_path, device, precision):
    run = train(TrainConfig(preset="omnet_cga", input=str(data_dir), output=str(tmp_path / "run"),
                            cache_dir=str(tmp_path / "cache"), width=0.125, patch_size=(8, 16, 16), batch_per_task=2,
                            patches_per_epoch=(4, 4, 2), stage_epochs=(0, 0, 1), max_steps=2, log_every=1,
                            progress=False, device=device, precision=precision))
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["precision"] == precision and "amp" not in config
    _, meta = load_model(run / "model.pt")
    assert meta.training["precision"] == precision
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2
    with open(run / "metrics.csv", newline="") as fh:
        losses = [float(row["loss_total"]) for row in csv.DictReader(fh)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_precision_settings_are_checked():
    assert PRECISIONS == ("fp32", "bf16", "fp16")
    with pytest.raises(ValueError, match="--precision fp16: float16 mixed precision needs a CUDA device"):
        check_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16, fp16"):
        check_precision("fp8", torch.device("cpu"))
    check_precision("bf16", torch.device("cpu"))
    # config.json of a run made when the flag was --amp
    assert TrainConfig.from_dict({"amp": False}).precision == "fp32"
    assert TrainConfig.from_dict({"amp": True, "device": "cuda"}).precision == "fp16"


@pytest.fixture(scope="module")
def case():
    return preprocess_case(synthetic.make_case(shape=(24, 48, 48), seed=3))


TILES = TileSettings(size=(8, 16, 16), keep=(4, 8, 8), batch=8)


def _predict(model, case, **kw):
    with ops.record_dispatch() as calls:
        result = SegmentationPredictor([model], tiles=TILES, inference="tiles", **kw).predict(case.image, case.brain_mask,
                                                                          return_probabilities=True)
    return result, {(c.op, c.dtype, c.path) for c in calls}


def _compare(result, expected):
    agree = float((result.labels == expected.labels).float().mean())
    assert agree >= LABEL_AGREEMENT, agree
    for task, probs in expected.probabilities.items():
        assert float((result.probabilities[task] - probs).abs().max()) <= PROB_ABS, task


@pytest.mark.parametrize("device,precision", CASES)
@pytest.mark.parametrize("preset", ["omnet_cga", "mc3"])
def test_inference_under_autocast_matches_float32(case, preset, device, precision):
    torch.manual_seed(0)
    model = omkit.create_model(preset, width=0.125).eval()
    expected, _ = _predict(model, case)  # float32 on the CPU: the reference result
    result, decisions = _predict(model.to(device), case, device=device, output_device="cpu", precision=precision)
    _compare(result, expected)
    dtype = {"bf16": "bfloat16", "fp16": "float16"}[precision]
    assert ("gather_tiles", "float32", "kernel") in decisions and ("stitch_tiles", "float32", "kernel") in decisions
    assert ("cga", dtype, "kernel") in decisions if preset == "omnet_cga" else not any(d[0] == "cga" for d in decisions)
    assert all(d[2] == "kernel" for d in decisions), decisions


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and the CUDA kernels")
def test_predictor_on_cuda_matches_cpu(case):
    """The whole predictor on the GPU (CUDA kernels for CGA and tiles, float32) against the CPU."""
    torch.manual_seed(0)
    model = omkit.create_model("omnet_cga", width=0.125).eval()
    expected, _ = _predict(model, case)
    result, decisions = _predict(model.to("cuda"), case, device="cuda")
    assert decisions == {("cga", "float32", "kernel"), ("gather_tiles", "float32", "kernel"),
                         ("stitch_tiles", "float32", "kernel")}
    _compare(result, expected)


def test_speed_settings_keep_the_result(case):
    """channels-last-3d and the fixed-shape padding (cuDNN autotuning, compilation) change no label."""
    torch.manual_seed(0)
    model = omkit.create_model("omnet_cga", width=0.125).eval()
    expected, _ = _predict(model, case)
    result, _ = _predict(model, case, speed=SpeedSettings(channels_last=True, cudnn_benchmark=True))
    assert torch.equal(result.labels, expected.labels)
    for task, probs in expected.probabilities.items():
        torch.testing.assert_close(result.probabilities[task], probs, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="compile mode must be one of"):
        SpeedSettings(compile="fastest")


def test_predict_cli_precision(tmp_path, capsys):
    synthetic.make_dataset(tmp_path / "data", num_cases=1, shape=(16, 32, 32), seed=8)
    torch.manual_seed(0)
    save_model(omkit.create_model("omnet_cga", width=0.125), tmp_path / "model.pt", preset="omnet_cga", width=0.125)
    base = ["predict", "-i", str(tmp_path / "data"), "-m", str(tmp_path / "model.pt"), "--device", "cpu",
            "--tile-size", "8,16,16", "--tile-keep", "4,8,8", "--no-progress"]
    assert cli_main(base + ["-o", str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    assert len(list((tmp_path / "bf16").glob("*.nii.gz"))) == 1
    assert cli_main(base + ["-o", str(tmp_path / "fp16"), "--precision", "fp16"]) == 2
    assert "--precision fp16: float16 mixed precision needs a CUDA device" in capsys.readouterr().err
