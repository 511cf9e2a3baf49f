"""Build omkit: the Python package, its built-in plug-ins (plugins/ -> omkit.plugins)
and, when a compiler is there, the fused torch ops in csrc/ as omkit.ops._C.

The extension never stands in the way of an install: without torch at build
time, without a working compiler, or with OMKIT_NO_EXTENSION=1, omkit installs
as pure Python and every op runs its PyTorch reference (see ``omkit info``).

Environment switches (install with ``pip install --no-build-isolation``, as
this file imports the torch it builds against):

* ``OMKIT_NO_EXTENSION=1``   skip the extension entirely
* ``FORCE_CUDA=1``           build the CUDA kernels even where no GPU is visible
                             (needs nvcc: CUDA_HOME); otherwise CUDA is built when
                             torch sees a GPU and a toolkit is found
* ``DEBUG=1``                -O0 -g (and -lineinfo for the CUDA kernels)
* ``OMKIT_REQUIRE_EXTENSION=1``  a failed extension build fails the install
                             (CI uses it so a broken kernel cannot pass unnoticed)
* ``OMKIT_EXTRA_INCLUDE_DIRS``  extra header directories (os.pathsep-separated), e.g.
                             the CUDA library headers that a pip-installed toolkit
                             keeps beside torch
* ``TORCH_CUDA_ARCH_LIST``, ``MAX_JOBS``: as for any torch extension
"""
import glob
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _report(message: str) -> None:
    print(f"omkit setup: {message}", file=sys.stderr)


