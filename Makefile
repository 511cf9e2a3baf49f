# omkit developer entry points. `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.omkit-installed
PYTEST_ARGS ?=
# The install builds the fused ops (omkit.ops._C); here a failed build is an error,
# while a plain `pip install .` falls back to pure Python.
OMKIT_REQUIRE_EXTENSION ?= 1
MAX_JOBS ?= 2
OP_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)
CMAKE_BUILD_DIR ?= build-cmake

# The GPU acceptance run (scripts/gpu_check/, a package: python3 scripts/gpu_check; benchmarks/RESULTS.md, "GPU"): on a machine with an
# NVIDIA GPU, with the machine's own torch (PYTHON), into GPU_CHECK_OUT; gpu-check-dry is what
# runs without a GPU (CI). gpu-wheels and gpu-data fill the git-ignored folders that travel with
# the checkout to a GPU machine without network.
GPU_CHECK_OUT ?= gpu_check_out
GPU_CHECK_ARGS ?=
GPU_WHEELS ?= gpu_wheels
GPU_DATA_CASES ?= 2
# what the checks import that a bare GPU machine may lack (the others come with torch and pytest)
GPU_WHEEL_PACKAGES ?= "nibabel>=5,<6" hypothesis sortedcontainers typing_extensions packaging tqdm matplotlib \
	contourpy cycler fonttools kiwisolver pillow pyparsing python-dateutil six

.PHONY: install test demo bench bench-smoke cuda-build cmake-test runner-check clean gpu-check gpu-check-dry gpu-wheels gpu-data

$(STAMP): setup.py $(OP_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=23" setuptools wheel
	$(PIP) install -q "$(TORCH_SPEC)"
	OMKIT_REQUIRE_EXTENSION=$(OMKIT_REQUIRE_EXTENSION) MAX_JOBS=$(MAX_JOBS) $(PIP) install -q --no-build-isolation -e ".[test]"
	$(PY) -c "import omkit.ops as o; print('omkit ops:', o.backend_report())"
	touch $(STAMP)

install: $(STAMP)

# the organisers' scoring package comes with the test extra: its comparison must run, not skip
test: $(STAMP)
	OMKIT_REQUIRE_CHALLENGE_PACKAGE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m omkit demo -o demo_out

# All benchmark suites at full size (pytest-benchmark), saved under .benchmarks/ for
# `pytest-benchmark compare`; benchmarks/RESULTS.md has the recorded figures.
bench: $(STAMP)
	$(PY) -m pytest benchmarks -q -p no:randomly --benchmark-autosave --benchmark-columns=median,mean,stddev,rounds $(BENCH_ARGS)

# Every benchmark once at toy sizes, as a test.
bench-smoke: $(STAMP)
	OMKIT_BENCH_SMOKE=1 $(PY) -m pytest benchmarks -q --benchmark-disable

# Compile and link the CUDA kernels against torch 2.14.1+cu130 in a separate venv (no GPU needed).
cuda-build:
	MAX_JOBS=$(MAX_JOBS) bash scripts/check_cuda_build.sh

# The exported runner installed as users install it (pip install ./runner, a venv without
# omkit), against omkit predict's labels.
runner-check: $(STAMP)
	PY=$(PY) bash scripts/check_runner.sh

# The libtorch (CMake) build of the ops and its C++ test.
cmake-test: $(STAMP)
	cmake -S . -B $(CMAKE_BUILD_DIR) -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" > $(CMAKE_BUILD_DIR).log 2>&1 || { cat $(CMAKE_BUILD_DIR).log; exit 1; }
	cmake --build $(CMAKE_BUILD_DIR) -j $(MAX_JOBS)
	ctest --test-dir $(CMAKE_BUILD_DIR) --output-on-failure

gpu-check:
	$(PYTHON) scripts/gpu_check $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

gpu-check-dry: $(STAMP)
	$(PY) scripts/gpu_check --dry-run $(GPU_CHECK_OUT)-dry $(GPU_CHECK_ARGS)

# py3-none-any / cp312 manylinux wheels for the GPU machine's Python 3.12 (MONAI without its deps)
gpu-wheels:
	$(PYTHON) -m pip download -q --python-version 3.12 --only-binary=:all: --no-deps \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d $(GPU_WHEELS) $(GPU_WHEEL_PACKAGES) monai
	du -sh $(GPU_WHEELS)

gpu-data:
	$(PYTHON) scripts/gpu_data.py --cases $(GPU_DATA_CASES) --wheels $(GPU_WHEELS)

clean:
	rm -rf build *.egg-info demo_out .pytest_cache $(CMAKE_BUILD_DIR) omkit/ops/_C*.so
