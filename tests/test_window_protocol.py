"""The window protocol (``omkit.models.window_protocol``) and the conformance kit
(``omkit.testing``): plug-in attention that declares its pooling runs dense exactly as
tiles; a plug-in that does not, or whose backbone is not window-consistent, runs tiles
and says so everywhere; the kit passes the built-ins and names a broken plug-in.

The two example packages (``examples/omkit-eca``, ``examples/omkit-srm``) are read from
their sources here; ``tests/test_plugins.py`` installs them with pip and runs them
through the command line.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import omkit
from omkit.inference import SegmentationPredictor
from omkit.inference.dense import DenseFallbackWarning
from omkit.models.attention import CGA
from omkit.models.window_protocol import PooledChannelAttention, declares
from omkit.testing import ConformanceError, check_attention, check_backbone, onnx_available

from conftest import TINY_WIDTH, PointwiseBackbone, centre_taps_only, plugin_fixture
from test_dense_inference import TILES, assert_same, both, volume, windows_trained

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example_module(package: str, module: str):
    """An example's plug-in module loaded from its file: not through ``sys.path``, where the
    package's build metadata (``src/*.egg-info``, written by a pip install) would make omkit
    load it as an installed plug-in as well."""
    spec = importlib.util.spec_from_file_location(f"_example_{module}", EXAMPLES / package / "src" / module / "plugin.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


ECABlock = _example_module("omkit-eca", "omkit_eca").ECABlock
SRMBlock = _example_module("omkit-srm", "omkit_srm").SRMBlock


class GroupNormBackbone(nn.Module):
    """1x1x1 convs with a GroupNorm: statistics over the whole input, so its output at a voxel
    depends on the input's extent. It declares nothing (as a plug-in that does not know the
    protocol)."""

    def __init__(self, in_channels: int = 4, width: float = 1.0):
        super().__init__()
        self.out_channels = max(2, int(32 * width))
        self.min_divisor = 8
        self.net = nn.Sequential(nn.Conv3d(in_channels, self.out_channels, 1), nn.GroupNorm(2, self.out_channels),
                                 nn.ReLU())

    def forward(self, x):
        return self.net(x)


class MaxPoolingSRM(SRMBlock):
    """Broken on purpose: it declares SRM's pooling (mean and deviation) but its forward
    pools the maximum."""

    def pooled_terms(self, x):
        return super().pooled_terms(x)

    def channel_scale(self, sums, count):
        return super().channel_scale(sums, count)

    def forward(self, x):
        peak = x.amax(dim=(2, 3, 4))
        return x * torch.sigmoid(peak * self.weight[:, 0] + self.bias)[..., None, None, None]


# names of their own for the examples: they may be pip-installed too, under "eca" and "srm"
plugins = plugin_fixture("window_protocol_test",
                         backbones={"pointwise_protocol_test": PointwiseBackbone, "groupnorm_test": GroupNormBackbone},
                         attention={"eca_source_test": ECABlock, "srm_source_test": SRMBlock,
                                    "max_srm_test": MaxPoolingSRM})


def pointwise(attention: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = omkit.create_model("omnet", width=TINY_WIDTH, attention=attention, backbone="pointwise_protocol_test")
    return centre_taps_only(model)


# -- dense equals tiles for plug-ins that declare their pooling ---------------------------------

@pytest.mark.parametrize("attention", ["eca_source_test", "srm_source_test"])
def test_dense_equals_tiles_for_declared_plugin_attention(attention):
    image, mask = volume("border")
    assert_same(*both([pointwise(attention)], image, mask))
    assert_same(*both([pointwise(attention, 1)], image, mask, tta=True))


def test_a_windows_trained_plugin_model_runs_dense_under_auto():
    model = windows_trained(pointwise("srm_source_test"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DenseFallbackWarning)
        auto = SegmentationPredictor([model], tiles=TILES)
    assert auto.inference == "dense"


# -- what cannot run dense runs tiles, and says so -------------------------------------------------

def test_a_groupnorm_backbone_runs_tiles_under_auto_and_says_why(tmp_path):
    torch.manual_seed(0)
    model = windows_trained(omkit.create_model("omnet", width=TINY_WIDTH, backbone="groupnorm_test"))
    with pytest.warns(DenseFallbackWarning, match="backbone 'groupnorm_test' of plug-in 'window_protocol_test'"):
        auto = SegmentationPredictor([model], tiles=TILES)
    assert auto.inference == "tiles"
    assert "does not declare window_consistent = True" in auto.inference_note
    with pytest.raises(ValueError) as refused:
        SegmentationPredictor([model], tiles=TILES, inference="dense")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("dense inference cannot run this model: backbone 'groupnorm_test'")
    assert message.endswith("use tile inference (inference='tiles', --inference tiles)")
    # a patch-trained model warns too: dense could not run it whatever it was trained on
    with pytest.warns(DenseFallbackWarning, match="groupnorm_test"):
        SegmentationPredictor([omkit.create_model("omnet", width=TINY_WIDTH, backbone="groupnorm_test")], tiles=TILES)

    # the same model through the model file: omkit.Segmenter and the ablation runner warn as well
    from omkit import ablation
    from omkit.checkpoint import save_model

    save_model(model, tmp_path / "model.pt")
    with pytest.warns(DenseFallbackWarning, match="groupnorm_test"):
        segmenter = omkit.Segmenter.from_files(tmp_path / "model.pt", device="cpu", tiles=TILES)
    assert segmenter.predictor.inference == "tiles"
    config = ablation.AblationConfig(input=str(tmp_path), output=str(tmp_path / "study"), rows=["omnet"],
                                     tiles={"size": TILES.size, "keep": TILES.keep})
    with pytest.warns(DenseFallbackWarning, match="groupnorm_test"):
        predictor = ablation.study_predictor(config, [tmp_path / "model.pt"])
    assert "backbone 'groupnorm_test'" in predictor.inference_note  # what the study's report lists per row


def test_a_module_that_changes_forward_without_its_declaration_runs_tiles():
    class Overridden(ECABlock):  # a new forward, the inherited declaration: not trusted
        def forward(self, x):
            return x * 2

    assert declares(ECABlock(8), ("pooled_terms", "channel_scale"))
    assert not declares(Overridden(8), ("pooled_terms", "channel_scale"))
    assert declares(MaxPoolingSRM(8), ("pooled_terms", "channel_scale"))  # declared again: the kit's to catch


# -- the conformance kit --------------------------------------------------------------------------

@pytest.mark.parametrize("attention", ["se", "cga", "cga_minus", "cga_t", "cga_n", "eca_source_test", "srm_source_test"])
def test_attention_passes_the_conformance_kit(attention):
    passed = check_attention(attention)
    export = ["ONNX export"] if onnx_available() else []
    claimed = ["torch.compile fullgraph"] if attention in ("se", "cga", "cga_minus", "cga_t", "cga_n") else []
    guided_terms = ["guided terms are the pooled terms"] if attention.startswith("cga") else []
    assert passed == ["shapes", "deterministic", "gradients", "bf16 autocast", *export, *claimed, *guided_terms,
                      "declared pooling is the forward", "dense equals tiles"]


def test_backbones_pass_the_conformance_kit():
    assert check_backbone("fusionnet3d") == ["declarations", "shapes", "deterministic", "gradients"]
    assert check_backbone("groupnorm_test") == ["declarations", "shapes", "deterministic", "gradients"]


def test_the_kit_names_a_broken_plugin_and_the_check_in_one_line():
    with pytest.raises(ConformanceError) as failed:
        check_attention("max_srm_test")
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("attention 'max_srm_test' of plug-in 'window_protocol_test'")
    assert "check 'declared pooling is the forward' failed: pooled over the whole input it differs" in message

    class NoGradient(PooledChannelAttention):  # a parameter its output never uses
        def __init__(self, channels):
            super().__init__()
            self.unused = nn.Parameter(torch.ones(channels))

        def pooled_terms(self, x):
            return (x,)

        def channel_scale(self, sums, count):
            return torch.sigmoid(sums[0] / count)

    with pytest.raises(ConformanceError, match=r"NoGradient: check 'gradients' failed: the output does not depend "
                                               "on unused"):
        check_attention(NoGradient)

    class SquaresItsTerms(CGA):  # its window path would pool F * F, its tiles F
        def guided_terms(self, features):
            return (features * features,)

        def pooled_terms(self, features, guidance):
            return features * guidance, features

    with pytest.raises(ConformanceError, match=r"SquaresItsTerms: check 'guided terms are the pooled terms' failed: "
                                               "guided_terms weighted by the guidance differ from pooled_terms by"):
        check_attention(SquaresItsTerms)

    class Misshapen(nn.Module):
        guided = False

        def __init__(self, channels):
            super().__init__()

        def forward(self, x):
            return x[:, :1]

    with pytest.raises(ConformanceError, match=r"check 'shapes' failed: output \(2, 1, 6, 12, 12\)"):
        check_attention(Misshapen)
