"""The reference model suite: small torch versions of common edge architectures, exported to ONNX.

Used to calibrate the host profile (`edge-search calibrate --device host`) and, at the
resolutions of published benchmarks, as proxies for the models in the published CSV. Weights
are random (latency does not depend on them); int8 variants come from ONNX Runtime's static QDQ
quantisation with random calibration data (dynamic quantisation for the transformer).

Families (the unit of hold-out in the validation): resnet (18, 34, 50), mobilenetv2, mobilenetv3
(small-like), shufflenetv2 (like), squeezenet (1.0, 1.1), efficientnet (Lite0-like), transformer
(a small encoder), vgg (16), densenet (121), and the detector proxies (efficientdet-lite0..4-like:
an EfficientNet-Lite backbone plus a BiFPN-like separable-conv head; ssd-mobilenet-v2-like).
They are structurally similar, not identical, to the originals (no exact BiFPN weighting, no
anchors/NMS); `proxy_for` documents the mapping from published names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_search.errors import MissingDependency

DEFAULT_CACHE = Path.home() / ".cache" / "edge-search" / "reference-suite"


@dataclass(frozen=True)
class SuiteModel:
    """One reference model: its name, family, input shape and builder arguments."""

    name: str
    family: str
    arch: str
    resolution: int
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.arch == "transformer":
            return (1, self.resolution, 128)
        return (1, 3, self.resolution, self.resolution)


#: The host calibration suite (modest resolutions: the whole suite measures in a few minutes).
HOST_SUITE: tuple[SuiteModel, ...] = (
    SuiteModel("resnet18", "resnet", "resnet", 128, (("layers", (2, 2, 2, 2)),)),
    SuiteModel("resnet34", "resnet", "resnet", 128, (("layers", (3, 4, 6, 3)),)),
    SuiteModel("resnet50", "resnet", "resnet", 112, (("layers", (3, 4, 6, 3)), ("bottleneck", True))),
    SuiteModel("mobilenetv2", "mobilenetv2", "mobilenetv2", 160),
    SuiteModel("mobilenetv3-small", "mobilenetv3", "mobilenetv3", 160),
    SuiteModel("shufflenetv2", "shufflenetv2", "shufflenetv2", 160),
    SuiteModel("squeezenet1_0", "squeezenet", "squeezenet", 160, (("version", "1_0"),)),
    SuiteModel("squeezenet1_1", "squeezenet", "squeezenet", 160, (("version", "1_1"),)),
    SuiteModel("efficientnet-lite0", "efficientnet", "efficientnet", 160),
    SuiteModel("transformer-encoder", "transformer", "transformer", 64),
)

#: Proxies for the models of the published CSV (name in the CSV -> suite model).
PUBLISHED_PROXIES: dict[str, SuiteModel] = {
    **{
        f"efficientdet-lite{k}": SuiteModel(
            f"efficientdet-lite{k}",
            "efficientdet",
            "efficientdet",
            res,
            (("width", w), ("depth", d), ("head", h), ("head_layers", n)),
        )
        for k, res, w, d, h, n in (
            ("0", 320, 1.0, 1.0, 64, 3),
            ("1", 384, 1.0, 1.1, 88, 4),
            ("2", 448, 1.1, 1.2, 112, 5),
            ("3", 512, 1.2, 1.4, 160, 6),
            ("3x", 640, 1.2, 1.4, 200, 6),
            ("4", 640, 1.4, 1.8, 224, 7),
        )
    },
    "resnet18": SuiteModel("resnet18-224", "resnet", "resnet", 224, (("layers", (2, 2, 2, 2)),)),
    "resnet34": SuiteModel("resnet34-224", "resnet", "resnet", 224, (("layers", (3, 4, 6, 3)),)),
    "resnet50": SuiteModel(
        "resnet50-224", "resnet", "resnet", 224, (("layers", (3, 4, 6, 3)), ("bottleneck", True))
    ),
    "squeezenet1_0": SuiteModel("squeezenet1_0-224", "squeezenet", "squeezenet", 224, (("version", "1_0"),)),
    "squeezenet1_1": SuiteModel("squeezenet1_1-224", "squeezenet", "squeezenet", 224, (("version", "1_1"),)),
    "densenet121": SuiteModel("densenet121-224", "densenet", "densenet", 224),
    "vgg16": SuiteModel("vgg16-224", "vgg", "vgg", 224),
    "ssd-mobilenet-v2-320": SuiteModel("ssd-mobilenet-v2-320", "mobilenetv2", "ssd_mobilenetv2", 320),
}


def proxy_for(published_model: str) -> SuiteModel:
    """The suite model standing in for a model named in the published CSV (KeyError if none)."""
    return PUBLISHED_PROXIES[published_model]


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependency("torch", "torch") from None
    return torch


def _build(m: SuiteModel) -> Any:
    torch = _torch()
    nn = torch.nn
    module: Any = nn.Module
    kw = dict(m.kwargs)

    def cbr(ci: int, co: int, k: int = 3, s: int = 1, g: int = 1, act: Any = nn.ReLU) -> Any:
        return nn.Sequential(nn.Conv2d(ci, co, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(co), act())

    class Basic(module):  # type: ignore[misc]
        def __init__(self, ci: int, co: int, s: int, bottleneck: bool) -> None:
            super().__init__()
            if bottleneck:
                mid = co // 4
                self.body = nn.Sequential(
                    cbr(ci, mid, 1),
                    cbr(mid, mid, 3, s),
                    nn.Conv2d(mid, co, 1, bias=False),
                    nn.BatchNorm2d(co),
                )
            else:
                self.body = nn.Sequential(
                    cbr(ci, co, 3, s), nn.Conv2d(co, co, 3, 1, 1, bias=False), nn.BatchNorm2d(co)
                )
            self.skip = (
                nn.Sequential(nn.Conv2d(ci, co, 1, s, bias=False), nn.BatchNorm2d(co))
                if s != 1 or ci != co
                else nn.Identity()
            )

        def forward(self, x: Any) -> Any:
            return torch.relu(self.body(x) + self.skip(x))

    class MBConv(module):  # type: ignore[misc]
        def __init__(
            self, ci: int, co: int, s: int, e: int, k: int = 3, act: Any = nn.ReLU6, se: bool = False
        ) -> None:
            super().__init__()
            mid = ci * e
            layers = [cbr(ci, mid, 1, act=act)] if e != 1 else []
            layers.append(cbr(mid, mid, k, s, g=mid, act=act))
            if se:
                layers.append(SE(mid))
            layers += [nn.Conv2d(mid, co, 1, bias=False), nn.BatchNorm2d(co)]
            self.body = nn.Sequential(*layers)
            self.res = s == 1 and ci == co

        def forward(self, x: Any) -> Any:
            y = self.body(x)
            return x + y if self.res else y

    class SE(module):  # type: ignore[misc]
        def __init__(self, c: int) -> None:
            super().__init__()
            self.f = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(c, max(8, c // 4), 1),
                nn.ReLU(),
                nn.Conv2d(max(8, c // 4), c, 1),
                nn.Hardsigmoid(),
            )

        def forward(self, x: Any) -> Any:
            return x * self.f(x)

    class Shuffle(module):  # type: ignore[misc]
        def __init__(self, ci: int, co: int, s: int) -> None:
            super().__init__()
            self.s = s
            half = co // 2
            inp = ci if s == 2 else half
            self.b2 = nn.Sequential(
                cbr(inp, half, 1), cbr(half, half, 3, s, g=half, act=nn.Identity), cbr(half, half, 1)
            )
            self.b1 = (
                nn.Sequential(cbr(ci, ci, 3, s, g=ci, act=nn.Identity), cbr(ci, half, 1))
                if s == 2
                else nn.Identity()
            )

        def forward(self, x: Any) -> Any:
            if self.s == 1:
                a, b = x.chunk(2, dim=1)
                out = torch.cat([a, self.b2(b)], 1)
            else:
                out = torch.cat([self.b1(x), self.b2(x)], 1)
            n, c, h, w = out.shape
            return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

    class Fire(module):  # type: ignore[misc]
        def __init__(self, ci: int, sq: int, ex: int) -> None:
            super().__init__()
            self.sq = nn.Sequential(nn.Conv2d(ci, sq, 1), nn.ReLU())
            self.e1 = nn.Sequential(nn.Conv2d(sq, ex, 1), nn.ReLU())
            self.e3 = nn.Sequential(nn.Conv2d(sq, ex, 3, padding=1), nn.ReLU())

        def forward(self, x: Any) -> Any:
            s = self.sq(x)
            return torch.cat([self.e1(s), self.e3(s)], 1)

    class Dense(module):  # type: ignore[misc]
        def __init__(self, ci: int, n: int, growth: int = 32) -> None:
            super().__init__()
            self.layers = nn.ModuleList(
                nn.Sequential(
                    nn.BatchNorm2d(ci + i * growth),
                    nn.ReLU(),
                    nn.Conv2d(ci + i * growth, 4 * growth, 1, bias=False),
                    nn.BatchNorm2d(4 * growth),
                    nn.ReLU(),
                    nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
                )
                for i in range(n)
            )

        def forward(self, x: Any) -> Any:
            for layer in self.layers:
                x = torch.cat([x, layer(x)], 1)
            return x

    class Encoder(module):  # type: ignore[misc]
        """Post-norm transformer encoder layer with explicit attention (exports as MatMul/Softmax)."""

        def __init__(self, d: int, heads: int, ff: int) -> None:
            super().__init__()
            self.h = heads
            self.qkv = nn.Linear(d, 3 * d)
            self.out = nn.Linear(d, d)
            self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))
            self.n1 = nn.LayerNorm(d)
            self.n2 = nn.LayerNorm(d)

        def forward(self, x: Any) -> Any:
            b, t, d = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, -1)
            y = (att @ v).transpose(1, 2).reshape(b, t, d)
            x = self.n1(x + self.out(y))
            return self.n2(x + self.ff(x))

    def effnet_lite(width: float = 1.0, depth: float = 1.0) -> tuple[Any, list[int]]:
        def ch(c: int) -> int:
            return max(8, int(c * width + 4) // 8 * 8)

        cfg = [
            (1, 16, 1, 1, 3),
            (6, 24, 2, 2, 3),
            (6, 40, 2, 2, 5),
            (6, 80, 3, 2, 3),
            (6, 112, 3, 1, 5),
            (6, 192, 4, 2, 5),
            (6, 320, 1, 1, 3),
        ]
        layers: list[Any] = [cbr(3, 32, 3, 2, act=nn.ReLU6)]
        ci, outs = 32, []
        for i, (e, c, n, s, k) in enumerate(cfg):
            reps = n if i in (0, 6) else max(1, round(n * depth))
            for r in range(reps):
                layers.append(MBConv(ci, ch(c), s if r == 0 else 1, e, k))
                ci = ch(c)
            outs.append(len(layers))
        return nn.Sequential(*layers), [ci, outs[2], outs[4], outs[6]]

    class Head(module):  # type: ignore[misc]
        """BiFPN-like: 5 levels of separable convs, `n` rounds, then class/box nets."""

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

    a = m.arch
    if a == "resnet":
        bott = kw.get("bottleneck", False)
        widths = [256, 512, 1024, 2048] if bott else [64, 128, 256, 512]
        layers = [cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
        ci = 64
        for i, (n, co) in enumerate(zip(kw["layers"], widths, strict=True)):
            for r in range(n):
                layers.append(Basic(ci, co, 2 if r == 0 and i > 0 else 1, bott))
                ci = co
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ci, 1000)]
        return nn.Sequential(*layers)
    if a in ("mobilenetv2", "ssd_mobilenetv2"):
        cfg = [
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        ]
        layers = [cbr(3, 32, 3, 2, act=nn.ReLU6)]
        ci = 32
        for e, c, n, s in cfg:
            for r in range(n):
                layers.append(MBConv(ci, c, s if r == 0 else 1, e))
                ci = c
        layers.append(cbr(ci, 1280, 1, act=nn.ReLU6))
        if a == "ssd_mobilenetv2":
            extra = [
                nn.Sequential(
                    cbr(1280 if i == 0 else 256, 128, 1, act=nn.ReLU6),
                    cbr(128, 128, 3, 2, g=128, act=nn.ReLU6),
                    cbr(128, 256, 1, act=nn.ReLU6),
                )
                for i in range(4)
            ]
            head = nn.Sequential(cbr(256, 256, 3, g=256, act=nn.ReLU6), nn.Conv2d(256, 6 * 95, 1))
            return nn.Sequential(*layers, *extra, head, nn.Flatten())
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
        return nn.Sequential(*layers)
    if a == "mobilenetv3":
        hs = nn.Hardswish
        cfg3: list[tuple[Any, ...]] = [
            (16, 16, 2, 1, 3, True, nn.ReLU),
            (16, 24, 2, 4, 3, False, nn.ReLU),
            (24, 24, 1, 4, 3, False, nn.ReLU),
            (24, 40, 2, 4, 5, True, hs),
            (40, 40, 1, 6, 5, True, hs),
            (40, 48, 1, 3, 5, True, hs),
            (48, 96, 2, 6, 5, True, hs),
            (96, 96, 1, 6, 5, True, hs),
        ]
        layers = [cbr(3, 16, 3, 2, act=hs)]
        for ci, co, s, e, k, se, act in cfg3:
            layers.append(MBConv(ci, co, s, e, k, act, se))
        layers += [
            cbr(96, 576, 1, act=hs),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(576, 1024),
            hs(),
            nn.Linear(1024, 1000),
        ]
        return nn.Sequential(*layers)
    if a == "shufflenetv2":
        layers = [cbr(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
        ci = 24
        for co, n in ((116, 4), (232, 8), (464, 4)):
            for r in range(n):
                layers.append(Shuffle(ci, co, 2 if r == 0 else 1))
                ci = co
        layers += [cbr(ci, 1024, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 1000)]
        return nn.Sequential(*layers)
    if a == "squeezenet":
        if kw["version"] == "1_0":
            layers = [
                nn.Conv2d(3, 96, 7, 2),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(96, 16, 64),
                Fire(128, 16, 64),
                Fire(128, 32, 128),
                nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(256, 32, 128),
                Fire(256, 48, 192),
                Fire(384, 48, 192),
                Fire(384, 64, 256),
                nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(512, 64, 256),
            ]
        else:
            layers = [
                nn.Conv2d(3, 64, 3, 2),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(64, 16, 64),
                Fire(128, 16, 64),
                nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(128, 32, 128),
                Fire(256, 32, 128),
                nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(256, 48, 192),
                Fire(384, 48, 192),
                Fire(384, 64, 256),
                Fire(512, 64, 256),
            ]
        layers += [nn.Conv2d(512, 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return nn.Sequential(*layers)
    if a == "efficientnet":
        body, chans = effnet_lite()
        return nn.Sequential(
            body,
            cbr(chans[0], 1280, 1, act=nn.ReLU6),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(1280, 1000),
        )
    if a == "efficientdet":
        body, chans = effnet_lite(kw["width"], kw["depth"])
        return nn.Sequential(body, Head(chans[0], kw["head"], kw["head_layers"]))
    if a == "vgg":
        layers, ci = [], 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(ci, int(v), 3, padding=1), nn.ReLU()]
                ci = int(v)
        layers += [
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, 1000),
        ]
        return nn.Sequential(*layers)
    if a == "densenet":
        layers, ci = [cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
        for i, n in enumerate((6, 12, 24, 16)):
            layers.append(Dense(ci, n))
            ci += 32 * n
            if i < 3:
                layers += [
                    nn.BatchNorm2d(ci),
                    nn.ReLU(),
                    nn.Conv2d(ci, ci // 2, 1, bias=False),
                    nn.AvgPool2d(2),
                ]
                ci //= 2
        layers += [nn.BatchNorm2d(ci), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ci, 1000)]
        return nn.Sequential(*layers)
    if a == "transformer":
        return nn.Sequential(*[Encoder(128, 4, 512) for _ in range(4)], nn.Linear(128, 10))
    raise ValueError(f"unknown architecture {a}")


def _key(m: SuiteModel) -> str:
    return hashlib.sha1(repr(m).encode()).hexdigest()[:10]


def export(m: SuiteModel, cache_dir: Path = DEFAULT_CACHE, precision: str = "fp32") -> Path:
    """The ONNX file for `m` at `precision` ('fp32' or 'int8'), built and cached on first use."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    fp32 = cache_dir / f"{m.name}-{_key(m)}-fp32.onnx"
    if not fp32.exists():
        torch = _torch()
        torch.manual_seed(0)
        net = _build(m).eval()
        tmp = fp32.with_suffix(".tmp.onnx")
        with torch.no_grad():
            torch.onnx.export(
                net,
                torch.randn(*m.input_shape),
                str(tmp),
                input_names=["input"],
                opset_version=17,
                dynamo=False,
            )
        tmp.replace(fp32)
    if precision == "fp32":
        return fp32
    if precision != "int8":
        raise ValueError(f"precision {precision} is not built by the suite")
    q = cache_dir / f"{m.name}-{_key(m)}-int8.onnx"
    if not q.exists():
        _quantize(m, fp32, q)
    return q


