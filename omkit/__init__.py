"""omkit: one-pass multi-task brain tumor segmentation (OM-Net + CGA, Zhou et al., TIP 2020)."""
from .factory import (
    count_parameters,
    create_attention,
    create_backbone,
    get_preset,
    list_attention,
    list_backbones,
    list_postprocessors,
    list_presets,
    list_samplers,
)
from .hookspecs import hookimpl
from .models.build import create_model, list_models
from .plugin_manager import get_plugins, setup_plugins
from .registry import PluginError, UnknownNameError

__version__ = "0.1.0"


# imported on first use, so that `import omkit` does not load the inference stack
def __getattr__(name: str):
    if name == "Segmenter":
        from .inference.segmenter import Segmenter

        return Segmenter
    if name == "nn":
        import omkit.nn

        return omkit.nn
    raise AttributeError(f"module 'omkit' has no attribute {name!r}")


__all__ = [
    "PluginError", "Segmenter", "UnknownNameError", "count_parameters", "create_attention",
    "create_backbone", "create_model", "get_plugins", "get_preset", "hookimpl", "list_attention",
    "list_backbones", "list_models", "list_postprocessors", "list_presets", "list_samplers",
    "setup_plugins",
]
