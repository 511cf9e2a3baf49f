"""OM-Net (one shared backbone, three task heads, one pass) and the MC cascade baseline."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from omkit.labels import CORE_CLASSES, NUM_CLASSES_TASK, TUMOR_CLASSES

from .blocks import check_spatial_dims
from .heads import build_head
from .plugin_checks import call_plugin_module, mark_origin

# Transfers for training: destination task index -> [(source task index, patch indices)].
Transfers = dict[int, Sequence[tuple[int, Tensor]]]


class TaskOutputs(NamedTuple):
    """Logits of the three tasks (None for a task the model does not have)."""

    task1: Tensor | None
    task2: Tensor | None
    task3: Tensor | None


def positive_classes(task: int) -> tuple[int, ...]:
    """The classes of the category that guides the next task: tumor (all tumor classes)
    after task 1, core (NCR/NET + enhancing) after task 2."""
    return TUMOR_CLASSES if task == 0 else CORE_CLASSES


def positive_probability(task: int, logits: Tensor) -> Tensor:
    """Probability of the category that guides the next task (B, 1, ...)
    (:func:`positive_classes`)."""
    return torch.softmax(logits, dim=1)[:, list(positive_classes(task))].sum(dim=1, keepdim=True)


def _backbone(name: str, in_channels: int, width: float, spatial_dims: int, backbone_kw: dict) -> nn.Module:
    """The registered backbone ``name``; ``spatial_dims`` is passed only when not 3, so a
    plug-in backbone made for volumes need not take it."""
    from omkit.factory import create_backbone

    if check_spatial_dims(spatial_dims) != 3:
        backbone_kw = {**backbone_kw, "spatial_dims": spatial_dims}
    try:
        return mark_origin(create_backbone(name, in_channels=in_channels, width=width, **backbone_kw), "backbone", name)
    except TypeError as exc:
        if spatial_dims != 3 and "spatial_dims" in str(exc):
            raise ValueError(f"backbone {name!r} takes no spatial_dims: it builds 3-D networks only") from None
        raise


def _features(backbone: nn.Module, x: Tensor) -> Tensor:
    """The backbone plug-in's features of ``x``, checked (plugin_checks): ``(B, out_channels, ...)``
    at the input's spatial size."""
    return call_plugin_module(backbone, (x,), (x.shape[0], backbone.out_channels, *x.shape[2:]))


def _concat_active(inputs: Sequence[Tensor | None]) -> tuple[list[int], Tensor]:
    active = [t for t, x in enumerate(inputs) if x is not None and x.shape[0] > 0]
    if not active:
        raise ValueError("forward_tasks needs at least one non-empty task batch")
    return active, torch.cat([inputs[t] for t in active]) if len(active) > 1 else inputs[active[0]]


