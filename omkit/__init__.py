"""omkit: one-pass multi-task brain tumor segmentation (OM-Net + CGA, Zhou et al., TIP 2020)."""
from .registry import PluginError, UnknownNameError

__version__ = "0.1.0"

# The public names, each imported from its module on first use (PEP 562): `import omkit.ops`
# or `import omkit.data` then loads neither the plug-in core nor the models, and
# `import omkit` not the inference stack.
_LAZY = {
    "hookimpl": "omkit.hookspecs",  # pluggy: loaded by plug-ins, not by `import omkit.ops`
    **{name: "omkit.factory" for name in (
        "count_parameters", "create_attention", "create_backbone", "get_preset", "list_attention",
        "list_backbones", "list_postprocessors", "list_presets", "list_samplers")},
    "create_model": "omkit.models.build",
    "list_models": "omkit.models.build",
    "get_plugins": "omkit.plugin_manager",
    "setup_plugins": "omkit.plugin_manager",
    "Segmenter": "omkit.inference.segmenter",
}


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later reads skip this function
        return value
    if name == "nn":
        return importlib.import_module("omkit.nn")
    raise AttributeError(f"module 'omkit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"nn"})


__all__ = [
    "PluginError", "Segmenter", "UnknownNameError", "count_parameters", "create_attention",
    "create_backbone", "create_model", "get_plugins", "get_preset", "hookimpl", "list_attention",
    "list_backbones", "list_models", "list_postprocessors", "list_presets", "list_samplers",
    "setup_plugins",
]
