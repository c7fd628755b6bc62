"""What a comparison costs: products per operator (counted) and a memory estimate.

Memory (bytes, besides the operators' own: graph caches, Kronecker factors), with s the
itemsize of the exact operator, m the approximations, c the probe columns per product:
  dense route:  (m + 2) P² · 8   (the exact and one approximation's dense matrix in float64,
                                  eigh's workspace), products: P per operator;
  probe route:  P · s · (c (2m + 2) + ncv + 1 + 2k + 6) + P ⌈n/8⌉
                (probe and product chunks, the Lanczos basis, the top-k eigenvectors of A
                and of one B, CG's vectors, the probes' bits), no O(P²) term.
"""

from __future__ import annotations

from curvops.interface import TorchMatmat


def dense_bytes(P: int, n_approx: int) -> int:
    return (n_approx + 2) * P * P * 8


def probe_bytes(P: int, itemsize: int, n_approx: int, k: int, ncv: int, c: int, n: int) -> int:
    vectors = c * (2 * n_approx + 2) + ncv + 1 + 2 * k + 6
    return P * itemsize * vectors + P * ((n + 7) // 8)


def cost_record(mms: dict[str, TorchMatmat], start: dict[str, int], memory: int, **extra) -> dict:
    """``Comparison.cost``: columns multiplied per operator since ``start``, the memory
    estimate in MiB, and the route's own entries (``extra``)."""
    products = {name: mm.n_matvecs - start.get(name, 0) for name, mm in mms.items()}
    return {"products": products, "memory_estimate_mib": round(memory / 2**20, 1), **extra}
