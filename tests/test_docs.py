"""Every ```python block of docs/**/*.md runs, each on its own in a fresh namespace (a
snippet is self-contained), in a temporary working folder, with matplotlib's Agg backend.

A block that must not run (it needs a cluster, say) is preceded by the line
``<!-- docs-test: skip (the reason) -->``; use it sparingly.
"""

import re
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)```", re.DOTALL)
SKIP = re.compile(r"<!-- docs-test: skip \(.+\) -->")


def blocks():
    """(page, index, code, skipped) for every python block of the docs."""
    for page in sorted((ROOT / "docs").rglob("*.md")):
        text = "\n" + page.read_text()
        for i, match in enumerate(BLOCK.finditer(text)):
            skipped = bool(SKIP.fullmatch(match["before"].strip()))
            yield page.relative_to(ROOT).as_posix(), i, match["code"], skipped


BLOCKS = list(blocks())


def test_the_docs_have_python_blocks_and_few_skips():
    assert len(BLOCKS) >= 15
    assert sum(skipped for *_, skipped in BLOCKS) <= 2


@pytest.mark.parametrize(
    ("page", "index", "code", "skipped"), BLOCKS, ids=[f"{p}#{i}" for p, i, *_ in BLOCKS]
)
def test_block_runs(page, index, code, skipped, tmp_path, monkeypatch):
    if skipped:
        pytest.skip(f"{page} block {index} is marked docs-test: skip")
    if "transformers" in code:
        pytest.importorskip("transformers")  # the optional extra "hf"
    import matplotlib
    import torch

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # a block may write files (figures, reports)
    torch.manual_seed(0)
    before = torch.get_num_threads()
    try:
        exec(compile(code, f"{page} (block {index})", "exec"), {"__name__": "__docs__"})
    finally:
        torch.set_num_threads(before)
        import matplotlib.pyplot as plt

        plt.close("all")
