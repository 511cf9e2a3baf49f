"""omkit/ops/manifest.py is the one list of ops: the compiled library, csrc/ops.h,
the backends' registrations, the dispatch and the public functions agree with it;
and omkit.ops / omkit.functional import without cycles."""
from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from omkit import ops
from omkit.ops import _library, manifest, reference

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
needs_extension = pytest.mark.skipif(not ops.extension_loaded(), reason=f"compiled ops not built: {ops.load_error()}")


def _op_list_in_ops_h() -> dict[str, str]:
    """schema name -> schema, from the OMKIT_OPS X-macro of csrc/ops.h."""
    text = (CSRC / "ops.h").read_text()
    body = re.search(r"#define OMKIT_OPS\(X\)(.*?)(?:\n\s*\n|\Z)", text, re.S).group(1).replace("\\\n", "\n")
    entries = {}
    for match in re.finditer(r"\bX\(\s*(\w+)\s*,((?:\s*\"(?:[^\"\\]|\\.)*\")+)\s*\)", body):
        name, literals = match.groups()
        assert name not in entries, f"{name} twice in OMKIT_OPS"
        entries[name] = name + "".join(re.findall(r"\"((?:[^\"\\]|\\.)*)\"", literals))
    return entries


# ---- the manifest itself ---------------------------------------------------------------------

def test_manifest_is_consistent():
    names = [op.name for op in manifest.OPS]
    assert len(set(names)) == len(names) and len({op.schema for op in manifest.OPS}) == len(names)
    for op in manifest.OPS:
        assert set(op.dtypes) == set(manifest.DISPATCH_KEYS), op.name
        assert op.inplace == op.schema.endswith("_"), op.name  # torch's naming of in-place ops
        assert op.autocast in manifest.AUTOCAST_POLICIES, op.name
        if op.backward_of is not None:
            assert not op.functions and op.reference is None and not op.trains, op.name
            assert manifest.op(op.backward_of).trains, op.name
        else:
            assert op.reference is not None, op.name
    trains = {op.name for op in manifest.OPS if op.trains}
    assert trains == {op.backward_of for op in manifest.OPS if op.backward_of}  # each has its backward op
    with pytest.raises(KeyError, match="no omkit op"):
        manifest.op("nope")


def test_backend_table_loads_by_path_without_torch():
    """setup.py reads the kernel backends from omkit/devices.py by its path, before torch or omkit."""
    code = (
        "import importlib.util, sys\n"
        "sys.modules['torch'] = None  # importing torch would fail\n"
        f"spec = importlib.util.spec_from_file_location('s', {str(ROOT / 'omkit/devices.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(' '.join(b.device_type for b in m.KERNEL_BACKENDS))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == list(manifest.DISPATCH_KEYS)


def test_each_op_lives_in_its_family_module():
    """An op's reference, fake kernel and autograd formula are defined in the module that lists
    its entry, and every family is in the manifest."""
    import inspect

    families = {family.__name__ for family in manifest.FAMILIES}
    assert families == {"omkit.ops.cga", "omkit.ops.window", "omkit.ops.tiles"}
    owner = {entry.name: family.__name__ for family in manifest.FAMILIES for entry in family.OPS}
    assert set(owner) == set(manifest.BY_NAME)
    for op in manifest.OPS:
        pieces = [op.fake, op.backward, op.setup_context] + ([op.reference] if op.backward_of is None else [])
        for piece in filter(None, pieces):
            home = inspect.getmodule(piece).__name__
            # a reference may be shared within the op layer (cga_windowed's reference cuts tiles)
            assert home == owner[op.name], f"{op.name}: {piece.__name__} is defined in {home}"
        for function in op.functions:
            assert getattr(ops, function).__module__ == owner[op.name], function


def test_public_functions_and_references_exist():
    for op in manifest.OPS:
        for name in op.functions:
            assert name in ops.__all__ and callable(getattr(ops, name)), name
        if op.reference:
            # omkit.ops.reference names each op's reference after the op (cga's, with the op's three
            # outputs, is cga_head; reference.cga is the public function's reference)
            assert op.reference is (reference.cga_head if op.name == "cga" else getattr(reference, op.name)), op.name


# ---- the compiled library and the C++ lists ----------------------------------------------------

def test_csrc_op_list_is_the_manifest():
    assert set(_op_list_in_ops_h()) == {op.schema for op in manifest.OPS}


def test_csrc_registers_only_through_the_op_list():
    """Schemas are defined only from OMKIT_OPS (ops.cpp), kernels registered only by
    OMKIT_REGISTER_BACKEND (backend.h), once per kernel backend of the manifest."""
    sources = {p.relative_to(CSRC).as_posix(): p.read_text() for p in CSRC.rglob("*") if p.suffix in
               {".h", ".cpp", ".cu", ".cuh"}}
    code = {path: re.sub(r"//[^\n]*", "", text) for path, text in sources.items()}
    assert [p for p, t in code.items() if "m.def(" in t] == ["ops.cpp"]
    assert [p for p, t in code.items() if "m.impl(" in t or "TORCH_LIBRARY_IMPL(" in t] == ["backend.h"]
    registrations = {
        (path.split("/")[0], key, ns)
        for path, text in code.items() if path != "backend.h"
        for key, ns in re.findall(r"^OMKIT_REGISTER_BACKEND\((\w+),\s*(\w+)\)", text, re.M)
    }
    assert registrations == {(device, key, device) for device, key in manifest.DISPATCH_KEYS.items()}


@needs_extension
def test_registered_ops_are_the_manifest():
    registered = {name for name in torch._C._dispatch_get_all_op_names() if name.startswith("omkit::")}
    assert registered == {op.qualname for op in manifest.OPS}
    from torch._library import simple_registry

    for op in manifest.OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.qualname, "CPU"), op.name
        assert "cpu" in _library.STATE.kernels[op.name]
        assert simple_registry.singleton.find(op.qualname).fake_impl.kernel is not None, f"no fake kernel: {op.name}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.qualname, "Autograd") == op.trains, op.name


