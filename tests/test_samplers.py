"""Patch samplers (the core interface and spec grammar in omkit.data.sampling,
the built-ins a plug-in), patch extraction with padding, online data transfer."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import omkit
from omkit.data import (
    LabelRegionSampler,
    MixtureSampler,
    RegionSampler,
    find_cases,
    load_case,
    parse_sampler_spec,
    preprocess_case,
    region_indices,
    sampler_cache_key,
    split_task_specs,
    synthetic,
)
from omkit.data.patches import extract_patch, extract_patches
from omkit.data.sampler_specs import SpecPart, parse_spec
from omkit.data.sampling import generic_cache_key, region_file_name
from omkit.labels import CORE_CLASSES, EDEMA, ENHANCING, NCR_NET, NORMAL, TUMOR_CLASSES
from omkit.morphology import dilate_ball
from omkit.plugins.samplers import BrainSampler, CoreSampler, DilatedTumorSampler, EnhancingSampler, TumorMimicSampler
from omkit.training import TaskPatches, TransferRule, class_fraction, task3_target, task_targets

TINY_PATCH = (8, 16, 16)


def registry():
    return omkit.get_plugins().registry("sampler")


@pytest.fixture(scope="module")
def cases():
    """Two tumor cases and one without a tumor."""
    out = [preprocess_case(synthetic.make_case((24, 40, 40), seed=s)) for s in (0, 1)]
    out.append(preprocess_case(synthetic.make_case((24, 40, 40), seed=2, tumor=False)))
    return out


def _draw(sampler, cases, count, seed=0):
    regions = [np.flatnonzero(sampler.region(pre)) for pre in cases]
    shapes = [pre.shape for pre in cases]
    return sampler.draw(regions, shapes, count, np.random.default_rng(seed))


def test_registered_as_plugins():
    assert {"brain", "dilated_tumor", "core", "enhancing"} <= set(omkit.list_samplers())
    assert registry().get("dilated_tumor") is DilatedTumorSampler
    assert registry().entry("core").plugin == "samplers"
    # the built-ins subclass the core bases: a third party needs nothing from the plug-in
    assert issubclass(DilatedTumorSampler, RegionSampler) and issubclass(CoreSampler, LabelRegionSampler)


# -- the contract every registered sampler keeps (a new plug-in is covered here too) -------------

def check_sampler_contract(name: str, cases) -> None:
    """Region shape and dtype, draws inside the region and the volume, the same
    draws from the same rng, and an error when no case offers a voxel."""
    sampler = parse_sampler_spec(name, registry())
    assert isinstance(sampler_cache_key(sampler), str) and sampler_cache_key(sampler)
    assert sampler.task in (0, 1, 2)
    regions, flat = [], []
    for pre in cases:
        region = np.asarray(sampler.region(pre))
        assert region.shape == pre.shape and region.dtype == bool, name
        regions.append(region)
        flat.append(np.flatnonzero(region))
    assert any(len(f) for f in flat), f"{name}: no synthetic case has voxels to sample"
    shapes = [pre.shape for pre in cases]
    centres = sampler.draw(flat, shapes, 500, np.random.default_rng(3))
    assert centres.shape == (500, 4) and centres.dtype == np.int64
    assert set(np.unique(centres[:, 0])) <= {c for c, f in enumerate(flat) if len(f)}
    for c, pre in enumerate(cases):
        mine = centres[centres[:, 0] == c][:, 1:]
        assert ((mine >= 0) & (mine < np.array(pre.shape))).all()
        assert regions[c][tuple(mine.T)].all(), f"{name}: a centre outside its region"
    np.testing.assert_array_equal(centres, sampler.draw(flat, shapes, 500, np.random.default_rng(3)))
    assert not np.array_equal(centres, sampler.draw(flat, shapes, 500, np.random.default_rng(4)))
    empty = [np.zeros(0, dtype=np.int64) for _ in cases]
    with pytest.raises(ValueError):
        sampler.draw(empty, shapes, 5, np.random.default_rng(0))
    # region indices (what training caches) are the region's flat indices
    np.testing.assert_array_equal(region_indices(sampler, cases[0]), flat[0])


@pytest.mark.parametrize("name", omkit.list_samplers())
def test_every_registered_sampler_keeps_the_contract(name, cases):
    check_sampler_contract(name, cases)


@pytest.mark.parametrize("name", omkit.list_samplers())
def test_every_registered_sampler_pickles(name):
    # DataLoader workers may pickle the patch source with its samplers
    sampler = parse_sampler_spec(name, registry())
    again = pickle.loads(pickle.dumps(sampler))
    assert type(again) is type(sampler) and sampler_cache_key(again) == sampler_cache_key(sampler)


# -- the built-ins ----------------------------------------------------------------------------

def test_task1_centres_inside_brain(cases):
    centres = _draw(BrainSampler(), cases, 3000)
    for c, pre in enumerate(cases):
        mine = centres[centres[:, 0] == c]
        assert len(mine) > 800  # cases are picked uniformly
        assert pre.brain_mask[mine[:, 1], mine[:, 2], mine[:, 3]].all()


@pytest.mark.parametrize("radius", [5.0, 2])
def test_task2_centres_inside_tumor_dilated_by_radius(cases, radius):
    sampler = DilatedTumorSampler() if radius == 5.0 else parse_sampler_spec(f"dilated_tumor(radius={radius})", registry())
    assert sampler.radius == radius
    centres = _draw(sampler, cases, 3000)
    assert 2 not in centres[:, 0]  # the case without a tumor has no task-2 region
    outside_tumor = 0
    for c in (0, 1):
        pre = cases[c]
        mine = centres[centres[:, 0] == c][:, 1:]
        tumor = np.argwhere(np.isin(pre.label, TUMOR_CLASSES))
        # brute-force distance of every centre to the nearest tumor voxel
        dist = np.sqrt(((mine[:, None, :] - tumor[None, :, :]) ** 2).sum(-1)).min(axis=1)
        assert dist.max() <= radius
        outside_tumor += int((dist > 0).sum())
    assert outside_tumor > 0  # the dilation is used, not just the tumor itself
    np.testing.assert_array_equal(sampler.region(cases[0]), dilate_ball(np.isin(cases[0].label, TUMOR_CLASSES), radius))


def test_task3_centres_inside_core(cases):
    centres = _draw(CoreSampler(), cases, 2000)
    assert 2 not in centres[:, 0]
    for c in (0, 1):
        mine = centres[centres[:, 0] == c]
        assert np.isin(cases[c].label[mine[:, 1], mine[:, 2], mine[:, 3]], CORE_CLASSES).all()


def test_enhancing_centres_inside_enhancing_tumor(cases):
    centres = _draw(EnhancingSampler(), cases, 2000)
    with_et = [c for c, pre in enumerate(cases) if (pre.label == ENHANCING).any()]
    assert set(np.unique(centres[:, 0])) == set(with_et) and with_et
    for c in with_et:
        mine = centres[centres[:, 0] == c]
        assert (cases[c].label[mine[:, 1], mine[:, 2], mine[:, 3]] == ENHANCING).all()


def test_tumor_mimic_is_bright_normal_tissue_far_from_the_tumor(cases):
    pre = cases[0]
    flair = np.asarray(pre.image[0])
    tumor = np.isin(pre.label, TUMOR_CLASSES)
    # make some normal tissue far from the tumor as bright as the tumor (a mimic), and some next to it
    far_from_tumor = ~dilate_ball(tumor, 5.0) & (pre.label == NORMAL)
    near_tumor = dilate_ball(tumor, 2.0) & ~tumor & (pre.label == NORMAL)
    image = np.array(pre.image)
    mimic = far_from_tumor & (np.random.default_rng(0).random(flair.shape) < 0.3)
    image[0][mimic | near_tumor] = flair[tumor].max()
    bright = type(pre)(**{**pre.__dict__, "image": image})
    region = TumorMimicSampler(min_voxels=0).region(bright)
    assert region.any() and (region <= far_from_tumor).all()  # normal tissue, beyond the margin
    np.testing.assert_array_equal(region, mimic)  # exactly the bright far voxels (the rest is darker)
    assert not (region & near_tumor).any()
    threshold = np.quantile(image[0][tumor], 0.25)
    assert (image[0][region] >= threshold).all()
    assert (TumorMimicSampler(min_voxels=int(mimic.sum())).region(bright) == region).all()  # enough: no floor
    # a stricter quantile keeps a subset; a wider margin keeps a subset
    assert (TumorMimicSampler(quantile=0.9, min_voxels=0).region(bright) <= region).all()
    assert (TumorMimicSampler(margin=8, min_voxels=0).region(bright) <= region).all()
    # too few qualify, or no tumor to compare with: the brightest min_voxels of the far normal tissue
    for case, floor in ((pre, 50), (cases[2], 120)):
        stand_in = TumorMimicSampler(min_voxels=floor).region(case)
        normal = (case.label == NORMAL) & ~dilate_ball(np.isin(case.label, TUMOR_CLASSES), 5.0)
        assert floor <= stand_in.sum() <= floor + 5 and (stand_in <= normal).all()
        flair_of = np.asarray(case.image[0])
        assert flair_of[stand_in].min() >= flair_of[normal & ~stand_in].max()
    assert not TumorMimicSampler(min_voxels=0).region(cases[2]).any()
    assert "tumor_mimic" in registry().names()
    sampler = parse_sampler_spec("dilated_tumor:3+tumor_mimic(quantile=0.5):1", registry())
    assert "quantile=0.5" in sampler_cache_key(sampler.parts[1][0])
    with pytest.raises(ValueError, match="quantile must be a number in"):
        TumorMimicSampler(quantile=1.5)
    with pytest.raises(ValueError, match="min_voxels must be an integer >= 0"):
        TumorMimicSampler(min_voxels=-1)


def test_label_samplers_need_the_ground_truth(cases):
    unlabelled = preprocess_case(synthetic.make_case((16, 24, 24), seed=5))
    unlabelled.label = None
    for sampler in (DilatedTumorSampler(), CoreSampler(), EnhancingSampler(), TumorMimicSampler()):
        with pytest.raises(ValueError, match="needs the ground truth"):
            sampler.region(unlabelled)


def test_seeded_reproducible_and_uniform(cases):
    sampler = BrainSampler()
    # uniform inside one case: half of the region's voxels get about half the centres
    region = np.flatnonzero(cases[0].brain_mask)
    many = sampler.draw([region], [cases[0].shape], 40000, np.random.default_rng(0))
    flat = np.ravel_multi_index(tuple(many[:, 1:].T), cases[0].shape)
    below = (flat < region[len(region) // 2]).mean()
    assert abs(below - 0.5) < 0.015


def test_options_and_cache_keys():
    assert DilatedTumorSampler().options == {"radius": 5.0}
    assert DilatedTumorSampler(3).cache_key == DilatedTumorSampler(radius=3).cache_key == "dilated_tumor(radius=3)"
    assert DilatedTumorSampler(3).cache_key != DilatedTumorSampler(4).cache_key
    assert BrainSampler().cache_key == "brain" and BrainSampler().options == {}
    with pytest.raises(TypeError, match="BrainSampler takes no options"):
        BrainSampler(radius=3)
    with pytest.raises(ValueError, match=r"radius must be a number in \[0, 1000\]"):
        DilatedTumorSampler(radius=-1)

    class Keyless(RegionSampler):  # no key: the class path and every option, sorted
        def __init__(self, b=1, a="x", **extra):
            self.a, self.b = a, b

        def region(self, pre):
            return pre.brain_mask

    key = Keyless(a="y", c=(1, 2)).cache_key
    assert key == f"{Keyless.__module__}.{Keyless.__qualname__}(a='y',b=1,c=(1, 2))"
    assert generic_cache_key("n", {}) == "n"
    # a key that is no plain file name is cached under a cleaned name plus a digest
    assert region_file_name("brain") == "region-brain"
    assert region_file_name("dilated_tumor(radius=3)") == "region-dilated_tumor(radius=3)"
    odd = region_file_name(key)
    assert odd.startswith("region-") and "/" not in odd and "'" not in odd and " " not in odd
    assert odd != region_file_name(Keyless(a="z", c=(1, 2)).cache_key)


# -- the spec grammar ---------------------------------------------------------------------------

def test_spec_grammar_options_and_weights():
    assert parse_spec("brain") == [SpecPart("brain", {}, None)]
    assert parse_spec(" dilated_tumor( radius = 3 ) ") == [SpecPart("dilated_tumor", {"radius": 3}, None)]
    parts = parse_spec("mine(a=3, b='x,y)', c=(1, 2), d=True, e=hello, f=-0.5):2+core:1.5")
    assert parts == [
        SpecPart("mine", {"a": 3, "b": "x,y)", "c": (1, 2), "d": True, "e": "hello", "f": -0.5}, 2.0),
        SpecPart("core", {}, 1.5),
    ]
    assert parse_spec("brain()") == [SpecPart("brain", {}, None)]


def test_spec_builds_samplers_with_options():
    sampler = parse_sampler_spec("dilated_tumor(radius=3)", registry())
    assert isinstance(sampler, DilatedTumorSampler) and sampler.radius == 3.0
    mixture = parse_sampler_spec("brain:1+dilated_tumor(radius=3):2", registry())
    assert isinstance(mixture, MixtureSampler) and mixture.task == 0
    assert [type(s) for s, _ in mixture.parts] == [BrainSampler, DilatedTumorSampler]
    assert mixture.parts[1][0].radius == 3.0 and list(mixture.weights) == pytest.approx([1 / 3, 2 / 3])
    assert mixture.cache_key == "brain:1+dilated_tumor(radius=3):2"
    # a part without weight counts 1
    assert parse_sampler_spec("core+enhancing:3", registry()).weights.tolist() == pytest.approx([0.25, 0.75])


def test_task_specs_split_on_top_level_commas():
    assert split_task_specs("brain,dilated_tumor,core") == ("brain", "dilated_tumor", "core")
    assert split_task_specs("brain:1+dilated_tumor(radius=3, x=(1,2)):1, dilated_tumor(radius=2,y='a,b'),core") == (
        "brain:1+dilated_tumor(radius=3, x=(1,2)):1", "dilated_tumor(radius=2,y='a,b')", "core")
    for text in ("brain,core", "brain,dilated_tumor(radius=3,core", "a,,c", "a,b,c,d"):
        with pytest.raises(ValueError, match="--samplers") as info:
            split_task_specs(text)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec, message", [
    ("brain:x+core:1", r"--samplers 'brain:x\+core:1': 'x' is not a weight"),
    ("brain:0+core:1", "weights must be > 0"),
    ("brain:1", "at least two parts"),
    ("nowhere:1+core:1", "--samplers 'nowhere:1\\+core:1': unknown sampler 'nowhere'; available: brain, core"),
    ("dilated_tumor(radus=3)", "sampler 'dilated_tumor' has no option 'radus'; it accepts radius \\(default 5.0\\)"),
    ("brain(radius=3)", "sampler 'brain' has no option 'radius'; it accepts no options"),
    ("dilated_tumor(radius=-2)", "sampler 'dilated_tumor': radius must be a number in \\[0, 1000\\], got -2"),
    ("dilated_tumor(radius=3", "unbalanced parentheses"),
    ("dilated_tumor(3)", "option '3' is not KEY=VALUE"),
    ("dilated_tumor(radius=)", "option 'radius' has no value"),
    ("dilated_tumor(radius=1, radius=2)", "option 'radius' is given twice"),
    ("brain core", "unexpected 'core' after 'brain'"),
    ("+core", "expected a sampler name"),
    ("", "empty sampler spec"),
])
def test_spec_errors_are_one_line_naming_the_flag(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_sampler_spec(spec, registry())
    assert str(info.value).startswith("--samplers") and "\n" not in str(info.value)


def test_mixture_draws_each_part_in_proportion(cases):
    mixture = parse_sampler_spec("brain:3+dilated_tumor(radius=0):1", registry())
    assert mixture.cache_key == "brain:3+dilated_tumor(radius=0):1"
    regions = [tuple(np.flatnonzero(r) for r in mixture.region(pre)) for pre in cases]
    centres = mixture.draw(regions, [pre.shape for pre in cases], 8000, np.random.default_rng(0))
    assert centres.shape == (8000, 4)
    in_brain = np.array([cases[c].brain_mask[z, y, x] for c, z, y, x in centres])
    in_tumor = np.array([np.isin(cases[c].label[z, y, x], TUMOR_CLASSES) for c, z, y, x in centres])
    assert in_brain.all()
    brain_tumor_share = np.mean([np.isin(pre.label[pre.brain_mask], TUMOR_CLASSES).mean() for pre in cases])
    # a quarter from the tumor part plus the brain part's natural share of tumor
    expected = 0.25 + 0.75 * brain_tumor_share
    assert abs(in_tumor.mean() - expected) < 0.03, (in_tumor.mean(), expected)
    # the parts are shuffled together, not concatenated in order
    assert in_tumor[:1000].mean() > 0.15
    again = mixture.draw(regions, [pre.shape for pre in cases], 8000, np.random.default_rng(0))
    np.testing.assert_array_equal(centres, again)


def test_task_patches_with_a_mixture(cases):
    samplers = [parse_sampler_spec("brain:1+core:1", registry()), DilatedTumorSampler(), CoreSampler()]
    patches = TaskPatches(cases, samplers, TINY_PATCH, (40, 40, 20), 4, seed=3)
    images, labels = patches.batch_at(epoch=0, step=1, tasks=(0, 1, 2))[0]
    assert images.shape == (4, 4, *TINY_PATCH) and labels.shape == (4, *TINY_PATCH)
    # a mixture with an empty part everywhere is refused like a plain sampler
    with pytest.raises(ValueError, match="no case has a non-empty sampling region"):
        TaskPatches(cases[2:], [parse_sampler_spec("brain:1+core:1", registry()), BrainSampler(), BrainSampler()],
                    TINY_PATCH, (8, 8, 8), 4, tasks=(0,)).pool(0, 0)


def test_regions_are_cached_per_option(cases, tmp_path):
    from omkit.data import PreprocessedCache

    root = tmp_path / "data"
    case_dir = synthetic.make_dataset(root, num_cases=1, shape=(16, 32, 32), seed=7)[0]
    cache = PreprocessedCache(tmp_path / "cache")
    pre = cache.load(case_dir)
    small, large = DilatedTumorSampler(1), DilatedTumorSampler(4)
    a = region_indices(small, pre, cache, case_dir, {})
    b = region_indices(large, pre, cache, case_dir, {})
    assert len(a) < len(b)  # two options, two cached regions
    names = sorted(p.name for p in cache.entry_dir(case_dir).glob("region-*.npy"))
    assert names == ["region-dilated_tumor(radius=1).npy", "region-dilated_tumor(radius=4).npy"]
    np.testing.assert_array_equal(region_indices(small, pre, cache, case_dir, {}), a)


class CountingRegions(list):
    """Case regions that count how often a case's region is looked up."""

    lookups = 0

    def __getitem__(self, index):
        type(self).lookups += 1
        return super().__getitem__(index)


