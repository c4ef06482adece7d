"""Reference-suite architectures that torchvision lacks (proxies), written in torch.

Imported only when a suite model is built (`reference_suite.SuiteModel.build`): it imports torch
and torchvision at import time. Every builder here is named by a `reference_suite.SUITE` entry
whose ``source`` says what it stands for and where its definition comes from (paper, timm config).
They reproduce the published layer structure (widths, depths, kernels, strides, SE, activations);
where a detail is not reproduced (BiFPN's weighted fusion, anchors, NMS, post-processing) the
entry's source says so. torchvision architectures are not copied here: `reference_suite` builds
them from ``torchvision.models``; some proxies reuse torchvision parts (ShuffleNetV2 backbones,
the EfficientNet / MobileNetV3 classes with other settings).

Weights are random: latency does not depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edge_search.devices.emulation.torchvision_import import import_torchvision


def _tvm() -> Any:
    """``torchvision.models`` (through the import shim)."""
    return import_torchvision().models


# ----------------------------------------------------------------------------- building blocks


def cbr(ci: int, co: int, k: int = 3, s: int = 1, g: int = 1, act: Any = nn.ReLU) -> nn.Module:
    """Conv (no bias), BatchNorm, activation."""
    return nn.Sequential(nn.Conv2d(ci, co, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(co), act())


class SE(nn.Module):
    """Squeeze-and-excitation: global pool, reduce to `rd` channels, expand, gate."""

    def __init__(self, c: int, rd: int, gate: Any = nn.Sigmoid, act: Any = nn.ReLU) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, rd, 1), act(), nn.Conv2d(rd, c, 1), gate())

    def forward(self, x: Any) -> Any:
        return x * self.f(x)


class MixDW(nn.Module):
    """Depthwise conv with channels split over several kernel sizes (MixConv)."""

    def __init__(self, c: int, ks: tuple[int, ...], s: int) -> None:
        super().__init__()
        n = len(ks)
        self.sizes = [c // n + (1 if i < c % n else 0) for i in range(n)]
        self.convs = nn.ModuleList(
            nn.Conv2d(z, z, k, s, k // 2, groups=z, bias=False) for z, k in zip(self.sizes, ks, strict=True)
        )

    def forward(self, x: Any) -> Any:
        if len(self.convs) == 1:
            return self.convs[0](x)
        return torch.cat([cv(p) for cv, p in zip(self.convs, torch.split(x, self.sizes, 1), strict=True)], 1)


class GConv1(nn.Module):
    """1x1 conv split into `g` groups of channels (MixNet's grouped expansion/projection)."""

    def __init__(self, ci: int, co: int, g: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ci, co, 1, groups=g, bias=False)

    def forward(self, x: Any) -> Any:
        return self.conv(x)


@dataclass(frozen=True)
class B:
    """One MBConv-style stage: repeats, kernels, stride, expansion, out channels, SE ratio (of in)."""

    r: int
    k: tuple[int, ...]
    s: int
    e: float
    c: int
    se: float = 0.0
    act: str = "relu"
    ge: int = 1  # groups of the expansion 1x1
    gp: int = 1  # groups of the projection 1x1
    skip: bool = True
    ds: bool = False  # depthwise-separable (no expansion conv)


ACTS: dict[str, Any] = {"relu": nn.ReLU, "relu6": nn.ReLU6, "swish": nn.SiLU, "hswish": nn.Hardswish}


class MB(nn.Module):
    """Inverted residual (MBConv) block configured by a `B`."""

    def __init__(self, ci: int, co: int, b: B, s: int) -> None:
        super().__init__()
        act = ACTS[b.act]
        mid = ci if b.ds else round(ci * b.e)
        layers: list[nn.Module] = []
        if not b.ds and b.e != 1:
            layers += [GConv1(ci, mid, b.ge), nn.BatchNorm2d(mid), act()]
        layers += [MixDW(mid, b.k, s), nn.BatchNorm2d(mid), act()]
        if b.se:
            layers.append(SE(mid, max(1, int(ci * b.se)), act=act))
        layers += [GConv1(mid, co, b.gp), nn.BatchNorm2d(co)]
        self.body = nn.Sequential(*layers)
        self.res = b.skip and s == 1 and ci == co

    def forward(self, x: Any) -> Any:
        y = self.body(x)
        return x + y if self.res else y


def mbnet(stem: int, blocks: list[B], head: int, stem_act: str = "relu", width: float = 1.0,
          depth: float = 1.0, classes: int = 1000) -> nn.Module:
    """A MobileNetV2/EfficientNet-style classifier from stage configs."""

    def ch(c: int) -> int:
        return max(8, int(c * width + 4) // 8 * 8)

    layers: list[nn.Module] = [cbr(3, ch(stem), 3, 2, act=ACTS[stem_act])]
    ci = ch(stem)
    for i, b in enumerate(blocks):
        reps = b.r if (i == 0 or i == len(blocks) - 1 or depth == 1.0) else max(1, int(-(-b.r * depth // 1)))
        for j in range(reps):
            co = ch(b.c)
            layers.append(MB(ci, co, b, b.s if j == 0 else 1))
            ci = co
    layers += [cbr(ci, head, 1, act=ACTS[stem_act]), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head, classes)]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- classifiers


def mobilenet_v1(width: float = 1.0, features: bool = False) -> nn.Sequential:
    """MobileNetV1 (Howard et al. 2017): 13 depthwise-separable layers."""

    def c(x: int) -> int:
        return max(8, int(x * width))

    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    layers: list[nn.Module] = [cbr(3, c(32), 3, 2)]
    ci = c(32)
    for co, s in cfg:
        layers += [cbr(ci, ci, 3, s, g=ci), cbr(ci, c(co), 1)]
        ci = c(co)
    if features:
        return nn.Sequential(*layers)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ci, 1000))


class ShuffleV1Unit(nn.Module):
    """ShuffleNet v1 unit: grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1."""

    def __init__(self, ci: int, co: int, s: int, g: int, first: bool) -> None:
        super().__init__()
        self.s, self.g = s, g
        out = co - ci if s == 2 else co
        mid = co // 4
        g1 = 1 if first else g
        self.b = nn.Sequential(nn.Conv2d(ci, mid, 1, groups=g1, bias=False), nn.BatchNorm2d(mid), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, s, 1, groups=mid, bias=False), nn.BatchNorm2d(mid))
        self.pw = nn.Sequential(nn.Conv2d(mid, out, 1, groups=g, bias=False), nn.BatchNorm2d(out))
        self.mid = mid
        self.g1 = g1

    def forward(self, x: Any) -> Any:
        y = self.b(x)
        if self.g1 > 1:
            n, c, h, w = y.shape
            y = y.view(n, self.g1, c // self.g1, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = self.pw(self.dw(y))
        if self.s == 2:
            return torch.relu(torch.cat([nn.functional.avg_pool2d(x, 3, 2, 1), y], 1))
        return torch.relu(x + y)


def shufflenet_v1(g: int = 3) -> nn.Module:
    """ShuffleNet v1 1.0x (Zhang et al. 2018) with `g` groups."""
    outs = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}[g]
    layers: list[nn.Module] = [cbr(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
    ci = 24
    for i, (co, n) in enumerate(((outs, 4), (outs * 2, 8), (outs * 4, 4))):
        for r in range(n):
            layers.append(ShuffleV1Unit(ci, co, 2 if r == 0 else 1, g, first=(i == 0 and r == 0)))
            ci = co
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ci, 1000))


class OSA(nn.Module):
    """VoVNet one-shot-aggregation block, depthwise variant with effective SE (timm ese_vovnet*_dw)."""

    def __init__(self, ci: int, mid: int, co: int, n: int, residual: bool) -> None:
        super().__init__()
        self.red = cbr(ci, mid, 1) if ci != mid else nn.Identity()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False), cbr(mid, mid, 1)) for _ in range(n)
        )
        self.concat = cbr(ci + n * mid, co, 1)
        self.ese = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(co, co, 1), nn.Hardsigmoid())
        self.residual = residual and ci == co

    def forward(self, x: Any) -> Any:
        outs = [x]
        y = self.red(x)
        for layer in self.layers:
            y = layer(y)
            outs.append(y)
        y = self.concat(torch.cat(outs, 1))
        y = y * self.ese(y)
        return y + x if self.residual else y


