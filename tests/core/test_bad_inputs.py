"""The catalogue of user mistakes: each one gets a specific error saying what and how to fix.

Sections: vectors, data, losses and targets, parameters and precision, model modes,
KFAC-specific, options, NaN / inf, eigensolvers, damping, saved state, size limits.
(Stale operators: tests/test_stale.py.)
"""

import copy
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from models import make_problem
from torch import nn

import curvops
from curvops.operators.base import DEFAULT_MAX_DENSE

P = 43  # parameters of the mlp_tanh problem (4-5-3 with biases)
ALL = [
    curvops.HessianOperator,
    curvops.GGNOperator,
    curvops.KFACOperator,
    curvops.EKFACOperator,
]
CLOSED_FORM = ALL[1:]  # operators that need a supported loss


@pytest.fixture
def problem():
    return make_problem("mlp_tanh", "ce")


# ---------------------------------------------------------------- vectors
@pytest.mark.parametrize("cls", ALL)
def test_wrong_vector_length(problem, cls):
    op = cls(*problem)
    with pytest.raises(ValueError, match=r"length P=43.*got 42.*op\.flatten"):
        op @ np.ones(42)
    with pytest.raises(ValueError, match="length P=43"):
        op.torch_matmat(torch.ones(44, dtype=torch.float64))
    with pytest.raises(ValueError, match="length P=43"):
        op.unflatten(torch.ones(3))


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [complex, int, bool])
def test_wrong_vector_dtype(problem, cls, dtype):
    op = cls(*problem)
    with pytest.raises(TypeError, match=r"real floating-point array, got dtype .*astype"):
        op @ np.ones(P, dtype=dtype)
    with pytest.raises(TypeError, match=r"real floating-point tensor.*M\.to\(op\.torch_dtype\)"):
        op.torch_matmat(torch.ones(P, dtype=torch.complex128 if dtype is complex else torch.int64))


def test_wrong_vector_shape_or_type(problem):
    op = curvops.GGNOperator(*problem)
    with pytest.raises(ValueError, match=r"a vector \(P,\) or a matrix \(P, k\), got shape"):
        op.matmat(np.ones((P, 2, 1)))
    with pytest.raises(TypeError, match="torch_matmat expects a torch.Tensor, got ndarray"):
        op.torch_matmat(np.ones(P))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_the_vector(problem, bad):
    op = curvops.HessianOperator(*problem)
    v = np.ones(P)
    v[3] = bad
    with pytest.raises(FloatingPointError, match="vector.* to multiply hold NaN or inf"):
        op @ v
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        curvops.KFACOperator(*problem).inverse(0.1) @ v


# ---------------------------------------------------------------- data
@pytest.mark.parametrize("cls", ALL)
def test_empty_data(cls):
    model, loss_fn, _ = make_problem("mlp_tanh", "ce")
    with pytest.raises(ValueError, match="no batches"):
        cls(model, loss_fn, [])


def test_data_of_empty_batches():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    empty = [(X[:0], y[:0]) for X, y in data]
    with pytest.raises(ValueError, match=r"no data points \(its 3 batches are all empty\)"):
        curvops.HessianOperator(model, loss_fn, empty)


def test_generator_data_is_refused():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    with pytest.raises(TypeError, match="generator.*exhausted after one pass.*list of"):
        curvops.HessianOperator(model, loss_fn, (b for b in data))


class OneShot:
    """A re-iterable in name only: its second pass is empty."""

    def __init__(self, items):
        self.items = list(items)

    def __iter__(self):
        items, self.items = self.items, []
        return iter(items)


def test_data_exhausted_after_one_pass():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    with pytest.raises(ValueError, match="yielded 0 data points in this pass but 10 in the first"):
        op = curvops.HessianOperator(model, loss_fn, OneShot(data))  # the first pass counts N
        op @ np.ones(P)  # (the second pass, at construction or here, is empty)


def test_data_that_changes_size_between_passes():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    batches = list(data)
    op = curvops.GGNOperator(model, loss_fn, batches)
    batches.pop()
    with pytest.raises(ValueError, match="yielded 8 data points in this pass but 10"):
        op @ np.ones(P)


