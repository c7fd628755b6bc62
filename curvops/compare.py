"""Exact vs approximate curvature: errors, traces, spectra, subspace overlap, per block.

``compare(exact, approx)`` takes any LinearOperators of one shape (e.g. GGN vs KFAC vs
EKFAC). For P <= ``dense_max`` every number is exact (dense matrices); above it the
Frobenius errors and traces are seeded Hutchinson estimates with standard errors
(‖M‖_F² = E‖Mz‖², tr M = E zᵀMz, z Rademacher) and the spectra come from ``eigsh``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from curvops.interface import TorchMatmat, torch_matmat
from curvops.operators.inverse import damped_inverse


@dataclass
class ApproxReport:
    """One approximation B against the exact A."""

    name: str
    frobenius_error: float  # ‖A − B‖_F / ‖A‖_F
    frobenius_stderr: float  # 0 when exact (dense)
    trace: float
    trace_stderr: float
    eigenvalues: np.ndarray  # (k,) descending
    cosines: np.ndarray  # (k,) cosines of the principal angles between top-k eigenspaces
    block_errors: dict[str, float] = field(default_factory=dict)  # per block ‖A_bb − B_bb‖/‖A_bb‖
    natural_gradient_cosine: float | None = None  # cos((A+λI)⁻¹g, (B+λI)⁻¹g)

    @property
    def overlap(self) -> float:
        """Mean squared cosine of the principal angles: ‖U_Aᵀ U_B‖_F² / k, in [0, 1]."""
        return float(np.mean(self.cosines**2))

    @property
    def principal_angles(self) -> np.ndarray:
        return np.arccos(np.clip(self.cosines, -1.0, 1.0))


@dataclass
class Comparison:
    """The result of ``compare``: the exact operator's numbers and one report per approximation."""

    exact_name: str
    exact_trace: float
    exact_trace_stderr: float
    exact_eigenvalues: np.ndarray
    approximations: list[ApproxReport]
    method: str  # "dense" or "hutchinson"
    k: int
    damping: float | None
    seconds: float

    def __getitem__(self, name: str) -> ApproxReport:
        for report in self.approximations:
            if report.name == name:
                return report
        raise KeyError(
            f"no approximation named {name!r}; have {[a.name for a in self.approximations]}"
        )

    def to_dict(self) -> dict:
        """JSON-ready: numpy arrays become lists."""
        out = _jsonable(asdict(self))
        for report, d in zip(self.approximations, out["approximations"]):
            d["overlap"] = report.overlap
        return out

    def summary(self) -> str:
        """A plain-text table."""
        pm = lambda v, se: f"{v:.4g}" + (f" ± {se:.2g}" if se else "")  # noqa: E731
        rows = [("", self.exact_name, *[a.name for a in self.approximations])]
        rows.append(
            (
                "rel. Frobenius error",
                "0",
                *[pm(a.frobenius_error, a.frobenius_stderr) for a in self.approximations],
            )
        )
        rows.append(
            (
                "trace",
                pm(self.exact_trace, self.exact_trace_stderr),
                *[pm(a.trace, a.trace_stderr) for a in self.approximations],
            )
        )
        rows.append(
            (f"top-{self.k} overlap", "1", *[f"{a.overlap:.3f}" for a in self.approximations])
        )
        if all(a.natural_gradient_cosine is not None for a in self.approximations):
            rows.append(
                (
                    "nat.-grad. cosine",
                    "1",
                    *[f"{a.natural_gradient_cosine:.3f}" for a in self.approximations],
                )
            )
        for i in range(min(self.k, 5)):
            rows.append(
                (
                    f"λ_{i + 1}",
                    f"{self.exact_eigenvalues[i]:.4g}",
                    *[f"{a.eigenvalues[i]:.4g}" for a in self.approximations],
                )
            )
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines) + f"\n({self.method}, {self.seconds:.1f} s)"

    def plot(self, path=None):
        """Spectra overlaid, per-block errors and subspace overlap; saved to ``path`` if given."""
        from curvops.plot import plot_comparison

        return plot_comparison(self, path)


