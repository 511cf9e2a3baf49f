"""Post-processing steps (paper Sec. III-D) on constructed volumes, and the
plug-in mechanism that runs them."""
from __future__ import annotations

import numpy as np
import pytest

import omkit
from omkit.inference import build_postprocessors, postprocess
from omkit.labels import EDEMA, ENHANCING, NCR_NET, NORMAL
from omkit.plugins.postprocess import KMeansEdemaToNecrosis, RemoveSmallComponents


def brain(shape=(40, 60, 60)):
    return np.full(shape, NORMAL, dtype=np.uint8)


def test_small_components_below_a_tenth_of_the_largest_are_removed():
    labels = brain()
    labels[0:10, 0:20, 0:15] = EDEMA        # 3000 voxels: V_max, tau = min(2000, 300) = 300
    labels[20:25, 30:40, 30:35] = EDEMA     # 250 voxels: removed
    labels[20:25, 50:60, 50:58] = ENHANCING  # 400 voxels: kept
    labels[30, 0, 0] = NCR_NET               # 1 voxel: removed
    out = RemoveSmallComponents()(labels)
    assert (out[20:25, 30:40, 30:35] == NORMAL).all() and out[30, 0, 0] == NORMAL
    assert (out[0:10, 0:20, 0:15] == EDEMA).all() and (out[20:25, 50:60, 50:58] == ENHANCING).all()
    assert (labels[20:25, 30:40, 30:35] == EDEMA).all()  # the input is not modified


def test_threshold_is_capped_at_2000_voxels():
    labels = brain((60, 80, 80))
    labels[0:30, 0:40, 0:30] = EDEMA       # 36000 voxels: 0.1 V_max = 3600, tau = 2000
    labels[40:50, 50:70, 50:59] = EDEMA    # 1800 voxels: removed
    labels[40:50, 50:70, 65:76] = EDEMA    # 2200 voxels: kept
    out = RemoveSmallComponents()(labels)
    assert (out[40:50, 50:70, 50:59] == NORMAL).all()
    assert (out[40:50, 50:70, 65:76] == EDEMA).all()
    # configurable: a higher cap removes the 2200-voxel component too
    assert (RemoveSmallComponents(max_voxels=3000)(labels)[40:50, 50:70, 65:76] == NORMAL).all()


def test_components_touching_diagonally_are_one_component():
    labels = brain((10, 10, 10))
    labels[0:3, 0:3, 0:3] = EDEMA
    labels[3, 3, 3] = EDEMA  # touches the cube's corner only
    assert RemoveSmallComponents()(labels)[3, 3, 3] == EDEMA
    assert RemoveSmallComponents(connectivity=6)(labels)[3, 3, 3] == NORMAL


def kmeans_case(enhancing_voxels: int):
    """One tumor component: an edema block whose half has a dark T1c (necrosis
    mislabelled as edema), a few enhancing voxels."""
    rng = np.random.default_rng(0)
    labels = brain((20, 40, 40))
    labels[5:15, 10:30, 10:30] = EDEMA
    image = rng.normal(0, 0.1, (4, 20, 40, 40)).astype(np.float32)
    image[2, 5:15, 10:20, 10:30] -= 2.0  # dark T1c half
    image[2, 5:15, 20:30, 10:30] += 1.0
    flat = np.flatnonzero(labels == EDEMA)[:enhancing_voxels]
    labels.flat[flat] = ENHANCING
    return labels, image


def test_kmeans_turns_the_dark_t1c_edema_cluster_into_necrosis():
    labels, image = kmeans_case(enhancing_voxels=20)  # 20 / 4000 < 0.05
    out = KMeansEdemaToNecrosis()(labels, image)
    changed = out != labels
    assert changed.any()
    assert (labels[changed] == EDEMA).all() and (out[changed] == NCR_NET).all()  # only edema changes
    dark = np.zeros_like(changed)
    dark[5:15, 10:20, 10:30] = True
    assert (out[dark & (labels == EDEMA)] == NCR_NET).all()
    assert (out[~dark & (labels == EDEMA)] == EDEMA).all()