def test_draw_is_vectorised():
    # 400k centres (a paper epoch of task 1) from 12 brain-sized regions: each case's
    # region is looked up once, never once per centre (a structural check, not a
    # timing: CI machines are shared)
    shapes = [(140, 170, 140)] * 12
    regions = CountingRegions([np.arange(0, 140 * 170 * 140, 3)] * 12)
    CountingRegions.lookups = 0
    centres = BrainSampler().draw(regions, shapes, 400_000, np.random.default_rng(0))
    assert centres.shape == (400_000, 4)
    assert CountingRegions.lookups <= len(regions)
    flat = np.ravel_multi_index(tuple(centres[:, 1:].T), shapes[0])
    assert (flat % 3 == 0).all()  # every centre inside its region


# -- patches -------------------------------------------------------------------------

@pytest.mark.parametrize("centre", [(0, 0, 0), (5, 10, 3), (11, 19, 19), (6, 2, 17)])
def test_extract_patch_pads_at_borders(centre):
    volume = np.random.default_rng(0).random((2, 12, 20, 20)).astype(np.float32) + 1
    patch = extract_patch(volume, centre, TINY_PATCH)
    assert patch.shape == (2,) + TINY_PATCH
    half = np.array(TINY_PATCH) // 2
    padded = np.pad(volume, [(0, 0)] + [(int(h), int(h)) for h in half])
    start = np.array(centre)  # in padded coordinates: centre - half + half
    expected = padded[(slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, TINY_PATCH))]
    np.testing.assert_array_equal(patch, expected)


