"""The paper's models: parameter counts, shapes, one-pass and training flows."""
from __future__ import annotations

import pytest
import torch

import omkit
from omkit.labels import NUM_CLASSES_TASK
from omkit.models import MCNet, OMNet, positive_probability

from conftest import TINY_PATCH, TINY_WIDTH

# Table I of the paper (millions of parameters).
PAPER_PARAMS = {"mc1": 13.813, "mc2": 27.626, "mc3": 41.439, "omnet": 13.869, "omnet_se": 13.870}


@pytest.mark.parametrize("preset,millions", sorted(PAPER_PARAMS.items()))
def test_full_width_parameter_counts_match_table_one(preset, millions):
    count = omkit.count_parameters(omkit.create_model(preset))
    assert abs(count / 1e6 - millions) / millions < 1e-3, f"{preset}: {count / 1e6:.4f} M vs paper {millions} M"


def test_cga_has_fewer_parameters_than_plain_omnet_and_variants_are_consistent():
    n = {p: omkit.count_parameters(omkit.create_model(p)) for p in ("omnet", "omnet0", "omnetd", "omnet_cga", "omnet_cga_minus", "omnet_cga_t", "omnet_cga_n")}
    assert n["omnet_cga"] < n["omnet"]
    assert n["omnet0"] == n["omnetd"] == n["omnet"]  # training strategies, same network
    assert n["omnet_cga_minus"] == n["omnet_cga"]
    assert n["omnet_cga_t"] == n["omnet_cga_n"] < n["omnet_cga"]  # one branch dropped


def test_fusionnet_levels_and_width_multiplier():
    full = omkit.create_backbone("fusionnet3d")
    assert full.levels == (32, 64, 128, 256) and full.out_channels == 32
    tiny = omkit.create_backbone("fusionnet3d", width=TINY_WIDTH)
    assert tiny.levels == (4, 8, 16, 32)
    with pytest.raises(ValueError, match="divisible by 8"):
        tiny(torch.randn(1, 4, 6, 16, 16))


def _tiny_batches(sizes=(2, 2, 2)):
    return [torch.randn(n, 4, *TINY_PATCH) for n in sizes]


@pytest.mark.parametrize("preset", omkit.list_presets())
def test_every_preset_forward_backward_shapes_finite(preset):
    model = omkit.create_model(preset, width=TINY_WIDTH)
    num_tasks = omkit.get_preset(preset).num_tasks
    x = torch.randn(2, 4, *TINY_PATCH)
    model.eval()
    with torch.no_grad():
        out = model(x)
    for t in range(3):
        if t < num_tasks:
            assert out[t].shape == (2, NUM_CLASSES_TASK[t], *TINY_PATCH)
            assert torch.isfinite(out[t]).all()
        else:
            assert out[t] is None
    model.train()
    outputs = model.forward_tasks(_tiny_batches()[:num_tasks] + [None] * (3 - num_tasks))
    loss = sum(o.logsumexp(1).mean() for o in outputs if o is not None)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), "a parameter got no or a non-finite gradient"


@pytest.mark.parametrize("name", omkit.list_attention())
def test_every_attention_plugin_in_omnet_heads(name):
    model = omkit.create_model("omnet_base", width=TINY_WIDTH, attention=(None, name, name))
    outputs = model.forward_tasks(_tiny_batches())
    assert [o.shape[1] for o in outputs] == list(NUM_CLASSES_TASK)
    sum(o.square().mean() for o in outputs).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", omkit.list_backbones())
def test_every_backbone_builds_an_omnet(name):
    model = omkit.create_model("omnet", width=TINY_WIDTH, backbone=name)
    out = model(torch.randn(1, 4, *TINY_PATCH))
    assert out.task3.shape == (1, 2, *TINY_PATCH)
    out.task1.mean().backward()


def test_forward_tasks_appends_transferred_patches_in_order():
    model = omkit.create_model("omnet", width=TINY_WIDTH).eval()  # eval: BN/dropout do not mix samples
    x1, x2, x3 = _tiny_batches((3, 2, 1))
    transfers = {1: [(0, torch.tensor([2, 0]))], 2: [(0, torch.tensor([1])), (1, torch.tensor([1]))]}
    with torch.no_grad():
        o1, o2, o3 = model.forward_tasks([x1, x2, x3], transfers)
        direct = model(torch.cat([x2, x1[[2, 0]]]))
        direct3 = model(torch.cat([x3, x1[[1]], x2[[1]]]))
    assert o1.shape[0] == 3 and o2.shape[0] == 4 and o3.shape[0] == 3
    torch.testing.assert_close(o2, direct.task2)
    torch.testing.assert_close(o3, direct3.task3)


