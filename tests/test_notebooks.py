"""The documents run: the notebooks top to bottom in a fresh kernel of this interpreter (and are
stored clean), and the README's ten-line example."""

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 300


@pytest.fixture
def kernel_of_this_python(tmp_path, monkeypatch):
    """A "python3" kernel spec running sys.executable, found first through JUPYTER_PATH.

    One thread per library: the notebooks are small, and on a shared machine extra threads
    only wait for each other. MPLBACKEND=Agg: no display, figures are not rendered inline.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (curvops tests)",
        "language": "python",
        "env": {"MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    resolved = KernelSpecManager().get_kernel_spec("python3")
    assert resolved.argv[0] == sys.executable, resolved.argv
    return "python3"


def test_four_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01_quickstart.ipynb",
        "02_exact_vs_kronecker.ipynb",
        "03_layerwise_and_eigenbasis.ipynb",
        "04_curvature_over_training.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert any(c.cell_type == "markdown" for c in nb.cells)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_runs_top_to_bottom(path, tmp_path, kernel_of_this_python):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name=kernel_of_this_python,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's cwd
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on failure
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    printed = "".join(
        o.get("text", "")
        for c in nb.cells
        for o in c.get("outputs", [])
        if o.get("name") == "stdout"
    )
    assert printed.strip(), "the notebook printed nothing"
    assert not re.search(r"\bnan\b", printed, re.IGNORECASE), printed  # no silent NaN results


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    import numpy as np
    import scipy.sparse.linalg as sla
    import torch

    import curvops

    text = (ROOT / "README.md").read_text()
    example = re.search(r"## Ten lines\n+```python\n(.*?)```", text, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)  # the example saves its report to ./report
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    report, cut, H = namespace["report"], namespace["cut"], namespace["H"]
    assert capsys.readouterr().out.startswith("curvops report: Sequential, Hessian")
    top = sla.eigsh(H, k=5, which="LA", return_eigenvectors=False)  # scipy consumes H directly
    np.testing.assert_allclose(np.sort(top)[::-1], report.top.eigenvalues, rtol=1e-4, atol=1e-6)
    assert report.trace is not None and report.density is not None and report.layers is not None
    assert curvops.Report.load(tmp_path / "report") == report
    assert (tmp_path / "report" / "report.png").is_file()
    np.testing.assert_allclose(cut.rayleigh[0], report.top.eigenvalues[0], rtol=1e-4)
