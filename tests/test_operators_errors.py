"""Bad input gets a clear error naming the cause and the fix."""

import numpy as np
import pytest
import torch
from models import make_problem
from torch import nn

import curvops


@pytest.fixture
def problem():
    return make_problem("mlp_tanh", "ce")


def test_wrong_vector_length(problem):
    op = curvops.HessianOperator(*problem)
    with pytest.raises(ValueError, match=r"length P=43.*got 42"):
        op @ np.ones(42)
    with pytest.raises(ValueError, match="length P=43"):
        op.torch_matmat(torch.ones(44, dtype=torch.float64))
    with pytest.raises(ValueError, match="length P=43"):
        op.unflatten(torch.ones(3))


@pytest.mark.parametrize("bad", [np.ones(43, dtype=complex), np.ones(43, dtype=int)])
def test_wrong_vector_dtype(problem, bad):
    op = curvops.GGNOperator(*problem)
    with pytest.raises(TypeError, match="real floating-point"):
        op @ bad


def test_empty_data():
    model, loss_fn, _ = make_problem("mlp_tanh", "ce")
    with pytest.raises(ValueError, match="no batches"):
        curvops.HessianOperator(model, loss_fn, [])


def test_generator_data_is_refused():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    with pytest.raises(TypeError, match="generator"):
        curvops.HessianOperator(model, loss_fn, (b for b in data))


def test_batch_that_is_not_a_pair(problem):
    model, loss_fn, data = problem
    with pytest.raises(ValueError, match=r"batch 0 is not a pair \(X, y\)"):
        curvops.HessianOperator(model, loss_fn, [data[0][0]])


def test_ambiguous_dict_input_needs_batch_size_fn():
    model, loss_fn, data = make_problem("dict_input", "mse")
    curvops.HessianOperator(model, loss_fn, data)  # one shared leading size: understood
    bad = [({"a": X["a"], "b": X["b"][:1]}, y) for X, y in data]
    with pytest.raises(TypeError, match="batch_size_fn"):
        curvops.HessianOperator(model, loss_fn, bad)


@pytest.mark.parametrize("cls", [curvops.HessianOperator, curvops.GGNOperator])
def test_reduction_none(problem, cls):
    model, _, data = problem
    with pytest.raises(ValueError, match="reduction 'none' is not supported"):
        cls(model, nn.CrossEntropyLoss(reduction="none"), data)


def test_unsupported_loss_for_ggn(problem):
    model, _, data = problem
    with pytest.raises(ValueError, match="not supported here; supported: nn.MSELoss"):
        curvops.GGNOperator(model, nn.HuberLoss(), data)


def test_weighted_cross_entropy_refused_for_ggn(problem):
    model, _, data = problem
    with pytest.raises(ValueError, match=r"weight=\.\.\.\) is not supported"):
        curvops.GGNOperator(model, nn.CrossEntropyLoss(weight=torch.ones(3)), data)


def test_labels_out_of_range(problem):
    model, loss_fn, data = problem
    bad = [(X, y + 5) for X, y in data]
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        curvops.GGNOperator(model, loss_fn, bad) @ np.ones(43)


def test_labels_of_wrong_shape(problem):
    model, loss_fn, data = problem
    bad = [(X, y[:, None]) for X, y in data]
    with pytest.raises(ValueError, match="class-index targets have shape"):
        curvops.GGNOperator(model, loss_fn, bad) @ np.ones(43)


def test_params_not_in_model(problem):
    model, loss_fn, data = problem
    stranger = nn.Parameter(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="not a parameter of the model"):
        curvops.HessianOperator(model, loss_fn, data, params=[stranger])


def test_frozen_params(problem):
    model, loss_fn, data = problem
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"'0.weight' is frozen"):
        curvops.HessianOperator(model, loss_fn, data, params=list(model.parameters()))
    op = curvops.HessianOperator(model, loss_fn, data)  # default: trainable only
    assert op.shape[0] == 43 - 20


def test_half_precision_model_refused(problem):
    model, loss_fn, data = problem
    with pytest.raises(TypeError, match=r"float16.*deepcopy\(model\).float\(\)"):
        curvops.HessianOperator(model.half(), loss_fn, data)


def test_dropout_in_train_mode():
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 3)).double()
    _, loss_fn, data = make_problem("mlp_tanh", "ce")
    with pytest.raises(ValueError, match=r"Dropout '1' is in train mode.*model.eval\(\)"):
        curvops.HessianOperator(model, loss_fn, data, check_deterministic=True)


def test_batchnorm_in_train_mode():
    model, loss_fn, data = make_problem("batchnorm_eval", "ce")
    model.train()
    with pytest.raises(ValueError, match="BatchNorm1d '1' is in train mode"):
        curvops.GGNOperator(model, loss_fn, data)


class NoisyLayer(nn.Module):
    def forward(self, x):
        return x + 1e-2 * torch.randn_like(x)


def test_non_deterministic_model_detected():
    model = nn.Sequential(nn.Linear(4, 5), NoisyLayer(), nn.Linear(5, 3)).double()
    _, loss_fn, data = make_problem("mlp_tanh", "ce")
    with pytest.raises(RuntimeError, match="not deterministic"):
        curvops.GGNOperator(model, loss_fn, data, check_deterministic=True)
    curvops.GGNOperator(model, loss_fn, data)  # not checked unless asked


def test_deterministic_model_passes_check(problem):
    op = curvops.HessianOperator(*problem, check_deterministic=True)
    assert op.shape == (43, 43)


def test_nan_in_data_raises_in_product(problem):
    model, loss_fn, data = problem
    data[1][0][0, 0] = float("nan")
    op = curvops.HessianOperator(model, loss_fn, data)
    with pytest.raises(FloatingPointError, match="NaN or inf in the product"):
        op @ np.ones(43)


def test_nan_in_parameters(problem):
    model, loss_fn, data = problem
    with torch.no_grad():
        model[0].bias[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"parameter '0.bias' holds NaN or inf"):
        curvops.GGNOperator(model, loss_fn, data)


def test_to_dense_refuses_large(problem):
    op = curvops.HessianOperator(*problem)
    with pytest.raises(ValueError, match="meant for small models"):
        op.to_dense(max_size=10)


def test_bad_options(problem):
    with pytest.raises(ValueError, match="mode must be one of"):
        curvops.GGNOperator(*problem, mode="fisher")
    with pytest.raises(ValueError, match="mc_samples must be >= 1"):
        curvops.GGNOperator(*problem, mode="mc", mc_samples=0)
    with pytest.raises(ValueError, match="hvp must be one of"):
        curvops.HessianOperator(*problem, hvp="fast")
    with pytest.raises(ValueError, match="blocks must be None, 'layer'"):
        curvops.HessianOperator(*problem, blocks="module")


def test_model_with_non_tensor_output_for_ggn():
    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return {"logits": self.lin(x)}

    model = DictOut().double()
    _, loss_fn, data = make_problem("mlp_tanh", "ce")
    op = curvops.GGNOperator(model, loss_fn, data)
    with pytest.raises(TypeError, match="need a tensor output"):
        op @ np.ones(op.shape[0])
