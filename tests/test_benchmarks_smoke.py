"""Smoke tests of benchmarks/ (no timing is asserted): the judges and the hand-written floor."""

import numpy as np
import pytest
import torch
from torch import nn

import curvops
from benchmarks import eigen, kfac, run
from benchmarks.kfac_floor import FloorKFAC
from benchmarks.problems import Problem


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny products: a second thread only waits for a busy core (see tests/linalg)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(conv: bool) -> Problem:
    torch.manual_seed(0)
    if conv:
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2, stride=2),
            nn.Flatten(), nn.Linear(2 * 3 * 3, 4),
        )  # fmt: skip
        X = torch.randn(12, 2, 6, 6)
    else:
        model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
        X = torch.randn(12, 5)
    y = torch.randint(0, model[-1].out_features, (12,))
    data = [(X[i : i + 4], y[i : i + 4]) for i in range(0, 12, 4)]
    return Problem(
        "tiny", model.double(), nn.CrossEntropyLoss(), [(x.double(), t) for x, t in data]
    )


def test_eigen_rel_error_marks_missing_and_wrong_values():
    ref = np.array([3.0, 2.0, 1.0])
    assert eigen.rel_error(np.array([1.0, 3.0, 2.0]), ref) == 0.0  # order does not matter
    assert eigen.rel_error(np.array([3.0, 2.0, 1.01]), ref) == pytest.approx(0.01)
    assert eigen.rel_error(np.array([3.0, np.nan, 1.0]), ref) == np.inf
    assert eigen.rel_error(np.array([3.0, 2.0]), ref) == np.inf


def test_eigen_reference_and_curvops_agree_on_a_tiny_problem():
    problem = _tiny(conv=False)
    v0 = np.random.default_rng(0).standard_normal(problem.num_params)
    ref = eigen.reference(problem, v0)
    dense = curvops.HessianOperator(problem.model, problem.loss_fn, problem.data).to_dense()
    top = np.sort(np.linalg.eigvalsh(dense.numpy()))[::-1][: eigen.K]
    np.testing.assert_allclose(ref, top, rtol=1e-8, atol=1e-12)


def test_missing_peers_are_skipped(monkeypatch, capsys):
    monkeypatch.setattr(eigen, "available", lambda module: False)
    found, peers = eigen.tools("digits")
    assert set(found) == set(eigen.OURS) and not peers
    assert "not installed" in capsys.readouterr().out


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("ekfac", [False, True])
@pytest.mark.parametrize("joint", [False, True])
def test_floor_kfac_matches_curvops(conv, ekfac, joint):
    problem = _tiny(conv)
    cls = curvops.EKFACOperator if ekfac else curvops.KFACOperator
    op = cls(problem.model, problem.loss_fn, problem.data, separate_weight_and_bias=not joint)
    floor = FloorKFAC(problem, joint=joint, ekfac=ekfac)
    V = torch.randn(problem.num_params, 2, dtype=torch.float64)
    ref = torch.stack([floor.matvec(V[:, j]) for j in range(2)], 1)
    torch.testing.assert_close(op.torch_matmat(V), ref, rtol=1e-8, atol=1e-12)


def test_kfac_frobenius_error_of_the_exact_blocks_is_zero():
    problem = _tiny(conv=False)
    ref, slices = kfac.dense_reference(problem)
    op = curvops.GGNOperator(problem.model, problem.loss_fn, problem.data, blocks="layer")
    exact = kfac.Built(lambda M: op.torch_matmat(M.double()), joint=False)
    assert kfac.frobenius_error(exact, ref, slices, problem.num_params) < 1e-12


def test_run_parses_the_section_switches():
    args = run.parse(["--quick", "--check", "--no-eigen", "--no-kfac"])
    assert args.quick and args.check and not args.eigen and not args.kfac
    assert run.parse([]).eigen and run.parse([]).kfac


def test_only_wrong_curvops_rows_fail_the_check(capsys):
    rows = [
        eigen.EigenRow("p", "curvops eigsh(arpack)", ok=False),
        eigen.EigenRow("p", "eigenthings lanczos", ok=False, peer=True),
        eigen.EigenRow("p", "curvops eigsh(lanczos)", ok=True),
    ]
    assert [r.tool for r in eigen.wrong(rows)] == ["curvops eigsh(arpack)"]
    krows = [kfac.KfacRow("p", "kfac", "nngeometry", ok=False, peer=True)]
    assert kfac.wrong(krows) == []
    assert "WRONG: eigen p curvops eigsh(arpack)" in capsys.readouterr().out


def test_kfac_whole_builds_all_parameters_and_linear_only(monkeypatch):
    from benchmarks import kfac_whole

    monkeypatch.setattr(kfac_whole, "available", lambda module: False)  # no peers needed
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 3)).double()
    X, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    problem = Problem("tiny", model, nn.CrossEntropyLoss(), [(X[:4], y[:4]), (X[4:], y[4:])])
    for kind in ("kfac", "ekfac"):
        results = kfac_whole.construct(kfac_whole.tools(kind), problem, rounds=1)
        sizes = {tool: P for tool, (_, P) in results.items()}
        floor = {kfac_whole.FLOOR: 47} if kind == "kfac" else {}
        assert sizes == {"curvops (all parameters)": 47, "curvops (Linear only)": 39, **floor}


def test_the_raw_torch_floor_is_curvops_kfac_on_a_sequence_model_with_layernorms():
    """benchmarks/kfac_raw.py, written from the definitions, builds the matrix curvops does
    (Linear layers over tokens, LayerNorm blocks, C columns against curvops's C − 1)."""
    from benchmarks.kfac_raw import raw_kfac
    from benchmarks.problems import TinyMixer

    torch.manual_seed(0)
    model = TinyMixer(seq=4, d_in=5, dim=6, classes=3).double()
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(10, 4, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=gen)
    problem = Problem("mixer", model, nn.CrossEntropyLoss(), [(X[:6], y[:6]), (X[6:], y[6:])])
    matmat, P = raw_kfac(problem)
    op = curvops.KFACOperator(model, problem.loss_fn, problem.data)
    V = torch.randn(P, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(op.torch_matmat(V), matmat(V), rtol=1e-10, atol=1e-13)
