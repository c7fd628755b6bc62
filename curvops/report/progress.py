"""What a person sees while an analysis runs: a start line, a bar per step, a note before a
long step, a line per result.

``Feedback`` says where each goes: ``bars`` (tqdm on stderr: products done, rate and, where
the step's count is known, the ETA), ``lines`` (the start line and one line per result) and
``notes`` (a step that will take long says so when its first product has been timed, or
before it starts when its size alone says so). ``analyze(progress=True)`` sends all three to
stderr; ``progress=False`` (the default) is silent; the CLI passes its own ``Feedback``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

LONG_S = 60.0  # a step expected to take longer than this says so


@dataclass
class Feedback:
    """Where the progress of an analysis goes (None / False: nowhere)."""

    bars: bool = False
    lines: TextIO | None = None
    notes: TextIO | None = None

    @classmethod
    def of(cls, progress: bool | Feedback) -> Feedback:
        """``True``: everything to stderr; ``False``: silent; a Feedback: itself."""
        if isinstance(progress, Feedback):
            return progress
        stream = sys.stderr if progress else None
        return cls(bars=bool(progress), lines=stream, notes=stream)

    def line(self, text: str) -> None:
        _write(self.lines, text)

    def note(self, text: str) -> None:
        _write(self.notes, text)

    def bar(self, name: str, total: int | None, unit: str = "products") -> Any:
        """A tqdm bar on stderr for one step (None without bars); ``close()`` it after."""
        if not self.bars:
            return None
        from tqdm.auto import tqdm  # imported only when asked for (notebook widgets)

        return tqdm(
            total=total, desc=f"  {name}", unit=f" {unit}", leave=False, file=sys.stderr,
            dynamic_ncols=True, smoothing=0.1,
        )  # fmt: skip


def _write(stream: TextIO | None, text: str) -> None:
    if stream is not None:
        print(text, file=stream, flush=True)


def duration(seconds: float) -> str:
    """ "45 s", "3.5 min", "2.1 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def long_step_note(step: str, products: int, seconds_each: float, exact: bool) -> str | None:
    """The note for a step of ``products`` products (``exact``: that many; else at least
    that many) at ``seconds_each``, when it will take longer than LONG_S; else None."""
    total = products * seconds_each
    if total <= LONG_S:
        return None
    count = f"{'' if exact else 'at least '}{products:,} products"
    return (
        f"note: {step} will take {'about' if exact else 'at least'} {duration(total)} "
        f"({count}, {seconds_each:.2g} s each, measured on its first product)"
    )
