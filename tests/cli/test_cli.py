"""The ``curvops`` command end to end through ``curvops.cli.main``: outputs and user errors."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from curvops.cli.main import main

pytest.importorskip("matplotlib")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

TINY = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    data = [(torch.randn(n, 4), torch.randint(0, 3, (n,))) for n in (8, 8, 5)]
    return model, nn.CrossEntropyLoss(), data


def two_things():
    return make()[:2]


def not_a_model():
    _, loss_fn, data = make()
    return "a model", loss_fn, data


def broken():
    return undefined_name


LIMIT = 3
"""


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread (on a shared machine more threads only wait)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(textwrap.dedent(TINY))
    return path


def run(argv, capsys):
    """(exit code, stdout, stderr) of ``curvops *argv``."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def dense_hessian(spec: str) -> np.ndarray:
    """Eigenvalues (descending) of the float64 Hessian of the tiny factory, by torch.func."""
    from curvops.cli.factory import call_factory

    model, loss_fn, data = call_factory(spec)
    model = model.double()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    N = sum(len(y) for _, y in data)

    def loss(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = {n: p.reshape(s) for n, p, s in zip(names, parts, shapes)}
        total = sum(
            loss_fn(torch.func.functional_call(model, params, (X.double(),)), y) * len(y)
            for X, y in data
        )
        return total / N

    H = torch.autograd.functional.hessian(loss, flat0)
    return np.sort(torch.linalg.eigvalsh(H).numpy())[::-1]


# ------------------------------------------------------------------ spectrum
def test_spectrum_hessian_writes_results_and_figures(factory_file, tmp_path, capsys):
    out = tmp_path / "out"
    spec = f"{factory_file}:make"
    code, stdout, err = run(
        ["spectrum", spec, "--k", 3, "--density", "--layers", "--out", out, "--no-progress"],
        capsys,
    )
    assert code == 0, err
    assert stdout.startswith("Sequential: Hessian of CrossEntropyLoss (mean); P = 43 parameters")
    assert "N = 21 data points, cpu, float32, 1 thread" in stdout.splitlines()[0]
    results = json.loads((out / "results.json").read_text())
    assert results["curvature"] == "hessian" and results["num_params"] == 43
    np.testing.assert_allclose(
        results["eigsh"]["eigenvalues"], dense_hessian(spec)[:3], rtol=1e-3, atol=1e-5
    )
    assert all(results["eigsh"]["converged"])
    assert abs(np.trapezoid(results["density"]["density"], results["density"]["grid"]) - 1) < 1e-6
    assert results["layers"]["names"] == ["0", "2"]
    assert max(results["layers"]["scores"]) == 1.0
    for name in ("spectrum.png", "density.png", "layers.png"):
        assert (out / name).stat().st_size > 5_000, name


@pytest.mark.parametrize("curvature", ["hessian", "ggn", "kfac", "ekfac"])
def test_spectrum_each_curvature(curvature, factory_file, tmp_path, capsys):
    out = tmp_path / curvature
    argv = ["spectrum", f"{factory_file}:make", "--curvature", curvature, "--k", 2]
    code, stdout, err = run([*argv, "--layers", "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["curvature"] == curvature
    values = np.asarray(results["eigsh"]["eigenvalues"])
    assert values.shape == (2,) and values[0] >= values[1] > 0
    names = results["layers"]["names"]
    if curvature in ("kfac", "ekfac"):  # one block per weight and per bias, named by parameter
        assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    else:
        assert names == ["0", "2"]
    assert (out / "layers.png").is_file() and (out / "spectrum.png").is_file()


def test_spectrum_lanczos_smallest(factory_file, tmp_path, capsys):
    out = tmp_path / "sa"
    argv = ["spectrum", f"{factory_file}:make", "--which", "SA", "--backend", "lanczos"]
    code, _, err = run([*argv, "--k", 2, "--tol", 1e-6, "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    values = json.loads((out / "results.json").read_text())["eigsh"]["eigenvalues"]
    expected = dense_hessian(f"{factory_file}:make")[::-1][:2][::-1]  # two smallest, descending
    np.testing.assert_allclose(values, expected, atol=1e-5)


def test_spectrum_hugging_face_dict_batches(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "hf"
    argv = ["spectrum", f"{EXAMPLES / 'hf_tiny_lm.py'}:make", "--curvature", "ggn", "--k", 2]
    code, stdout, err = run([*argv, "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["num_params"] > 1000
    values = np.asarray(results["eigsh"]["eigenvalues"])
    assert np.isfinite(values).all() and values[0] >= values[1] > 0
    assert (out / "spectrum.png").is_file()


# ------------------------------------------------------------------ compare
def test_compare_kfac_ekfac(factory_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", f"{factory_file}:make", "--approx", "kfac,ekfac", "--k", 3]
    code, stdout, err = run([*argv, "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    assert "rel. Frobenius error" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["exact_name"] == "GGN" and results["method"] == "dense"  # the demo's names
    reports = {a["name"]: a for a in results["approximations"]}
    assert set(reports) == {"KFAC", "EKFAC"}
    for report in reports.values():
        assert 0 < report["frobenius_error"] < 1
        assert 0 <= report["overlap"] <= 1
        assert set(report["block_errors"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    # EKFAC's eigenvalues are the exact diagonal in KFAC's basis: its trace is the GGN's
    assert reports["EKFAC"]["trace"] == pytest.approx(results["exact_trace"], rel=1e-4)
    assert (out / "comparison.png").stat().st_size > 10_000


SHIFTED = """
import torch
from torch import nn


