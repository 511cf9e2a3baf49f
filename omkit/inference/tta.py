"""Test-time mirroring: which flips of a tile batch the predictor evaluates.

A flip is a tuple of spatial axes (0 = D axial, 1 = H, 2 = W, omkit's
``(D, H, W)`` order; H and W are NIfTI's X and Y). Mirroring along a set of
axes evaluates every combination of flips along them: all three axes give the
8 combinations nnU-Net uses, ``"H,W"`` gives 4. The identity ``()`` is always
first. The predictor stacks the flipped copies of each tile batch into one
batch, un-flips each copy's logits, and averages the softmax over flips (and
ensemble members) before anything is reduced to labels.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

AXIS_NAMES = ("D", "H", "W")

Flip = tuple[int, ...]


def mirror_flips(spec: bool | str | Sequence | None) -> list[Flip]:
    """The flips of a mirroring setting: ``None``/``False``/``"none"``: only the
    identity; ``True``/``"all"``: the 8 flips of D, H, W; a string of axis
    names or numbers (``"H,W"``, ``"1,2"``) or a sequence of axes: every flip
    of those axes; a sequence of tuples: exactly those flips (the identity
    added first when missing)."""
    if spec is None or spec is False or (isinstance(spec, str) and spec.strip().lower() in ("", "none", "off")):
        return [()]
    if spec is True or (isinstance(spec, str) and spec.strip().lower() == "all"):
        axes = (0, 1, 2)
    elif isinstance(spec, str):
        axes = tuple(_axis(part) for part in spec.split(","))
    elif all(isinstance(item, (tuple, list)) for item in spec):
        flips = [tuple(sorted({_axis(a) for a in item})) for item in spec]
        unique = list(dict.fromkeys([()] + flips))
        return unique
    else:
        axes = tuple(_axis(a) for a in spec)
    axes = tuple(sorted(set(axes)))
    return [flip for n in range(len(axes) + 1) for flip in combinations(axes, n)]


def _axis(value) -> int:
    text = str(value).strip().upper()
    if text in AXIS_NAMES:
        return AXIS_NAMES.index(text)
    if text in ("0", "1", "2"):
        return int(text)
    raise ValueError(f"mirroring axis {value!r}: expected D, H, W (or 0, 1, 2)")


def describe(flips: Sequence[Flip]) -> str:
    """``"8 flips (D,H,W)"``, ``"none"``: for logs and records."""
    if list(flips) == [()]:
        return "none"
    axes = sorted({a for flip in flips for a in flip})
    return f"{len(flips)} flips ({','.join(AXIS_NAMES[a] for a in axes)})"


def mirrored_centre(centre: tuple[slice, ...], size: Sequence[int], flip: Flip) -> tuple[slice, ...]:
    """Where ``centre`` (slices of a tile of ``size``) lies in the tile flipped
    along ``flip``: crop there, then flip the crop back."""
    out = list(centre)
    for axis in flip:
        s = centre[axis]
        out[axis] = slice(size[axis] - s.stop, size[axis] - s.start)
    return tuple(out)