def test_curriculum_stage_with_only_task_one_computes_only_task_one():
    model = omkit.create_model("omnet_cga", width=TINY_WIDTH)
    outputs = model.forward_tasks([torch.randn(2, 4, *TINY_PATCH), None, None])
    assert outputs[0] is not None and outputs[1] is None and outputs[2] is None


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cga_guidance_is_forward_only(mode):
    """A task-2 / task-3 loss must not reach the preceding tasks' heads (the
    guidance carries no gradient), but must reach the shared backbone."""
    model = omkit.create_model("omnet_cga", width=TINY_WIDTH)
    if mode == "train":
        outputs = model.forward_tasks(_tiny_batches())
        loss = outputs[1].square().mean() + outputs[2].square().mean()
    else:
        model.eval()
        out = model(torch.randn(2, 4, *TINY_PATCH))
        loss = out.task2.square().mean() + out.task3.square().mean()
    loss.backward()
    assert all(p.grad is None for p in model.heads[0].parameters()), "task-3/task-2 loss leaked into task 1's head via guidance"
    assert all(p.grad is not None for p in model.heads[1].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_task3_loss_does_not_reach_task2_head_through_guidance():
    model = omkit.create_model("omnet_cga", width=TINY_WIDTH)
    outputs = model.forward_tasks(_tiny_batches())
    outputs[2].square().mean().backward()
    assert all(p.grad is None for p in model.heads[1].parameters())


def test_guidance_is_tumor_then_core_probability():
    logits = torch.randn(2, 5, 2, 2, 2)
    p = torch.softmax(logits, 1)
    torch.testing.assert_close(positive_probability(0, logits), p[:, 2:].sum(1, keepdim=True))
    torch.testing.assert_close(positive_probability(1, logits), (p[:, 2] + p[:, 4]).unsqueeze(1))


def test_one_pass_guidance_matches_cross_task_flow_at_inference():
    """In eval mode Feature-1 = Feature-2 = Feature-3, so the one-pass guided
    outputs equal the training-style cross-task forward flow."""
    model = omkit.create_model("omnet_cga", width=TINY_WIDTH).eval()
    x = torch.randn(2, 4, *TINY_PATCH)
    with torch.no_grad():
        one_pass = model(x)
        multi = model.forward_tasks([x, x, x])
    for a, b in zip(one_pass, multi):
        torch.testing.assert_close(a, b)


def test_mc_networks_are_independent():
    model = omkit.create_model("mc3", width=TINY_WIDTH)
    assert isinstance(model, MCNet) and len(model.networks) == 3
    outputs = model.forward_tasks(_tiny_batches())
    outputs[2].mean().backward()
    assert all(p.grad is None for p in model.networks[0].parameters())
    assert all(p.grad is not None for p in model.networks[2].parameters())
    with pytest.raises(ValueError, match="transfer"):
        model.forward_tasks(_tiny_batches(), {1: [(0, torch.tensor([0]))]})


def test_guided_attention_everywhere_keeps_task_one_plain():
    model = omkit.create_model("omnet", width=TINY_WIDTH, attention="cga")
    assert isinstance(model, OMNet)
    assert not model.heads[0].guided and model.heads[1].guided and model.heads[2].guided
    with pytest.raises(ValueError, match="task 1 has no preceding task"):
        omkit.create_model("omnet_base", width=TINY_WIDTH, attention=("cga", None, None))


def test_unknown_names_list_what_is_available():
    with pytest.raises(ValueError, match="unknown model 'omnet_xl'.*omnet_cga"):
        omkit.create_model("omnet_xl")
    with pytest.raises(KeyError, match="unknown attention 'cbam'; available: .*se"):
        omkit.create_attention("cbam", 32)
    with pytest.raises(KeyError, match="unknown backbone"):
        omkit.create_backbone("resnet")
    with pytest.raises(TypeError, match="num_classes"):
        omkit.create_attention("cga", 32)


def test_list_functions_take_patterns():
    assert omkit.list_presets("omnet_cga*") == ["omnet_cga", "omnet_cga_minus", "omnet_cga_n", "omnet_cga_t"]
    assert omkit.list_presets("mc?") == ["mc1", "mc2", "mc3"]
    assert "se" in omkit.list_attention() and omkit.list_attention("cga_*") == ["cga_minus", "cga_n", "cga_t"]


def test_model_file_round_trip(tmp_path):
    from omkit.checkpoint import ModelFileError, load_model, save_model

    model = omkit.create_model("omnet_se", width=TINY_WIDTH).eval()
    path = save_model(model, tmp_path / "model.pt")
    loaded, card = load_model(path)
    assert card.preset == "omnet_se" and card.width == TINY_WIDTH and loaded.card is card
    x = torch.randn(1, 4, *TINY_PATCH)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).task3, model(x).task3)
    with pytest.raises(ModelFileError, match="expected 'omnet_cga'"):
        load_model(path, expect_preset="omnet_cga")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")


@pytest.mark.parametrize("preset", ["omnet_cga", "omnet_se", "mc2"])
def test_fold_batch_norm_keeps_the_function_and_removes_every_norm(preset):
    from omkit.models.blocks import fold_batch_norm

    torch.manual_seed(0)
    model = omkit.create_model(preset, width=0.125)
    model.train()
    with torch.no_grad():  # running statistics away from the identity
        for _ in range(3):
            model(torch.randn(2, 4, 8, 16, 16) * 2 + 1)
    model.eval()
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())  # the original is untouched
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        for want, got in zip(model(x), folded(x)):
            if want is not None:
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