def test_extract_patches_images_and_labels(cases):
    centres = np.array([[0, 12, 20, 20], [1, 0, 0, 0]])
    images, labels = extract_patches(cases, centres, TINY_PATCH)
    assert images.shape == (2, 4) + TINY_PATCH and labels.shape == (2,) + TINY_PATCH
    np.testing.assert_array_equal(labels[0], cases[0].label[8:16, 12:28, 12:28])
    assert (labels[1][:4, :8, :8] == 0).all()  # padding is background


# -- online data transfer --------------------------------------------------------------

def _batch_with_fractions(fractions, cls, fill=NORMAL, voxels=100):
    """Label patches of 100 voxels with exactly the given fractions of class ``cls``."""
    out = np.full((len(fractions), voxels), fill, dtype=np.uint8)
    for i, f in enumerate(fractions):
        out[i, : int(round(f * voxels))] = cls
    return out.reshape(len(fractions), 4, 5, 5)


def test_transfer_selects_exactly_by_threshold():
    rule = TransferRule()  # the paper's: 0.4 tumor -> task 2, 0.5 core -> task 3
    task1 = _batch_with_fractions([0.39, 0.40, 0.41, 0.0, 0.8], EDEMA)
    task1[4].reshape(-1)[:50] = NCR_NET  # patch 4: 80 % tumor, 50 % core
    task2 = _batch_with_fractions([0.49, 0.50, 1.0], ENHANCING)
    transfers = rule.select([task1, task2, None], active={0, 1, 2})
    np.testing.assert_array_equal(transfers[1][0][1], [1, 2, 4])
    assert transfers[1][0][0] == 0
    assert [src for src, _ in transfers[2]] == [0, 1]
    np.testing.assert_array_equal(transfers[2][0][1], [4])
    np.testing.assert_array_equal(transfers[2][1][1], [1, 2])
    # inactive destination tasks get nothing
    assert rule.select([task1, task2, None], active={0, 1}).keys() == {1}
    assert rule.select([task1, None, None], active={0}) == {}
    # thresholds are configurable
    strict = TransferRule(tumor_threshold=0.41, core_threshold=1.0)
    transfers = strict.select([task1, task2, None], active={0, 1, 2})
    np.testing.assert_array_equal(transfers[1][0][1], [2, 4])
    assert [src for src, _ in transfers[2]] == [1] and list(transfers[2][0][1]) == [2]
    with pytest.raises(ValueError, match="tumor_threshold"):
        TransferRule(tumor_threshold=1.5)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0, 1), st.floats(0, 1))
