"""The conformance kit (``omkit.testing``) for the data and post-processing hook kinds:
every built-in passes, and a broken plug-in fails with one line naming it and the check
(the model kinds: ``tests/test_window_protocol.py``)."""
from __future__ import annotations

import numpy as np
import pytest

import omkit
from omkit.data.sampling import RegionSampler
from omkit.testing import ConformanceError, check_postprocessor, check_sampler

from conftest import plugin_fixture


class EverywhereButDrawsOutside(RegionSampler):
    """Broken on purpose: its centres ignore its region."""

    key = "outside_test"

    def region(self, pre):
        return pre.brain_mask & (np.arange(pre.brain_mask.shape[0]) < 4)[:, None, None]

    def draw(self, regions, shapes, count, rng):
        return np.zeros((count, 4), dtype=np.int64) + np.array([0, shapes[0][0] - 1, 0, 0])


class ClearsInPlace:
    """Broken on purpose: it empties the label map it is given."""

    order, default_enabled = 50, False

    def __call__(self, labels, image=None):
        labels[...] = 0
        return labels


plugins = plugin_fixture("kit_test_plugin", samplers={"outside_test": EverywhereButDrawsOutside},
                         postprocessors={"clears_test": ClearsInPlace})


def test_builtin_samplers_and_postprocessors_pass():
    for name in ("brain", "dilated_tumor", "core", "enhancing", "tumor_mimic"):
        assert check_sampler(name) == ["attributes", "region", "draw"]
    for name in ("remove_small_components", "kmeans_edema_to_necrosis"):
        assert check_postprocessor(name) == ["attributes", "output"]
    assert set(omkit.list_samplers()) >= {"outside_test"}


def test_broken_sampler_and_postprocessor_are_named_in_one_line():
    with pytest.raises(ConformanceError) as failed:
        check_sampler("outside_test")
    assert str(failed.value) == ("sampler 'outside_test' of plug-in 'kit_test_plugin' (registered in code): "
                                 "check 'draw' failed: draw returns centres outside the region")
    with pytest.raises(ConformanceError, match=r"^postprocessor 'clears_test' .*check 'output' failed: the input "
                                               "label map was changed in place$"):
        check_postprocessor("clears_test")