def ese_vovnet19b_dw() -> nn.Module:
    """ESE-VoVNet19b-DW (timm's configuration)."""
    layers: list[nn.Module] = [
        cbr(3, 64, 3, 2),
        nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1, groups=64, bias=False), cbr(64, 64, 1)),
        nn.Sequential(nn.Conv2d(64, 64, 3, 2, 1, groups=64, bias=False), cbr(64, 128, 1)),
    ]
    ci = 128
    for i, (mid, co) in enumerate(((128, 256), (160, 512), (192, 768), (224, 1024))):
        if i > 0:
            layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
        layers.append(OSA(ci, mid, co, 3, residual=True))
        ci = co
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ci, 1000))


class RepBlock(nn.Module):
    """RepVGG training-time block: 3x3 conv-BN + 1x1 conv-BN (+ identity BN), summed, ReLU."""

    def __init__(self, ci: int, co: int, s: int) -> None:
        super().__init__()
        self.k3 = nn.Sequential(nn.Conv2d(ci, co, 3, s, 1, bias=False), nn.BatchNorm2d(co))
        self.k1 = nn.Sequential(nn.Conv2d(ci, co, 1, s, 0, bias=False), nn.BatchNorm2d(co))
        self.idn = nn.BatchNorm2d(co) if ci == co and s == 1 else None

    def forward(self, x: Any) -> Any:
        y = self.k3(x) + self.k1(x)
        if self.idn is not None:
            y = y + self.idn(x)
        return torch.relu(y)


