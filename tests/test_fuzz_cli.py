"""Property-based fuzzing of the numbers the command line takes (hypothesis,
bounded example counts so that it runs in seconds).

Whatever a number option is given (huge, negative, NaN, infinite, a list of
the wrong length, not a number at all), ``omkit train`` and ``omkit predict``
end with exit status 2 and one line naming the option (or, for a value that
is fine, the missing input), without a traceback and without making the
output folder. The input is a folder that does not exist, so that no value
that passes the checks starts any work.
"""
from __future__ import annotations

import contextlib
import io

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from omkit.cli import main  # noqa: E402

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

NUMBER = st.one_of(
    st.integers(-(10**15), 10**15).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),  # 'nan', 'inf', '-inf', '1e+300', '5e-324'
    st.sampled_from(["1e12", "1e-320", "-1", "0", "-0", "nan", "-nan", "inf", "-inf", "1_000", "0x10", "", " 3",
                     "3.5", "1,2", "-1,1,1", "1e12,1,1", "٣"]),
)
LIST = st.lists(st.integers(-(10**13), 10**13), min_size=0, max_size=4).map(lambda xs: ",".join(map(str, xs)))
VALUE = st.one_of(NUMBER, LIST)

TRAIN_FLAGS = ["--width", "--lr", "--momentum", "--weight-decay", "--lr-gamma", "--transfer-tumor-threshold",
               "--transfer-core-threshold", "--max-minutes", "--plateau-tol", "--epochs", "--batch-per-task",
               "--lr-step-epochs", "--seed", "--folds", "--fold", "--workers", "--threads", "--max-steps",
               "--checkpoint-every", "--log-every", "--stage-epochs", "--patches-per-epoch", "--patch-size"]
PREDICT_FLAGS = ["--roi-dilation", "--tile-size", "--tile-keep", "--tile-stride", "--tile-batch"]


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
        finally:
            torch.set_num_threads(threads)  # --threads is applied in this process
    return code, err.getvalue()


def _check(command: str, code: int, err: str, names: tuple[str, ...], out) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"omkit {command}: error: "), err
    assert any(name in lines[0] for name in names), err
    assert not out.exists(), f"{out} was made: {err}"


def test_train_numbers(tmp_path):
    missing = tmp_path / "no-such-data"
    out = tmp_path / "run"

    @SETTINGS
    @given(flag=st.sampled_from(TRAIN_FLAGS), value=VALUE, pair=st.booleans())
    def check(flag, value, pair):
        argv = ["train", "-i", str(missing), "-o", str(out), "--recipe", "cpu-budget", "--no-progress",
                "--device", "cpu", flag, value]
        names = [flag, str(missing)]
        if pair and flag in ("--folds", "--fold"):  # they go together
            other = "--fold" if flag == "--folds" else "--folds"
            argv += [other, "1" if other == "--fold" else "2"]
            names.append(other)
        code, err = _run(argv)
        _check("train", code, err, tuple(names), out)

    check()


def test_predict_numbers(tmp_path):
    import omkit
    from omkit.checkpoint import save_model

    model = save_model(omkit.create_model("omnet_cga", width=0.125), tmp_path / "model.pt")
    missing = tmp_path / "no-such-case"
    out = tmp_path / "out"

    @SETTINGS
    @given(flag=st.sampled_from(PREDICT_FLAGS), value=VALUE)
    def check(flag, value):
        code, err = _run(["predict", "-i", str(missing), "-o", str(out), "-m", str(model), "--no-progress",
                          "--device", "cpu", flag, value])
        names = (flag, str(missing)) if flag == "--roi-dilation" else \
            (flag, "--tile-size", str(missing))  # tile errors name the tile options together
        _check("predict", code, err, names, out)

    check()


@pytest.mark.parametrize("argv, needle", [
    (["--width", "1e12"], "--width"),
    (["--width", "nan"], "--width"),
    (["--patch-size", "1000,1000,1000"], "--patch-size"),
    (["--patches-per-epoch", "1e12"], "--patches-per-epoch"),
    (["--patches-per-epoch", str(10**12)], "--patches-per-epoch"),
    (["--seed", "-1"], "--seed"),
    (["--stage-epochs", "-1,1,1"], "--stage-epochs"),
    (["--lr", "nan"], "--lr"),
    (["--batch-per-task", str(10**9)], "--batch-per-task"),
    (["--folds", "2", "--fold", "3"], "--fold"),
])
def test_the_reported_train_numbers(tmp_path, argv, needle):
    """The probes of the issue, each once: was a traceback, a message naming no argument, or a half-made run."""
    out = tmp_path / "run"
    code, err = _run(["train", "-i", str(tmp_path / "missing"), "-o", str(out), "--no-progress", *argv])
    _check("train", code, err, (needle,), out)


def test_argparse_errors_are_one_line(tmp_path):
    for argv in (["train"], ["train", "-i", "x", "-o", "y", "--bogus"], ["predict", "-i", "x"], ["nosuch"],
                 ["train", "-i", "x", "-o", "y", "--epochs", "many"]):
        code, err = _run(argv)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "usage:" not in err, err
