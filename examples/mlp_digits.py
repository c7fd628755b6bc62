"""An example factory for `curvops spectrum` / `curvops compare`: an MLP on sklearn's digits.

    curvops spectrum examples/mlp_digits.py:make --k 10 --density --layers
    curvops compare examples/mlp_digits.py:make --approx kfac,ekfac

A factory is any function returning (model, loss_fn, data), with data a re-iterable of
(X, y) batches.
"""

from torch import nn

from curvops.cli.digits import load_digits_data, make_mlp, train


def make():
    data = load_digits_data(num_train=600)
    model = make_mlp(hidden=16)
    train(model, data, epochs=30)
    return model, nn.CrossEntropyLoss(), data.train
