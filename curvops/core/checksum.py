"""An order-independent checksum of one pass over the data: is it the same data as before?

Per tensor slot of a batch (X's tensors in order, then y's), every point n gives
r_n = ⟨x_n, c⟩ with fixed position weights c_j = 1 + ½ cos(0.618 j) (one matrix-vector
product over the values as stored: one read, no copy of a floating-point tensor), and the
pass sums s₁ = Σ_n r_n and s₂ = Σ_n r_n² in float64. Both are invariant to the order of the
points and to how they are batched (a shuffling DataLoader), and change with another subset
(shuffle with drop_last, a sampler) or other values (augmentation; c also weighs positions,
so a flip or a crop changes r_n).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}  # rounding of r_n: ~√D ulp, D its length


class PassChecksum:
    """The r_n of each tensor slot over one pass (``add`` once per batch: one product per
    tensor); (s₁, s₂) are summed once, when two passes are compared."""

    def __init__(self) -> None:
        self.rows: dict[int, list[torch.Tensor]] = {}  # per slot, r of every batch
        self.rtol: dict[int, float] = {}
        self.points = 0
        self._weights: dict[tuple, torch.Tensor] = {}
        self._sums: dict[int, tuple[float, float]] | None = None

    def add(self, X: object, y: object, size: int) -> None:
        self.points += size
        self._sums = None
        for slot, t in enumerate(_tensors(X) + _tensors(y)):
            if t.ndim == 0 or t.numel() == 0:
                continue
            self.rows.setdefault(slot, []).append(self._rows(t))
            self.rtol.setdefault(slot, _RTOL.get(t.dtype, 1e-12))

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        """(n,) r = t.reshape(n, -1) @ c, in t's dtype for floating point (no copy)."""
        flat = t.detach().reshape(t.shape[0], -1)
        if flat.dtype not in _RTOL:
            flat = flat.to(torch.float64)  # labels, token ids, masks: small
        key = (flat.shape[1], flat.dtype, flat.device)
        c = self._weights.get(key)
        if c is None:
            j = torch.arange(flat.shape[1], dtype=torch.float64, device=flat.device)
            c = self._weights[key] = (1 + 0.5 * torch.cos(0.618 * j)).to(flat.dtype)
        return flat @ c

    def sums(self) -> dict[int, tuple[float, float]]:
        """(s₁, s₂) per slot, in float64 (one read from the device for all of them)."""
        if self._sums is None:
            r = [torch.cat(rows).to(torch.float64) for rows in self.rows.values()]
            both = [torch.stack([x.sum(), (x * x).sum()]) for x in r]
            values = torch.stack(both).tolist() if both else []
            self._sums = {slot: (s1, s2) for slot, (s1, s2) in zip(self.rows, values)}
        return self._sums

    def same_as(self, other: PassChecksum) -> bool:
        """Whether two passes saw the same points (to rounding), in any order."""
        mine, theirs = self.sums(), other.sums()
        if mine.keys() != theirs.keys() or self.points != other.points:
            return False
        for slot, (s1, s2) in mine.items():
            (t1, t2), rtol = theirs[slot], self.rtol[slot]
            scale = max(s2, t2)
            if abs(s2 - t2) > rtol * scale or abs(s1 - t1) > rtol * (self.points * scale) ** 0.5:
                return False
        return True


def _tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for k in sorted(obj, key=str) for t in _tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []
