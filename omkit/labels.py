"""Label conventions: one place that says what every class index means.

omkit works internally with the network's five classes (the paper's tasks 1
and 2 are five-class problems; Sec. III-A of the paper):

    0 background (outside the brain)
    1 normal brain tissue
    2 NCR/NET   (necrotic and non-enhancing tumor core, merged as in the paper)
    3 edema
    4 enhancing tumor

Task 3 is binary inside the tumor core: 0 = not enhancing, 1 = enhancing.

BraTS ground truth and predictions on disk use one of the conventions below,
which differ by year; they are mapped to and from the internal classes here only:

* ``2018`` (BraTS 2018-2021): 1 NCR/NET, 2 edema, 4 enhancing;
* ``2023`` (BraTS 2023 adult glioma and later pre-treatment data): 1 NCR, 2 edema, 3 enhancing;
* ``2024`` (BraTS 2024 post-treatment glioma): 1 NETC (non-enhancing tumor core),
  2 SNFH (surrounding non-enhancing FLAIR hyperintensity), 3 ET (enhancing
  tissue), 4 RC (resection cavity). NETC, SNFH and ET are NCR/NET, edema and
  enhancing internally. The network has no resection-cavity class: on reading,
  RC voxels become normal brain (RC is in none of WT, TC, ET), so a model
  trained on such data learns the cavity as non-tumor and never predicts it.

Regions: WT = NCR/NET + edema + enhancing, TC = NCR/NET + enhancing, ET =
enhancing; conventions with a resection cavity add RC (the cavity alone).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BACKGROUND, NORMAL, NCR_NET, EDEMA, ENHANCING = 0, 1, 2, 3, 4
NUM_CLASSES_TASK = (5, 5, 2)
TUMOR_CLASSES = (NCR_NET, EDEMA, ENHANCING)
CORE_CLASSES = (NCR_NET, ENHANCING)
REGIONS = ("WT", "TC", "ET")
RESECTION_CAVITY_REGION = "RC"
ALL_REGIONS = REGIONS + (RESECTION_CAVITY_REGION,)  # the order of every report


@dataclass(frozen=True)
class LabelConvention:
    """How a BraTS release writes the tumor classes in its `seg` files."""

    name: str
    ncr_net: int
    edema: int
    enhancing: int
    resection_cavity: int | None = None  # a label the network has no class for (read as normal brain)

    @property
    def valid_values(self) -> tuple[int, ...]:
        extra = () if self.resection_cavity is None else (self.resection_cavity,)
        return (0, self.ncr_net, self.edema, self.enhancing) + extra

    @property
    def region_names(self) -> tuple[str, ...]:
        """WT, TC, ET, and RC when the convention has a resection cavity."""
        return ALL_REGIONS if self.resection_cavity is not None else REGIONS

    def to_internal(self, seg: np.ndarray, brain_mask: np.ndarray | None = None) -> np.ndarray:
        """BraTS labels -> internal classes (uint8); non-tumor voxels (and a
        resection cavity) become NORMAL inside `brain_mask` and BACKGROUND
        outside it."""
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
        """Internal classes -> BraTS labels (uint8); background and normal become 0
        (the internal classes hold no resection cavity, so none is written)."""
        classes = np.asarray(classes)
        out = np.zeros(classes.shape, dtype=np.uint8)
        out[classes == NCR_NET] = self.ncr_net
        out[classes == EDEMA] = self.edema
        out[classes == ENHANCING] = self.enhancing
        return out

    def regions(self, seg: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean WT / TC / ET (and RC, when the convention has it) masks of
        a label map in this convention."""
        seg = np.asarray(seg)
        out = {
            "WT": np.isin(seg, (self.ncr_net, self.edema, self.enhancing)),
            "TC": np.isin(seg, (self.ncr_net, self.enhancing)),
            "ET": seg == self.enhancing,
        }
        if self.resection_cavity is not None:
            out[RESECTION_CAVITY_REGION] = seg == self.resection_cavity
        return out


BRATS2018 = LabelConvention("2018", ncr_net=1, edema=2, enhancing=4)
BRATS2023 = LabelConvention("2023", ncr_net=1, edema=2, enhancing=3)
BRATS2024_POST_TREATMENT = LabelConvention("2024", ncr_net=1, edema=2, enhancing=3, resection_cavity=4)
CONVENTIONS = {"2018": BRATS2018, "2023": BRATS2023, "2024": BRATS2024_POST_TREATMENT}


def get_convention(name: str | LabelConvention) -> LabelConvention:
    if isinstance(name, LabelConvention):
        return name
    try:
        return CONVENTIONS[str(name)]
    except KeyError:
        raise ValueError(
            f"unknown label convention {name!r}; choose one of {sorted(CONVENTIONS)}"
        ) from None


def output_convention(requested: str | LabelConvention | None = None, *, input_convention: str | None = None,
                      model_convention: str | None = None) -> LabelConvention:
    """The label convention omkit writes a prediction in: the one rule of ``omkit predict``,
    ``omkit demo`` and ``omkit.Segmenter``. The convention asked for (``--label-convention``,
    ``label_convention=``); else the input's, read from its file naming (a case named in the
    2023 style gets 2023 labels beside it); else the one the model was trained with (arrays in
    memory have no naming); else 2018."""
    for choice in (requested, input_convention, model_convention):
        if choice is not None:
            return get_convention(choice)
    return BRATS2018


def convention_of(naming_convention: str, values) -> LabelConvention:
    """The convention a file naming implies, refined by the label values
    present: under the 2023+ naming, a map holding both 3 and 4 has the 2024
    post-treatment labels (4 = resection cavity). A 4 without a 3 is
    ambiguous (2018 labels under 2023 names, or a post-treatment case without
    enhancing tissue) and stays an error of the 2023 convention, which asks
    for the convention to be given."""
    convention = get_convention(naming_convention)
    if convention is BRATS2023 and {3, 4} <= {int(v) for v in np.unique(np.asarray(values))}:
        return BRATS2024_POST_TREATMENT
    return convention


def internal_regions(classes: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean WT / TC / ET masks of an internal class map."""
    classes = np.asarray(classes)
    return {
        "WT": np.isin(classes, TUMOR_CLASSES),
        "TC": np.isin(classes, CORE_CLASSES),
        "ET": classes == ENHANCING,
    }
