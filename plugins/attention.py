"""Built-in attention plug-ins: SE (OM-Net + SE) and CGA with its ablation variants.

The modules live in core (``omkit.models.attention``, public as ``omkit.nn``);
this plug-in registers them through the same hook a third party uses."""
from __future__ import annotations

from omkit.hookspecs import hookimpl
from omkit.models.attention import CGA, SE, CGAMinus, CGANonTumor, CGATumor

# the names this module gave the classes before they moved to core
SEBlock, CGAHead, CGAMinusHead, CGATumorHead, CGANonTumorHead = SE, CGA, CGAMinus, CGATumor, CGANonTumor


@hookimpl
def omkit_register_attention(registry):
    registry.add("se", SE)
    registry.add("cga", CGA)
    registry.add("cga_minus", CGAMinus)
    registry.add("cga_t", CGATumor)
    registry.add("cga_n", CGANonTumor)
