"""The BraTS 2024 post-treatment glioma labels (1 NETC, 2 SNFH, 3 ET, 4 RC):
reading, regions (RC among them), detection under the 2023+ naming, and
training on such cases."""
from __future__ import annotations

import numpy as np
import pytest

from omkit.data import CaseError, load_case, synthetic
from omkit.labels import (ALL_REGIONS, BRATS2023, BRATS2024_POST_TREATMENT, EDEMA, ENHANCING, NCR_NET, NORMAL,
                          REGIONS, convention_of, get_convention)


def test_the_2024_convention():
    conv = get_convention("2024")
    assert conv is BRATS2024_POST_TREATMENT
    assert conv.valid_values == (0, 1, 2, 3, 4) and conv.region_names == ALL_REGIONS
    assert BRATS2023.region_names == REGIONS
    seg = np.array([0, 1, 2, 3, 4, 4])
    brain = np.array([False, True, True, True, True, False])
    # the cavity is no tumor class: normal brain inside the brain, background outside
    np.testing.assert_array_equal(conv.to_internal(seg, brain), [0, NCR_NET, EDEMA, ENHANCING, NORMAL, 0])
    regions = conv.regions(seg)
    assert list(regions) == ["WT", "TC", "ET", "RC"]
    np.testing.assert_array_equal(regions["WT"], [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(regions["TC"], [0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(regions["RC"], [0, 0, 0, 0, 1, 1])
    # nothing internal becomes a cavity when written back
    assert 4 not in conv.from_internal(np.arange(5))


def test_detection_from_naming_and_values():
    assert convention_of("2023", np.array([0, 1, 2, 3, 4])) is BRATS2024_POST_TREATMENT
    assert convention_of("2023", np.array([0, 1, 2, 3])) is BRATS2023
    assert convention_of("2023", np.array([0, 1, 2, 4])) is BRATS2023   # ambiguous: must be given
    assert convention_of("2018", np.array([0, 1, 2, 4])).name == "2018"


@pytest.fixture
def post_treatment_case(tmp_path):
    """A 2023-named synthetic case whose seg gets a resection cavity (label 4)."""
    import nibabel as nib

    case = synthetic.make_case(shape=(16, 32, 32), seed=3)
    folder = synthetic.write_case(case, tmp_path, naming="2023")
    seg_path = next(folder.glob("*-seg.nii.gz"))
    image = nib.load(str(seg_path))
    seg = np.asarray(image.dataobj).copy()
    cavity = (seg == 0) & (np.asarray(nib.load(str(next(folder.glob("*-t2f.nii.gz")))).dataobj) > 0)
    cavity[:, :, : seg.shape[2] // 2] = False
    seg[cavity] = 4
    nib.save(nib.Nifti1Image(seg, image.affine), str(seg_path))
    return folder, case


def test_a_post_treatment_case_is_read_as_2024(post_treatment_case):
    folder, case = post_treatment_case
    loaded = load_case(folder)
    assert loaded.convention == "2024"
    np.testing.assert_array_equal(loaded.label, case.label)   # the cavity was normal brain


def test_a_cavity_without_enhancing_tissue_asks_for_the_convention(post_treatment_case):
    import nibabel as nib

    folder, _ = post_treatment_case
    seg_path = next(folder.glob("*-seg.nii.gz"))
    image = nib.load(str(seg_path))
    seg = np.asarray(image.dataobj).copy()
    seg[seg == 3] = 1
    nib.save(nib.Nifti1Image(seg, image.affine), str(seg_path))
    with pytest.raises(CaseError, match="'2024'"):
        load_case(folder)
    assert load_case(folder, label_convention="2024").convention == "2024"


def test_evaluation_scores_the_cavity(post_treatment_case, tmp_path):
    from omkit.evaluation import evaluate_folders

    folder, case = post_treatment_case
    preds = tmp_path / "preds"
    preds.mkdir()
    # a prediction in the 2023 labels (what omkit writes): right tumor, no cavity
    import shutil

    shutil.copy(next(folder.glob("*-seg.nii.gz")), preds / f"{case.case_id}.nii.gz")
    import nibabel as nib

    image = nib.load(str(preds / f"{case.case_id}.nii.gz"))
    seg = np.asarray(image.dataobj).copy()
    seg[seg == 4] = 0
    nib.save(nib.Nifti1Image(seg, image.affine), str(preds / f"{case.case_id}.nii.gz"))
    rows, _ = evaluate_folders(preds, folder.parent, lesionwise=True)
    by_region = {row["region"]: row for row in rows}
    assert list(by_region) == ["WT", "TC", "ET", "RC"]
    assert by_region["WT"]["dice"] == 1.0 and by_region["ET"]["lesionwise_dice"] == 1.0
    assert by_region["RC"]["dice"] == 0.0 and by_region["RC"]["lesionwise_hd95"] == 374.0


def test_training_accepts_post_treatment_cases(post_treatment_case, tmp_path):
    from omkit.training import TrainConfig, train
    from omkit.checkpoint import load_model

    folder, _ = post_treatment_case
    config = TrainConfig(input=str(folder.parent), output=str(tmp_path / "run"), preset="omnet", width=0.125,
                         patch_size=(8, 16, 16), batch_per_task=1, max_steps=1, stage_epochs=(1, 1, 1),
                         patches_per_epoch=(2, 2, 2), cache_dir=str(tmp_path / "cache"), progress=False)
    run = train(config)
    assert load_model(run / "model.pt")[1]["label_convention"] == "2024"
