"""``CurvatureLightningCallback``: a ``CurvatureTracker`` inside a PyTorch Lightning ``fit``."""

from __future__ import annotations

import importlib
from typing import Any

from curvops.track import CurvatureTracker


def _callback_base() -> Any:
    """Lightning's ``Callback`` from ``lightning.pytorch``, else from ``pytorch_lightning``."""
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name).Callback
        except ImportError:
            continue
    raise ImportError(
        "CurvatureLightningCallback needs PyTorch Lightning: pip install 'curvops[lightning]'"
    )


_Callback: Any = _callback_base()


class CurvatureLightningCallback(_Callback):
    """Steps ``tracker`` after every optimizer step of ``Trainer.fit``.

    The tracker's count follows ``trainer.global_step`` (batches that only accumulate
    gradients do not count), so it measures at the multiples of its ``every``. The first
    optimizer of the trainer is handed to the tracker when it has none. Under DDP build the
    tracker with ``process_group=torch.distributed.group.WORLD`` and each rank's shard of
    the probe set: every rank then gets the same records.
    """

    def __init__(self, tracker: CurvatureTracker, measure_at_start: bool = False) -> None:
        super().__init__()
        self.tracker = tracker
        self.measure_at_start = measure_at_start
        self._last_step = -1

    def _adopt_optimizer(self, trainer: Any) -> None:
        optimizers = getattr(trainer, "optimizers", None) or []
        if self.tracker.optimizer is None and optimizers:
            self.tracker.optimizer = optimizers[0]

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._adopt_optimizer(trainer)
        self._last_step = int(trainer.global_step)
        if self.measure_at_start:
            self.tracker.count = self._last_step
            self.tracker.measure()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if step == self._last_step:  # gradient accumulation: no optimizer step yet
            return
        self._last_step = step
        self._adopt_optimizer(trainer)
        self.tracker.step(step)
