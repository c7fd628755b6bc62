"""The ``--out`` folder of a command: checked before any work, marked with the command.

Each command writes to its own default folder (``curvops_spectrum/``, ...) and leaves a
marker file, ``.curvops``, naming itself; a folder whose marker names another command is
refused, so that two commands' results.json never mix.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

MARKER = ".curvops"


def default_out(command: str) -> str:
    return f"curvops_{command}"


def check_out(out: str, command: str) -> Path:
    """The folder, refused (ValueError, one line) when it is a file, cannot be written, or
    holds another command's output. Creates nothing."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: choose a folder for the results")
    owner = _owner(path)
    if owner is not None and owner != command:
        raise ValueError(
            f"--out {out} holds the output of `curvops {owner}` ({path / MARKER}): choose "
            f"another folder, e.g. --out {default_out(command)}, or remove that one"
        )
    _check_writable(path, out)
    return path


def claim_out(path: Path, command: str) -> Path:
    """Create the folder and its marker (the command's name)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text(command + "\n")
    return path


def _owner(path: Path) -> str | None:
    marker = path / MARKER
    return marker.read_text().strip() or None if marker.is_file() else None


def _check_writable(path: Path, out: str) -> None:
    """A file can be created in the folder, or in its nearest existing parent."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is a file, so the folder cannot be created")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(
            f"--out {out} cannot be written ({existing}: {reason}): choose a folder you can "
            "write to"
        ) from None