@pytest.mark.parametrize("enhancing_voxels", [300, 0])
def test_kmeans_conditions(enhancing_voxels):
    labels, image = kmeans_case(enhancing_voxels)
    if enhancing_voxels == 0:
        # no enhancing voxel: ratios are 0, the step applies
        assert (KMeansEdemaToNecrosis()(labels, image) != labels).any()
        # ... unless the per-component enhancing volume limit forbids it
        assert (KMeansEdemaToNecrosis(max_enhancing=0)(labels, image) == labels).all()
    else:
        # 300 / 4000 = 0.075 >= 0.05: component left alone
        assert (KMeansEdemaToNecrosis()(labels, image) == labels).all()
        assert (KMeansEdemaToNecrosis(component_ratio=0.1)(labels, image) != labels).any()


def test_registry_order_switches_and_third_party_steps():
    assert {"remove_small_components", "kmeans_edema_to_necrosis"} <= set(omkit.list_postprocessors())
    steps = build_postprocessors()
    assert [name for name, _ in steps] == ["remove_small_components", "kmeans_edema_to_necrosis"]
    assert [n for n, _ in build_postprocessors(disable_steps=["kmeans_edema_to_necrosis"])] == ["remove_small_components"]
    assert build_postprocessors(only=[]) == []
    options = {"remove_small_components": {"max_voxels": 5}}
    step = dict(build_postprocessors(step_options=options))["remove_small_components"]
    assert step.max_voxels == 5
    with pytest.raises(omkit.UnknownNameError, match="no_such_step"):
        build_postprocessors(disable_steps=["no_such_step"])
    # the keywords before one vocabulary still work, with a warning
    with pytest.warns(DeprecationWarning, match=r"build_postprocessors\(disable=...\) is deprecated: use disable_steps="):
        assert [n for n, _ in build_postprocessors(disable=["kmeans_edema_to_necrosis"])] == ["remove_small_components"]
    with pytest.warns(DeprecationWarning, match="use only="):
        assert build_postprocessors(enable=[]) == []
    with pytest.warns(DeprecationWarning, match="use step_options="):
        assert dict(build_postprocessors(options=options))["remove_small_components"].max_voxels == 5

    class EverythingEdema:
        order, default_enabled = 15, True

        def __init__(self, value=EDEMA):
            self.value = value

        def __call__(self, labels, image):
            return np.where(labels >= NCR_NET, self.value, labels).astype(np.uint8)

    class ThirdParty:
        @omkit.hookimpl
        def omkit_register_postprocessors(self, registry):
            registry.add("everything_edema", EverythingEdema)

    try:
        omkit.setup_plugins(extra_plugins={"third_party": ThirdParty()})
        names = [n for n, _ in build_postprocessors()]
        assert names == ["remove_small_components", "everything_edema", "kmeans_edema_to_necrosis"]
        labels = brain((4, 4, 4))
        labels[0, 0, 0] = ENHANCING
        out = postprocess(labels, np.zeros((4, 4, 4, 4), np.float32), build_postprocessors(only=["everything_edema"]))
        assert out[0, 0, 0] == EDEMA
    finally:
        omkit.setup_plugins()


# -- every registered step (built-in or plug-in) keeps the step contract --------------------

def tumor_case(seed=0, shape=(24, 32, 32)):
    """A brain with two tumor components (one with little enhancing tumor) and a z-scored image."""
    rng = np.random.default_rng(seed)
    labels = brain(shape)
    labels[:, :2] = 0  # background outside the brain
    labels[4:14, 6:18, 6:18] = EDEMA
    labels[7:11, 9:15, 9:15] = NCR_NET
    labels[8, 11, 11] = ENHANCING
    labels[18:20, 24:26, 24:26] = EDEMA  # a small far-away component
    image = rng.normal(size=(4, *shape)).astype(np.float32)
    return labels, image


@pytest.mark.parametrize("name", omkit.list_postprocessors())
def test_every_registered_step_keeps_the_contract(name):
    cls = omkit.get_plugins().registry("postprocessor").get(name)
    assert isinstance(getattr(cls, "order", None), int), f"{name}: needs an int attribute 'order'"
    assert isinstance(getattr(cls, "default_enabled", None), bool), f"{name}: needs a bool 'default_enabled'"
    step = cls()
    labels, image = tumor_case()
    before = labels.copy()
    out = np.asarray(step(labels, image))
    assert np.array_equal(labels, before), f"{name} modified its input in place"
    assert out.shape == labels.shape
    assert set(np.unique(out)) <= {0, 1, 2, 3, 4}, f"{name} wrote values outside the internal classes"
    assert np.array_equal(out[labels == 0], labels[labels == 0]), f"{name} changed background outside the brain"
    assert np.array_equal(np.asarray(step(labels, image)), out), f"{name} is not deterministic"
    # a map without tumor has nothing to post-process
    healthy = brain((8, 16, 16))
    assert np.array_equal(np.asarray(step(healthy, np.zeros((4, 8, 16, 16), np.float32))), healthy)
    # and the pipeline runs it by name
    steps = build_postprocessors(only=[name])
    assert [n for n, _ in steps] == [name]
    assert np.array_equal(postprocess(labels, image, steps), out)


