"""CurvatureLightningCallback inside a real Lightning Trainer.fit (skipped without Lightning)."""

import importlib.util

import numpy as np
import pytest
import torch
from models import make_problem
from torch import nn

if importlib.util.find_spec("lightning") is not None:
    import lightning.pytorch as pl
else:
    pl = pytest.importorskip(
        "pytorch_lightning", reason="neither lightning nor pytorch_lightning is installed"
    )

from curvops.integrations import CurvatureLightningCallback  # noqa: E402
from curvops.track import CurvatureTracker  # noqa: E402


class Module(pl.LightningModule):
    def __init__(self, net: nn.Module, loss_fn) -> None:
        super().__init__()
        self.net, self.loss_fn = net, loss_fn

    def training_step(self, batch, batch_idx):
        X, y = batch
        return self.loss_fn(self.net(X), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_callback_measures_during_fit(tmp_path, accumulate):
    net, loss_fn, data = make_problem("mlp_tanh", "ce", sizes=(5, 3, 2, 4))
    X = torch.cat([x for x, _ in data])
    y = torch.cat([t for _, t in data])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=2)
    tracker = CurvatureTracker(net, loss_fn, data[:2], every=2, k=2, trace="hutch++")
    trainer = pl.Trainer(
        max_steps=6,
        accelerator="cpu",
        devices=1,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[CurvatureLightningCallback(tracker)],
    )
    trainer.fit(Module(net, loss_fn), loader)
    assert trainer.global_step == 6
    assert [r.step for r in tracker.records] == [2, 4, 6]
    assert all(r.lr == 0.2 and r.two_over_lr == 10.0 for r in tracker.records)
    assert not np.allclose(tracker.records[0].eigenvalues, tracker.records[-1].eigenvalues)