def test_transfer_matches_definition(seed, tumor_t, core_t):
    rng = np.random.default_rng(seed)
    labels = [rng.choice(5, size=(6, 2, 3, 4), p=rng.dirichlet(np.ones(5))).astype(np.uint8) for _ in range(3)]
    transfers = TransferRule(tumor_t, core_t).select(labels, active={0, 1, 2})
    expected_2 = [i for i in range(6) if np.isin(labels[0][i], TUMOR_CLASSES).sum() / 24 >= tumor_t]
    assert list(transfers.get(1, [(0, [])])[0][1]) == expected_2
    got_3 = {src: list(idx) for src, idx in transfers.get(2, [])}
    for src in (0, 1):
        expected = [i for i in range(6) if np.isin(labels[src][i], CORE_CLASSES).sum() / 24 >= core_t]
        assert got_3.get(src, []) == expected


def test_task_targets_order_and_task3_relabel():
    task1 = _batch_with_fractions([0.6, 0.0], ENHANCING)
    task2 = _batch_with_fractions([0.2], EDEMA)
    task3 = _batch_with_fractions([0.7], NCR_NET)
    task3[0].reshape(-1)[-10:] = ENHANCING
    transfers = {1: [(0, np.array([0]))], 2: [(0, np.array([0]))]}
    targets = task_targets([task1, task2, task3], transfers)
    np.testing.assert_array_equal(targets[0], task1)
    np.testing.assert_array_equal(targets[1], np.concatenate([task2, task1[:1]]))
    assert targets[2].shape[0] == 2 and set(np.unique(targets[2]).tolist()) <= {0, 1}
    np.testing.assert_array_equal(targets[2][0], task3[0] == ENHANCING)  # NCR -> 0, enhancing -> 1
    np.testing.assert_array_equal(targets[2][1], task3_target(task1[0]))
    assert class_fraction(task1, (ENHANCING,)).tolist() == [0.6, 0.0]


