"""A MobileNetV2-style CNN (Sandler et al., 2018) and a `build` function for the `torch` task.

Width multiplier and input resolution are the train knobs (`TRAIN_KNOBS`). No data set ships with
edge-search and nothing is downloaded, so the weights are random (seeded), with BatchNorm
statistics re-estimated on synthetic images (forward passes in train mode) so activations stay in
a realistic range for quantisation. Quality is fidelity to the fp32 export (`fidelity_top1`,
`fidelity_cosine`, ...). Note that random weights give near-tied logits, so top-1 agreement is a
harsh test for int8 here; a trained network has wider margins. Bring real data by returning it
(and `labels`) from your own `build`.
This is a latency workload, not a quality reference: judge int8 and mixed precision on real weights
with `examples/pretrained_efficientnet_lite.py` (pretrained EfficientNet-Lite, real photos).

    task: {name: torch, options: {builder: "examples.mobilenet_v2:build"}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

#: Train knobs `build` accepts, with defaults (the `torch` task reads this dict).
TRAIN_KNOBS: dict[str, Any] = {"width": 1.0, "resolution": 224, "classes": 1000, "bn_samples": 32,
                               "eval_samples": 64}

#: (expansion t, output channels c, repeats n, first stride s) of the inverted-residual stages.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never below 90 % of `v` (as in the paper's code)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU6 (BN folds into the conv at export)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [conv_bn(cin, hidden, 1, 1)]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 with a width multiplier; any input resolution (global average pooling)."""

    def __init__(self, width: float = 1.0, classes: int = 1000) -> None:
        super().__init__()
        cin = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [conv_bn(3, cin, 3, 2)]
        for t, c, n, s in STAGES:
            cout = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn(cin, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, classes)
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


def synthetic_images(n: int, resolution: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded labelled images, (n, 3, r, r) float32 roughly ImageNet-normalised, and labels (n,).

    Class c is a fixed coarse 7x7 colour pattern (seeded by c); each image adds coarse and pixel
    noise, so classes overlap a little.
    """
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(12345).standard_normal((classes, 3, 7, 7)).astype(np.float32)
    labels = rng.integers(0, classes, size=n).astype(np.int64)
    coarse = protos[labels] + 0.6 * rng.standard_normal((n, 3, 7, 7)).astype(np.float32)
    smooth = nn.functional.interpolate(torch.from_numpy(coarse), size=(resolution, resolution),
                                       mode="bicubic",
                                       align_corners=False).numpy()
    noise = rng.standard_normal((n, 3, resolution, resolution)).astype(np.float32)
    return (smooth + 0.3 * noise).astype(np.float32), labels


@torch.no_grad()
def recalibrate_bn(model: MobileNetV2, images: np.ndarray, batch: int = 16) -> None:
    """Re-estimate BatchNorm running statistics on `images` (forward passes in train mode)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    model.train()
    for start in range(0, len(images), batch):
        model.features(torch.from_numpy(images[start:start + batch]))
    model.eval()


def build(params: Mapping[str, Any]) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """The `torch` task's builder: a MobileNetV2 for `params` and `{"input": eval images}`."""
    r, classes = int(params["resolution"]), int(params["classes"])
    model = MobileNetV2(float(params["width"]), classes)
    recalibrate_bn(model, synthetic_images(int(params["bn_samples"]), r, classes, seed=0)[0])
    return model, {"input": synthetic_images(int(params["eval_samples"]), r, classes, seed=1)[0]}
