#!/usr/bin/env bash
# Compile and link omkit's CUDA kernels on a machine without a GPU, then load
# the library and check that it registers exactly the ops of
# omkit/ops/manifest.py, each with its CPU and CUDA kernels, and that the CPU
# kernels agree with omkit/ops/reference.py (scripts/check_ops_registered.py).
#
# The CUDA build of torch (torch==2.14.1, CUDA 13.0) goes into a venv of its own
# (never the development .venv); nvcc comes from a CUDA 13.0 toolkit (CUDA_HOME,
# else searched for); the CUDA library headers that torch's headers include
# (cuBLAS, cuSPARSE, ...) come from the nvidia/cu13/include folder of the
# pip-installed CUDA wheels. Only a couple of GPU architectures are compiled to
# keep the step short; nothing is run on a GPU.
#
# Environment: OMKIT_CUDA_VENV (default .venv-cuda), OMKIT_CUDA_TORCH_SPEC
# (default torch==2.14.1), TORCH_CUDA_ARCH_LIST (default "9.0"), CUDA_HOME,
# MAX_JOBS (default 2), OMKIT_CUDA_BUILD_DIR (default build/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_VENV=${OMKIT_CUDA_VENV:-.venv-cuda}
CUDA_TORCH_SPEC=${OMKIT_CUDA_TORCH_SPEC:-torch==2.14.1}
CUDA_MAJOR=${OMKIT_CUDA_MAJOR:-13}
BUILD_DIR=${OMKIT_CUDA_BUILD_DIR:-build/cuda}
PYTHON=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-2}
start=$(date +%s)

say() { echo "check_cuda_build: $*"; }

# A toolkit directory qualifies when its bin/nvcc reports release $CUDA_MAJOR.x.
is_toolkit() {
    [ -n "$1" ] && [ -x "$1/bin/nvcc" ] && "$1/bin/nvcc" --version 2>/dev/null | grep -q "release ${CUDA_MAJOR}\."
}

find_cuda_home() {
    local candidate
    for candidate in "${CUDA_HOME:-}" "${CUDA_PATH:-}"; do
        if is_toolkit "$candidate"; then echo "$candidate"; return 0; fi
    done
    # nvcc on PATH may be the real binary or a wrapper script: ask nvcc itself where it lives.
    if command -v nvcc >/dev/null 2>&1; then
        local probe top
        probe=$(mktemp -d)
        echo '__global__ void probe() {}' > "$probe/probe.cu"
        top=$(cd "$probe" && nvcc -v --dryrun -c probe.cu 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1)
        rm -rf "$probe"
        if [ -n "$top" ] && is_toolkit "$top"; then (cd "$top" && pwd -P); return 0; fi
    fi
    for candidate in /usr/local/cuda-"${CUDA_MAJOR}".* /usr/local/cuda-"${CUDA_MAJOR}" /usr/local/cuda /opt/cuda* /usr/lib/cuda; do
        if is_toolkit "$candidate"; then echo "$candidate"; return 0; fi
    done
    return 1
}

if ! CUDA_HOME=$(find_cuda_home); then
    say "no CUDA ${CUDA_MAJOR}.x toolkit found (set CUDA_HOME to a folder with bin/nvcc)" >&2
    exit 1
fi
export CUDA_HOME
say "CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*\(release [0-9.]*\).*/\1/p'))"

VPY="$CUDA_VENV/bin/python"
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.version.cuda and torch.version.cuda.startswith('${CUDA_MAJOR}.') else 1)" 2>/dev/null; then
    say "creating $CUDA_VENV with $CUDA_TORCH_SPEC"
    "$PYTHON" -m venv "$CUDA_VENV"
    "$VPY" -m pip install -q --upgrade "pip>=23" setuptools wheel
    "$VPY" -m pip install -q "$CUDA_TORCH_SPEC" numpy
fi
say "$("$VPY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"
after_venv=$(date +%s)

WHEEL_INCLUDE=$("$VPY" -c "import os, sysconfig; print(os.path.join(sysconfig.get_paths()['purelib'], 'nvidia', 'cu${CUDA_MAJOR}', 'include'))")
if [ ! -d "$WHEEL_INCLUDE" ]; then
    say "expected the CUDA wheels' headers at $WHEEL_INCLUDE" >&2
    exit 1
fi

rm -rf "$BUILD_DIR"
mkdir -p "$BUILD_DIR"
BUILD_LOG="$BUILD_DIR/build.log"
say "building omkit.ops._C with CUDA for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST (MAX_JOBS=$MAX_JOBS)"
FORCE_CUDA=1 OMKIT_REQUIRE_EXTENSION=1 OMKIT_EXTRA_INCLUDE_DIRS="$WHEEL_INCLUDE" \
    "$VPY" setup.py -q build_ext --build-lib "$BUILD_DIR/lib" --build-temp "$BUILD_DIR/temp" \
    > "$BUILD_LOG" 2>&1 || { tail -n 60 "$BUILD_LOG" >&2; say "CUDA build failed (full log: $BUILD_LOG)" >&2; exit 1; }
after_build=$(date +%s)

# Load the library into the CUDA torch (no GPU needed) and check the registrations;
# omkit itself is not imported (the manifest and the references are loaded by path),
# as the source tree may hold a CPU build for another torch.
"$VPY" scripts/check_ops_registered.py "$BUILD_DIR"/lib/omkit/ops/_C*.so
end=$(date +%s)
say "ok: venv $((after_venv - start)) s, build $((after_build - after_venv)) s, load check $((end - after_build)) s, total $((end - start)) s"
