"""The dense graph of a window-trained model (omkit.export.dense): it computes what dense
inference computes, for every flip and region shape, as ONNX (onnxruntime) and as a
torch.export program; `omkit export` writes it for the models `omkit predict` runs dense by
default; the runner gives `omkit predict`'s default labels from it, with and without --tta."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import omkit
from omkit.checkpoint import save_model
from omkit.cli import main
from omkit.data import find_cases
from omkit.data.synthetic import make_dataset
from omkit.export import prepare_export, read_metadata
from omkit.export.dense import DenseNetwork, dense_export_problem
from omkit.inference.dense import DenseSettings, dense_region, member_logits, min_divisor, window_geometry

from conftest import TINY_WIDTH, run_runner

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

# a window of 8 x 16 x 16 spans 3 blocks per axis (the cells a window touches, partly the last)
WINDOW, BLOCK = (8, 16, 16), (3, 6, 7)
TRAIN_WINDOWS = {"window": [8, 16, 16], "block": [4, 8, 8], "blocks": [2, 2, 2], "context": [2, 4, 4]}
PRESETS = ("omnet_cga", "omnet_se", "omnet", "omnet_cga_minus", "omnet_cga_t", "omnet_cga_n")


def random_model(preset: str, in_channels: int = 4, seed: int = 0) -> nn.Module:
    """A tiny model with weights and BatchNorm statistics far from the initial ones (so the
    attention changes the scores)."""
    torch.manual_seed(seed)
    model = omkit.create_model(preset, width=TINY_WIDTH, in_channels=in_channels).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def flags_of(flip) -> torch.Tensor:
    return torch.tensor([1 if a in flip else 0 for a in range(3)])


def dense_reference(model, x, region, flip, window=WINDOW, block=BLOCK):
    """omkit's dense inference of the region ``x`` (its op path), flipped as run_dense flips it."""
    axes = [a + 2 for a in flip]
    geometry = window_geometry(region, window, block, flip)
    with torch.no_grad():
        out = member_logits(model, x.flip(axes) if flip else x, [0, 1, 2], geometry, DenseSettings(),
                            min_divisor(model))
    return [o.flip(axes) if flip else o for o in out]


MASKS = {"inside": (slice(3, 21), slice(5, 40), slice(4, 33)),  # sides no multiple of a block
         "whole": (slice(0, 24), slice(0, 48), slice(0, 42))}   # the volume's sides, multiples of the blocks


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("mask_name", sorted(MASKS))
def test_dense_network_computes_dense_inference(preset, mask_name):
    """Every flip pattern: the graph's logits (region in, region's frame out) equal dense
    inference's on the voxels it keeps (the blocks touching the mask)."""
    model = random_model(preset)
    mask = torch.zeros(24, 48, 42, dtype=torch.bool)
    mask[MASKS[mask_name]] = True
    region = dense_region(mask, WINDOW, BLOCK, min_divisor(model))
    x = torch.randn(1, 4, *region.shape, generator=torch.Generator().manual_seed(1))
    network = DenseNetwork(model, WINDOW, BLOCK).eval()
    kept = region.kept(BLOCK)
    for flip in [(), (0,), (2,), (1, 2), (0, 1, 2)]:
        with torch.no_grad():
            got = network(x, flags_of(flip))
        for task, (want, out) in enumerate(zip(dense_reference(model, x, region, flip), got)):
            assert out.shape == want.shape
            diff = float((want - out).abs()[0][:, kept].max())
            assert diff < 1e-5, (preset, mask_name, flip, task, diff)


def test_the_graphs_positive_probability_is_the_models():
    """The graph's log-sum-exp form of the guidance equals the model's softmax sum, for both
    tasks that guide, from small to saturating logits."""
    from omkit.export.dense import positive_probability as graph_form
    from omkit.models.omnet import positive_probability

    g = torch.Generator().manual_seed(4)
    for scale in (0.1, 3.0, 40.0):
        logits = torch.randn(3, 5, 4, 6, 5, generator=g) * scale
        for task in (0, 1):
            want, got = positive_probability(task, logits), graph_form(task, logits)
            assert got.shape == want.shape == (3, 1, 4, 6, 5)
            assert float((want - got).abs().max()) < 1e-6, (scale, task)


def test_dense_export_problem_names_what_it_cannot_express():
    assert dense_export_problem(random_model("omnet_cga")) is None
    assert "not MCNet" in dense_export_problem(omkit.create_model("mc3", width=TINY_WIDTH))

    class OwnHead(nn.Module):  # an unguided head of its own, declaring window_logits
        guided = False

        def forward(self, features, guidance=None):
            return features

        def window_logits(self, features, guidance, geometry):
            return features, None

    model = random_model("omnet")
    model.heads[0] = OwnHead()
    assert "OwnHead" in dense_export_problem(model)
    with pytest.raises(ValueError, match="dense export cannot express this model: .*OwnHead"):
        DenseNetwork(model, WINDOW, BLOCK)


@pytest.fixture(scope="module")
def window_trained(tmp_path_factory):
    """A window-trained OM-Net + CGA reading the image's asymmetry (8 channels), its dense
    export (`omkit export`, ONNX and .pt2), and a synthetic case."""
    root = tmp_path_factory.mktemp("dense_export")
    torch.manual_seed(0)  # the initial weights: some tumor predicted on the synthetic case
    model = omkit.create_model("omnet_cga", width=TINY_WIDTH, in_channels=8).eval()
    path = save_model(model, root / "win.pt", patch_size=tuple(TRAIN_WINDOWS["window"]), train_mode="windows",
                      train_windows=TRAIN_WINDOWS)
    prepared = prepare_export(path)
    prepared.save(root / "win.onnx")
    prepared.save(root / "win.pt2", "torch-export")
    make_dataset(root / "data", num_cases=1, shape=(24, 48, 40))
    return {"root": root, "path": path, "model": model, "onnx": root / "win.onnx", "pt2": root / "win.pt2",
            "case": find_cases(root / "data")[0]}


