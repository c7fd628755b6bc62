"""The command line, finished: help and defaults, case-insensitive choices, usage errors
(exit 2), options checked before the factory runs, output folders, command-line advice,
`curvops diff`, the landscape option, progress and the thread default."""

import argparse
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from curvops.cli import options as opt
from curvops.cli.advice import command_line_advice
from curvops.cli.main import build_parser, main

pytest.importorskip("matplotlib")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

FACTORIES = """
from pathlib import Path

import torch
from torch import nn

from neighbour import HIDDEN  # a module next to this file


def make():
    (Path(__file__).parent / "factory_ran").write_text("yes")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 3))
    data = [(torch.randn(n, 4), torch.randint(0, 3, (n,))) for n in (8, 8, 5)]
    return model, nn.CrossEntropyLoss(), data


def with_dropout():
    model, loss_fn, data = make()
    return nn.Sequential(model, nn.Dropout(0.5)), loss_fn, data


def four_things():
    return (*make(), "extra", "items")
"""


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def factory(tmp_path):
    (tmp_path / "neighbour.py").write_text("HIDDEN = 5\n")
    path = tmp_path / "factories.py"
    path.write_text(textwrap.dedent(FACTORIES))
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(argv, capsys) -> str:
    """The one stderr line of a command line refused with exit code 2."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and not out, err
    return lines[0]


def error_line(code, out, err) -> str:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


SPECTRUM = ["--k", 2, "--no-progress"]


# ------------------------------------------------------------------ help and defaults
def _options():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        for action in command._actions:
            shown = action.help not in (None, argparse.SUPPRESS)
            if shown and action.option_strings and "-h" not in action.option_strings:
                yield name, command, action


@pytest.mark.parametrize(
    ("command", "option"), [(c, a.option_strings[0]) for c, _, a in _options()]
)
def test_every_option_has_help_that_shows_its_default(command, option):
    parser = next(p for c, p, a in _options() if c == command and a.option_strings[0] == option)
    action = next(a for a in parser._actions if a.option_strings[:1] == [option])
    text = opt.HelpFormatter(command)._get_help_string(action)
    assert action.help and "default" in text, (command, option, text)


def test_spectrum_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["spectrum", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # as one line: no wrapping
    for shown in ("(default: hessian)", "(default: LA)", "(default: lanczos)",
                  "(default: 0.0001)", "(default: curvops_spectrum)", "(default: 20)",
                  "--landscape", "--params REGEX", "(default: off)"):  # fmt: skip
        assert shown in text, shown


def test_choices_are_case_insensitive(factory, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["spectrum", f"{factory}:make", "--curvature", "GGN", "--which", "la"]
    code, _, err = run([*argv, "--backend", "LANCZOS", *SPECTRUM, "--out", out], capsys)
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["curvature"] == "ggn"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["spectrum", "f.py:make", "--tol", "0"], "argument --tol: expected a positive number"),
        (["spectrum", "f.py:make", "--tol", "2"], "argument --tol: expected a tolerance below 1"),
        (["spectrum", "f.py:make", "--params", "("], "argument --params: not a regular"),
        (["compare", "f.py:make", "--approx", ","], "argument --approx: name at least one"),
        (["compare", "f.py:make", "--approx", "kfac,KFAC"], "is named twice"),
        (["compare", "f.py:make", "--exact", "fisher"], "argument --exact: invalid choice"),
        (["spectrum", "f.py:make", "--micro-batch-size", "0"], "argument --micro-batch-size"),
        (
            ["spectrum", "f.py:make", "--landscape", "--which", "SA"],
            "--landscape slices the loss along the top eigenvectors",
        ),
        (["diff", "only_one"], "the following arguments are required: b"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    line = usage_error(argv, capsys)
    assert message in line and "--help" in line


# ------------------------------------------------------------------ before the factory
def test_out_pointing_to_a_file_is_refused_before_the_factory(factory, tmp_path, capsys):
    (tmp_path / "taken.txt").write_text("")
    argv = ["spectrum", f"{factory}:make", *SPECTRUM, "--out", tmp_path / "taken.txt"]
    line = error_line(*run(argv, capsys))
    assert line.endswith("taken.txt is a file, not a folder: choose a folder for the results")
    assert not (tmp_path / "factory_ran").exists()


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's read-only /sys")
def test_out_in_an_unwritable_folder_is_refused_before_the_factory(factory, tmp_path, capsys):
    argv = ["spectrum", f"{factory}:make", *SPECTRUM, "--out", "/sys/curvops_out"]
    line = error_line(*run(argv, capsys))
    assert "--out /sys/curvops_out cannot be written (/sys: " in line
    assert "choose a folder you can write to" in line
    assert not (tmp_path / "factory_ran").exists()


def test_each_command_writes_its_own_default_folder(factory, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(["spectrum", f"{factory}:make", *SPECTRUM], capsys)[0] == 0
    assert run(["compare", f"{factory}:make", "--k", 2, "--no-progress"], capsys)[0] == 0
    for command in ("spectrum", "compare"):
        folder = tmp_path / f"curvops_{command}"
        assert (folder / ".curvops").read_text() == f"{command}\n"
        assert (folder / "results.json").is_file() and (folder / "report.json").is_file()


def test_a_folder_holding_another_commands_output_is_refused(factory, tmp_path, capsys):
    out = tmp_path / "shared"
    assert run(["spectrum", f"{factory}:make", *SPECTRUM, "--out", out], capsys)[0] == 0
    (tmp_path / "factory_ran").unlink()
    line = error_line(*run(["compare", f"{factory}:make", "--out", out], capsys))
    assert "holds the output of `curvops spectrum`" in line
    assert "choose another folder, e.g. --out curvops_compare" in line
    assert not (tmp_path / "factory_ran").exists()
    assert run(["spectrum", f"{factory}:make", *SPECTRUM, "--out", out], capsys)[0] == 0


def test_the_factory_file_imports_its_neighbours(factory, tmp_path, capsys):
    assert str(tmp_path) not in sys.path
    code, _, err = run(["spectrum", f"{factory}:make", *SPECTRUM, "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert str(tmp_path) not in sys.path  # only while loading


def test_a_factory_returning_the_wrong_tuple(factory, tmp_path, capsys):
    line = error_line(*run(["spectrum", f"{factory}:four_things", "--out", tmp_path], capsys))
    assert "must return (model, loss_fn, data), got tuple of length 5" in line


# ------------------------------------------------------------------ advice
def test_an_operator_error_gives_command_line_advice(factory, tmp_path, capsys):
    argv = ["spectrum", f"{factory}:with_dropout", *SPECTRUM, "--out", tmp_path / "o"]
    line = error_line(*run(argv, capsys))
    assert "Dropout '1' is in train mode" in line
    assert "The factory should return the model in eval mode (return model.eval(), ...)" in line
    assert "Call model.eval()" not in line


def test_python_keeps_python_advice(factory):
    sys.path.insert(0, str(factory.parent))
    try:
        import factories
    finally:
        sys.path.remove(str(factory.parent))
    import curvops

    with pytest.raises(ValueError, match=r"Call model\.eval\(\) first"):
        curvops.HessianOperator(*factories.with_dropout())


@pytest.mark.parametrize(
    ("python", "command_line"),
    [
        ("its block would be wrong. Pass params= without it", "Leave it out with --params REGEX"),
        ("Call model.eval() first", "The factory should return the model in eval mode"),
        (
            "Try a larger max_iter (now 300), a larger ncv (now the default) or a looser tol;",
            "Try a looser --tol, a smaller --k, or another --backend (arpack, lobpcg);",
        ),
        ("pass norm= (e.g. λ_max of a top solve)", "use --which BE"),
        ("use float64 if the model is ill-scaled", "return a float64 model (model.double())"),
    ],
)
def test_python_advice_becomes_command_line_advice(python, command_line):
    assert command_line in command_line_advice(python)


def test_params_regex_selects_parameters_by_name(factory, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["spectrum", f"{factory}:make", *SPECTRUM, "--params", r"^2\.", "--out", out]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["num_params"] == 5 * 3 + 3
    line = error_line(*run([*argv[:-4], "--params", "conv", "--out", out], capsys))
    assert "--params 'conv' matches none of the model's 4 parameter names (0.weight," in line


def test_micro_batch_size_keeps_the_numbers_and_reaches_only_the_exact_operators(
    factory, tmp_path, capsys
):
    """--micro-batch-size splits the exact products' batches (8, 8, 5 points into pieces
    of 3): the same eigenvalues; `compare --approx kfac` builds KFAC without it."""
    argv = ["spectrum", f"{factory}:make", "--k", 3, "--tol", 1e-8, "--no-progress"]
    values = []
    for extra, out in (([], tmp_path / "whole"), (["--micro-batch-size", 3], tmp_path / "split")):
        code, _, err = run([*argv, *extra, "--out", out], capsys)
        assert code == 0, err
        values.append(json.loads((out / "results.json").read_text())["eigsh"]["eigenvalues"])
    np.testing.assert_allclose(values[1], values[0], rtol=1e-6)
    out = tmp_path / "cmp"
    argv = ["compare", f"{factory}:make", "--approx", "kfac", "--k", 2, "--no-progress"]
    code, _, err = run([*argv, "--micro-batch-size", 3, "--out", out], capsys)
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["approximations"][0]["name"] == "KFAC"


def test_k_is_checked_against_the_selected_parameters(factory, tmp_path, capsys):
    argv = ["spectrum", f"{factory}:make", "--k", 3, "--params", r"2\.bias", "--out", tmp_path]
    line = error_line(*run(argv, capsys))
    assert "--k 3 is not below P = 3, the number of parameters analysed" in line


# ------------------------------------------------------------------ results
def test_which_be_gives_both_ends(factory, tmp_path, capsys):
    out = tmp_path / "be"
    argv = ["spectrum", f"{factory}:make", "--which", "BE", "--k", 4, "--tol", 1e-6]
    code, _, err = run([*argv, "--no-progress", "--out", out], capsys)
    assert code == 0, err
    values = json.loads((out / "results.json").read_text())["eigsh"]["eigenvalues"]
    report = json.loads((out / "report.json").read_text())
    assert values == report["top"]["eigenvalues"] + report["bottom"]["eigenvalues"]
    assert len(values) == 4 and values == sorted(values, reverse=True)


def test_landscape_along_the_top_eigenvectors(factory, tmp_path, capsys):
    out = tmp_path / "land"
    argv = ["spectrum", f"{factory}:make", "--k", 3, "--landscape", "--vectors"]
    code, stdout, err = run([*argv, "--no-progress", "--out", out], capsys)
    assert code == 0, err
    assert "landscape: v_1: λ = " in stdout
    results = json.loads((out / "results.json").read_text())
    cuts = results["landscape"]
    assert [c["names"] for c in cuts] == [["$v_1$"], ["$v_2$"], ["$v_3$"]]
    np.testing.assert_allclose(  # the curvature along v_i is λ_i
        [c["rayleigh"][0] for c in cuts], results["eigsh"]["eigenvalues"], rtol=1e-3
    )
    assert (out / "landscape.png").stat().st_size > 10_000
    assert (out / "eigenvectors.npz").is_file()


def test_diff_of_two_saved_reports(factory, tmp_path, capsys):
    for name, k in (("a", 2), ("b", 3)):
        argv = ["spectrum", f"{factory}:make", "--k", k, "--no-progress", "--out", tmp_path / name]
        assert run(argv, capsys)[0] == 0
    code, stdout, err = run(["diff", tmp_path / "a", tmp_path / "b"], capsys)
    assert code == 0 and not err
    assert "top" in stdout and "λ_1" in stdout and "within the bounds" in stdout
    assert stdout.splitlines()[0].split() == ["top", "a", "b", "change"]
    assert "settings" in stdout and "k         2  3" in stdout


@pytest.mark.parametrize("which", ["missing", "empty"])
def test_diff_of_a_missing_report_is_one_line(which, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = error_line(*run(["diff", tmp_path / which, tmp_path / which], capsys))
    expected = "no such folder: " if which == "missing" else "holds no report.json"
    assert expected in line


# ------------------------------------------------------------------ progress and threads
def test_progress_bars_on_stderr_and_the_results_on_stdout(factory, tmp_path, capsys):
    argv = ["spectrum", f"{factory}:make", "--k", 2, "--trace", "--out", tmp_path / "o"]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "trace:" in err and "products" in err  # the bars (tqdm, with rate and ETA)
    lines = stdout.splitlines()
    assert lines[0].startswith("Sequential: Hessian of CrossEntropyLoss (mean); P = 43")
    assert lines[1].startswith("top: λ = ") and "all converged" in lines[1]
    assert lines[2].startswith("trace: tr A = ") and "[99 products" in lines[2]
    code, _, err = run([*argv, "--no-progress"], capsys)
    assert code == 0 and err == ""


def test_thread_default_is_one_for_a_small_model(factory, tmp_path, capsys):
    torch.set_num_threads(2)
    argv = ["spectrum", f"{factory}:make", *SPECTRUM, "--out", tmp_path / "o"]
    assert "cpu, float32, 1 thread" in run(argv, capsys)[1].splitlines()[0]
    assert "cpu, float32, 2 threads" in run([*argv, "--threads", 2], capsys)[1].splitlines()[0]


# ------------------------------------------------------------------ Hugging Face
def test_spectrum_of_a_bare_transformers_model_with_params(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "hf"
    argv = ["spectrum", f"{EXAMPLES / 'hf_tiny_lm.py'}:make", "--curvature", "GGN", "--k", 2]
    code, stdout, err = run(
        [*argv, "--params", r"h\.0\.mlp", "--no-progress", "--out", out], capsys
    )
    assert code == 0, err
    assert "GPT2LMHeadModel: GGN of CausalLMLoss (mean); P = 2,128 parameters" in stdout
    values = json.loads((out / "results.json").read_text())["eigsh"]["eigenvalues"]
    assert np.isfinite(values).all() and values[0] >= values[1] > 0
