"""omkit export: ONNX (run by onnxruntime) and torch.export programs (loaded by plain
PyTorch), both in a process that cannot import omkit, reproduce the PyTorch logits of
omnet_cga, omnet_se and mc3 on synthetic and real-case tiles; the metadata travel with
the files; the runner (runner/omkit_runner.py) segments a case as omkit predict does."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

import omkit
from omkit.checkpoint import load_model, save_model
from omkit.cli import main
from omkit.data import find_cases, load_case, preprocess_case
from omkit.data.synthetic import make_dataset
from omkit.export import prepare_export, read_metadata

from conftest import SAMPLE_DATA, TINY_PATCH, TINY_WIDTH, run_runner

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

PRESETS = ("omnet_cga", "omnet_se", "mc3")
TILE_FLAGS = ["--tile-size", ",".join(map(str, TINY_PATCH)), "--tile-keep", ",".join(map(str, TINY_PATCH))]
TOLERANCE = 1e-4  # max |difference| of float32 logits

# Runs in a fresh interpreter where `import omkit` fails: what a deployment without omkit has.
NO_OMKIT_RUNNER = r"""
import sys
sys.modules["omkit"] = None  # any import of omkit (or omkit.*) now raises ImportError
import json
import numpy as np
import onnxruntime as ort
import torch

options = ort.SessionOptions()
options.intra_op_num_threads = 1
for job in json.loads(sys.argv[1]):
    session = ort.InferenceSession(job["onnx"], options, providers=["CPUExecutionProvider"])
    program = torch.export.load(job["pt2"]).module()
    results = {}
    for name, path in job["tiles"].items():
        tiles = np.load(path)
        for k, array in enumerate(session.run(None, {"tiles": tiles})):
            results[f"{name}/onnx/{k}"] = array
        with torch.no_grad():
            for k, tensor in enumerate(program(torch.from_numpy(tiles))):
                results[f"{name}/pt2/{k}"] = tensor.numpy()
    results["metadata"] = np.array(session.get_modelmeta().custom_metadata_map["omkit"])
    np.savez(job["out"], **results)