def test_batch_that_is_not_a_pair(problem):
    model, loss_fn, data = problem
    with pytest.raises(ValueError, match=r"batch 0 is a tensor of shape \(5, 4\), not a pair"):
        curvops.HessianOperator(model, loss_fn, [data[0][0]])


def test_ambiguous_dict_input_needs_batch_size_fn():
    model, loss_fn, data = make_problem("dict_input", "mse")
    curvops.HessianOperator(model, loss_fn, data)  # one shared leading size: understood
    bad = [({"a": X["a"], "b": X["b"][:1]}, y) for X, y in data]
    with pytest.raises(TypeError, match="batch_size_fn"):
        curvops.HessianOperator(model, loss_fn, bad)


def test_scalar_input_has_no_batch_axis(problem):
    model, loss_fn, _ = problem
    with pytest.raises(ValueError, match="scalar tensor: X needs a leading batch axis"):
        curvops.HessianOperator(model, loss_fn, [(torch.tensor(1.0), torch.tensor(0))])


# ---------------------------------------------------------------- losses and targets
@pytest.mark.parametrize("cls", ALL)
def test_reduction_none(problem, cls):
    model, _, data = problem
    with pytest.raises(ValueError, match="reduction 'none' is not supported.*'mean' or 'sum'"):
        cls(model, nn.CrossEntropyLoss(reduction="none"), data)


@pytest.mark.parametrize("cls", CLOSED_FORM)
def test_unsupported_loss(problem, cls):
    model, _, data = problem
    with pytest.raises(ValueError, match="HuberLoss is not supported here; supported: nn.MSELoss"):
        cls(model, nn.HuberLoss(), data)


def _product_or_build(cls, model, loss_fn, data):
    """Targets are seen on the first forward pass: at construction (KFAC) or product."""
    op = cls(model, loss_fn, data)
    op @ np.ones(op.shape[0])


@pytest.mark.parametrize("cls", ALL)
def test_labels_out_of_range(problem, cls):
    model, loss_fn, data = problem
    bad = [(X, y + 5) for X, y in data]
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\); got values in \[5, 7\]"):
        _product_or_build(cls, model, loss_fn, bad)


@pytest.mark.parametrize("cls", ALL)
def test_labels_of_wrong_shape(problem, cls):
    model, loss_fn, data = problem
    bad = [(X, y[:, None]) for X, y in data]
    with pytest.raises(ValueError, match=r"class-index targets have shape \(5, 1\), expected"):
        _product_or_build(cls, model, loss_fn, bad)


@pytest.mark.parametrize("cls", ALL)
def test_regression_targets_of_wrong_shape(cls):
    model, loss_fn, data = make_problem("mlp_tanh", "mse")
    bad = [(X, y[:, 0]) for X, y in data]  # MSELoss would broadcast (B,) against (B, 3)
    with pytest.raises(ValueError, match=r"targets of shape \(5,\) do not match .*\(5, 3\)"):
        _product_or_build(cls, model, loss_fn, bad)


@pytest.mark.parametrize("cls", CLOSED_FORM)
def test_model_with_non_tensor_output(cls):
    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return {"scores": self.lin(x)}  # no "logits": not a ModelOutput-like output

    _, loss_fn, data = make_problem("mlp_tanh", "ce")
    with pytest.raises(TypeError, match=r"returned a dict.*tensor output \(or one with .logits"):
        _product_or_build(cls, DictOut().double(), loss_fn, data)


# ---------------------------------------------------------------- parameters and precision
def test_params_not_in_model(problem):
    model, loss_fn, data = problem
    stranger = nn.Parameter(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="not a parameter of the model.*model.parameters"):
        curvops.HessianOperator(model, loss_fn, data, params=[stranger])
    with pytest.raises(TypeError, match=r"params\[0\] is a str"):
        curvops.HessianOperator(model, loss_fn, data, params=["0.weight"])


def test_frozen_params(problem):
    model, loss_fn, data = problem
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"'0.weight' is frozen.*leave it out of params"):
        curvops.HessianOperator(model, loss_fn, data, params=list(model.parameters()))
    op = curvops.HessianOperator(model, loss_fn, data)  # default: trainable only
    assert op.shape[0] == P - 20


