"""Label conventions: one place that says what every class index means.

omkit works internally with the network's five classes (the paper's tasks 1
and 2 are five-class problems; Sec. III-A of the paper):

    0 background (outside the brain)
    1 normal brain tissue
    2 NCR/NET   (necrotic and non-enhancing tumor core, merged as in the paper)
    3 edema
    4 enhancing tumor

Task 3 is binary inside the tumor core: 0 = not enhancing, 1 = enhancing.

BraTS ground truth and predictions on disk use one of two conventions that
differ by year; they are mapped to and from the internal classes here only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BACKGROUND, NORMAL, NCR_NET, EDEMA, ENHANCING = 0, 1, 2, 3, 4
NUM_CLASSES_TASK = (5, 5, 2)
TUMOR_CLASSES = (NCR_NET, EDEMA, ENHANCING)
CORE_CLASSES = (NCR_NET, ENHANCING)
REGIONS = ("WT", "TC", "ET")


@dataclass(frozen=True)
class LabelConvention:
    """How a BraTS release writes the tumor classes in its `seg` files."""

    name: str
    ncr_net: int
    edema: int
    enhancing: int

    @property
    def valid_values(self) -> tuple[int, ...]:
        return (0, self.ncr_net, self.edema, self.enhancing)

    def to_internal(self, seg: np.ndarray, brain_mask: np.ndarray | None = None) -> np.ndarray:
        """BraTS labels -> internal classes (uint8); non-tumor voxels become
        NORMAL inside `brain_mask` and BACKGROUND outside it."""
        seg = np.asarray(seg)
        bad = ~np.isin(seg, self.valid_values)
        if bad.any():
            found = sorted(set(np.unique(seg[bad]).tolist()))
            raise ValueError(
                f"label values {found} are not in the {self.name} convention {self.valid_values}"
            )
        out = np.full(seg.shape, BACKGROUND, dtype=np.uint8)
        if brain_mask is not None:
            out[np.asarray(brain_mask, dtype=bool)] = NORMAL
        out[seg == self.ncr_net] = NCR_NET
        out[seg == self.edema] = EDEMA
        out[seg == self.enhancing] = ENHANCING
        return out

    def from_internal(self, classes: np.ndarray) -> np.ndarray:
        """Internal classes -> BraTS labels (uint8); background and normal become 0."""
        classes = np.asarray(classes)
        out = np.zeros(classes.shape, dtype=np.uint8)
        out[classes == NCR_NET] = self.ncr_net
        out[classes == EDEMA] = self.edema
        out[classes == ENHANCING] = self.enhancing
        return out

    def regions(self, seg: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean WT / TC / ET masks of a label map in this convention."""
        seg = np.asarray(seg)
        return {
            "WT": np.isin(seg, (self.ncr_net, self.edema, self.enhancing)),
            "TC": np.isin(seg, (self.ncr_net, self.enhancing)),
            "ET": seg == self.enhancing,
        }


BRATS2018 = LabelConvention("2018", ncr_net=1, edema=2, enhancing=4)
BRATS2023 = LabelConvention("2023", ncr_net=1, edema=2, enhancing=3)
CONVENTIONS = {"2018": BRATS2018, "2023": BRATS2023}


def get_convention(name: str | LabelConvention) -> LabelConvention:
    if isinstance(name, LabelConvention):
        return name
    try:
        return CONVENTIONS[str(name)]
    except KeyError:
        raise ValueError(
            f"unknown label convention {name!r}; choose one of {sorted(CONVENTIONS)}"
        ) from None


def internal_regions(classes: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean WT / TC / ET masks of an internal class map."""
    classes = np.asarray(classes)
    return {
        "WT": np.isin(classes, TUMOR_CLASSES),
        "TC": np.isin(classes, CORE_CLASSES),
        "ET": classes == ENHANCING,
    }
