"""Staleness: whether the model changed since an operator was built or refreshed, and what a
product does then (``on_stale``: recompute, or raise ``StaleOperatorError``)."""

from __future__ import annotations

from torch import nn

from curvops.core import checks
from curvops.core.errors import StaleOperatorError
from curvops.core.params import ParameterLayout
from curvops.core.watch import ModelWatch, Token


class Staleness:
    """The staleness part of ``CurvatureOperator``: ``_watch`` fingerprints ``model``;
    ``_fresh`` is its fingerprint at the last refresh, ``_token`` during the current product."""

    model: nn.Module
    layout: ParameterLayout
    on_stale: str
    _watch: ModelWatch
    _fresh: Token
    _token: Token

    @property
    def is_stale(self) -> bool:
        """True when the model changed since the last refresh: parameters, buffers, modules,
        their attributes, hooks or modes (``curvops.core.watch``)."""
        return self._watch.token() != self._fresh

    def refresh(self) -> None:
        """Accept the parameters' current values (KFAC / EKFAC: recompute their factors)."""
        self._mark_fresh()

    def _mark_fresh(self) -> None:
        self._fresh = self._token = self._watch.token()

    def _ensure_fresh(self, token: Token | None = None) -> None:
        """Before a product: refuse train-mode layers, then raise or refresh if stale."""
        checks.check_module_modes(self.model)
        if (token or self._watch.token()) == self._fresh:
            return
        self._check_params_in_model()
        if self.on_stale == "raise":
            raise StaleOperatorError(
                f"{type(self).__name__} is stale: the model changed after it was built (an "
                "optimizer step, new parameter or buffer values, a replaced module or "
                "attribute). Call op.refresh() to use the current values, or build the "
                "operator with on_stale='recompute'"
            )
        self.refresh()

    def _check_params_in_model(self) -> None:
        """Refuse to go on when a parameter of the operator is no longer the model's (replaced
        by a new tensor): products would differentiate a tensor the model does not use."""
        current = {id(p) for p in self.model.parameters()}
        for name, p in zip(self.layout.names, self.layout.params):
            if id(p) not in current:
                raise StaleOperatorError(
                    f"parameter '{name}' of {type(self).__name__} is no longer a parameter of "
                    "the model (it was replaced by a new tensor, e.g. module.weight = "
                    "nn.Parameter(...)); build a new operator for the new parameters"
                )
