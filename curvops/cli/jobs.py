"""`curvops spectrum` and `curvops compare`: thin front-ends over ``curvops.analyze``.

Each runs one ``analyze`` call with the parts its options ask for, saves the ``Report``
(report.json, report.png, landscape.png) and writes results.json and its figures as before.
"""

from __future__ import annotations

import sys
from typing import Any

import curvops
from curvops.cli.prepare import Prepared, prepare
from curvops.cli.written import write_results, written
from curvops.plot import plot_comparison
from curvops.report.figure import plot_panel
from curvops.report.progress import Feedback


def feedback(args: Any) -> Feedback:
    """Bars on stderr unless --no-progress; the start and result lines on stdout."""
    return Feedback(bars=args.progress, lines=sys.stdout, notes=sys.stderr)


# ------------------------------------------------------------------------------ spectrum
def spectrum_options(args: Any) -> dict[str, Any]:
    """The analyze settings of `curvops spectrum`: --which picks the top and/or bottom."""
    k, which = args.k, args.which
    top, bottom = {"LA": (k, 0), "LM": (k, 0), "SA": (0, k), "BE": (k - k // 2, k // 2)}[which]
    parts = ["top"] * bool(top) + ["bottom"] * bool(bottom)
    parts += [p for p in ("trace", "density", "layers", "landscape") if getattr(args, p)]
    return dict(
        k=top or bottom, which="LM" if which == "LM" else "LA", bottom=bottom, parts=parts,
        curvature=args.curvature, tol=args.tol, backend=args.backend,
        bottom_backend=args.backend, seed=args.seed,
    )  # fmt: skip


def run_spectrum(args: Any) -> dict:
    """The eigenvalues --which asks for of one curvature (+ trace, density, layers,
    landscape), as a Report and as results.json with its figures."""
    job = prepare(args, "spectrum")
    check_k(args.k, job)
    report = curvops.analyze(
        job.model, job.loss_fn, job.data, **spectrum_options(args), progress=feedback(args),
        **job.operator_kwargs,
    )  # fmt: skip
    results = spectrum_results(report, args.which)
    files = [*_save(report, job, args.vectors), write_results(job.out, results)]
    for name, part in (("spectrum", "spectrum"), ("density", "density"), ("layers", "layers")):
        if name == "spectrum" or getattr(args, part):
            plot_panel(report, part, path=job.out / f"{name}.png")
            files.append(job.out / f"{name}.png")
    written(files)
    return results


def check_k(k: int, job: Prepared) -> None:
    """--k below P, the number of parameters analysed (the operators' own message gives
    Python advice)."""
    params = job.operator_kwargs.get("params") or [
        p for p in job.model.parameters() if p.requires_grad
    ]
    P = sum(p.numel() for p in params)
    if not k < P:
        raise ValueError(
            f"--k {k} is not below P = {P:,}, the number of parameters analysed: choose a "
            f"smaller --k"
        )


def spectrum_results(report: curvops.Report, which: str) -> dict:
    """results.json of `curvops spectrum`: the asked eigenpairs under "eigsh", the parts."""
    results: dict[str, Any] = {
        "curvature": report.curvature,
        "num_params": report.num_params,
        "eigsh": _asked(report, which),
    }
    for part in ("trace", "density", "layers"):
        value = getattr(report, part)
        if value is not None:
            results[part] = value.to_dict()
    if report.landscapes:
        results["landscape"] = [cut.to_dict() for cut in report.landscapes]
    return results


def _asked(report: curvops.Report, which: str) -> dict:
    """The eigenpairs of --which: the top, the bottom, or both ends (descending)."""
    pairs = [r.to_dict() for r in (report.top, report.bottom) if r is not None]
    if len(pairs) == 1:
        return pairs[0]
    merged = {key: pairs[0][key] + pairs[1][key] for key in ("eigenvalues", "residual_norms")}
    merged["converged"] = pairs[0]["converged"] + pairs[1]["converged"]
    merged["all_converged"] = pairs[0]["all_converged"] and pairs[1]["all_converged"]
    merged["n_matvecs"] = pairs[0]["n_matvecs"] + pairs[1]["n_matvecs"]
    merged["seconds"] = pairs[0]["seconds"] + pairs[1]["seconds"]
    return {**pairs[0], **merged, "which": which}


# ------------------------------------------------------------------------------ compare
def run_compare(args: Any) -> dict:
    """The exact GGN (or Hessian) against each approximation of --approx."""
    job = prepare(args, "compare")
    report = curvops.analyze(
        job.model, job.loss_fn, job.data, k=args.k, curvature=args.exact, parts=["compare"],
        compare=args.approx, compare_exact=args.exact, seed=args.seed,
        progress=feedback(args), **job.operator_kwargs,
    )  # fmt: skip
    assert report.comparison is not None
    print(report.comparison.summary())
    results = report.comparison.to_dict()
    files = [*_save(report, job, vectors=False), write_results(job.out, results)]
    plot_comparison(report.comparison, job.out / "comparison.png", title=report.model)
    written([*files, job.out / "comparison.png"])
    return results


def _save(report: curvops.Report, job: Prepared, vectors: bool) -> list:
    report.save(job.out, vectors=vectors)
    names = ["report.json", "report.png"]
    names += ["landscape.png"] * bool(report.landscapes)
    names += ["eigenvectors.npz"] * (vectors and (job.out / "eigenvectors.npz").is_file())
    return [job.out / name for name in names]
