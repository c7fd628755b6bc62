"""What every command on a factory does first: check the options, then run the factory.

The device and the ``--out`` folder are checked before the factory runs (a typo does not
cost a training run); then the model is moved, ``--params`` selects its parameters, the
thread count is set and the folder is created with its marker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from curvops.cli.factory import load_problem
from curvops.cli.output import check_out, claim_out
from curvops.cli.runtime import check_device, set_threads

SHOWN_NAMES = 6  # parameter names quoted when --params matches none


@dataclass
class Prepared:
    """The factory's problem on its device, the output folder and the operators' options."""

    model: nn.Module
    loss_fn: Any
    data: Any
    optimizer: Any
    out: Path
    operator_kwargs: dict[str, Any] = field(default_factory=dict)


def prepare(args: Any, command: str) -> Prepared:
    """Check ``args.device`` and ``args.out``, run ``args.factory``, apply ``--params`` and
    ``--threads``, create the folder."""
    check_device(args.device)
    out = check_out(args.out, command)
    problem = load_problem(args.factory)
    model = problem.model.to(args.device) if args.device else problem.model
    kwargs = {}
    if getattr(args, "params", None):
        kwargs["params"] = select_params(model, args.params)
    if getattr(args, "micro_batch_size", None):
        kwargs["micro_batch_size"] = args.micro_batch_size
    set_threads(args.threads, model)
    return Prepared(
        model, problem.loss_fn, problem.data, problem.optimizer, claim_out(out, command), kwargs
    )


def select_params(model: nn.Module, pattern: str) -> list[torch.Tensor]:
    """The trainable parameters whose name ``re.search``-es ``pattern``; none is an error
    that quotes a few names."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    chosen: list[torch.Tensor] = [p for n, p in named if re.search(pattern, n)]
    if not chosen:
        names = ", ".join(n for n, _ in named[:SHOWN_NAMES])
        more = ", ..." if len(named) > SHOWN_NAMES else ""
        raise ValueError(
            f"--params {pattern!r} matches none of the model's {len(named)} parameter names "
            f"({names}{more}): give a regular expression that matches some of them"
        )
    return chosen
