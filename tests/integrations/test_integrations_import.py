"""curvops.integrations imports without transformers or Lightning; the callbacks then say what
to install."""

import subprocess
import sys

SCRIPT = """
import sys
for name in ("transformers", "lightning", "pytorch_lightning"):
    sys.modules[name] = None  # as if not installed
import curvops.integrations as integrations
assert sorted(integrations.__all__) == ["CurvatureLightningCallback", "CurvatureTrainerCallback"]
for name, hint in (("CurvatureTrainerCallback", "curvops[hf]"), ("CurvatureLightningCallback", "lightning")):
    try:
        getattr(integrations, name)
    except ImportError as err:
        assert hint in str(err), err
    else:
        raise AssertionError(name + " imported without its library")
try:
    integrations.Nothing
except AttributeError:
    pass
print("ok")
"""


def test_integrations_import_without_the_libraries():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