def _sources(pattern: str) -> list:
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _op_spec():
    """omkit/devices.py, loaded by its path (no torch at module level): the kernel backends and their sources."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("omkit_devices", os.path.join(HERE, "omkit", "devices.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cuda_code_targets() -> list:
    """The code targets nvcc will compile (sm_90, compute_90, ...), as torch's build derives
    them from TORCH_CUDA_ARCH_LIST or the visible GPUs; [] when torch cannot say."""
    import re

    try:
        from torch.utils.cpp_extension import _get_cuda_arch_flags

        flags = _get_cuda_arch_flags()
    except Exception:
        return []
    # -gencode=arch=compute_90,code=sm_90 (or code=[sm_90,compute_90]): the targets after ",code="
    codes = {code for flag in flags for group in re.findall(r",code=\[?([\w,]+)\]?", flag)
             for code in group.split(",") if code}
    return sorted(codes, key=lambda c: (c.startswith("compute"), c))


def extension_config():
    """(ext_modules, cmdclass) for the fused ops, or ([], {}) for a pure-Python build."""
    if _flag("OMKIT_NO_EXTENSION"):
        _report("OMKIT_NO_EXTENSION=1: skipping the C++/CUDA ops (pure-Python install)")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except Exception as exc:  # no torch in the build environment: nothing to build against
        _report(f"torch not importable at build time ({exc}); pure-Python install")
        return [], {}

    debug = _flag("DEBUG")
    with_cuda = _flag("FORCE_CUDA") or (torch.cuda.is_available() and CUDA_HOME is not None)
    # The shared sources (op list, device-independent bodies, Python module stub) and each kernel
    # backend's folder (its kernels and registration), as omkit/devices.py lists them: the C++
    # backends always, the CUDA ones with CUDA.
    op_spec = _op_spec()
    backends = [b for b in op_spec.KERNEL_BACKENDS if b.compiler == "cxx" or (with_cuda and b.compiler == "nvcc")]
    sources = [path for pattern in op_spec.COMMON_SOURCES for path in _sources(pattern)]
    sources += [path for backend in backends for pattern in backend.sources for path in _sources(pattern)]
    # OpenMP: at::parallel_for compiles its parallel region into this library, and
    # `omp simd` marks the vectorisable loops.
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    cxx_flags += ["-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    extra = {"cxx": cxx_flags}
    if with_cuda:
        extra["nvcc"] = (["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]) + ["-DWITH_CUDA"]
        extra["cxx"] = extra["cxx"] + ["-DWITH_CUDA"]
        archs = _cuda_code_targets()
        if archs:  # recorded in the binary: omkit.ops._C.build_info(), omkit info
            extra["cxx"].append(f"-DOMKIT_CUDA_ARCHS={'+'.join(archs)}")
        extension_cls, kind = CUDAExtension, "CUDA + CPU"
    else:
        extension_cls, kind = CppExtension, "CPU (OpenMP)"
    extension = extension_cls(
        name="omkit.ops._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")]
        + [p for p in os.environ.get("OMKIT_EXTRA_INCLUDE_DIRS", "").split(os.pathsep) if p],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )
    require = _flag("OMKIT_REQUIRE_EXTENSION")

    class OptionalBuildExtension(BuildExtension):
        """Builds omkit.ops._C, but a failed build leaves a working pure-Python install
        (unless OMKIT_REQUIRE_EXTENSION=1)."""

        def run(self):
            _report(
                f"building omkit.ops._C: {kind} kernels, {'debug -O0 -g' if debug else 'release -O3'}, "
                f"torch {torch.__version__}" + (f", CUDA_HOME={CUDA_HOME}" if with_cuda else "")
            )
            try:
                super().run()
            except Exception as exc:
                if require:
                    raise
                _report(f"WARNING: building omkit.ops._C failed ({exc}); installing without it, "
                        "the ops fall back to their pure-PyTorch reference")
                self.extensions = []
                return
            for path in self.get_outputs():
                _report(f"built {path}")

        def get_outputs(self):
            return [p for p in super().get_outputs() if os.path.exists(p)]

    return [extension], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = extension_config()

setup(
    name="omkit",
    version="0.1.0",
    description="One-pass multi-task brain tumor segmentation: OM-Net with Cross-task Guided Attention",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["omkit", "omkit.*"]) + ["omkit.plugins"],
    package_dir={"omkit.plugins": "plugins"},
    install_requires=[
        "torch>=2.4,<3",
        "numpy>=1.24,<3",
        "nibabel>=5.0,<6",
        "pluggy>=1.3,<2",
        "scikit-learn>=1.3,<2",
        "scipy>=1.10,<2",
        # 26-connected components for the lesion-wise metrics (what the BraTS reference code uses)
        "connected-components-3d>=3.12,<5",
        "matplotlib>=3.7,<4",
        "tqdm>=4.60,<5",
        # the geometry of the training-patch augmentation (plugins/augment.py: rotations, zooms,
        # elastic deformation, blur); pure Python on torch and numpy. 1.4: numpy 2
        "monai>=1.4,<2",
    ],
    extras_require={
        # (MONAI, a dependency, is also the independent metric implementation of the agreement tests
        # and the peer baselines)
        "test": ["pytest>=7", "hypothesis>=6", "pytest-benchmark>=4",
                 # omkit export: the ONNX parity tests run the file in onnxruntime
                 "onnx>=1.17,<2", "onnxscript>=0.5,<1", "onnxruntime>=1.20,<2",
                 # tests/test_challenge.py compares omkit evaluate --challenge with the organisers' package
                 "brats-evaluation==0.0.10",
                 # omkit train --tensorboard
                 "tensorboard>=2.14,<3"],
        # omkit train --tensorboard: event files of the losses and validation scores
        "tensorboard": ["tensorboard>=2.14,<3"],
        # omkit evaluate --challenge BraTS-*-2025: the organisers' scoring package (AGPL-3.0). Its
        # panoptica pins numpy<2.3 and connected-components-3d<4, and brings pandas, scikit-image,
        # SimpleITK and plotly. Pinned: a new release may change the rules.
        "challenge": ["brats-evaluation==0.0.10"],
        # omkit export --format onnx (torch's exporter needs onnx and onnxscript); onnxruntime runs
        # the file (runner/omkit_runner.py). Checked with torch 2.13: onnx 1.23, onnxscript 0.7,
        # onnxruntime 1.32.
        "export": ["onnx>=1.17,<2", "onnxscript>=0.5,<1", "onnxruntime>=1.20,<2"],
    },
    entry_points={"console_scripts": ["omkit = omkit.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
