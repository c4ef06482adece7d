"""An EfficientNet-Lite0-style CNN (Tan & Le, 2019; the "Lite" edge variant) and a `build` function.

EfficientNet-Lite drops squeeze-and-excitation, uses ReLU6 instead of swish and keeps the stem and
head fixed when scaling, all for int8 friendliness on edge CPUs. Lite0 is width 1.0, depth 1.0 at
224x224: MBConv blocks (expansion t, kernel k, stride s, channels c, repeats n) below.

No data set ships with edge-search and nothing is downloaded, so weights are random (seeded) with
BatchNorm statistics re-estimated on synthetic images, as in `examples.mobilenet_v2`. Quality is
fidelity to the fp32 export. Random weights give near-tied logits over 1000 classes, so top-1
agreement is a harsh test for int8 (a trained network has wider margins): the figures are for this
architecture's arithmetic and quantisation noise, not for a pretrained model's accuracy. (A linear
probe on synthetic classes was tried: it memorised the training images, generalised to none, and
its large weights made int8 worse, so it is not used.)

    task: {name: torch, options: {builder: "examples.efficientnet_lite:build"}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from examples.mobilenet_v2 import conv_bn, synthetic_images

#: Train knobs `build` accepts, with defaults (the `torch` task reads this dict).
TRAIN_KNOBS: dict[str, Any] = {"resolution": 224, "classes": 1000, "bn_samples": 32, "eval_samples": 64}

#: (expansion t, kernel k, first stride s, output channels c, repeats n) of EfficientNet-B0/Lite0.
BLOCKS = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class MBConv(nn.Module):
    """1x1 expand (t > 1), kxk depthwise, 1x1 linear projection; residual when shapes allow. No SE."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [conv_bn(cin, hidden, 1, 1)]
        layers += [conv_bn(hidden, hidden, k, stride, groups=hidden), conv_bn(hidden, cout, 1, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.body(x)
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0: stem 3x3/2 (32), MBConv stages, head 1x1 (1280), pool, linear."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        cin = 32
        layers: list[nn.Module] = [conv_bn(3, cin, 3, 2)]
        for t, k, s, c, n in BLOCKS:
            for i in range(n):
                layers.append(MBConv(cin, c, k, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        out: torch.Tensor = self.classifier(x)
        return out


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: np.ndarray, batch: int = 16) -> None:
    """Re-estimate BatchNorm running statistics on `images` (forward passes of `model.features`)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    model.train()
    features: nn.Module = model.features  # type: ignore[assignment]
    for start in range(0, len(images), batch):
        features(torch.from_numpy(images[start:start + batch]))
    model.eval()


def build(params: Mapping[str, Any]) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """The `torch` task's builder: an EfficientNet-Lite0 for `params` and `{"input": eval images}`."""
    r, classes = int(params["resolution"]), int(params["classes"])
    model = EfficientNetLite(classes)
    recalibrate_bn(model, synthetic_images(int(params["bn_samples"]), r, classes, seed=0)[0])
    return model, {"input": synthetic_images(int(params["eval_samples"]), r, classes, seed=1)[0]}
