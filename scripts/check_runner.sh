#!/usr/bin/env bash
# The exported runner installed as its users install it: `pip install ./runner` into a venv
# that has no omkit. Exports two small models reading the image's asymmetry, one trained on
# patches (a tile graph) and one window-consistently (the dense graph), predicts a synthetic
# case with `omkit predict` (defaults, then --tta), runs `omkit-runner` from the runner venv on
# the same case, and requires the same labels voxel for voxel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNNER_VENV=${RUNNER_VENV:-.venv-runner}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
say() { echo "check_runner: $*"; }

if [ ! -x "$RUNNER_VENV/bin/omkit-runner" ]; then
    say "creating $RUNNER_VENV with ./runner"
    python3 -m venv "$RUNNER_VENV"
    "$RUNNER_VENV/bin/python" -m pip install -q --upgrade "pip>=23"
fi
"$RUNNER_VENV/bin/python" -m pip install -q --force-reinstall --no-deps ./runner
"$RUNNER_VENV/bin/python" -m pip install -q ./runner  # its dependencies
ROOT=$(pwd)
RUNNER_PY="$ROOT/$RUNNER_VENV/bin/python"
# from another folder: python -c puts the current one (here, the repository with omkit/) on sys.path
if (cd "$WORK" && "$RUNNER_PY" -c "import omkit") 2>/dev/null; then
    say "$RUNNER_VENV can import omkit; the check needs a venv without it" >&2
    exit 1
fi
"$RUNNER_VENV/bin/omkit-runner" --help > /dev/null

"$PY" - "$WORK" <<'PYTHON'
import sys
from pathlib import Path

import torch

import omkit
from omkit.checkpoint import save_model
from omkit.cli import main
from omkit.data.synthetic import make_dataset

work = Path(sys.argv[1])
make_dataset(work / "data", num_cases=1, shape=(16, 40, 40))
torch.manual_seed(0)
network = omkit.create_model("omnet_cga", width=0.125, in_channels=8)
windows = {"window": [8, 16, 16], "block": [4, 8, 8], "blocks": [2, 2, 2], "context": [2, 4, 4]}
models = {"tiles": save_model(network, work / "tiles.pt", patch_size=(8, 16, 16)),
          "dense": save_model(network, work / "dense.pt", patch_size=(8, 16, 16), train_mode="windows",
                              train_windows=windows)}
case = next(p for p in (work / "data").iterdir() if p.is_dir())
for graph, model in models.items():
    assert main(["export", "-m", str(model), "-o", str(work / f"{graph}.onnx")]) == 0
    for name, flags in (("plain", []), ("tta", ["--tta"])):
        assert main(["predict", "--no-progress", "-i", str(case), "-o", str(work / f"predict_{graph}_{name}"),
                     "-m", str(model), *flags]) == 0
(work / "case").write_text(str(case))
PYTHON

case=$(cat "$WORK/case")
id=$(basename "$case")
for graph in tiles dense; do
for name in plain tta; do
    flags=""
    [ "$name" = tta ] && flags="--tta"
    "$RUNNER_VENV/bin/omkit-runner" -m "$WORK/$graph.onnx" -i "$case" -o "$WORK/runner_${graph}_$name.nii.gz" $flags
    (cd "$WORK" && "$RUNNER_PY" - "$WORK/predict_${graph}_$name/$id.nii.gz" "$WORK/runner_${graph}_$name.nii.gz") <<'PYTHON'
import sys

import nibabel as nib
import numpy as np

want, got = (np.asanyarray(nib.load(path).dataobj) for path in sys.argv[1:3])
differ = int((want != got).sum())
if differ or not (want > 0).any():
    sys.exit(f"check_runner: {sys.argv[2]}: {differ} voxels differ from omkit predict's ({int((want > 0).sum())} tumor)")
print(f"check_runner: {sys.argv[2]}: the labels of omkit predict ({int((want > 0).sum())} tumor voxels)")
PYTHON
done
done
say "ok"