def repvgg_b0() -> nn.Module:
    """RepVGG-B0 (Ding et al. 2021) in its training-time form (3x3 + 1x1 + identity branches)."""
    widths, depths = (64, 128, 256, 512), (4, 6, 16, 1)
    layers: list[nn.Module] = [RepBlock(3, 64, 2)]
    ci = 64
    for w, d in zip(widths, depths, strict=True):
        for j in range(d):
            layers.append(RepBlock(ci, w, 2 if j == 0 else 1))
            ci = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ci, 1000))


def efficientnet_lite(k: int) -> nn.Module:
    """EfficientNet-Lite0..4: EfficientNet without SE, ReLU6, fixed stem/head (TF model garden)."""
    w, d = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2), 3: (1.2, 1.4), 4: (1.4, 1.8)}[k]
    blocks = [B(1, (3,), 1, 1, 16, act="relu6", ds=True), B(2, (3,), 2, 6, 24, act="relu6"),
              B(2, (5,), 2, 6, 40, act="relu6"), B(3, (3,), 2, 6, 80, act="relu6"), B(3, (5,), 1, 6, 112, act="relu6"),
              B(4, (5,), 2, 6, 192, act="relu6"), B(1, (3,), 1, 6, 320, act="relu6")]
    return mbnet(32, blocks, 1280, "relu6", width=w, depth=d)


def mnasnet_a1() -> nn.Module:
    """MnasNet-A1 (Tan et al. 2019; with SE): torchvision's mnasnet1_0 is the B1 variant."""
    blocks = [B(1, (3,), 1, 1, 16, ds=True, skip=False), B(2, (3,), 2, 6, 24), B(3, (5,), 2, 3, 40, se=0.25),
              B(4, (3,), 2, 6, 80), B(2, (3,), 1, 6, 112, se=0.25), B(3, (5,), 2, 6, 160, se=0.25),
              B(1, (3,), 1, 6, 320)]
    return mbnet(32, blocks, 1280)


def proxylessnas_mobile() -> nn.Module:
    """ProxylessNAS-Mobile (Cai et al. 2019)."""
    blocks = [B(1, (3,), 1, 1, 16, ds=True), B(1, (5,), 2, 3, 32), B(1, (3,), 1, 3, 32), B(1, (7,), 2, 3, 40),
              B(3, (3,), 1, 3, 40), B(1, (7,), 2, 6, 80), B(3, (5,), 1, 3, 80), B(1, (5,), 1, 6, 96),
              B(3, (5,), 1, 3, 96), B(1, (7,), 2, 6, 192), B(3, (7,), 1, 6, 192), B(1, (7,), 1, 6, 320)]
    return mbnet(32, blocks, 1280, "relu6")


