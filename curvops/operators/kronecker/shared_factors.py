"""EKFAC on a KFAC's factors: ``EKFACOperator(..., kfac=op)`` takes op's G, A, fallback
blocks and the eigendecompositions of its factors (shared tensors, computed once by op and
cached there), so EKFAC makes one data pass (the eigenvalue correction) instead of two and
no second ``eigh``. Only a KFAC of the same matrix qualifies: the same model, data, loss
object, parameters and matrix settings, not stale; anything else is refused."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from curvops.core.errors import StaleOperatorError

Basis = Any  # (λ, Q) of a factor, or None for a diagonal one (see ekfac.py)


def check_source(ekfac: Any, kfac: Any) -> None:
    """Raise unless ``kfac`` holds the factors ``ekfac`` would compute itself."""
    from curvops.operators.kronecker.ekfac import EKFACOperator
    from curvops.operators.kronecker.kfac import KFACOperator

    if not isinstance(kfac, KFACOperator) or isinstance(kfac, EKFACOperator):
        raise TypeError(
            f"kfac= takes a KFACOperator whose factors EKFAC reuses, got {type(kfac).__name__}"
        )
    same = {
        "model": kfac.model is ekfac.model,
        "data": kfac._loop.data is ekfac._loop.data,
        "loss_fn": kfac.loss_fn is ekfac.loss_fn and kfac.token_loss is ekfac.token_loss,
        "params": [id(p) for p in kfac.layout.params] == [id(p) for p in ekfac.layout.params],
        "process_group": kfac.process_group is ekfac.process_group,
    }
    for what, ok in same.items():
        if not ok:
            raise ValueError(
                f"kfac= was built on another {what} than this EKFAC: its factors are not this "
                f"EKFAC's. Pass the same {what} object to both, or leave kfac= out"
            )
    theirs = kfac._matrix_settings()  # EKFAC's own (correction, eigenbasis) aside
    mine = {key: ekfac._matrix_settings().get(key) for key in theirs}
    if mine != theirs:
        differ = sorted(k for k in theirs if mine[k] != theirs[k])
        raise ValueError(
            f"kfac= has other settings ({', '.join(f'{k}={theirs.get(k)!r}' for k in differ)}) "
            f"than this EKFAC ({', '.join(f'{k}={mine[k]!r}' for k in differ)}): build both "
            "with the same settings, or leave kfac= out"
        )
    if kfac.is_stale:
        raise StaleOperatorError(
            "kfac= is stale: the model changed since its factors were computed. Call "
            "kfac.refresh() first, or leave kfac= out"
        )


def take_factors(ekfac: Any, kfac: Any) -> None:
    """``ekfac``'s G, A and fallback blocks := ``kfac``'s (new lists, the same tensors), and
    its KFAC blocks built from them, as its own factor pass would leave it."""
    ekfac.G, ekfac.A, ekfac.F = list(kfac.G), list(kfac.A), list(kfac.F)
    ekfac._build_blocks()


def source_bases(kfac: Any) -> list[tuple[Basis, Basis]]:
    """Per layer (G basis, A basis): the eigendecompositions of kfac's own factors (computed
    there on first use and cached: its products, inverse and ``top_eigenpairs`` share them)."""
    blocks = kfac._current_blocks()
    bases, at = [], 0
    for i, layer in enumerate(kfac.layers):  # a layer's blocks are consecutive, weight first
        first = blocks[at]
        at += len(kfac._layer_parts(i, layer))
        basis_g = None if first.G.diagonal else first.G.eig
        weight = layer.weight is not None
        basis_a = first.A.eig if weight and not first.A.diagonal else None
        bases.append((basis_g, basis_a))
    return bases


def build_reusing(names: Sequence[str], build: Callable[..., Any]) -> dict[str, Any]:
    """{name: build(name, **extra)} for names of operators ("kfac", "ekfac", ...), in the
    order given; "kfac" is built first so that "ekfac" gets ``kfac=`` it (extra)."""
    built: dict[str, Any] = {}
    for name in sorted(names, key=lambda n: n != "kfac"):
        reuse = {"kfac": built["kfac"]} if name == "ekfac" and "kfac" in built else {}
        built[name] = build(name, **reuse)
    return {name: built[name] for name in names}
