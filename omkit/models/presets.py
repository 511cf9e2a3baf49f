"""Named presets: one per row of the paper's Table I."""
from __future__ import annotations

from dataclasses import dataclass, field, asdict


@dataclass(frozen=True)
class Preset:
    """A model architecture plus the training strategy the paper pairs it with.

    ``curriculum``: train task 1, then 1+2, then 1+2+3 (else all active tasks
    from the start). ``transfer``: online training-data transfer from easier
    to harder tasks. Both are read by the trainer.
    """

    name: str
    title: str
    architecture: str  # "omnet" or "mc"
    num_tasks: int = 3
    attention: tuple = (None, None, None)
    curriculum: bool = True
    transfer: bool = True
    description: str = ""
    model_kw: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attention"] = list(self.attention)
        return d

    def build(self, width: float = 1.0, **kw):
        from .omnet import MCNet, OMNet

        kw = {**self.model_kw, **kw}
        if self.architecture == "mc":
            if kw.pop("attention", None):
                raise ValueError(f"preset {self.name!r} (MC baseline) has plain heads; attention does not apply")
            return MCNet(num_tasks=self.num_tasks, width=width, **kw)
        if self.architecture == "omnet":
            attention = kw.pop("attention", None)
            if attention is None:
                attention = self.attention
            elif isinstance(attention, str):
                attention = _same_attention_everywhere(attention)
            return OMNet(width=width, attention=tuple(attention), **kw)
        raise ValueError(f"preset {self.name!r} has unknown architecture {self.architecture!r}")


def _same_attention_everywhere(name: str) -> tuple:
    """One attention plug-in for every head; a guided one (CGA-like) cannot guide
    task 1, which has no preceding task, so task 1 keeps its plain head."""
    from omkit.factory import attention_class

    if getattr(attention_class(name), "guided", False):
        return (None, name, name)
    return (name, name, name)


BUILTIN_PRESETS = (
    Preset("mc1", "MC1", "mc", num_tasks=1, curriculum=False, transfer=False,
           description="task-1 network only (coarse five-class segmentation)"),
    Preset("mc2", "MC2", "mc", num_tasks=2, curriculum=False, transfer=False,
           description="cascade of the task-1 and task-2 networks"),
    Preset("mc3", "MC3", "mc", num_tasks=3, curriculum=False, transfer=False,
           description="the full three-network cascade baseline"),
    Preset("omnet0", "OM-Net0", "omnet", curriculum=False, transfer=False,
           description="OM-Net trained on all tasks from the start, no data transfer"),
    Preset("omnetd", "OM-Netd", "omnet", curriculum=False, transfer=True,
           description="OM-Net with online data transfer, no curriculum"),
    Preset("omnet", "OM-Net", "omnet", description="OM-Net with curriculum and online data transfer"),
    Preset("omnet_se", "OM-Net + SE", "omnet", attention=("se", "se", "se"),
           description="an SE block before each classifier"),
    Preset("omnet_cga", "OM-Net + CGA", "omnet", attention=(None, "cga", "cga"),
           description="CGA-tumor and CGA-core heads for tasks 2 and 3"),
    Preset("omnet_cga_minus", "OM-Net + CGA-", "omnet", attention=(None, "cga_minus", "cga_minus"),
           description="CGA without the Pt/Pn soft masks in CompSeg"),
    Preset("omnet_cga_t", "OM-Net + CGAt", "omnet", attention=(None, "cga_t", "cga_t"),
           description="CGA with the tumor (upper) branch only"),
    Preset("omnet_cga_n", "OM-Net + CGAn", "omnet", attention=(None, "cga_n", "cga_n"),
           description="CGA with the non-tumor (lower) branch only"),
)