class Shifted(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head, self.shift = nn.Linear(4, 5), nn.Linear(5, 3), nn.Linear(5, 1)

    def forward(self, X):
        h = torch.tanh(self.body(X))
        return self.head(h) + self.shift(h)  # softmax ignores the shift: zero GGN block


def make():
    torch.manual_seed(0)
    data = [(torch.randn(n, 4), torch.randint(0, 3, (n,))) for n in (8, 8, 5)]
    return Shifted(), nn.CrossEntropyLoss(), data
"""


def _no_nan(token):
    raise ValueError(f"results.json holds {token}: not valid JSON")


def test_compare_with_a_zero_exact_block(tmp_path, capsys):
    (tmp_path / "shifted.py").write_text(textwrap.dedent(SHIFTED))
    out = tmp_path / "cmp"
    argv = ["compare", f"{tmp_path / 'shifted.py'}:make", "--approx", "kfac,ekfac", "--k", 3]
    code, stdout, err = run([*argv, "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    assert "zero exact curvature" in stdout
    results = json.loads((out / "results.json").read_text(), parse_constant=_no_nan)
    assert results["zero_blocks"] == ["shift.weight", "shift.bias"]
    for report in results["approximations"]:
        assert report["block_errors"]["shift.weight"] is None
        assert report["block_status"]["shift.bias"] == "zero exact block"
        assert 0 < report["block_errors"]["body.weight"] < 1
    assert (out / "comparison.png").stat().st_size > 10_000


# ------------------------------------------------------------------ user errors
def error_line(code, stdout, err) -> str:
    """The single stderr line of a failed command (no traceback)."""
    assert code != 0
    assert "Traceback" not in err and "Traceback" not in stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing.py:make", "no such file: "),
        ("tiny.py:nothere", "has no function 'nothere' (functions defined there: broken, make,"),
        ("tiny.py:LIMIT", "has no function 'LIMIT'"),
        ("tiny.py", "expected FILE.py:FACTORY, got"),
        ("tiny.py:two_things", "must return (model, loss_fn, data), got tuple of length 2"),
        ("tiny.py:not_a_model", "the model must be a torch.nn.Module, got str"),
        ("tiny.py:broken", "raised NameError: name 'undefined_name' is not defined"),
    ],
)
def test_factory_errors_are_one_line(target, message, factory_file, tmp_path, capsys):
    spec = str(tmp_path / target)
    code, stdout, err = run(["spectrum", spec, "--out", tmp_path / "o", "--no-progress"], capsys)
    line = error_line(code, stdout, err)
    assert code == 1
    assert line.startswith("curvops spectrum: error: ")
    assert message in line
    assert not (tmp_path / "o" / "results.json").exists()


def test_file_that_fails_to_import(tmp_path, capsys):
    (tmp_path / "bad.py").write_text("import a_module_that_does_not_exist\n")
    code, stdout, err = run(["compare", f"{tmp_path / 'bad.py'}:make"], capsys)
    line = error_line(code, stdout, err)
    assert "importing" in line and "ModuleNotFoundError" in line
    assert "a_module_that_does_not_exist" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["spectrum", "f.py:make", "--curvature", "fisher"],
            "argument --curvature: invalid choice",
        ),
        (["spectrum", "f.py:make", "--which", "XX"], "argument --which: invalid choice: 'XX'"),
        (["spectrum", "f.py:make", "--k", "0"], "argument --k: expected a positive integer"),
        (["spectrum", "f.py:make", "--k", "ten"], "argument --k: expected a positive integer"),
        (["spectrum", "f.py:make", "--bogus"], "unrecognized arguments: --bogus"),
        (["tune", "f.py:make"], "argument command: invalid choice: 'tune'"),
        (["compare"], "the following arguments are required: factory"),
        (["demo", "--threads", "0"], "argument --threads: expected a positive integer"),
    ],
)
def test_option_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    line = error_line(exit_info.value.code, out, err)
    assert exit_info.value.code == 2
    assert message in line and "--help" in line


def test_unknown_approximation_is_a_usage_error(factory_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", f"{factory_file}:make", "--approx", "kfac,shampoo"])
    out, err = capsys.readouterr()
    line = error_line(exit_info.value.code, out, err)
    assert exit_info.value.code == 2
    assert "argument --approx: unknown approximation 'shampoo'; choose from kfac, ekfac" in line


def test_k_too_large_for_the_model(factory_file, tmp_path, capsys):
    argv = ["spectrum", f"{factory_file}:make", "--k", 500, "--out", tmp_path, "--no-progress"]
    line = error_line(*run(argv, capsys))
    assert "--k 500 is not below P = 43, the number of parameters analysed" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only machine")
@pytest.mark.parametrize("command", ["spectrum", "compare", "demo"])
def test_cuda_without_cuda(command, factory_file, tmp_path, capsys):
    target = [] if command == "demo" else [f"{factory_file}:make"]
    argv = [command, *target, "--device", "cuda", "--out", tmp_path / "o"]
    line = error_line(*run(argv, capsys))
    assert (
        line
        == f"curvops {command}: error: --device cuda was asked for, but CUDA is not available here"
    )
    assert not (tmp_path / "o").exists()  # refused before any work


def test_unexpected_error_names_its_type_and_traceback_shows_it(tmp_path, capsys):
    (tmp_path / "shapes.py").write_text(
        "import torch\nfrom torch import nn\n\n\ndef make():\n"
        "    data = [(torch.randn(3, 5), torch.randn(3, 2))]\n"
        "    return nn.Linear(2, 2), nn.MSELoss(), data\n"
    )
    argv = ["spectrum", f"{tmp_path / 'shapes.py'}:make", "--k", 1, "--no-progress"]
    line = error_line(*run([*argv, "--out", tmp_path / "o"], capsys))
    assert "RuntimeError: " in line and "run with --traceback" in line
    with pytest.raises(RuntimeError):
        main([*map(str, argv), "--out", str(tmp_path / "o"), "--traceback"])


def test_help(capsys):
    commands = ("demo", "spectrum", "compare", "track", "diff")
    for argv in (["--help"], *([c, "--help"] for c in commands)):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        assert "usage: curvops" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "--out" in text and "--device" in text and "--k" in text