@needs_extension
def test_registered_schemas_are_ops_h():
    for schema_name, schema in _op_list_in_ops_h().items():
        registered = str(getattr(torch.ops.omkit, schema_name).default._schema)
        assert registered == f"omkit::{schema}", schema_name
        # the first argument is a tensor: its device and dtype choose kernel or reference
        assert getattr(torch.ops.omkit, schema_name).default._schema.arguments[0].type.kind() == "TensorType"


# ---- dtypes and dispatch -----------------------------------------------------------------------

def _op_args(name: str, dtype=torch.float64):
    """Arguments of op `name` (its schema's order), with the first argument in `dtype`."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, positive=False):
        t = torch.rand(*shape, generator=g, dtype=torch.float64) if positive else torch.randn(*shape, generator=g,
                                                                                              dtype=torch.float64)
        return t.to(dtype) if dtype.is_floating_point else t

    features, guidance = rand(2, 3, 2, 3, 4), rand(2, 1, 2, 3, 4, positive=True)
    weights = [rand(*shape) for shape in ((2, 3), (2,), (2, 3), (2,), (2, 2), (2,))]
    m = reference.cga_pool(features.double(), guidance.double())[0].to(features.dtype)
    origins = torch.tensor([[-1, 0, 2], [1, 1, 1]])
    volume = torch.arange(2 * 4 * 5 * 6).reshape(2, 4, 5, 6).to(dtype)
    tiles = torch.randn(2, 2, 3, 3, 3, generator=g)
    return {
        "cga": (features, guidance, *weights, "full", 1e-12),
        "cga_pool": (features, guidance, 1e-12),
        "cga_recalibrate": (features, guidance, m, *weights, "full"),
        "gather_tiles": (volume, origins, [3, 3, 3]),
        "stitch_tiles": (torch.zeros(2, 4, 5, 6, dtype=dtype), tiles, origins, [1, 1, 1], [1, 2, 2]),
        "stitch_tiles_argmax": (torch.zeros(4, 5, 6, dtype=torch.uint8), tiles, origins, [1, 1, 1], [1, 2, 2], None),
        # blocks of (1, 1, 2) voxels in windows of (2, 2, 2): a grid of (2, 3, 2) blocks
        "window_sums": (features, guidance, [2, 2, 2], [1, 1, 2], [0, 1, 0], [0, 0, 1]),
        "block_linear": (features, guidance, rand(2, 2, 3, 2, 2, 3), weights[1], None, None, [1, 1, 2], [0, 0, 1]),
        "cga_windowed": (features, guidance, *weights, [2, 2, 2], [1, 1, 2], [0, 1, 0], [0, 0, 1], "full", 1e-12),
    }[name]


FORWARD_OPS = [op for op in manifest.OPS if op.backward_of is None]
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@needs_extension
@pytest.mark.parametrize("op", [op for op in FORWARD_OPS if op.dtypes["cpu"] is not None], ids=lambda op: op.name)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_cpu_kernels_take_the_manifest_dtypes(op, dtype):
    """The CPU kernel runs exactly the manifest's dtypes (others raise), and auto dispatch follows it."""
    args = _op_args(op.name, dtype)
    takes = str(dtype).removeprefix("torch.") in op.dtypes["cpu"]
    if takes:
        getattr(torch.ops.omkit, op.schema)(*args)
    else:
        with pytest.raises(TypeError, match="the CPU kernel supports"):
            getattr(torch.ops.omkit, op.schema)(*args)
    with ops.use_backend("auto"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's one-time warning (tests/test_ops_cga.py checks it)
        assert _library.use_kernel(op.name, args[0]) == takes


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float16, torch.int64, torch.uint8, torch.bool], ids=str)
def test_tile_kernels_take_any_dtype(dtype):
    assert manifest.op("gather_tiles").dtypes["cpu"] is None
    volume, origins, roi = _op_args("gather_tiles", dtype)
    assert torch.equal(torch.ops.omkit.gather_tiles(volume, origins, roi), reference.gather_tiles(volume, origins, roi))
    with ops.use_backend("auto"):
        assert _library.use_kernel("gather_tiles", volume)