def _quantize(m: SuiteModel, src: Path, dst: Path) -> None:
    import logging

    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser warns about pre-processing on root
    tmp = dst.with_suffix(".tmp.onnx")
    if m.arch == "transformer":
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
    else:
        rng = np.random.default_rng(0)

        class Reader(CalibrationDataReader):  # type: ignore[misc]
            def __init__(self) -> None:
                self.left = 4

            def get_next(self) -> dict[str, Any] | None:
                if self.left == 0:
                    return None
                self.left -= 1
                return {"input": rng.standard_normal(m.input_shape).astype(np.float32)}

        quantize_static(
            str(src),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    tmp.replace(dst)


def build_all(
    models: tuple[SuiteModel, ...] = HOST_SUITE,
    cache_dir: Path = DEFAULT_CACHE,
    precisions: tuple[str, ...] = ("fp32", "int8"),
    progress: Callable[[str], None] | None = None,
) -> dict[tuple[str, str], Path]:
    """Export every model at every precision; returns (name, precision) -> path."""
    out = {}
    for m in models:
        for p in precisions:
            if progress:
                progress(f"building {m.name} {p}")
            out[(m.name, p)] = export(m, cache_dir, p)
    return out


__all__ = [
    "DEFAULT_CACHE",
    "HOST_SUITE",
    "PUBLISHED_PROXIES",
    "SuiteModel",
    "build_all",
    "export",
    "proxy_for",
]
