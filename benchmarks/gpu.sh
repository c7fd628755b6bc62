#!/usr/bin/env bash
# The GPU checks of issue 14, item 5, in one call of the device tool (<= 8 minutes):
#
#   run(command="bash benchmarks/gpu.sh", timeout_s=540)       # add carry=[".whl"] for peers
#   DEVICE=cpu QUICK=1 OUT=/tmp/gpuout bash benchmarks/gpu.sh   # the dry run, here
#
# Steps (each under its own timeout, clipped to what is left of BUDGET seconds; a failed
# step is logged in summary.txt and the next one runs):
#   1. env       nvidia-smi, python, torch, CUDA                       -> gpu.log
#   2. tests     pytest -m cuda tests/ (DEVICE=cpu: the CPU items of tests/operators/
#                test_devices.py), 60 s per test                      -> cuda_tests.log
#   3. copies    host transfers counted (a TorchDispatchMode): per Hessian / GGN product
#                (1 and 16 columns) and per top-10 eigsh (lanczos, lobpcg, arpack) on the
#                digits MLP (QUICK: digits_small, 1 column, lanczos); the MC Fisher's keys
#                and products on the device vs the CPU
#                                                                      -> host_copies.json
#   4. products  benchmarks/run.py: Hessian and GGN product / gradient, matmat(16) per
#                column / matvec, against the torch floor (and the peers) -> products.json
#   5. eigen     benchmarks/eigen.py: top-10 eigsh, each backend (lanczos on the device),
#                wall time, products, error                            -> eigen.json
#   6. kfac      benchmarks/kfac.py: KFAC / EKFAC construction and product time -> kfac.json
# At most 8 files come back: gpu.log, summary.txt and the five above.
#
# Item 5 covered here without peers: every curvops number (product and gradient times,
# per-column matmat(16) / matvec, eigsh products and host copies, KFAC / EKFAC
# construction), each also checked against float64 references by the scripts. The peer
# columns (x peer, x baseline "scipy eigsh(curvlinops)", the peers' KFAC) need the peers,
# which the GPU machine lacks: download them here as wheels into .whl/ (README of the device
# tool: `echo /.whl/ >> .git/info/exclude`, then `python3 -m pip download --no-deps
# --only-binary=:all: --python-version 3.12 --implementation cp --platform
# manylinux2014_x86_64 -d .whl NAME==VERSION` for the pins of pyproject's `bench` extra
# that the machine lacks (curvlinops-for-pytorch, backpack-for-pytorch, einconv, unfoldNd,
# PyHessian, hessian-eigenthings, nngeometry; linear_operator and opt_einsum are there);
# one published only as an sdist: `python3 -m pip wheel --no-deps -w .whl NAME==VERSION`)
# and name .whl in carry: this script installs them into /tmp/site first. Missing peers
# are skipped with a note by benchmarks/peers.py's `available`.
#
# Benchmarks with --device: run.py (and its eigen / kfac sections), eigen.py, kfac.py,
# memory.py (run.py's per-row probe; off here: a fresh CUDA process per row). CPU-only
# (no --device): dataloader.py, layer_spectra.py, threads.py, track.py, watch.py,
# scaling.py, compare_scale.py (RSS probes), hf_memory.py, kfac_whole.py.
set -u
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
BUDGET=${BUDGET:-450}
OUT=${OUT:-/tmp/gpuout}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 1
export DEVICE QUICK OUT PY PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG=$OUT/gpu.log
SUMMARY=$OUT/summary.txt
: >"$LOG"
: >"$SUMMARY"

step() {  # step NAME CAP_SECONDS COMMAND...: run under min(CAP, time left), log, go on
    local name=$1 cap=$2 left t0 rc
    shift 2
    left=$((BUDGET - SECONDS))
    if ((left < 15)); then
        echo "$name: skipped, ${left} s of the budget left" | tee -a "$SUMMARY"
        return
    fi
    ((cap > left)) && cap=$left
    echo -e "\n===== $name (limit ${cap} s): $*" | tee -a "$LOG"
    t0=$SECONDS
    timeout -k 5 "$cap" "$@" >>"$LOG" 2>&1
    rc=$?
    echo "$name: rc=$rc ($((SECONDS - t0)) s$( ((rc == 124)) && echo ", timed out"))" |
        tee -a "$SUMMARY"
}

if compgen -G ".whl/*.whl" >/dev/null; then  # the peers, carried as wheels
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 &&
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

env_info() {
    nvidia-smi || echo "nvidia-smi: not found"
    $PY - <<'EOF'
import platform, numpy, scipy, torch
import curvops
print(f"python {platform.python_version()}, torch {torch.__version__}, numpy "
      f"{numpy.__version__}, scipy {scipy.__version__}, curvops {curvops.__version__} "
      f"from {curvops.__file__}")
print(f"cuda available {torch.cuda.is_available()}, torch CUDA {torch.version.cuda}, "
      f"cudnn {torch.backends.cudnn.version()}, threads {torch.get_num_threads()}")
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
from benchmarks.peers import available
print("peers:", {m: available(m) for m in
                 ("curvlinops", "backpack", "pyhessian", "hessian_eigenthings", "nngeometry")})
EOF
}
export -f env_info
step env 60 bash -c env_info

if [[ $DEVICE == cuda* ]] && ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "stop: DEVICE=$DEVICE but torch sees no CUDA device" | tee -a "$SUMMARY"
    exit 1
fi