def compare(
    exact,
    approx,
    k: int = 10,
    n_probes: int = 100,
    seed: int = 0,
    gradient=None,
    damping: float | None = None,
    dense_max: int = 3000,
    backend: str = "lanczos",
    exact_name: str | None = None,
) -> Comparison:
    """Compare ``exact`` with one or several approximations (an operator, list or dict name -> op).

    ``gradient`` (P,): the direction for the natural-gradient cosine; by default the loss
    gradient when ``exact`` has ``gradient()``. ``damping``: λ for (A + λI)⁻¹ (default:
    1e-3 · λ_max(A)). ``dense_max``: largest P for the exact, dense route.
    """
    start = time.perf_counter()
    approx = _named(approx)
    A = torch_matmat(exact)
    Bs = {name: torch_matmat(op) for name, op in approx.items()}
    for name, B in Bs.items():
        if B.size != A.size:
            raise ValueError(
                f"{name} has size {B.size}, the exact operator {A.size}: compare needs one shape"
            )
    if not 0 < k < A.size:
        raise ValueError(f"k must be in [1, P) with P={A.size}, got {k}")
    blocks = _blocks(exact, *approx.values())
    g = _gradient(exact, gradient, A)
    route = _dense_route if A.size <= dense_max else _probe_route
    exact_part, reports = route(
        A, Bs, k, blocks, g, damping, n_probes, seed, backend, exact, approx
    )
    return Comparison(
        exact_name=exact_name or type(exact).__name__,
        **exact_part,
        approximations=reports,
        method="dense" if A.size <= dense_max else "hutchinson",
        k=k,
        seconds=time.perf_counter() - start,
    )


# ------------------------------------------------------------------------------ dense route
def _dense(mm: TorchMatmat) -> torch.Tensor:
    eye = torch.eye(mm.size, device=mm.device, dtype=torch.float64).to(mm.dtype)
    D = torch.cat([mm(eye[:, i : i + 512]) for i in range(0, mm.size, 512)], dim=1).double()
    return (D + D.T) / 2


def _dense_route(A, Bs, k, blocks, g, damping, n_probes, seed, backend, exact, approx):
    DA = _dense(A)
    valsA, vecsA = _top_k(DA, k)
    lam = damping if damping is not None else 1e-3 * float(valsA[0])
    natA = _solve(DA, g, lam) if g is not None else None
    reports = []
    for name, B in Bs.items():
        DB = _dense(B).to(DA.device)
        valsB, vecsB = _top_k(DB, k)
        reports.append(
            ApproxReport(
                name=name,
                frobenius_error=float((DA - DB).norm() / DA.norm()),
                frobenius_stderr=0.0,
                trace=float(DB.trace()),
                trace_stderr=0.0,
                eigenvalues=valsB.cpu().numpy(),
                cosines=torch.linalg.svdvals(vecsA.T @ vecsB).cpu().numpy(),
                block_errors={
                    n: float((DA[s, s] - DB[s, s]).norm() / DA[s, s].norm()) for n, s in blocks
                },
                natural_gradient_cosine=_cosine(
                    natA, _solve(DB, g, lam) if g is not None else None
                ),
            )
        )
    exact_part = dict(
        exact_trace=float(DA.trace()),
        exact_trace_stderr=0.0,
        exact_eigenvalues=valsA.cpu().numpy(),
        damping=lam if g is not None else None,
    )
    return exact_part, reports


def _top_k(D: torch.Tensor, k: int):
    vals, vecs = torch.linalg.eigh(D)
    return vals.flip(0)[:k], vecs.flip(1)[:, :k]


def _solve(D: torch.Tensor, g: torch.Tensor, lam: float) -> torch.Tensor:
    return torch.linalg.solve(
        D + lam * torch.eye(D.shape[0], dtype=D.dtype, device=D.device), g.to(D)
    )


# ------------------------------------------------------------------------------ probe route
def _probe_route(A, Bs, k, blocks, g, damping, n_probes, seed, backend, exact, approx):
    from curvops.linalg.eigsh import eigsh

    Z = _rademacher(A.size, n_probes, seed).to(A.device, A.dtype)
    AZ = A(Z)
    eigA = eigsh(exact, k=k, which="LA", backend=backend, seed=seed)
    trA, seA = _mean_se((Z * AZ).sum(0))
    lam = damping if damping is not None else 1e-3 * float(eigA.eigenvalues[0])
    natA = _as_torch(damped_inverse(exact, lam), g) if g is not None else None
    UA = torch.as_tensor(eigA.eigenvectors, dtype=torch.float64)
    reports = []
    for name, B in Bs.items():
        BZ = B(Z.to(B.device, B.dtype)).to(AZ)
        err, err_se = _ratio_sqrt(((AZ - BZ) ** 2).sum(0), (AZ**2).sum(0))
        trB, seB = _trace_of(approx[name], Z, BZ)
        eigB = eigsh(approx[name], k=k, which="LA", backend=backend, seed=seed)
        UB = torch.as_tensor(eigB.eigenvectors, dtype=torch.float64)
        natB = _as_torch(damped_inverse(approx[name], lam), g) if g is not None else None
        reports.append(
            ApproxReport(
                name=name,
                frobenius_error=err,
                frobenius_stderr=err_se,
                trace=trB,
                trace_stderr=seB,
                eigenvalues=np.asarray(eigB.eigenvalues),
                cosines=torch.linalg.svdvals(UA.T @ UB).numpy(),
                block_errors=_probe_block_errors(A, B, blocks, Z),
                natural_gradient_cosine=_cosine(natA, natB),
            )
        )
    exact_part = dict(
        exact_trace=trA,
        exact_trace_stderr=seA,
        exact_eigenvalues=np.asarray(eigA.eigenvalues),
        damping=lam if g is not None else None,
    )
    return exact_part, reports


