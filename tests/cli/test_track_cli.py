"""``curvops track``: training with the factory's optimizer, the records and the figure, errors."""

import json
import textwrap

import pytest
import torch

from curvops.cli.main import main
from curvops.track import load_records

pytest.importorskip("matplotlib")

FACTORIES = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    data = [(torch.randn(n, 4), torch.randint(0, 3, (n,))) for n in (8, 8, 5)]
    return model, nn.CrossEntropyLoss(), data


def with_optimizer():
    model, loss_fn, data = make()
    return model, loss_fn, data, torch.optim.SGD(model.parameters(), lr=0.3)


def as_dict():
    model, loss_fn, data, opt = with_optimizer()
    return {"model": model, "loss_fn": loss_fn, "data": data, "optimizer": opt}


def bad_optimizer():
    return (*make(), "sgd")


def bad_dict():
    model, loss_fn, data = make()
    return {"model": model, "loss": loss_fn, "data": data}
"""


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def factories(tmp_path):
    path = tmp_path / "factories.py"
    path.write_text(textwrap.dedent(FACTORIES))
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("factory", ["with_optimizer", "as_dict"])
def test_track_writes_records_and_the_figure(factory, factories, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["track", f"{factories}:{factory}", "--steps", 6, "--every", 3, "--k", 2]
    code, stdout, err = run([*argv, "--layers", "--trace", "hutchinson", "--out", out], capsys)
    assert code == 0, err
    records = load_records(out / "records.jsonl")
    assert [r.step for r in records] == [0, 3, 6]
    assert all(r.lr == 0.3 and r.layer_scores and r.trace is not None for r in records)
    assert (out / "tracking.png").stat().st_size > 10_000
    assert "step 6: λ" in stdout and "2/η 6.667" in stdout


def test_track_builds_sgd_from_lr(factories, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["track", f"{factories}:make", "--steps", 4, "--every", 2, "--lr", 0.1, "--k", 1]
    code, _, err = run([*argv, "--out", out], capsys)
    assert code == 0, err
    assert [r.lr for r in load_records(out / "records.jsonl")] == [0.1, 0.1, 0.1]


def _error(code, stdout, err) -> str:
    assert code != 0 and "Traceback" not in err + stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("factory", "extra", "message"),
    [
        ("make", [], "returns no optimizer: pass --lr to train with SGD"),
        ("with_optimizer", ["--lr", "0.1"], "returns an optimizer; --lr is for factories"),
        ("bad_optimizer", [], "the optimizer must be a torch.optim.Optimizer, got str"),
        ("bad_dict", [], "returned a dict without loss_fn and with unknown keys loss"),
        ("with_optimizer", ["--every", "9"], "--every 9 is larger than --steps 4"),
        ("with_optimizer", ["--k", "99"], "k must be an integer with 0 < k < P = 43"),
    ],
)
def test_errors_are_one_line_with_exit_code_1(factory, extra, message, factories, tmp_path, capsys):
    argv = ["track", f"{factories}:{factory}", "--steps", 4, "--every", 2, "--out", tmp_path / "o"]
    line = _error(*run([*argv, *extra], capsys))
    assert line.startswith("curvops track: error: ") and message in line, line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "argument --steps: expected a positive integer, got 0"),
        (["--lr", "-1"], "argument --lr: expected a positive number, got -1"),
        (["--curvature", "kfac"], "argument --curvature: invalid choice: 'kfac'"),
    ],
)
def test_malformed_command_lines_exit_2(extra, message, factories, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["track", f"{factories}:make", *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_records_are_json_lines(factories, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["track", f"{factories}:with_optimizer", "--steps", 2, "--every", 1, "--k", 1]
    assert run([*argv, "--out", out], capsys)[0] == 0
    lines = (out / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]
