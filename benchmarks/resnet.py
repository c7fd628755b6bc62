"""A ResNet-18 (11.2 M parameters) without torchvision, and its benchmark data.

The torchvision layout: a 7x7 stride-2 stem with max pooling, four stages of two basic
blocks (64, 128, 256, 512 channels; 1x1 stride-2 projections), global average pooling
and a linear head; every convolution without bias, followed by BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (projected when the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.down(x))


class ResNet18(nn.Module):
    """(B, 3, H, W) -> (B, classes)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def resnet_problem(n: int = 256, batch: int = 64, seed: int = 0):
    """(model in eval mode, CE loss, batches) on n seeded random 3x32x32 images, 10 classes;
    BatchNorm's running statistics set by one pass over the data in train mode."""
    torch.manual_seed(seed)
    model = ResNet18()
    gen = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    data = [(X[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]
    with torch.no_grad():
        for xb, _ in data:
            model(xb)  # running statistics of BatchNorm (train mode)
    return model.eval(), nn.CrossEntropyLoss(), data