def _probe_block_errors(A, B, blocks, Z) -> dict[str, float]:
    """Per block b, probes zero outside b: ‖(A − B) z_b‖ restricted to b estimates ‖A_bb − B_bb‖_F."""
    out = {}
    for name, s in blocks:
        Zb = torch.zeros_like(Z)
        Zb[s] = Z[s]
        AZ, BZ = A(Zb)[s], B(Zb.to(B.device, B.dtype)).to(Zb)[s]
        out[name] = float(((AZ - BZ) ** 2).sum().sqrt() / (AZ**2).sum().sqrt())
    return out


def _trace_of(op, Z, BZ) -> tuple[float, float]:
    if hasattr(op, "trace") and callable(op.trace):
        try:
            return float(op.trace()), 0.0
        except TypeError:  # a LinearOperator without a closed-form trace
            pass
    return _mean_se((Z * BZ).sum(0))


def _rademacher(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n, k), generator=gen, dtype=torch.float64) * 2 - 1


def _mean_se(samples: torch.Tensor) -> tuple[float, float]:
    s = samples.double()
    return float(s.mean()), float(s.std() / len(s) ** 0.5) if len(s) > 1 else 0.0


def _ratio_sqrt(num: torch.Tensor, den: torch.Tensor) -> tuple[float, float]:
    """sqrt(mean num / mean den) and its standard error (delta method)."""
    num, den = num.double(), den.double()
    n, R = len(num), float(num.mean() / den.mean())
    resid = num - R * den
    se_R = float(resid.std() / (den.mean() * n**0.5)) if n > 1 else 0.0
    root = R**0.5
    return root, se_R / (2 * root) if root > 0 else 0.0


# ------------------------------------------------------------------------------ helpers
def _named(approx) -> dict:
    if isinstance(approx, dict):
        return dict(approx)
    ops = approx if isinstance(approx, (list, tuple)) else [approx]
    names: dict = {}
    for op in ops:
        base = getattr(op, "name", None) or type(op).__name__.removesuffix("Operator")
        name, i = base, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names[name] = op
    return names


def _blocks(*ops) -> list[tuple[str, slice]]:
    for op in ops:
        slices = getattr(op, "block_slices", None)
        if slices is not None and len(slices) > 1:
            return list(zip(block_names(op), slices))
    return []


def block_names(op) -> list[str]:
    """The operator's block names; unnamed blocks ("block0", ...) are named by their parameters."""
    n = len(op.block_slices)
    names = list(getattr(op, "block_names", None) or [f"block{i}" for i in range(n)])
    layout = getattr(op, "layout", None)
    if names == [f"block{i}" for i in range(n)] and layout is not None:
        names = ["+".join(layout.names[i] for i in block) for block in layout.blocks]
    return names


def _gradient(exact, gradient, A: TorchMatmat):
    if gradient is None:
        return exact.gradient().double() if hasattr(exact, "gradient") else None
    g = torch.as_tensor(
        np.asarray(gradient) if not isinstance(gradient, torch.Tensor) else gradient
    )
    if g.shape != (A.size,):
        raise ValueError(f"gradient must have shape ({A.size},), got {tuple(g.shape)}")
    return g.double()


def _as_torch(inverse_op, g: torch.Tensor) -> torch.Tensor:
    if hasattr(inverse_op, "torch_matmat"):
        return inverse_op.torch_matmat(g.to(inverse_op.device, _dtype(inverse_op))).double().cpu()
    return torch.as_tensor(inverse_op @ g.cpu().numpy(), dtype=torch.float64)


def _dtype(op) -> torch.dtype:
    return torch.float32 if np.dtype(op.dtype) == np.float32 else torch.float64


def _cosine(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    a, b = a.double().cpu(), b.double().cpu()
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-300))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj
