"""compare's errors per block structure (KFAC / EKFAC: Kronecker and fallback blocks),
against a hand computation from the dense matrices, and their figure panel."""

import json

import matplotlib
import pytest
import torch
from torch import nn

import curvops

matplotlib.use("Agg")


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.LayerNorm(4), nn.Linear(4, 2)).double()
    gen = torch.Generator().manual_seed(1)
    data = [
        (
            torch.randn(B, 3, generator=gen, dtype=torch.float64),
            torch.randint(0, 2, (B,), generator=gen),
        )
        for B in (5, 4)
    ]
    return model, nn.CrossEntropyLoss(), data


def _hand(exact: torch.Tensor, approx: torch.Tensor, op) -> dict[str, float]:
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for name, sl in zip(op.block_names, op.block_slices):
        s = op.structures[name]
        num[s] = num.get(s, 0.0) + float((exact[sl, sl] - approx[sl, sl]).norm()) ** 2
        den[s] = den.get(s, 0.0) + float(exact[sl, sl].norm()) ** 2
    return {s: (num[s] / den[s]) ** 0.5 for s in num}


def test_structure_errors_match_a_hand_computation_and_are_reported():
    model, loss_fn, data = _problem()
    ggn = curvops.GGNOperator(model, loss_fn, data)
    kfac = curvops.KFACOperator(model, loss_fn, data)
    ekfac = curvops.EKFACOperator(model, loss_fn, data)
    report = curvops.compare(ggn, [kfac, ekfac], k=3)
    A = ggn.to_dense()
    for name, op in (("KFAC", kfac), ("EKFAC", ekfac)):
        got = report[name].structure_errors
        expected = _hand(A, op.to_dense(), kfac)
        assert got.keys() == expected.keys() == {"kronecker", "exact"}
        for s in got:
            assert got[s] == pytest.approx(expected[s], rel=1e-8, abs=1e-12)
        assert report[name].block_structures == kfac.structures
    assert report["KFAC"].structure_errors["exact"] < 1e-10
    assert "rel. error, exact blocks" in report.summary()
    out = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert set(out["approximations"][0]["structure_errors"]) == {"kronecker", "exact"}


def test_compared_blocks_of_the_exact_operator_take_their_entries_structure():
    model, loss_fn, data = _problem()
    exact = curvops.GGNOperator(model, loss_fn, data, blocks="layer")  # module blocks "0", "2", "3"
    kfac = curvops.KFACOperator(model, loss_fn, data, separate_weight_and_bias=False)
    report = curvops.compare(exact, kfac, k=3)
    assert report["KFAC"].block_structures == {"0": "kronecker", "2": "exact", "3": "kronecker"}
    mixed = curvops.GGNOperator(
        model,
        loss_fn,
        data,
        blocks=[[model[0].weight, model[2].weight]]
        + [[p] for p in (model[0].bias, model[2].bias, model[3].weight, model[3].bias)],
    )  # noqa: E501
    report = curvops.compare(mixed, kfac, k=3)
    assert report["KFAC"].block_structures["0.weight+2.weight"] == "mixed"


def test_probe_route_estimates_structure_errors():
    model, loss_fn, data = _problem()
    ggn = curvops.GGNOperator(model, loss_fn, data)
    kfac = curvops.KFACOperator(model, loss_fn, data)
    dense = curvops.compare(ggn, kfac, k=3)["KFAC"].structure_errors
    probe = curvops.compare(ggn, kfac, k=3, dense_max=0, n_probes=400)["KFAC"].structure_errors
    assert probe.keys() == dense.keys()
    assert probe["kronecker"] == pytest.approx(dense["kronecker"], rel=0.2)
    assert probe["exact"] < 1e-6


def test_comparison_figure_has_a_structure_panel(tmp_path):
    model, loss_fn, data = _problem()
    ggn = curvops.GGNOperator(model, loss_fn, data)
    report = curvops.compare(
        ggn,
        [curvops.KFACOperator(model, loss_fn, data), curvops.EKFACOperator(model, loss_fn, data)],
        k=3,
    )
    fig = report.plot(tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").stat().st_size > 0
    axes = fig.get_axes()
    assert len(axes) == 4 and axes[3].get_title() == "Relative error per block structure"
    labels = [t.get_text() for t in axes[3].get_xticklabels()]
    assert labels == ["exact\n(2 blocks)", "kronecker\n(4 blocks)"]
    plain = curvops.compare(ggn, curvops.GGNOperator(model, loss_fn, data, mode="empirical"), k=3)
    assert len(plain.plot().get_axes()) == 3  # no structures: the three panels