def mixnet_s() -> nn.Module:
    """MixNet-S (Tan & Le 2019; timm's architecture definition)."""
    sw = "swish"
    blocks = [B(1, (3,), 1, 1, 16, ds=True),
              B(1, (3,), 2, 6, 24, ge=2, gp=2), B(1, (3,), 1, 3, 24, ge=2, gp=2),
              B(1, (3, 5, 7), 2, 6, 40, se=0.5, act=sw), B(3, (3, 5), 1, 6, 40, se=0.5, act=sw, ge=2, gp=2),
              B(1, (3, 5, 7), 2, 6, 80, se=0.25, act=sw), B(2, (3, 5), 1, 6, 80, se=0.25, act=sw),
              B(1, (3, 5, 7), 1, 6, 120, se=0.5, act=sw, ge=2, gp=2),
              B(2, (3, 5, 7, 9), 1, 3, 120, se=0.5, act=sw, ge=2, gp=2),
              B(1, (3, 5, 7, 9, 11), 2, 6, 200, se=0.5, act=sw), B(2, (3, 5, 7, 9), 1, 6, 200, se=0.5, act=sw, gp=2)]
    return mbnet(16, blocks, 1536)


def blazeface() -> nn.Module:
    """BlazeFace front model (Bazarevsky et al. 2019): 5x5 depthwise blocks, single-scale head."""

    class BlazeBlock(nn.Module):
        def __init__(self, ci: int, co: int, s: int) -> None:
            super().__init__()
            self.s, self.pad = s, co - ci
            self.dw = nn.Conv2d(ci, ci, 5, s, 2, groups=ci)
            self.pw = nn.Conv2d(ci, co, 1)

        def forward(self, x: Any) -> Any:
            y = self.pw(self.dw(x))
            h = nn.functional.max_pool2d(x, 2, 2) if self.s == 2 else x
            if self.pad:
                h = nn.functional.pad(h, (0, 0, 0, 0, 0, self.pad))
            return torch.relu(y + h)

    cfg = [(24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2), (48, 56, 1),
           (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1), (88, 96, 2), (96, 96, 1), (96, 96, 1),
           (96, 96, 1), (96, 96, 1)]
    layers: list[nn.Module] = [nn.Conv2d(3, 24, 5, 2, 2), nn.ReLU()]
    for ci, co, s in cfg:
        layers.append(BlazeBlock(ci, co, s))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*layers)
            self.head = nn.Conv2d(96, 6 * 18, 1)

        def forward(self, x: Any) -> Any:
            return self.head(self.body(x)).flatten(1)

    return Net()


def efficientnet_v2_b0() -> nn.Module:
    """EfficientNetV2-B0 (timm/TF setting) built with torchvision's EfficientNet class."""
    _tvm()
    from torchvision.models.efficientnet import EfficientNet, FusedMBConvConfig, MBConvConfig

    cfg = [
        FusedMBConvConfig(1, 3, 1, 32, 16, 1),
        FusedMBConvConfig(4, 3, 2, 16, 32, 2),
        FusedMBConvConfig(4, 3, 2, 32, 48, 2),
        MBConvConfig(4, 3, 2, 48, 96, 3),
        MBConvConfig(6, 3, 1, 96, 112, 5),
        MBConvConfig(6, 3, 2, 112, 192, 8),
    ]
    return EfficientNet(cfg, dropout=0.2, last_channel=1280)


def mobilenet_v3_large_minimal() -> nn.Module:
    """MobileNetV3-Large minimalistic (no SE, no h-swish, 3x3 kernels) with torchvision's class."""
    _tvm()
    from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3

    rows = [(16, 3, 16, 16, 1), (16, 3, 64, 24, 2), (24, 3, 72, 24, 1), (24, 3, 72, 40, 2), (40, 3, 120, 40, 1),
            (40, 3, 120, 40, 1), (40, 3, 240, 80, 2), (80, 3, 200, 80, 1), (80, 3, 184, 80, 1), (80, 3, 184, 80, 1),
            (80, 3, 480, 112, 1), (112, 3, 672, 112, 1), (112, 3, 672, 160, 2), (160, 3, 960, 160, 1),
            (160, 3, 960, 160, 1)]
    setting = [InvertedResidualConfig(i, k, e, o, False, "RE", s, 1, 1.0) for i, k, e, o, s in rows]
    return MobileNetV3(setting, last_channel=1280)


def mobilenet_v2_110d() -> nn.Module:
    """timm's mobilenetv2_110d (width 1.1, deeper stages) with torchvision's MobileNetV2 class."""
    setting = [[1, 16, 1, 1], [6, 24, 3, 2], [6, 32, 4, 2], [6, 64, 5, 2], [6, 96, 4, 1], [6, 160, 4, 2],
               [6, 320, 1, 1]]
    return _tvm().mobilenet_v2(width_mult=1.1, inverted_residual_setting=setting)


def deit_tiny() -> nn.Module:
    """DeiT-Tiny (patch 16, 224, 12 layers, 3 heads, width 192) with torchvision's VisionTransformer."""
    return _tvm().VisionTransformer(224, 16, 12, 3, 192, 768)


# ----------------------------------------------------------------------------- detectors


class SSDHead(nn.Module):
    """SSD(-Lite) extras + box/class predictors over several feature maps of a backbone."""

    def __init__(self, backbone: Any, taps: list[int], chans: list[int], extra: list[int],
                 classes: int = 21, lite: bool = False) -> None:
        super().__init__()
        self.backbone: Any = backbone
        self.taps = taps
        ex: list[nn.Module] = []
        ci = chans[-1]
        for co in extra:
            if lite:
                ex.append(nn.Sequential(cbr(ci, co // 2, 1), cbr(co // 2, co // 2, 3, 2, g=co // 2),
                                        cbr(co // 2, co, 1)))
            else:
                ex.append(nn.Sequential(cbr(ci, co // 2, 1), cbr(co // 2, co, 3, 2)))
            ci = co
        self.extras = nn.ModuleList(ex)
        allc = chans + extra
        if lite:
            self.pred = nn.ModuleList(
                nn.Sequential(cbr(c, c, 3, g=c), nn.Conv2d(c, 6 * (classes + 4), 1)) for c in allc
            )
        else:
            self.pred = nn.ModuleList(nn.Conv2d(c, 6 * (classes + 4), 3, padding=1) for c in allc)

    def forward(self, x: Any) -> Any:
        feats = []
        for i, layer in enumerate(self.backbone):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
        for e in self.extras:
            x = e(x)
            feats.append(x)
        return torch.cat([p(f).flatten(1) for p, f in zip(self.pred, feats, strict=True)], 1)


def mobilenet_v1_ssd() -> nn.Module:
    """MobileNetV1-SSD (ncnn/Caffe MobileNet-SSD): SSD heads on stride 16 and 32, four extras."""
    bb = mobilenet_v1(features=True)
    return SSDHead(bb, [len(bb) - 5, len(bb) - 1], [512, 1024], [512, 256, 256, 128])


class MBConvReLU6(nn.Module):
    """Inverted residual without SE, ReLU6 (MobileNetV2 / EfficientNet-Lite): 1x1 expand (when e > 1),
    k x k depthwise at stride s, linear 1x1 project; identity skip when the shape is kept."""

    def __init__(self, ci: int, co: int, s: int, e: int, k: int = 3) -> None:
        super().__init__()
        mid = ci * e
        layers = [cbr(ci, mid, 1, act=nn.ReLU6)] if e != 1 else []
        layers.append(cbr(mid, mid, k, s, g=mid, act=nn.ReLU6))
        layers += [nn.Conv2d(mid, co, 1, bias=False), nn.BatchNorm2d(co)]
        self.body = nn.Sequential(*layers)
        self.res = s == 1 and ci == co

    def forward(self, x: Any) -> Any:
        y = self.body(x)
        return x + y if self.res else y


def squeezenet_ssd() -> nn.Module:
    """SqueezeNet-SSD: torchvision SqueezeNet 1.1 features + SSD heads."""
    feats = _tvm().squeezenet1_1().features
    return SSDHead(feats, [9, 12], [384, 512], [512, 256, 256, 128])


def ssd_mobilenet_v2() -> nn.Module:
    """SSD-MobileNetV2-320-like: MobileNetV2 backbone, four depthwise-separable extras, SSDLite head."""

    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers: list[nn.Module] = [cbr(3, 32, 3, 2, act=nn.ReLU6)]
    ci = 32
    for e, c, n, s in cfg:
        for r in range(n):
            layers.append(MBConvReLU6(ci, c, s if r == 0 else 1, e))
            ci = c
    layers.append(cbr(ci, 1280, 1, act=nn.ReLU6))
    extra = [
        nn.Sequential(cbr(1280 if i == 0 else 256, 128, 1, act=nn.ReLU6), cbr(128, 128, 3, 2, g=128, act=nn.ReLU6),
                      cbr(128, 256, 1, act=nn.ReLU6))
        for i in range(4)
    ]
    head = nn.Sequential(cbr(256, 256, 3, g=256, act=nn.ReLU6), nn.Conv2d(256, 6 * 95, 1))
    return nn.Sequential(*layers, *extra, head, nn.Flatten())


class BiFPNHead(nn.Module):
    """BiFPN-like: 5 levels of separable convs, `n` rounds, then class/box nets (no weighted fusion)."""

    def __init__(self, cin: int, c: int, n: int) -> None:
        super().__init__()
        self.inp = cbr(cin, c, 1)
        self.down = nn.ModuleList(cbr(c, c, 3, 2, g=c) for _ in range(4))
        self.fuse = nn.ModuleList(
            nn.Sequential(cbr(c, c, 3, g=c, act=nn.Identity), cbr(c, c, 1)) for _ in range(5 * n)
        )
        reps = 3 if c < 160 else 4
        self.box = nn.Sequential(
            *[nn.Sequential(cbr(c, c, 3, g=c, act=nn.Identity), cbr(c, c, 1)) for _ in range(reps)],
            nn.Conv2d(c, 36, 1),
        )
        self.cls = nn.Sequential(
            *[nn.Sequential(cbr(c, c, 3, g=c, act=nn.Identity), cbr(c, c, 1)) for _ in range(reps)],
            nn.Conv2d(c, 810, 1),
        )
        self.n = n

    def forward(self, x: Any) -> Any:
        feats = [self.inp(x)]
        for d in self.down:
            feats.append(d(feats[-1]))
        for r in range(self.n):
            feats = [self.fuse[r * 5 + i](f) + f for i, f in enumerate(feats)]
        return [torch.cat([self.box(f).flatten(2), self.cls(f).flatten(2)], 1) for f in feats]


def _effnet_lite_features(width: float, depth: float) -> tuple[nn.Module, int]:
    """EfficientNet-Lite trunk (the detector proxies' backbone) and its output channels."""

    def ch(c: int) -> int:
        return max(8, int(c * width + 4) // 8 * 8)

    cfg = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
           (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]
    layers: list[nn.Module] = [cbr(3, 32, 3, 2, act=nn.ReLU6)]
    ci = 32
    for i, (e, c, n, s, k) in enumerate(cfg):
        reps = n if i in (0, 6) else max(1, round(n * depth))
        for r in range(reps):
            layers.append(MBConvReLU6(ci, ch(c), s if r == 0 else 1, e, k))
            ci = ch(c)
    return nn.Sequential(*layers), ci


def efficientdet_lite(width: float, depth: float, head: int, head_layers: int) -> nn.Module:
    """EfficientDet-Lite-like: EfficientNet-Lite trunk + BiFPN-like separable head (no anchors/NMS)."""
    body, ci = _effnet_lite_features(width, depth)
    return nn.Sequential(body, BiFPNHead(ci, head, head_layers))


def efficientdet_d0() -> nn.Module:
    """EfficientDet-D0-like: torchvision EfficientNet-B0 trunk (SE, swish) + BiFPN-like head (64 ch, 3 rounds)."""
    feats = _tvm().efficientnet_b0().features[:-1]  # without the 1280-channel head conv
    return nn.Sequential(feats, BiFPNHead(320, 64, 3))


# ShuffleNetV2-based detectors -----------------------------------------------------------------


def _shufflenet_v2_features(width: float) -> tuple[nn.Sequential, list[int]]:
    net = {0.5: _tvm().shufflenet_v2_x0_5, 1.0: _tvm().shufflenet_v2_x1_0}[width]()
    seq = nn.Sequential(net.conv1, net.maxpool, net.stage2, net.stage3, net.stage4)
    chans = {0.5: [48, 96, 192], 1.0: [116, 232, 464]}[width]
    return seq, chans


class NanoDet(nn.Module):
    """NanoDet-m-like: ShuffleNetV2 0.5x, light PAN (1x1 + upsample/add), depthwise GFL heads."""

    def __init__(self, width: float = 0.5, c: int = 96, classes: int = 80) -> None:
        super().__init__()
        self.bb, chans = _shufflenet_v2_features(width)
        self.lat = nn.ModuleList(cbr(ci, c, 1) for ci in chans)
        self.heads = nn.ModuleList(
            nn.Sequential(cbr(c, c, 3, g=c), cbr(c, c, 1), cbr(c, c, 3, g=c), cbr(c, c, 1),
                          nn.Conv2d(c, classes + 32, 1)) for _ in chans
        )

    def forward(self, x: Any) -> Any:
        x = self.bb[1](self.bb[0](x))
        f3 = self.bb[2](x)
        f4 = self.bb[3](f3)
        f5 = self.bb[4](f4)
        p = [lat(f) for lat, f in zip(self.lat, (f3, f4, f5), strict=True)]
        p[1] = p[1] + nn.functional.interpolate(p[2], scale_factor=2.0)
        p[0] = p[0] + nn.functional.interpolate(p[1], scale_factor=2.0)
        p[1] = p[1] + nn.functional.interpolate(p[0], scale_factor=0.5)
        p[2] = p[2] + nn.functional.interpolate(p[1], scale_factor=0.5)
        return torch.cat([h(f).flatten(2) for h, f in zip(self.heads, p, strict=True)], 2)


class FastestDet(nn.Module):
    """FastestDet-like: ShuffleNetV2 0.5x backbone, single-scale fusion and a 5x5 depthwise head."""

    def __init__(self) -> None:
        super().__init__()
        self.bb, chans = _shufflenet_v2_features(0.5)
        c = 72
        self.fuse = cbr(sum(chans), c, 1)
        self.spp = nn.ModuleList(nn.Sequential(cbr(c, c, 5, g=c), cbr(c, c, 1)) for _ in range(3))
        self.head = nn.Sequential(cbr(c, c, 5, g=c), cbr(c, c, 1), nn.Conv2d(c, 85, 1))

    def forward(self, x: Any) -> Any:
        x = self.bb[1](self.bb[0](x))
        f3 = self.bb[2](x)
        f4 = self.bb[3](f3)
        f5 = self.bb[4](f4)
        size = f4.shape[-2:]
        y = torch.cat([nn.functional.interpolate(f3, size=size), f4, nn.functional.interpolate(f5, size=size)], 1)
        y = self.fuse(y)
        y = y + sum(s(y) for s in self.spp)
        return self.head(y)


def nanodet_m() -> nn.Module:
    return NanoDet()


def fastestdet() -> nn.Module:
    return FastestDet()


BUILDERS: dict[str, Any] = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v1_ssd": mobilenet_v1_ssd,
    "shufflenet_v1": shufflenet_v1,
    "ese_vovnet19b_dw": ese_vovnet19b_dw,
    "repvgg_b0": repvgg_b0,
    "efficientnet_lite": efficientnet_lite,
    "mnasnet_a1": mnasnet_a1,
    "proxylessnas_mobile": proxylessnas_mobile,
    "mixnet_s": mixnet_s,
    "blazeface": blazeface,
    "efficientnet_v2_b0": efficientnet_v2_b0,
    "mobilenet_v3_large_minimal": mobilenet_v3_large_minimal,
    "mobilenet_v2_110d": mobilenet_v2_110d,
    "deit_tiny": deit_tiny,
    "squeezenet_ssd": squeezenet_ssd,
    "ssd_mobilenet_v2": ssd_mobilenet_v2,
    "efficientdet_lite": efficientdet_lite,
    "efficientdet_d0": efficientdet_d0,
    "nanodet_m": nanodet_m,
    "fastestdet": fastestdet,
}
"""Builder name (``SuiteModel.builder`` after ``proxy:``) -> function returning the torch module."""