def test_duplicate_and_empty_params(problem):
    model, loss_fn, data = problem
    with pytest.raises(ValueError, match="'0.bias' is listed twice"):
        curvops.GGNOperator(model, loss_fn, data, params=[model[0].bias, model[0].bias])
    with pytest.raises(ValueError, match="params is empty"):
        curvops.GGNOperator(model, loss_fn, data, params=[])
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        curvops.GGNOperator(model, loss_fn, data)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_refused_and_left_untouched(problem, dtype):
    """Choice: refuse (no silent cast); the message says how to analyse a float32 copy."""
    model, loss_fn, data = problem
    model = model.to(dtype)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TypeError, match=rf"{str(dtype)[6:]}.*deepcopy\(model\)\.float\(\)"):
        curvops.HessianOperator(model, loss_fn, data)
    assert all(p.dtype == dtype for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    op = curvops.HessianOperator(copy.deepcopy(model).float(), loss_fn, data)  # as advised
    assert op.dtype == np.float32


def test_mixed_dtypes_refused(problem):
    model, loss_fn, data = problem
    model[2].float()
    with pytest.raises(ValueError, match="parameters mix dtypes.*model.to"):
        curvops.HessianOperator(model, loss_fn, data)


# ---------------------------------------------------------------- model modes
def test_dropout_in_train_mode():
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 3)).double()
    _, loss_fn, data = make_problem("mlp_tanh", "ce")
    for deterministic in (True, False):
        with pytest.raises(ValueError, match=r"Dropout '1' is in train mode.*model.eval\(\)"):
            curvops.HessianOperator(model, loss_fn, data, check_deterministic=deterministic)
    model.eval()
    assert curvops.HessianOperator(model, loss_fn, data, check_deterministic=True).shape[0] == 43


@pytest.mark.parametrize("cls", [curvops.HessianOperator, curvops.GGNOperator])
def test_batchnorm_in_train_mode(cls):
    model, loss_fn, data = make_problem("batchnorm_eval", "ce")
    model.train()
    with pytest.raises(ValueError, match="BatchNorm1d '1' is in train mode.*depend on how the"):
        cls(model, loss_fn, data)
    model.eval()
    op = cls(model, loss_fn, data)
    model.train()  # switched after construction: refused at the next product
    with pytest.raises(ValueError, match="BatchNorm1d '1' is in train mode"):
        op @ np.ones(op.shape[0])


class NoisyLayer(nn.Module):
    def forward(self, x):
        return x + 1e-2 * torch.randn_like(x)


def test_non_deterministic_model_detected():
    model = nn.Sequential(nn.Linear(4, 5), NoisyLayer(), nn.Linear(5, 3)).double()
    _, loss_fn, data = make_problem("mlp_tanh", "ce")
    for check in (True, False):  # refused at construction, asked for or not
        with pytest.raises(ValueError, match=r"forward pass is random.*model\.eval\(\)"):
            curvops.GGNOperator(model, loss_fn, data, check_deterministic=check)


# ---------------------------------------------------------------- KFAC / EKFAC
@pytest.mark.parametrize("cls", [curvops.KFACOperator, curvops.EKFACOperator])
def test_layer_without_kronecker_structure_refused_only_with_fallback_error(cls):
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3)).double()
    _, loss_fn, data = make_problem("mlp_tanh", "ce")
    with pytest.raises(ValueError, match=r"'1.weight' of '1' \(LayerNorm\).*fallback='error'"):
        cls(model, loss_fn, data, fallback="error")
    assert cls(model, loss_fn, data).structures["1.weight"] == "exact"
    grouped = nn.Sequential(nn.Conv2d(4, 2, 1, groups=2), nn.Flatten()).double()
    data = [(torch.randn(3, 4, 1, 1, dtype=torch.float64), torch.randint(0, 2, (3,)))]
    assert set(cls(grouped, loss_fn, data, fallback="error").structures.values()) == {"kronecker"}


class TiedAcrossKinds(nn.Module):
    """An embedding tied with a Linear head: no Kronecker pair fits both uses."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(4, 3), nn.Linear(3, 4, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.embed(ids)))


class Functional(nn.Module):
    """A layer whose weight is also multiplied outside its own call."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) + x @ self.lin.weight.T