def test_export_writes_the_dense_graph_of_a_window_trained_model(window_trained):
    meta = read_metadata(window_trained["onnx"])
    assert meta["inference"]["runner"] == "dense" and meta["inference"]["same_as_predict_default"]
    assert meta["dense"]["window"] == TRAIN_WINDOWS["window"] and meta["dense"]["block"] == TRAIN_WINDOWS["block"]
    assert meta["input"]["shape"] == [1, 8, "D", "H", "W"] and meta["input"]["features"] == "mri+asymmetry"
    session = ort.InferenceSession(str(window_trained["onnx"]), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("region", [1, 8, "D", "H", "W"]), ("flip", [3])]
    assert all(node.domain in ("", "ai.onnx") for node in onnx.load(str(window_trained["onnx"])).graph.node)
    program = torch.export.load(str(window_trained["pt2"])).module()
    model = window_trained["model"]
    window, block = TRAIN_WINDOWS["window"], TRAIN_WINDOWS["block"]
    # two regions of other shapes than the trace's: the sides are dynamic
    for shape, flip in (((16, 40, 32), ()), ((24, 32, 48), (0, 2)), ((8, 16, 16), (1,))):
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[tuple(slice(n // 4, n - n // 4) for n in shape)] = True
        region = dense_region(mask, window, block, min_divisor(model))
        x = torch.randn(1, 8, *region.shape, generator=torch.Generator().manual_seed(3))
        want = dense_reference(model, x, region, flip, window, block)
        onnx_out = session.run(None, {"region": x.numpy(), "flip": flags_of(flip).numpy()})
        with torch.no_grad():
            pt2_out = program(x, flags_of(flip))
        kept = region.kept(block).numpy()
        for w, o, p in zip(want, onnx_out, pt2_out):
            assert np.abs(w.numpy() - o)[0][:, kept].max() < 1e-4
            assert float((w - p).abs()[0][:, torch.from_numpy(kept)].max()) < 1e-4


@pytest.mark.parametrize("tta", [False, True])
def test_runner_gives_the_dense_default_prediction(window_trained, tmp_path, tta):
    """`omkit predict` runs the model dense by default; the runner (omkit blocked) writes the
    same labels from the dense graph, post-processing included, and with --tta those of
    `omkit predict --tta`."""
    case, flags = window_trained["case"], ["--tta"] if tta else []
    assert main(["predict", "--no-progress", "-i", str(case), "-o", str(tmp_path / "pred"),
                 "-m", str(window_trained["path"]), *flags]) == 0
    out = tmp_path / "runner.nii.gz"
    run = run_runner("-m", window_trained["onnx"], "-i", case, "-o", out, *flags)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "can differ" not in run.stderr
    want = np.asanyarray(nib.load(str(tmp_path / "pred" / f"{case.name}.nii.gz")).dataobj)
    assert set(np.unique(want).tolist()) - {0}, "the check needs some tumor predicted"
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out)).dataobj), want)


def test_export_inference_choice(window_trained, tmp_path, capsys):
    """--inference tiles writes tiles for a window-trained model and records that predict's default
    differs; --inference dense on a model dense export cannot express is one line naming why."""
    target = tmp_path / "tiles.onnx"
    assert main(["export", "-m", str(window_trained["path"]), "-o", str(target), "--inference", "tiles"]) == 0
    meta = read_metadata(target)
    assert meta["inference"]["runner"] == "tiles" and not meta["inference"]["same_as_predict_default"]
    assert meta["dense"] is None and meta["input"]["shape"][0] == "batch"
    run = run_runner("-m", target, "-i", window_trained["case"], "-o", tmp_path / "tiles.nii.gz")
    assert run.returncode == 0 and "tiles; omkit predict runs this model dense by default" in run.stderr
    mc = save_model(omkit.create_model("mc3", width=TINY_WIDTH), tmp_path / "mc3.pt")
    assert main(["export", "-m", str(mc), "-o", str(tmp_path / "mc3.onnx"), "--inference", "dense"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dense export cannot express this model" in err[0] and "MCNet" in err[0]



def test_the_runner_reads_the_format_omkit_writes(window_trained, tmp_path):
    """The runner knows the newest metadata format omkit writes, and refuses a newer one in one line."""
    from conftest import RUNNER
    from omkit.export import EXPORT_FORMAT_VERSION

    text = RUNNER.read_text()
    assert f"FORMAT_VERSION = {EXPORT_FORMAT_VERSION}\n" in text
    proto = onnx.load(str(window_trained["onnx"]))
    meta = read_metadata(window_trained["onnx"])
    onnx.helper.set_model_props(proto, {"omkit": json.dumps({**meta, "format_version": EXPORT_FORMAT_VERSION + 1})})
    newer = tmp_path / "newer.onnx"
    onnx.save_model(proto, str(newer))
    run = run_runner("-m", newer, "-i", window_trained["case"], "-o", tmp_path / "out.nii.gz")
    assert run.returncode != 0 and "is newer than this runner reads" in run.stderr
