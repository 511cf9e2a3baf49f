"""The import graph of omkit/ and plugins/ (read with ast, nothing executed):
no cycles, and every import allowed by the layering in docs/ARCHITECTURE.md.

Counted: every ``import`` and ``from ... import`` statement anywhere in a
module, inside functions too (a lazy import is still a dependency).
``from a.b import c`` depends on ``a.b.c`` when that is a module, else on
``a.b``. Importing a module also runs its parent packages' ``__init__``; that
is not counted as an edge (it is how Python packages work, not a choice of
the importing module).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each unit (a module, or a package with everything below it) may import
# itself, external packages, and the units listed here. The foundation may be
# imported by every unit outside the kernel layer.
FOUNDATION = {"omkit.protocol", "omkit.labels", "omkit.fileio", "omkit.morphology", "omkit.devices",
              "omkit.registry", "omkit.hookspecs", "omkit.deprecation"}
ALLOWED: dict[str, set[str]] = {
    **{unit: set() for unit in FOUNDATION},
    # kernels: nothing of omkit but each other, the constants and the compiled library
    # (omkit.devices: the kernel backends' table)
    "omkit.ops": {"omkit.protocol", "omkit.deprecation", "omkit.devices"},  # with the compiled op library, omkit.ops._C
    "omkit.functional": {"omkit.ops", "omkit.protocol"},
    "omkit.plugin_manager": {"omkit.hookspecs", "omkit.registry"},
    "omkit.factory": {"omkit.plugin_manager", "omkit.registry"},
    # data and metrics: no model code
    "omkit.data": FOUNDATION,
    "omkit.metrics": FOUNDATION,
    "omkit.lesionwise": FOUNDATION | {"omkit.metrics"},
    "omkit.evaluation": FOUNDATION | {"omkit.data", "omkit.metrics", "omkit.lesionwise"},
    # the BraTS 2025 scoring: the organisers' package on label maps paired and read by evaluation
    "omkit.challenge": FOUNDATION | {"omkit.evaluation", "omkit.lesionwise"},
    "omkit.viz": FOUNDATION,
    "omkit.models": FOUNDATION | {"omkit.factory", "omkit.functional", "omkit.ops"},
    # omkit bench: registered components timed (attention by name, a model file on a case)
    "omkit.bench": FOUNDATION | {"omkit.models", "omkit.factory", "omkit.inference", "omkit.checkpoint", "omkit.data"},
    # the plug-in conformance kit: the contracts of the model and data hook kinds
    "omkit.testing": FOUNDATION | {"omkit.models", "omkit.ops", "omkit.factory", "omkit.data"},
    # the public modules for users' own networks: the model code, nothing else
    "omkit.nn": FOUNDATION | {"omkit.models"},
    # what omkit knows of a model besides its weights (read back by everything that loads one)
    "omkit.model_card": FOUNDATION | {"omkit.data"},
    "omkit.checkpoint": FOUNDATION | {"omkit.models", "omkit.factory", "omkit.model_card"},
    # (inference and metrics: validation during training scores held-out cases as predict does)
    "omkit.training": FOUNDATION | {"omkit.data", "omkit.models", "omkit.checkpoint", "omkit.factory",
                                    "omkit.plugin_manager", "omkit.model_card", "omkit.inference", "omkit.metrics"},
    "omkit.inference": FOUNDATION | {"omkit.data", "omkit.models", "omkit.checkpoint", "omkit.ops",
                                     "omkit.plugin_manager", "omkit.factory", "omkit.model_card"},
    "omkit.export": FOUNDATION | {"omkit.data", "omkit.ops", "omkit.models", "omkit.checkpoint", "omkit.inference",
                                  "omkit.model_card"},
    "omkit.ablation": FOUNDATION | {"omkit.data", "omkit.models", "omkit.checkpoint", "omkit.factory",
                                    "omkit.training", "omkit.inference", "omkit.evaluation", "omkit.metrics",
                                    "omkit.lesionwise", "omkit.challenge", "omkit.viz"},
    # the package root re-exports the plug-in core and the model factory, and on first use
    # omkit.nn and omkit.Segmenter
    "omkit": {"omkit.factory", "omkit.hookspecs", "omkit.models", "omkit.plugin_manager", "omkit.registry",
              "omkit.nn", "omkit.inference"},
    "omkit.__main__": {"omkit.cli"},
}
# the command line may use everything but the plug-ins; plug-ins everything but the command line
LIBRARY = set(ALLOWED) - {"omkit.__main__"} | {"omkit.training", "omkit.inference", "omkit.ablation"}
ALLOWED["omkit.cli"] = LIBRARY
ALLOWED["omkit.plugins"] = LIBRARY


def module_files() -> dict[str, Path]:
    modules = {}
    for base, prefix in ((ROOT / "omkit", "omkit"), (ROOT / "plugins", "omkit.plugins")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([prefix, *parts])] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.add(candidate if candidate in modules or candidate == "omkit.ops._C" else source)
    return {target for target in found if target == "omkit" or target.startswith("omkit.")}


def unit_of(module: str) -> str:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in ALLOWED:
            return candidate
    raise AssertionError(f"{module}: in no layer of ALLOWED (add it to the table and to docs/ARCHITECTURE.md)")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_the_graph_is_read(graph):
    # a parser that found nothing would pass every rule below
    assert "omkit.ops._library" in graph and "omkit.plugins.samplers" in graph
    assert "omkit.factory" in graph["omkit.models.build"]
    assert "omkit.evaluation" in graph["omkit.cli.evaluate"]


def test_no_import_cycles(graph):
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_import_respects_the_layers(graph):
    breaches = []
    for module, targets in sorted(graph.items()):
        unit = unit_of(module)
        for target in sorted(targets):
            other = unit_of(target)
            if other != unit and other not in ALLOWED[unit]:
                breaches.append(f"{module} imports {target} ({unit} may not depend on {other})")
    assert not breaches, "layering breaches:\n" + "\n".join(breaches)


@pytest.mark.parametrize("source, target, expected", [
    ("omkit.ops.reference", "omkit.models.omnet", False),
    ("omkit.data.sampling", "omkit.models", False),
    ("omkit.ablation", "omkit.cli.evaluate", False),
    ("omkit.training.trainer", "omkit.plugins.samplers", False),
    ("omkit.cli.predict", "omkit.inference", True),
    ("omkit.plugins.attention", "omkit.functional", True),
])
def test_the_rules_reject_what_the_issue_names(source, target, expected):
    unit, other = unit_of(source), unit_of(target)
    assert (other == unit or other in ALLOWED[unit]) is expected


def test_importing_the_kernel_layer_loads_neither_the_plugin_core_nor_the_models():
    """At run time too: the package root imports its public names on first use, so
    ``import omkit.ops`` (and the compiled library it loads) stays in the kernel layer."""
    import subprocess
    import sys

    code = ("import sys, omkit.ops, omkit.functional; omkit.ops.extension_loaded(); "
            "print(sorted(m for m in sys.modules if m == 'omkit.plugin_manager' or m == 'omkit.factory' "
            "or m.startswith('omkit.models') or m.startswith('omkit.inference')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
    # and the root's names still arrive on first use
    code = "import omkit; print(omkit.create_model.__module__, omkit.list_presets()[:1], omkit.Segmenter.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.split()[0] == "omkit.models.build", out.stderr