print("omkit imported:", sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "omkit" and v is not None))
"""


def real_tiles(count: int = 6) -> np.ndarray | None:
    """Tiles of a real BraTS case (preprocessed as omkit does) around its tumor, or None."""
    if not SAMPLE_DATA.is_dir() or not any(SAMPLE_DATA.iterdir()):
        return None
    pre = preprocess_case(load_case(find_cases(SAMPLE_DATA)[0]))
    centre = np.argwhere(pre.label >= 2).mean(0).astype(int)
    rng = np.random.default_rng(0)
    tiles = []
    for _ in range(count):
        start = [int(np.clip(c + rng.integers(-n, n + 1) - n // 2, 0, s - n))
                 for c, n, s in zip(centre, TINY_PATCH, pre.shape)]
        tiles.append(pre.image[(slice(None), *(slice(a, a + n) for a, n in zip(start, TINY_PATCH)))])
    return np.ascontiguousarray(np.stack(tiles), dtype=np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per preset: the model file, its ONNX and .pt2 exports (written by `omkit export`),
    the PyTorch logits on each tile set, and what the no-omkit process computed."""
    root = tmp_path_factory.mktemp("export")
    g = torch.Generator().manual_seed(0)
    tile_sets = {"synthetic": torch.randn(3, 4, *TINY_PATCH, generator=g).numpy(),
                 "single": torch.randn(1, 4, *TINY_PATCH, generator=g).numpy()}
    real = real_tiles()
    if real is not None:
        tile_sets["real"] = real
    paths = {}
    for name, tiles in tile_sets.items():
        paths[name] = str(root / f"{name}.npy")
        np.save(paths[name], tiles)
    result, jobs = {}, []
    for preset in PRESETS:
        torch.manual_seed(1)
        model_path = save_model(omkit.create_model(preset, width=TINY_WIDTH), root / f"{preset}.pt")
        onnx_path, pt2_path = root / f"{preset}.onnx", root / f"{preset}.pt2"
        if preset == "omnet_se":  # the command line, one trace per file
            assert main(["export", "-m", str(model_path), "-o", str(onnx_path), *TILE_FLAGS]) == 0
            assert main(["export", "-m", str(model_path), "-o", str(pt2_path), "--format", "torch-export",
                         *TILE_FLAGS]) == 0
        else:  # the library, one trace for both files
            prepared = prepare_export(model_path, tile_size=TINY_PATCH, tile_keep=TINY_PATCH)
            prepared.save(onnx_path)
            prepared.save(pt2_path, "torch-export")
        model, _ = load_model(model_path)
        with torch.no_grad():  # omkit's own forward: the fused ops where they are built
            logits = {name: [t.numpy() for t in model(torch.from_numpy(tiles)) if t is not None]
                      for name, tiles in tile_sets.items()}
        out = root / f"{preset}_no_omkit.npz"
        jobs.append({"onnx": str(onnx_path), "pt2": str(pt2_path), "tiles": paths, "out": str(out)})
        result[preset] = {"model": model_path, "onnx": onnx_path, "pt2": pt2_path, "logits": logits, "out": out}
    run = subprocess.run([sys.executable, "-c", NO_OMKIT_RUNNER, json.dumps(jobs)], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "omkit imported: []" in run.stdout
    for preset in PRESETS:
        result[preset]["no_omkit"] = dict(np.load(result[preset]["out"]))
    return result


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("runtime", ["onnx", "pt2"])
@pytest.mark.parametrize("tiles", ["synthetic", "single", "real"])
def test_exported_logits_match_pytorch(exported, preset, runtime, tiles):
    if tiles == "real" and tiles not in exported[preset]["logits"]:
        pytest.skip(f"BraTS 2018 sample cases not found at {SAMPLE_DATA} (set OMKIT_SAMPLE_DATA)")
    want = exported[preset]["logits"][tiles]
    got = exported[preset]["no_omkit"]
    assert len(want) == omkit.get_preset(preset).num_tasks
    for k, logits in enumerate(want):
        other = got[f"{tiles}/{runtime}/{k}"]
        assert other.shape == logits.shape and other.dtype == np.float32
        difference = float(np.abs(other - logits).max())
        print(f"{preset} {runtime} {tiles} task{k + 1}: max |difference| {difference:.2e}")
        assert difference <= TOLERANCE, f"{preset} task{k + 1} on {tiles} tiles ({runtime}): {difference:.2e}"


def test_graphs_are_standard_operators_with_a_batch_axis(exported):
    import onnx

    for preset in PRESETS:
        proto = onnx.load(str(exported[preset]["onnx"]))
        assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
        assert "BatchNormalization" not in {node.op_type for node in proto.graph.node}  # folded into the convs
        (tiles,) = proto.graph.input
        assert tiles.name == "tiles"
        assert [d.dim_param or d.dim_value for d in tiles.type.tensor_type.shape.dim] == ["batch", 4, *TINY_PATCH]
        outputs = [o.name for o in proto.graph.output]
        assert outputs == [f"task{t + 1}" for t in range(omkit.get_preset(preset).num_tasks)]
        program = torch.export.load(str(exported[preset]["pt2"]))
        assert not [n for n in program.graph.nodes if n.op == "call_function" and "omkit" in str(n.target)]


def test_metadata_travel_with_the_files(exported):
    for preset in PRESETS:
        onnx_meta = read_metadata(exported[preset]["onnx"])
        assert json.loads(str(exported[preset]["no_omkit"]["metadata"])) == onnx_meta  # as onnxruntime reads it
        sidecar = exported[preset]["pt2"].with_suffix(".json")
        pt2_meta = json.loads(sidecar.read_text())
        for meta in (onnx_meta, pt2_meta):
            assert meta["format"] == "omkit-export" and meta["preset"] == preset and meta["width"] == TINY_WIDTH
            assert meta["tiles"]["size"] == meta["tiles"]["keep"] == list(TINY_PATCH)
            assert meta["label_convention"] == "2018" and meta["label_conventions"]["2023"]["enhancing"] == 3
            assert meta["preprocessing"]["normalization"] == "zscore-nonzero"
            assert meta["architecture"] == ("cascade" if preset == "mc3" else "onepass")
        assert pt2_meta["export_format"] == "torch-export" and onnx_meta["export_format"] == "onnx"
        assert read_metadata(exported[preset]["pt2"]) == pt2_meta
        extra = {"omkit.json": ""}
        torch.export.load(str(exported[preset]["pt2"]), extra_files=extra)
        assert json.loads(extra["omkit.json"]) == pt2_meta


def test_onnx_runner_segments_like_omkit_predict(exported, tmp_path):
    """The runner (numpy, scipy, scikit-learn, nibabel, onnxruntime; omkit blocked) writes the
    label map `omkit predict` writes with the same tiles and no post-processing."""
    make_dataset(tmp_path / "data", num_cases=1, shape=(16, 40, 40))
    case = find_cases(tmp_path / "data")[0]
    model = exported["omnet_cga"]
    assert main(["predict", "--no-progress", "-i", str(case), "-o", str(tmp_path / "pred"), "-m", str(model["model"]),
                 "--no-postprocess", "--inference", "tiles", "--label-convention", "2023", *TILE_FLAGS]) == 0
    out = tmp_path / "runner.nii.gz"
    run = run_runner("-m", model["onnx"], "-i", case, "-o", out, "--label-convention", "2023", "--no-postprocess")
    assert run.returncode == 0, run.stderr[-3000:]
    want = nib.load(str(tmp_path / "pred" / f"{case.name}.nii.gz"))
    got = nib.load(str(out))
    assert np.allclose(got.affine, want.affine)
    assert set(np.unique(np.asanyarray(want.dataobj)).tolist()) - {0}, "the check needs some tumor predicted"
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), np.asanyarray(want.dataobj))


