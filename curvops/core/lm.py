"""Language-model losses as ``transformers`` computes them: cross-entropy over the tokens.

``CausalLMLoss()``: logits (B, S, V) of a causal LM against its labels (B, S), shifted by
one as transformers does, logits[:, :-1] against labels[:, 1:]; ``MaskedLMLoss()``: every
position against its label (a masked LM, a token classifier). Labels equal to
``ignore_index`` (-100) are ignored; with reduction "mean" the loss is the mean over the
tokens that count, and the operators weigh a batch by its number of such tokens.

The operators see these losses as the nn.CrossEntropyLoss ``token_loss`` applied to
``logits(output)`` (B, V, S') — classes on axis 1, as CrossEntropyLoss wants them — and
``labels(y)`` (B, S'), so every closed form of cross-entropy applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class TokenLoss(nn.Module):
    """Cross-entropy over the positions of (B, S, V) logits; see the module doc."""

    shift = False  # causal: position t predicts token t + 1

    def __init__(
        self,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.token_loss = nn.CrossEntropyLoss(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )

    @property
    def reduction(self) -> str:
        return self.token_loss.reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.token_loss(self.logits(logits), self.labels(labels))

    def logits(self, logits: Any) -> Any:
        """(B, S, V) -> (B, V, S - 1) shifted (causal) or (B, V, S); other shapes pass."""
        if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
            return logits  # the loss's own shape check names the problem
        return (logits[:, :-1] if self.shift else logits).transpose(1, 2)

    def labels(self, labels: Any) -> Any:
        """(B, S) -> (B, S - 1) without the first token (causal) or (B, S)."""
        if not isinstance(labels, torch.Tensor) or labels.ndim != 2 or not self.shift:
            return labels
        return labels[:, 1:]

    def extra_repr(self) -> str:
        loss = self.token_loss
        return f"ignore_index={loss.ignore_index}, reduction={loss.reduction!r}"


class CausalLMLoss(TokenLoss):
    """A causal LM's next-token cross-entropy: logits[:, :-1] (B, S-1, V) against
    labels[:, 1:], labels -100 ignored (``transformers``' ``ForCausalLMLoss``). The labels
    are the input ids (with -100 at padding): pass ``(X, X["input_ids"])`` batches."""

    shift = True


class MaskedLMLoss(TokenLoss):
    """Cross-entropy at every position: logits (B, S, V) against labels (B, S), -100
    ignored (a masked LM: -100 where no token is masked; a token classifier)."""


@dataclass
class LossParts:
    """What the operators differentiate: ``loss_fn(outputs(model output), targets(y))``."""

    loss_fn: Callable
    outputs: Callable[[Any], Any]
    targets: Callable[[Any], Any] | None


def loss_parts(loss_fn: Callable) -> LossParts:
    """A ``TokenLoss`` as its cross-entropy, logits and labels; any other loss as itself."""
    if isinstance(loss_fn, TokenLoss):
        return LossParts(loss_fn.token_loss, loss_fn.logits, loss_fn.labels)
    return LossParts(loss_fn, _same, None)


def _same(x: Any) -> Any:
    return x