tests() {
    local sel=(-m cuda tests/)
    [[ $DEVICE == cpu ]] && sel=(-m "not cuda" tests/operators/test_devices.py)
    set -o pipefail
    $PY -m pytest -q -rfE "${sel[@]}" -p no:cacheprovider --timeout=60 \
        --continue-on-collection-errors 2>&1 | tee "$OUT/cuda_tests.log"
}
export -f tests
step tests 150 bash -c tests

copies() {
    $PY - "$OUT/host_copies.json" <<'EOF'
"""Host transfers per product and per top-10 eigsh on the digits MLP (float32)."""
import json, os, sys, time
import numpy as np, torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
import curvops
from benchmarks.problems import PROBLEMS, digits_small
from curvops.core.seeds import _row_checksums  # private: the MC Fisher's per-point keys

class HostTransfers(TorchDispatchMode):
    """Device -> host tensor copies (sizes, bytes) and scalar reads (each a sync on a GPU)."""
    def __init__(self):
        super().__init__()
        self.sizes, self.bytes, self.scalars = [], 0, 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.scalars += 1
        elif any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in tree_leaves(args)):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                    self.sizes.append(t.numel()); self.bytes += t.numel() * t.element_size()
        return out
    def summary(self, P):
        return {"copies": len(self.sizes), "vector_copies": sum(n >= P for n in self.sizes),
                "copied_bytes": self.bytes, "scalar_reads": self.scalars}

dev, quick = torch.device(os.environ["DEVICE"]), os.environ["QUICK"] == "1"
sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
problem = (digits_small() if quick else PROBLEMS["digits"]()).to(str(dev))
P = problem.num_params
out = {"device": str(dev), "torch": torch.__version__, "problem": problem.name, "P": P,
       "products": {}, "eigsh": {}}

def save(stage):  # after every stage: a timeout still leaves what was measured
    print(stage, json.dumps(out[stage]), flush=True)
    open(sys.argv[1], "w").write(json.dumps(out, indent=1))

args = (problem.model, problem.loss_fn, problem.data)
gen = torch.Generator().manual_seed(0)
for name, op in (("hessian", curvops.HessianOperator(*args)), ("ggn", curvops.GGNOperator(*args))):
    for k in (1,) if quick else (1, 16):
        V = torch.randn(P, k, generator=gen).to(dev)
        op.torch_matmat(V)
        with HostTransfers() as h:
            op.torch_matmat(V)
        out["products"][f"{name}/{k}"] = h.summary(P)
save("products")
v0 = np.random.default_rng(0).standard_normal(P)
for backend in ("lanczos",) if quick else ("lanczos", "lobpcg", "arpack"):
    kw = dict(k=10, which="LA", tol=1e-4, backend=backend, v0=v0)
    with HostTransfers() as h:
        res = curvops.eigsh(curvops.HessianOperator(*args), **kw)
    sync(); start = time.perf_counter()
    if not quick:  # timed without the counter
        curvops.eigsh(curvops.HessianOperator(*args), **kw)
    sync()
    out["eigsh"][backend] = {**h.summary(P), "n_matvecs": int(res.n_matvecs),
                             "seconds": None if quick else time.perf_counter() - start,
                             "all_converged": res.all_converged,
                             "eigenvalues": [float(v) for v in res.eigenvalues]}
    save("eigsh")
if dev.type == "cuda":  # cross-check: the copies the CUDA profiler sees in one lanczos solve
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            curvops.eigsh(curvops.HessianOperator(*args), k=10, tol=1e-4, v0=v0)
        names = [e.name for e in prof.events()]
        out["eigsh"]["lanczos"]["profiler_memcpy_dtoh"] = sum("DtoH" in n for n in names)
        out["eigsh"]["lanczos"]["profiler_memcpy_htod"] = sum("HtoD" in n for n in names)
        save("eigsh")
    except Exception as err:
        print(f"note: profiler cross-check failed: {type(err).__name__}: {err}")
X = torch.cat([x for x, _ in problem.data])
keys = _row_checksums(X, X.shape[0]).cpu() != _row_checksums(X.cpu(), X.shape[0])
out["mc_keys"] = {"points": X.shape[0], "differ_from_cpu": int(keys.sum())}
cpu = problem.to("cpu")  # a float32 copy
mc = [curvops.GGNOperator(*p, mode="mc", seed=0) for p in (args, (cpu.model, cpu.loss_fn, cpu.data))]
V = torch.randn(P, 2, generator=gen)
a, b = mc[0].torch_matmat(V.to(dev)).cpu(), mc[1].torch_matmat(V)
out["mc_keys"]["product_rel_diff_from_cpu"] = float((a - b).norm() / b.norm())
save("mc_keys")
EOF
}
export -f copies
step copies 90 bash -c copies

if ((QUICK)); then
    Q=(--quick --rounds 1)
    P=(--problems digits)
else
    Q=()
    P=()
fi
step products 120 $PY benchmarks/run.py --device "$DEVICE" "${Q[@]}" "${P[@]}" --no-eigen \
    --no-kfac --no-memory --check --json "$OUT/products.json"
step eigen 100 $PY benchmarks/eigen.py --device "$DEVICE" "${Q[@]}" --check \
    --json "$OUT/eigen.json"
step kfac 75 $PY benchmarks/kfac.py --device "$DEVICE" "${Q[@]}" --no-memory --check \
    --json "$OUT/kfac.json"

echo "total $SECONDS s of a ${BUDGET} s budget" | tee -a "$SUMMARY"
ls -l "$OUT" >>"$LOG"
exit 0
