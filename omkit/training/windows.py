"""Window-consistent training (``--train-mode windows``): train as dense inference infers.

The paper's training passes each 16 x 32 x 32 patch through the backbone alone, so
every feature the heads learn from carries the patch's zero padding, while dense
inference computes each voxel's features with its real neighbourhood; FusionNet's
four levels reach far beyond a patch, and a model trained on patches loses accuracy
when predicted densely (docs/RESULTS.md, "Train as you infer").

Here each sampled centre gets a *crop*: a grid of ``blocks`` blocks (the tiles' kept
centres, ``block`` voxels each) whose windows (the tiles, ``window`` = the patch size)
lie inside it, with ``context`` more voxels of image on every side. The backbone runs
once over the crop; the heads run window-consistently (``omkit.models.windowed``: SE
and CGA pool per window, exactly as dense inference); the loss is taken over the
blocks only, where the features are those of dense inference up to what the context
leaves out. One backbone pass supervises ``prod(blocks)`` windows.

The OM-Net training keeps its meaning: a task's crops are centred where its sampler
places patches, online data transfer is decided on the supervised blocks' labels and
moves a crop's features to the next task's head, the curriculum is unchanged, and the
cross-task guidance is computed forward-only by the preceding heads over each crop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor, nn

from omkit.model_card import TRAIN_MODES
from omkit.protocol import PATCH_DIVISOR

__all__ = ["TRAIN_MODES", "WindowGrid", "check_model", "forward_tasks", "grid_of"]


def keep_offset(window: Sequence[int], block: Sequence[int]) -> tuple[int, ...]:
    """Where a tile's kept centre starts inside the tile (centred; the same rule as
    ``omkit.inference.tiling.keep_offset``)."""
    return tuple((w - b) // 2 for w, b in zip(window, block))


@dataclass(frozen=True)
class WindowGrid:
    """The geometry of one training crop (all triples in D, H, W)."""

    window: tuple[int, int, int]  # the tile whose attention a block gets (the patch size)
    block: tuple[int, int, int]  # the kept centre of a tile: what dense inference computes per window
    blocks: tuple[int, int, int]  # supervised blocks per crop and axis
    context: tuple[int, int, int]  # voxels of image beyond the outermost windows

    def __post_init__(self):
        for name in ("window", "block", "blocks", "context"):
            value = getattr(self, name)
            if len(value) != 3 or any(int(v) != v for v in value):
                raise ValueError(f"window grid {name} needs three whole numbers D,H,W, got {list(value)}")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if min(self.block) < 1 or min(self.blocks) < 1 or min(self.context) < 0:
            raise ValueError(f"window grid: block and blocks must be >= 1 and context >= 0, got block "
                             f"{list(self.block)}, blocks {list(self.blocks)}, context {list(self.context)}")
        if any(b > w for b, w in zip(self.block, self.window)):
            raise ValueError(f"window grid: the block {list(self.block)} must fit in the window {list(self.window)}")

    @property
    def offset(self) -> tuple[int, ...]:
        return keep_offset(self.window, self.block)

    @property
    def origin(self) -> tuple[int, ...]:
        """The first block's start inside the crop."""
        return tuple(c + o for c, o in zip(self.context, self.offset))

    @property
    def supervised(self) -> tuple[int, ...]:
        """The supervised part of the crop (the blocks), per axis."""
        return tuple(n * b for n, b in zip(self.blocks, self.block))

    @property
    def crop(self) -> tuple[int, ...]:
        """The crop's size: context, the windows of the blocks, context; rounded up (at the
        end) to the backbone's divisor."""
        sizes = (2 * c + w + (n - 1) * b for c, w, n, b in zip(self.context, self.window, self.blocks, self.block))
        return tuple(-(-s // PATCH_DIVISOR) * PATCH_DIVISOR for s in sizes)

    @property
    def supervised_slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(g, g + s) for g, s in zip(self.origin, self.supervised))

    def geometry(self) -> dict:
        """The window ops' keywords for a crop."""
        return {"window": self.window, "block": self.block, "offset": self.offset, "origin": self.origin}

    def to_dict(self) -> dict:
        return {"window": list(self.window), "block": list(self.block), "blocks": list(self.blocks),
                "context": list(self.context)}


def grid_of(config) -> WindowGrid:
    """The :class:`WindowGrid` of a :class:`~omkit.training.config.TrainConfig`."""
    return WindowGrid(tuple(config.patch_size), tuple(config.window_block), tuple(config.window_blocks),
                      tuple(config.window_context))


def check_model(model: nn.Module) -> None:
    """A one-line ``ValueError`` unless ``model`` can be trained window by window."""
    from omkit.models.windowed import check_windowed_model

    check_windowed_model(model, "window-consistent training")


def _supervised(logits: Tensor, grid: WindowGrid) -> Tensor:
    return logits[(slice(None), slice(None)) + grid.supervised_slices]


def forward_tasks(model: nn.Module, inputs: Sequence[Tensor | None], transfers: dict | None,
                  grid: WindowGrid) -> list[Tensor | None]:
    """``model.forward_tasks`` for crops: per task, the logits of the supervised blocks
    (B, K, *grid.supervised) of its own crops and then the crops transferred to it, every
    head pooled per window as dense inference pools it."""
    # the model layer, imported here so that the settings (TrainConfig) do not load it
    from omkit.models.omnet import MCNet
    from omkit.models.windowed import task_logits

    if isinstance(model, MCNet):  # plain heads: fully convolutional, window-consistent as they are
        return [None if out is None else _supervised(out, grid) for out in model.forward_tasks(inputs, transfers)]
    geometry = grid.geometry()
    outputs: list[Tensor | None] = [None, None, None]
    for task, feats in model.task_features(inputs, transfers).items():
        outputs[task] = _supervised(task_logits(model, feats, [task], geometry)[0], grid)
    return outputs


class TaskForward(nn.Module):
    """``forward`` = ``model.forward_tasks`` (or, window-consistent, :func:`forward_tasks`
    with ``grid``) so DDP can wrap the training pass."""

    def __init__(self, model: nn.Module, grid: WindowGrid | None = None):
        super().__init__()
        self.model, self.grid = model, grid

    def forward(self, inputs, transfers):
        if self.grid is not None:
            return forward_tasks(self.model, inputs, transfers, self.grid)
        return self.model.forward_tasks(inputs, transfers)
