"""One idea, one name: the table "One vocabulary" of docs/ARCHITECTURE.md against every
command's flags, the public Python signatures, the config.json keys, the model card's
fields and the op schemas (csrc/ops.h). Every name the table gives must be in use; no
name it rules out may appear anywhere; deprecated keywords warn and work."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def vocabulary() -> list[dict]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## One vocabulary\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| idea")]
    out = []
    for line in rows:
        idea, names, deprecated, never = [cell.strip() for cell in line.strip().strip("|").split("|")]
        # names in backquotes; a capitalised one is the class or attribute a name belongs to
        tokens = lambda cell: [t for t in re.findall(r"`([^`]+)`", cell) if not t[0].isupper()]  # noqa: E731
        out.append({"idea": idea, "names": tokens(names), "deprecated": tokens(deprecated), "never": tokens(never)})
    assert len(out) >= 8, "the vocabulary table is missing or unreadable"
    return out


def _parameters(obj) -> set[str]:
    try:
        return set(inspect.signature(obj).parameters) - {"self", "cls", "args", "kwargs"}
    except (TypeError, ValueError):
        return set()


def names_in_use() -> dict[str, set[str]]:
    """Where each name is used: flags, parameters and fields, config keys, op arguments."""
    import omkit
    import omkit.ablation
    import omkit.export
    import omkit.inference
    import omkit.ops
    from omkit.cli import build_parser
    from omkit.model_card import ModelCard
    from omkit.training import TrainConfig

    used: dict[str, set[str]] = {}

    def add(name, where):
        used.setdefault(name, set()).add(where)

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, subparser in sub.choices.items():
        for action in subparser._actions:
            for flag in action.option_strings:
                add(flag, f"omkit {command}")
    public = []
    for module in (omkit, omkit.inference, omkit.ops, omkit.export, omkit.ablation):
        for name in getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]:
            obj = getattr(module, name, None)
            if callable(obj) and getattr(obj, "__module__", "").startswith("omkit"):
                public.append((f"{module.__name__}.{name}", obj))
    for where, obj in public:
        for p in _parameters(obj):
            add(p, where)
        if inspect.isclass(obj):
            for attr in ("from_files", "predict", "segment", "segment_case"):
                if hasattr(obj, attr):
                    for p in _parameters(getattr(obj, attr)):
                        add(p, f"{where}.{attr}")
            if dataclasses.is_dataclass(obj):
                for f in dataclasses.fields(obj):
                    add(f.name, f"{where} field")
            for f in getattr(obj, "_fields", ()):  # NamedTuples
                add(f, f"{where} field")
    for key in TrainConfig.defaults():
        add(key, "config.json")
    for f in dataclasses.fields(ModelCard):
        add(f.name, "model card")
    schemas = (ROOT / "csrc" / "ops.h").read_text(encoding="utf-8")
    for schema in re.findall(r'"\((.*?)\) ->', schemas.replace('"\n', "").replace('" "', "")):
        for argument in schema.split(","):
            words = argument.strip().split()
            if words:
                add(words[-1].split("=")[0], "op schema")
    return used


@pytest.fixture(scope="module")
def used():
    return names_in_use()


@pytest.mark.parametrize("row", vocabulary(), ids=lambda r: r["idea"])
def test_one_idea_has_one_name(row, used):
    for name in row["names"]:
        bare = name.split()[0]
        assert bare in used, f"{row['idea']}: {bare} is in the vocabulary but nothing uses it"
    clashes = {name: sorted(used[name]) for name in row["never"] if name in used}
    assert not clashes, f"{row['idea']}: other names for it in use: {clashes}"


def test_result_types_name_their_tile_counts_so():
    from omkit.inference import CaseResult, Prediction

    assert "tile_counts" in Prediction._fields and "tiles" not in Prediction._fields
    assert {f.name for f in dataclasses.fields(CaseResult)} >= {"tile_counts"}
    assert "tiles" not in {f.name for f in dataclasses.fields(CaseResult)}


def test_deprecated_keywords_warn_and_still_work(tmp_path):
    import torch

    import omkit
    from omkit import ops
    from omkit.checkpoint import save_model
    from omkit.inference import SegmentationPredictor, build_postprocessors, overlap_tile_inference

    volume = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4)
    origins = torch.tensor([[0, 0, 0]])
    with pytest.warns(DeprecationWarning, match=r"gather_tiles\(roi_size=...\) is deprecated: use tile_size="):
        old = ops.gather_tiles(volume, origins, roi_size=(2, 2, 2))
    assert torch.equal(old, ops.gather_tiles(volume, origins, tile_size=(2, 2, 2)))
    with pytest.raises(TypeError, match="pass tile_size= only"):
        ops.gather_tiles(volume, origins, roi_size=(2, 2, 2), tile_size=(2, 2, 2))
    with pytest.warns(DeprecationWarning, match="use tile_batch="):
        out = overlap_tile_inference(volume, lambda b: b, 2, tile_size=(4, 4, 4), tile_keep=(4, 4, 4), batch_size=2)
    assert torch.equal(out, volume)
    with pytest.warns(DeprecationWarning, match="device= is where the network runs"):
        overlap_tile_inference(volume, lambda b: b, 2, tile_size=(4, 4, 4), tile_keep=(4, 4, 4), sw_device="cpu")
    with pytest.warns(DeprecationWarning, match="use only="):
        assert build_postprocessors(enable=[]) == []
    path = save_model(omkit.create_model("omnet", width=0.125), tmp_path / "m.pt")
    with pytest.warns(DeprecationWarning, match=r"from_files\(paths=...\) is deprecated: use models="):
        predictor = SegmentationPredictor.from_files(paths=[path])
    prediction = predictor.predict(torch.zeros(4, 8, 16, 16), torch.ones(8, 16, 16, dtype=torch.bool))
    with pytest.warns(DeprecationWarning, match="use Prediction.tile_counts"):
        assert prediction.tiles == prediction.tile_counts
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names are silent
        SegmentationPredictor.from_files(models=[path])