# -- selecting steps from the command line, and the voxel spacing ------------------------------

class OffByDefault:
    """Registered but not run unless enabled: relabels enhancing tumor as necrosis."""

    order, default_enabled = 30, False

    def __init__(self, value=NCR_NET):
        self.value = value

    def __call__(self, labels, image, spacing=None):
        self.seen_spacing = spacing
        return np.where(labels == ENHANCING, self.value, labels).astype(np.uint8)


class OffByDefaultPlugin:
    @omkit.hookimpl
    def omkit_register_postprocessors(self, registry):
        registry.add("off_by_default_test", OffByDefault)


def test_enable_step_and_step_option_on_the_command_line(tmp_path, capsys):
    from omkit.checkpoint import save_model
    from omkit.cli import main
    from omkit.cli.options import add_postprocess_arguments, postprocess_steps
    from omkit.data.synthetic import make_dataset
    import argparse

    parser = argparse.ArgumentParser()
    add_postprocess_arguments(parser)
    try:
        omkit.setup_plugins(extra_plugins={"off_test": OffByDefaultPlugin()})
        args = parser.parse_args(["--enable-step", "off_by_default_test", "--disable-step", "kmeans_edema_to_necrosis",
                                  "--step-option", "off_by_default_test.value=3",
                                  "--step-option", "remove_small_components.max_volume_mm3=2000.5"])
        steps = dict(postprocess_steps(args))
        assert list(steps) == ["remove_small_components", "off_by_default_test"]
        assert steps["off_by_default_test"].value == 3 and steps["remove_small_components"].max_volume_mm3 == 2000.5
        bad = parser.parse_args(["--step-option", "remove_small_components=3"])
        with pytest.raises(Exception, match=r"--step-option 'remove_small_components=3': expected NAME.KEY=VALUE"):
            postprocess_steps(bad)
        # end to end: omkit predict runs the enabled step, which receives the spacing
        make_dataset(tmp_path / "data", num_cases=1, shape=(16, 40, 40))
        save_model(omkit.create_model("omnet_cga", width=0.125), tmp_path / "model.pt")
        seen = []
        original = OffByDefault.__call__

        def spy(self, labels, image, spacing=None):
            seen.append(spacing)
            return original(self, labels, image, spacing)

        OffByDefault.__call__ = spy
        try:
            assert main(["predict", "--no-progress", "-m", str(tmp_path / "model.pt"), "-i", str(tmp_path / "data"),
                         "-o", str(tmp_path / "out"), "--device", "cpu", "--tile-size", "8,16,16", "--tile-keep",
                         "8,16,16", "--enable-step", "off_by_default_test"]) == 0
        finally:
            OffByDefault.__call__ = original
        assert len(seen) == 1 and len(seen[0]) == 3 and all(s > 0 for s in seen[0])
    finally:
        omkit.setup_plugins()


def test_the_small_component_limit_as_a_volume_follows_the_spacing():
    labels = brain((20, 20, 20))
    labels[2:12, 2:12, 2:12] = EDEMA  # 1000 voxels
    labels[15:17, 15:17, 15:17] = EDEMA  # 8 voxels: 8 mm3 at 1 mm, 64 mm3 at 2 mm
    volume = RemoveSmallComponents(fraction=1.0, max_volume_mm3=32)
    kept_at_2mm = postprocess(labels, np.zeros((4, 20, 20, 20), np.float32), [("r", volume)], spacing=(2, 2, 2))
    removed_at_1mm = postprocess(labels, np.zeros((4, 20, 20, 20), np.float32), [("r", volume)], spacing=(1, 1, 1))
    assert kept_at_2mm[16, 16, 16] == EDEMA and removed_at_1mm[16, 16, 16] == NORMAL
    # the paper's voxel limit is what it was, with or without a spacing
    paper = RemoveSmallComponents()
    assert np.array_equal(postprocess(labels, None, [("p", paper)], spacing=(2, 2, 2)), paper(labels))
    with pytest.raises(ValueError, match="max_volume_mm3 needs the voxel spacing"):
        volume(labels)