def test_exported_runner_gives_the_default_prediction(tmp_path):
    """A model reading the image's asymmetry (as cpu-budget-precise trains), exported with the
    defaults: the runner's labels equal `omkit predict`'s default labels (its tiles, both
    post-processing steps), and with --tta those of `omkit predict --tta`."""
    make_dataset(tmp_path / "data", num_cases=1, shape=(16, 40, 40))
    case = find_cases(tmp_path / "data")[0]
    torch.manual_seed(0)
    model = save_model(omkit.create_model("omnet_cga", width=TINY_WIDTH, in_channels=8), tmp_path / "asym.pt",
                       patch_size=TINY_PATCH)
    assert main(["export", "-m", str(model), "-o", str(tmp_path / "asym.onnx")]) == 0
    meta = read_metadata(tmp_path / "asym.onnx")
    assert meta["input"]["features"] == "mri+asymmetry" and meta["inference"]["same_as_predict_default"]
    assert [step["name"] for step in meta["postprocessing"]["steps"]] == ["remove_small_components",
                                                                          "kmeans_edema_to_necrosis"]
    for tta in ([], ["--tta"]):
        pred = tmp_path / f"pred{len(tta)}"
        assert main(["predict", "--no-progress", "-i", str(case), "-o", str(pred), "-m", str(model), *tta]) == 0
        out = tmp_path / f"runner{len(tta)}.nii.gz"
        run = run_runner("-m", tmp_path / "asym.onnx", "-i", case, "-o", out, *tta)
        assert run.returncode == 0, run.stderr[-3000:]
        want = np.asanyarray(nib.load(str(pred / f"{case.name}.nii.gz")).dataobj)
        assert set(np.unique(want).tolist()) - {0}, "the check needs some tumor predicted"
        np.testing.assert_array_equal(np.asanyarray(nib.load(str(out)).dataobj), want)
    again = run_runner("-m", tmp_path / "asym.onnx", "-i", case, "-o", tmp_path / "runner0.nii.gz")
    assert again.returncode != 0 and "exists; pass --force" in again.stderr
    assert run_runner("--help").stdout.startswith("usage: omkit-runner")


def test_export_errors_are_one_line(exported, tmp_path, capsys, monkeypatch):
    model = str(exported["omnet_cga"]["model"])
    assert main(["export", "-m", model, "-o", str(tmp_path / "net.bin")]) == 2
    assert "give --format onnx or torch-export" in capsys.readouterr().err
    assert main(["export", "-m", model, "-o", str(exported["omnet_cga"]["onnx"]), *TILE_FLAGS]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["export", "-m", str(tmp_path / "none.pt"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "model file not found" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert main(["export", "-m", model, "-o", str(tmp_path / "x.onnx"), *TILE_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "pip install 'omkit[export]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_export_metadata_versions(tmp_path):
    """Format 2 names the architecture's options model_options (the card's word); a format-1
    file's model_kw reads as model_options; a newer format is one line naming the file."""
    from omkit.export import EXPORT_FORMAT, EXPORT_FORMAT_VERSION, read_metadata, sidecar_path

    target = tmp_path / "model.pt2"
    target.write_bytes(b"")
    for version, key in ((1, "model_kw"), (EXPORT_FORMAT_VERSION, "model_options")):
        sidecar_path(target).write_text(json.dumps({"format": EXPORT_FORMAT, "format_version": version,
                                                    key: {"attention": "cga"}}))
        meta = read_metadata(target)
        assert meta["model_options"] == {"attention": "cga"} and "model_kw" not in meta
    sidecar_path(target).write_text(json.dumps({"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match=rf"model\.json: omkit export format_version {EXPORT_FORMAT_VERSION + 1} is "
                                         "not one this omkit reads"):
        read_metadata(target)
