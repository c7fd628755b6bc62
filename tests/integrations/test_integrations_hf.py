"""CurvatureTrainerCallback inside a real Hugging Face Trainer.train() (tiny random GPT-2, offline)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))
import hf_tiny_lm  # noqa: E402

from curvops.integrations import CurvatureTrainerCallback  # noqa: E402
from curvops.track import CurvatureTracker  # noqa: E402


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, batches):
        self.rows = [
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
            for X, _ in batches
            for ids in X["input_ids"]
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def test_callback_measures_during_trainer_train(tmp_path):
    lm = hf_tiny_lm.tiny_lm()
    probe = hf_tiny_lm.token_batches(sizes=(4, 2), seed=7)  # held out: not trained on
    train = TokenDataset(hf_tiny_lm.token_batches(sizes=(8, 8, 8), seed=1))
    model = hf_tiny_lm.NextTokenLogits(lm)  # shares lm's parameters
    tracker = CurvatureTracker(model, nn.CrossEntropyLoss(), probe, every=2, k=2, layers=True)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    callback = CurvatureTrainerCallback(tracker, measure_at_start=True)
    trainer = transformers.Trainer(model=lm, args=args, train_dataset=train, callbacks=[callback])
    trainer.train()
    steps = [r.step for r in tracker.records]
    assert steps == [0, 2, 4, 6]
    assert all(r.all_converged for r in tracker.records)
    assert tracker.records[1].lr is not None and tracker.records[-1].warm
    assert lm.training  # the Trainer's mode is back after each measurement
    assert not np.allclose(tracker.records[0].eigenvalues, tracker.records[-1].eigenvalues)
    assert tracker.records[-1].layer_names and len(tracker.records[-1].subspace_cosines) == 2