# -- the per-process patch source --------------------------------------------------------

def test_task_patches_reproducible_per_rank(cases):
    samplers = [BrainSampler(), DilatedTumorSampler(), CoreSampler()]
    make = lambda rank: TaskPatches(cases, samplers, TINY_PATCH, (40, 40, 20), 4, seed=3, rank=rank, world_size=2)  # noqa: E731
    a, b, other = make(0), make(0), make(1)
    assert a.pool_sizes == [20, 20, 10] and a.steps_per_epoch((0, 1, 2)) == 5 and a.steps_per_epoch((0,)) == 5
    first = a.batch_at(epoch=1, step=2, tasks=(0, 1, 2))
    again = b.batch_at(epoch=1, step=2, tasks=(0, 1, 2))
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], y[1])
    assert not np.array_equal(a.pool(1, 0), other.pool(1, 0))  # each rank its own patches
    assert not np.array_equal(a.pool(1, 0), a.pool(2, 0))  # each epoch fresh centres
    # the smaller task-3 pool is cycled: steps 0 and 2.5 * batch apart coincide
    np.testing.assert_array_equal(a.centres(0, 0, 2)[:2], a.centres(0, 2, 2)[2:])
    assert a.batch_at(0, 0, (0,))[1] is None


def test_real_case_sampler_regions(sample_data):
    pre = preprocess_case(load_case(find_cases(sample_data)[0]))
    for sampler in (BrainSampler(), DilatedTumorSampler(), CoreSampler()):
        region = sampler.region(pre)
        centres = sampler.draw([np.flatnonzero(region)], [pre.shape], 500, np.random.default_rng(0))
        assert region[centres[:, 1], centres[:, 2], centres[:, 3]].all()
    wt = np.isin(pre.label, TUMOR_CLASSES)
    dilated = DilatedTumorSampler().region(pre)
    assert (dilated >= wt).all() and dilated.sum() > wt.sum()
    # the contract of every registered sampler holds on a real case too
    for name in omkit.list_samplers():
        check_sampler_contract(name, [pre])
