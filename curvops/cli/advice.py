"""Errors and warnings as the command line shows them: one line, command-line advice.

curvops' messages give Python advice ("pass params=...", "call model.eval()"); on the
command line the same advice names the flag to add, or what the factory should return.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (pattern, replacement) in order; each pattern matches Python advice inside a message
REWRITES: list[tuple[str, str]] = [
    (
        r"[Pp]ass params= without (it|them)",
        r"Leave \1 out with --params REGEX (a regular expression matching the names of the "
        "parameters to analyse)",
    ),
    (
        r"[Cc]all model\.eval\(\)( \(or set those probabilities to 0\))?( first| before "
        r"building the operator)?",
        "The factory should return the model in eval mode (return model.eval(), ...)",
    ),
    (
        r"[Pp]ut the model in eval mode",
        "return the model in eval mode from the factory (model.eval())",
    ),
    (
        r"pass batch_size_fn=lambda X: \.\.\. to the operator",
        "return batches whose X is a tensor, or a dict of tensors sharing their first size",
    ),
    (
        r"\(HessianOperator accepts any differentiable loss\)",
        "(--curvature hessian takes any loss)",
    ),
    (
        r"Try a larger max_iter \(now [^)]*\), a larger ncv \(now [^)]*\) or a looser tol",
        "Try a looser --tol, a smaller --k, or another --backend (arpack, lobpcg)",
    ),
    (r"loosen tol", "loosen --tol"),
    (
        r"pass norm= \(e\.g\. λ_max of a top solve\)",
        "use --which BE (its top solve gives ‖A‖ to the bottom one)",
    ),
    (r": build the operator with column_mode='per_column' to skip the attempt", ""),
    (r"use float64 if the model is ill-scaled", "return a float64 model (model.double())"),
    (
        r"use eigsh\(op, which='LA'\)( \(Lanczos / ARPACK\))?( instead)?",
        "use --which LA (Lanczos / ARPACK)",
    ),
]


def command_line_advice(text: str) -> str:
    """``text`` with its Python advice replaced by command-line advice."""
    for pattern, replacement in REWRITES:
        text = re.sub(pattern, replacement, text)
    return text


def one_line(err: BaseException) -> str:
    """The error as one line with command-line advice; an error that is not one of
    curvops' own checks (ValueError) is named by its type and points to --traceback."""
    text = command_line_advice(" ".join(str(err).split()) or "(no message)")
    if isinstance(err, ValueError):
        return text
    return f"{type(err).__name__}: {text} (run with --traceback for details)"


@contextmanager
def command_line_warnings(prog: str) -> Iterator[None]:
    """Within it, curvops' own warnings print as one line each on stderr,
    ``{prog}: warning: ...`` with command-line advice; other warnings are left alone."""
    with warnings.catch_warnings():  # restores showwarning on exit
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not _from_curvops(category, filename):
                return previous(message, category, filename, lineno, file, line)
            text = command_line_advice(" ".join(str(message).split()))
            print(f"{prog}: warning: {text}", file=sys.stderr, flush=True)

        warnings.showwarning = show
        yield


def _from_curvops(category: type, filename: str) -> bool:
    module = getattr(category, "__module__", "")
    return module.startswith("curvops") or "curvops" in filename.replace("\\", "/").split("/")
