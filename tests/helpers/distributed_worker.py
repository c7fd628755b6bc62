"""Runs on each rank of a gloo process group spawned by tests/test_distributed.py.

``results`` builds every operator and runs every algorithm on one rank's data; the test
compares the ranks with each other (bitwise) and with one process holding all the data.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from models import make_problem

import curvops

SIZES = (5, 3, 2, 4)


def build_operators(model, loss_fn, data, **kw) -> dict:
    """name -> operator, for every operator under test (each sees ``data``)."""
    return {
        "hessian": curvops.HessianOperator(model, loss_fn, data, **kw),
        "hessian_blocks": curvops.HessianOperator(model, loss_fn, data, blocks="layer", **kw),
        "ggn": curvops.GGNOperator(model, loss_fn, data, **kw),
        "mc": curvops.GGNOperator(model, loss_fn, data, mode="mc", mc_samples=3, **kw),
        "empirical": curvops.GGNOperator(model, loss_fn, data, mode="empirical", **kw),
        "kfac": curvops.KFACOperator(model, loss_fn, data, **kw),
        "kfac_mc": curvops.KFACOperator(model, loss_fn, data, fisher="mc", mc_samples=2, **kw),
        "kfac_empirical": curvops.KFACOperator(model, loss_fn, data, fisher="empirical", **kw),
        "ekfac": curvops.EKFACOperator(model, loss_fn, data, **kw),
    }


def algorithm_results(H) -> dict[str, torch.Tensor]:
    """Every algorithm on the Hessian H: eigsh (3 backends), power, trace, diagonal, density."""
    out = {}
    for backend in ("arpack", "lanczos", "lobpcg"):
        res = curvops.eigsh(H, k=3, which="LA", tol=1e-10, backend=backend)
        out[f"eigsh_{backend}"] = torch.as_tensor(res.eigenvalues)
        out[f"eigsh_{backend}_vectors"] = torch.as_tensor(res.eigenvectors)
    out["eigsh_BE"] = torch.as_tensor(curvops.eigsh(H, k=2, which="BE", tol=1e-10).eigenvalues)
    power = curvops.power_iteration(H, k=1, tol=1e-12, max_iter=2000)
    out["power"] = torch.as_tensor(power.eigenvalues)
    out["hutchinson"] = torch.tensor(curvops.hutchinson_trace(H, n_probes=6, chunk=4).estimate)
    out["hutchpp"] = torch.tensor(curvops.hutchpp_trace(H, n_matvecs=9).estimate)
    out["diagonal"] = torch.as_tensor(curvops.hutchinson_diagonal(H, n_probes=4).diagonal)
    density = curvops.spectral_density(H, n_probes=2, lanczos_steps=8)
    out["density"] = torch.as_tensor(density.density)
    return out


def results(model, loss_fn, data, **kw) -> dict[str, torch.Tensor]:
    ops = build_operators(model, loss_fn, data, **kw)
    out = {name: op.to_dense() for name, op in ops.items()}
    out["num_data"] = torch.tensor(ops["hessian"].num_data)
    out.update(algorithm_results(ops["hessian"]))
    return out


def run(rank: int, world_size: int, init_file: str, out_dir: str, shards) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        torch.set_num_threads(1)
        model, loss_fn, data = make_problem("mlp_tanh", "ce", sizes=SIZES)
        model = model.double()
        mine = [(X.double(), y) for X, y in (data[i] for i in shards[rank])]
        out = results(model, loss_fn, mine, process_group=dist.group.WORLD)
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