@pytest.mark.parametrize("cls", [curvops.KFACOperator, curvops.EKFACOperator])
def test_weight_tying_refused_only_without_a_consistent_block(cls):
    ids = torch.randint(0, 4, (6,))
    data = [(ids, torch.randn(6, 4, dtype=torch.float64))]
    with pytest.raises(ValueError, match="'embed.weight'.*shared by Embedding 'embed'.*Linear"):
        cls(TiedAcrossKinds().double(), nn.MSELoss(), data, fallback="error")
    assert cls(TiedAcrossKinds().double(), nn.MSELoss(), data).structures == {
        "embed.weight": "exact"
    }


def test_parameter_used_where_no_hook_sees_it():
    data = [(torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64))]
    with pytest.raises(ValueError, match="'lin.weight'.*used where curvops sees no call.*params="):
        curvops.KFACOperator(Functional().double(), nn.MSELoss(), data)


# ---------------------------------------------------------------- options
@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("chunk_size", [0, -2, 2.5, True])
def test_bad_chunk_size(problem, cls, chunk_size):
    with pytest.raises((TypeError, ValueError), match="chunk_size must be a positive integer"):
        cls(*problem, chunk_size=chunk_size)


@pytest.mark.parametrize("cls", ALL)
def test_bad_on_stale(problem, cls):
    with pytest.raises(
        ValueError, match=r"on_stale must be one of 'recompute', 'raise'; got 'ignore'"
    ):
        cls(*problem, on_stale="ignore")


def test_bad_options(problem):
    with pytest.raises(ValueError, match="mode must be one of"):
        curvops.GGNOperator(*problem, mode="fisher")
    with pytest.raises(ValueError, match="mc_samples must be an integer >= 1"):
        curvops.GGNOperator(*problem, mode="mc", mc_samples=0)
    with pytest.raises(ValueError, match="hvp must be one of"):
        curvops.HessianOperator(*problem, hvp="fast")
    with pytest.raises(ValueError, match="blocks must be None, 'layer'"):
        curvops.HessianOperator(*problem, blocks="module")
    with pytest.raises(ValueError, match="fisher must be one of"):
        curvops.KFACOperator(*problem, fisher="type1")
    with pytest.raises(ValueError, match="eigenbasis must be one of"):
        curvops.EKFACOperator(*problem, eigenbasis="svd")


# ---------------------------------------------------------------- NaN / inf
@pytest.mark.parametrize("cls", ALL)
def test_nan_in_data(problem, cls):
    model, loss_fn, data = problem
    data[1][0][0, 0] = float("nan")
    with pytest.raises(
        FloatingPointError, match="NaN or inf in the .*check the parameters and data"
    ):
        _product_or_build(cls, model, loss_fn, data)


@pytest.mark.parametrize("cls", ALL)
def test_nan_or_inf_in_parameters(problem, cls):
    model, loss_fn, data = problem
    with torch.no_grad():
        model[0].bias[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"parameter '0.bias' holds NaN or inf.*restore"):
        cls(model, loss_fn, data)


def test_parameters_turning_nan_after_construction(problem):
    model, loss_fn, data = problem
    op = curvops.GGNOperator(model, loss_fn, data)
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or inf in the product of GGNOperator"):
        op @ np.ones(P)


def test_overflow_in_the_product():
    model = nn.Linear(4, 3)  # float32: (1e25)² overflows
    X = torch.full((5, 4), 1e25)
    op = curvops.GGNOperator(model, nn.MSELoss(), [(X, torch.zeros(5, 3))])
    with pytest.raises(FloatingPointError, match="overflow.*use float64"):
        op @ np.ones(op.shape[0], dtype=np.float32)


# ---------------------------------------------------------------- eigensolvers
@pytest.mark.parametrize("backend", ["arpack", "lanczos", "lobpcg"])
@pytest.mark.parametrize("k", [0, -1, P, P + 1, 2.0])
def test_eigsh_k_out_of_range(problem, backend, k):
    op = curvops.GGNOperator(*problem)
    with pytest.raises(ValueError, match=rf"0 < k < P = {P}; got k={k!r}.*numpy.linalg.eigh"):
        curvops.eigsh(op, k=k, backend=backend)


