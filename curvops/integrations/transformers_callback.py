"""``CurvatureTrainerCallback``: a ``CurvatureTracker`` inside Hugging Face ``Trainer.train()``."""

from __future__ import annotations

from typing import Any

from curvops.track import CurvatureTracker

try:
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "CurvatureTrainerCallback needs transformers: pip install 'curvops[hf]'"
    ) from err


class CurvatureTrainerCallback(TrainerCallback):
    """Steps ``tracker`` after every optimizer step of ``Trainer.train()``.

    The tracker's count follows ``state.global_step`` (gradient accumulation counts one
    step per optimizer step), so it measures at the multiples of its ``every``. Build the
    tracker on a held-out probe set, with a model sharing the trained parameters (e.g. a
    wrapper returning the logits). The Trainer's optimizer is handed to the tracker when it
    has none (learning rate and 2/η in the records). ``measure_at_start``: also measure
    before the first step. Each measurement runs in eval mode (Dropout off) and the
    model's modes are restored; ``tracker.records`` holds the results.
    """

    def __init__(self, tracker: CurvatureTracker, measure_at_start: bool = False) -> None:
        self.tracker = tracker
        self.measure_at_start = measure_at_start

    def _adopt_optimizer(self, kwargs: dict[str, Any]) -> None:
        if self.tracker.optimizer is None and kwargs.get("optimizer") is not None:
            self.tracker.optimizer = kwargs["optimizer"]

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._adopt_optimizer(kwargs)
        if self.measure_at_start:
            self.tracker.count = int(state.global_step)
            self.tracker.measure()
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._adopt_optimizer(kwargs)
        self.tracker.step(int(state.global_step))
        return control