class OMNet(nn.Module):
    """One-pass multi-task network (Sec. III-B) with optional attention per head.

    A shared backbone (``backbone``: a registered name, default the paper's
    FusionNet) and three task heads; ``attention`` names an attention plug-in
    (``"se"``, ``"cga"``, ...) or None per head. ``spatial_dims=2`` builds the
    same network for 2-D images (the backbone and attention modules must take
    ``spatial_dims``; the built-in ones do).

    Shapes: ``forward(x)`` maps ``(B, in_channels, D, H, W)`` (``(B, in_channels,
    H, W)`` in 2-D; spatial sizes divisible by the backbone's ``min_divisor``,
    8 for FusionNet) to :class:`TaskOutputs` of logits ``(B, 5, ...)``, ``(B, 5,
    ...)`` and ``(B, 2, ...)`` at the input's spatial size.

    * ``forward(x)``: one pass; the three tasks' logits. With guided heads (CGA),
      task 2 is guided by task 1's tumor probability and task 3 by task 2's core
      probability, both without gradient.
    * ``forward_tasks(inputs, transfers)``: training (Fig. 3 / Fig. 4). The tasks'
      batches are concatenated along the batch, passed through the backbone once
      and split back; transferred patches' features are appended to their
      destination task; guided heads get their guidance from the cross-task
      forward flow (Feature-t through the preceding heads, no gradient).
    """

    def __init__(
        self,
        backbone: str = "fusionnet3d",
        width: float = 1.0,
        attention: Sequence[str | None] = (None, None, None),
        in_channels: int = 4,
        attention_kw: dict | None = None,
        spatial_dims: int = 3,
        **backbone_kw,
    ):
        super().__init__()
        if len(attention) != 3:
            raise ValueError(f"attention needs one entry per task (3), got {list(attention)}")
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.backbone = _backbone(backbone, in_channels, width, spatial_dims, backbone_kw)
        channels = self.backbone.out_channels
        self.heads = nn.ModuleList(
            build_head(channels, k, att, spatial_dims, **(attention_kw or {}))
            for k, att in zip(NUM_CLASSES_TASK, attention)
        )
        if self.heads[0].guided:
            raise ValueError("task 1 has no preceding task to guide it; use an unguided head for task 1")
        self.num_tasks = 3

    def _head(self, task: int, features: Tensor, guidance: Tensor | None) -> Tensor:
        head = self.heads[task]
        if not head.guided:
            return head(features)
        # a guided plug-in is the whole head: (B, C, ...) features -> (B, K, ...) logits, checked
        expected = (features.shape[0], NUM_CLASSES_TASK[task], *features.shape[2:])
        return call_plugin_module(head, (features, guidance), expected)

    def forward(self, x: Tensor) -> TaskOutputs:
        features = _features(self.backbone, x)
        outputs: list[Tensor] = []
        guidance = None
        for task in range(3):
            logits = self._head(task, features, guidance)
            outputs.append(logits)
            if task < 2 and self.heads[task + 1].guided:
                guidance = positive_probability(task, logits.detach())
        return TaskOutputs(*outputs)

    @torch.no_grad()
    def cross_task_guidance(self, task: int, features: Tensor) -> Tensor:
        """Guidance for ``task``'s head computed from ``features`` by the preceding
        heads (the cross-task forward flow); forward-only."""
        guidance = None
        for prev in range(task):
            logits = self._head(prev, features, guidance)
            guidance = positive_probability(prev, logits)
        return guidance

    def task_features(self, inputs: Sequence[Tensor | None], transfers: Transfers | None = None) -> dict[int, Tensor]:
        """Per task with patches: the shared features of its own batch, then of the patches
        transferred to it, from one backbone pass over every task's batch (Fig. 3). What
        ``forward_tasks`` and window-consistent training (``omkit.training.windows``) run
        their heads on."""
        if len(inputs) != 3:
            raise ValueError(f"forward_tasks takes one batch (or None) per task, got {len(inputs)}")
        active, batch = _concat_active(inputs)
        features = _features(self.backbone, batch)
        own = dict(zip(active, features.split([inputs[t].shape[0] for t in active])))
        out: dict[int, Tensor] = {}
        for task in range(3):
            parts = [own[task]] if task in own else []
            for src, index in (transfers or {}).get(task, ()):
                if src in own and index.numel():
                    parts.append(own[src].index_select(0, index.to(features.device)))
            if parts:
                out[task] = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out

    def forward_tasks(self, inputs: Sequence[Tensor | None], transfers: Transfers | None = None) -> list[Tensor | None]:
        outputs: list[Tensor | None] = [None, None, None]
        for task, feats in self.task_features(inputs, transfers).items():
            guidance = self.cross_task_guidance(task, feats) if self.heads[task].guided else None
            outputs[task] = self._head(task, feats, guidance)
        return outputs


class SingleTaskNet(nn.Module):
    """One MC network: its own backbone and one plain head."""

    def __init__(self, num_classes: int, backbone: str = "fusionnet3d", width: float = 1.0, in_channels: int = 4,
                 spatial_dims: int = 3, **backbone_kw):
        super().__init__()
        self.backbone = _backbone(backbone, in_channels, width, spatial_dims, backbone_kw)
        self.head = build_head(self.backbone.out_channels, num_classes, None, spatial_dims)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(_features(self.backbone, x))


class MCNet(nn.Module):
    """The multi-model cascade baseline (Sec. III-A): ``num_tasks`` independent
    networks (MC1: task 1; MC2: tasks 1-2; MC3: tasks 1-3).

    ``forward(x)`` runs every network on the same input (for training-style
    evaluation); cascaded inference runs ``networks[t]`` only on the previous
    task's ROI (see the inference module).
    """

    def __init__(self, num_tasks: int = 3, backbone: str = "fusionnet3d", width: float = 1.0, in_channels: int = 4,
                 spatial_dims: int = 3, **backbone_kw):
        super().__init__()
        if not 1 <= num_tasks <= 3:
            raise ValueError(f"num_tasks must be 1, 2 or 3, got {num_tasks}")
        self.num_tasks = num_tasks
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.networks = nn.ModuleList(
            SingleTaskNet(NUM_CLASSES_TASK[t], backbone, width, in_channels, spatial_dims, **backbone_kw)
            for t in range(num_tasks)
        )

    def forward(self, x: Tensor) -> TaskOutputs:
        outputs = [net(x) for net in self.networks] + [None] * (3 - self.num_tasks)
        return TaskOutputs(*outputs)

    def forward_tasks(self, inputs: Sequence[Tensor | None], transfers: Transfers | None = None) -> list[Tensor | None]:
        if transfers:
            raise ValueError("MC networks are trained independently: online data transfer does not apply")
        outputs: list[Tensor | None] = [None, None, None]
        for t, net in enumerate(self.networks):
            if inputs[t] is not None and inputs[t].shape[0] > 0:
                outputs[t] = net(inputs[t])
        return outputs