@pytest.mark.parametrize("k", [0, -1, P + 1])
def test_power_iteration_k_out_of_range(problem, k):
    op = curvops.GGNOperator(*problem)
    with pytest.raises(ValueError, match=rf"0 < k <= P = {P}; got k={k}"):
        curvops.power_iteration(op, k=k)


# ---------------------------------------------------------------- damping
@pytest.mark.parametrize("damping", [-1e-3, float("nan"), float("inf")])
def test_bad_damping(problem, damping):
    kfac = curvops.KFACOperator(*problem)
    ekfac = curvops.EKFACOperator(*problem)
    ggn = curvops.GGNOperator(*problem)
    pattern = r"damping must be >= 0 and finite .*got"
    for make in (kfac.inverse, ekfac.inverse, kfac.logdet):
        with pytest.raises(ValueError, match=pattern):
            make(damping)
    for op in (kfac, ggn):  # closed form and Krylov paths
        with pytest.raises(ValueError, match=pattern):
            curvops.damped_inverse(op, damping)


def test_singular_kfac_needs_damping():
    model, loss_fn, data = make_problem("mlp_relu_nobias", "mse", sizes=(1,))
    op = curvops.KFACOperator(model, loss_fn, data)  # one data point: rank-deficient factors
    with pytest.raises(ValueError, match="singular.*pass damping > 0"):
        op.inverse(0.0) @ np.ones(op.shape[0])


# ---------------------------------------------------------------- saved state
@pytest.mark.parametrize("cls", [curvops.KFACOperator, curvops.EKFACOperator])
def test_state_dict_of_another_model(problem, cls):
    model, loss_fn, data = problem
    wider = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with pytest.raises(ValueError, match=r"layer '0': saved factor G has shape \(6, 6\).*\(5, 5\)"):
        cls(model, loss_fn, data).load_state_dict(cls(wider, loss_fn, data).state_dict())
    deeper = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.Linear(5, 3)).double()
    with pytest.raises(ValueError, match=r"factors are for layers \['0', '2', '3'\]"):
        cls(model, loss_fn, data).load_state_dict(cls(deeper, loss_fn, data).state_dict())


def test_state_dict_of_another_operator_class(problem):
    state = curvops.KFACOperator(*problem).state_dict()
    with pytest.raises(ValueError, match="state of a 'KFACOperator', not of a EKFACOperator"):
        curvops.EKFACOperator(*problem).load_state_dict(state)


@pytest.mark.parametrize("cls", [curvops.KFACOperator, curvops.EKFACOperator])
def test_state_round_trip_through_a_file(problem, cls, tmp_path):
    model, loss_fn, data = problem
    op = cls(model, loss_fn, data)
    torch.save(op.state_dict(), tmp_path / "factors.pt")
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight.mul_(2.0)  # a different model state: other factors until loaded
    restored = cls(other, loss_fn, data)
    assert not torch.allclose(restored.to_dense(), op.to_dense())
    restored.load_state_dict(torch.load(tmp_path / "factors.pt", weights_only=True))
    torch.testing.assert_close(restored.to_dense(), op.to_dense(), rtol=1e-12, atol=0)


def test_every_torch_load_in_curvops_is_weights_only():
    """Saved state is plain tensors and strings: no pickled code is ever loaded."""
    root = Path(curvops.__file__).parent
    calls = []
    for path in root.rglob("*.py"):
        calls += re.findall(r"torch\.load\((.*?)\)", path.read_text())
    assert all("weights_only=True" in c for c in calls), calls
    buf = io.BytesIO()
    torch.save(curvops.KFACOperator(*make_problem("mlp_tanh", "ce")).state_dict(), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["kind"] == "KFACOperator"


# ---------------------------------------------------------------- size limits
def test_to_dense_refuses_large(problem):
    op = curvops.HessianOperator(*problem)
    assert DEFAULT_MAX_DENSE == 20_000
    with pytest.raises(ValueError, match=r"43 x 43 matrix.*meant for small models.*max_size="):
        op.to_dense(max_size=10)
