"""Built-in presets: the rows of the paper's Table I."""
from omkit.hookspecs import hookimpl
from omkit.models.presets import BUILTIN_PRESETS


@hookimpl
def omkit_register_presets(registry):
    for preset in BUILTIN_PRESETS:
        registry.add(preset.name, preset)