def _public_calls():
    """Public function name -> a call of it."""
    features, guidance, *_ = _op_args("cga_pool")
    m = reference.cga_pool(features, guidance)[0]
    weights = _op_args("cga")[2:8]
    return {
        "cga": lambda: ops.cga(features, guidance, *weights),
        "category_importance": lambda: ops.category_importance(features, guidance),
        "cga_pool": lambda: ops.cga_pool(features, guidance),
        "cga_recalibrate": lambda: ops.cga_recalibrate(features, guidance, m, *weights),
        "gather_tiles": lambda: ops.gather_tiles(*_op_args("gather_tiles")),
        "stitch_tiles": lambda: ops.stitch_tiles(*_op_args("stitch_tiles")),
        "stitch_tiles_argmax": lambda: ops.stitch_tiles_argmax(*_op_args("stitch_tiles_argmax")),
        "window_sums": lambda: ops.window_sums(features, guidance, window=2, block=(1, 1, 2), offset=(0, 1, 0)),
        "block_linear": lambda: ops.block_linear(features, _op_args("block_linear")[2], block=(1, 1, 2),
                                                 origin=(0, 0, 1)),
        "cga_windowed": lambda: ops.cga_windowed(features, guidance, *weights, window=2, block=(1, 1, 2)),
    }


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_every_public_function_dispatches_through_call(monkeypatch, backend):
    calls = _public_calls()
    assert set(calls) == {name for op in manifest.OPS for name in op.functions}
    seen = []

    def recording_call(name, *args):
        seen.append(name)
        return _library.call(name, *args)

    for family in manifest.FAMILIES:
        monkeypatch.setattr(family, "call", recording_call)
    with ops.use_backend(backend):
        for op in manifest.OPS:
            for function in op.functions:
                seen.clear()
                calls[function]()
                assert seen == [op.name], function


def test_reference_backend_runs_the_manifests_reference(monkeypatch):
    for op in FORWARD_OPS:
        hits = []
        original = op.reference
        monkeypatch.setitem(_library.STATE.references, op.name, lambda *a, _f=original, _h=hits: _h.append(1) or _f(*a))
        with ops.use_backend("reference"):
            _library.call(op.name, *_op_args(op.name))
        assert hits == [1], op.name


# ---- import graph ------------------------------------------------------------------------------

MODULES = {"omkit.functional": ROOT / "omkit/functional.py",
           **{("omkit.ops" if p.stem == "__init__" else f"omkit.ops.{p.stem}"): p
              for p in (ROOT / "omkit/ops").glob("*.py")}}


def _imports(module: str, path: Path) -> set[str]:
    """Every module `module` imports, at module level or inside functions."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES or sub == "omkit.ops._C" else base)
    return found


def test_ops_and_functional_import_graph_has_no_cycles_and_stays_inside():
    graph = {module: _imports(module, path) for module, path in MODULES.items()}
    allowed_roots = set(sys.stdlib_module_names) | {"torch", "__future__"}
    for module, targets in graph.items():
        for target in targets:
            inside = target in MODULES or target in {"omkit.ops._C", "omkit.protocol", "omkit.deprecation", "omkit.devices"}
            assert inside or target.split(".")[0] in allowed_roots, f"{module} imports {target}"
    assert "omkit.functional" not in set().union(*(graph[m] for m in graph if m.startswith("omkit.ops")))

    def visit(module, stack):
        assert module not in stack, f"import cycle: {' -> '.join(stack + [module])}"
        for target in graph.get(module, ()):
            if target in graph:
                visit(target, stack + [module])

    for module in graph:
        visit(module, [])
