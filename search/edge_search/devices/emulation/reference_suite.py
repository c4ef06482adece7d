"""The reference suite: real architectures from torchvision, proxies only where torchvision has none.

Every published latency row (`published.suite_key`) and every host calibration run maps to a
`SuiteModel` of `SUITE`: an architecture at the resolution it was timed at, in a **family** (the
unit of hold-out in validation). Most are ``torchvision.models`` builders (AlexNet, VGG, ResNet,
SqueezeNet, DenseNet, GoogLeNet, Inception v3, MobileNetV2/V3, ShuffleNetV2, MnasNet, EfficientNet,
RegNet, ViT, ConvNeXt); the ones torchvision lacks are written in `suite_archs` from their papers
or timm configurations (MobileNetV1, ShuffleNetV1, RepVGG, VoVNet, MixNet, ProxylessNAS,
MnasNet-A1, EfficientNet-Lite, BlazeFace) or assembled from torchvision parts (EfficientNetV2-B0,
DeiT-Tiny, MobileNetV3 minimalistic), plus detector proxies (EfficientDet-Lite/D0, SSD heads,
NanoDet, FastestDet: backbone and head structure, no anchors/NMS). Each entry's ``source`` says
which.

Nothing heavy happens at import: torch/torchvision are imported when a model is built, and
`export` writes ONNX files (fp32, and int8 by ONNX Runtime's static QDQ quantisation) into a cache
folder on first use. Weights are random: latency does not depend on them, and torchvision's
pretrained weights cannot be downloaded here anyway.

`write_work_table` regenerates ``device_profiles/suite_work.json`` (work per op class of every
suite model, fp32 and int8) from the exports; it is what the physics fit (`boards.work_table`)
reads. Exporting the whole suite takes a long time and about 7 GB (VGG and ViT-B are 0.35-0.55 GB
each): point ``cache_dir`` at an existing export folder to reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_search.devices.emulation.torchvision_import import import_torchvision
from edge_search.errors import InputError, MissingDependency

DEFAULT_CACHE = Path.home() / ".cache" / "edge-search" / "reference-suite"
PRECISIONS = ("fp32", "int8")
WORK_TABLE_VERSION = 2


@dataclass(frozen=True)
class SuiteModel:
    """One suite architecture at one input resolution.

    ``name`` is the suite key (``<arch>@<resolution>``), ``builder`` either ``torchvision:<fn>`` (a
    ``torchvision.models`` function, called with ``kwargs``) or ``proxy:<fn>`` (`suite_archs.BUILDERS`),
    ``source`` what it is and where its definition comes from.
    """

    name: str
    family: str
    builder: str
    hw: tuple[int, int]
    source: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """NCHW input shape (batch 1)."""
        return (1, 3, *self.hw)

    @property
    def from_torchvision(self) -> bool:
        """True when the architecture is a ``torchvision.models`` builder (not a proxy)."""
        return self.builder.startswith("torchvision:")

    @property
    def cache_key(self) -> str:
        """Hash of the definition: exports are reused only for the same key and source."""
        return hashlib.sha1(f"{self.name}|{self.source}|v1".encode()).hexdigest()[:8]

    def build(self) -> Any:
        """The torch module (random weights, eval mode)."""
        kind, fn = self.builder.split(":", 1)
        kw = dict(self.kwargs)
        if kind == "torchvision":
            net = getattr(import_torchvision().models, fn)(**kw)
        else:
            from edge_search.devices.emulation.suite_archs import BUILDERS

            net = BUILDERS[fn](**kw)
        return net.eval()


def _tv(name: str, family: str, fn: str, hw: int, source: str = "torchvision", **kw: Any) -> SuiteModel:
    return SuiteModel(name, family, f"torchvision:{fn}", (hw, hw), source, tuple(kw.items()))


def _px(name: str, family: str, fn: str, hw: int, source: str, **kw: Any) -> SuiteModel:
    return SuiteModel(name, family, f"proxy:{fn}", (hw, hw), source, tuple(kw.items()))


_LITE = "proxy: EfficientNet-Lite (no SE, ReLU6)"
_DET = "proxy: EfficientNet-Lite backbone + BiFPN-like separable head"

SUITE: dict[str, SuiteModel] = {m.name: m for m in (
    _tv("alexnet@227", "alexnet", "alexnet", 227),
    _tv("alexnet@224", "alexnet", "alexnet", 224),
    _tv("vgg11@224", "vgg", "vgg11", 224),
    _tv("vgg11_bn@224", "vgg", "vgg11_bn", 224),
    _tv("vgg13@224", "vgg", "vgg13", 224),
    _tv("vgg13_bn@224", "vgg", "vgg13_bn", 224),
    _tv("vgg16@224", "vgg", "vgg16", 224),
    _tv("vgg16_bn@224", "vgg", "vgg16_bn", 224),
    _px("repvgg_b0@224", "repvgg", "repvgg_b0", 224, "proxy: RepVGG-B0 training-time (3x3+1x1+id) blocks"),
    _tv("resnet18@224", "resnet", "resnet18", 224),
    _tv("resnet34@224", "resnet", "resnet34", 224),
    _tv("resnet50@224", "resnet", "resnet50", 224),
    _tv("squeezenet1_0@224", "squeezenet", "squeezenet1_0", 224),
    _tv("squeezenet1_1@224", "squeezenet", "squeezenet1_1", 224),
    _tv("squeezenet1_1@227", "squeezenet", "squeezenet1_1", 227),
    _px("squeezenet_ssd@300", "squeezenet", "squeezenet_ssd", 300, "proxy: torchvision SqueezeNet 1.1 + SSD heads"),
    _tv("densenet121@224", "densenet", "densenet121", 224),
    _tv("densenet161@224", "densenet", "densenet161", 224),
    _tv("densenet169@224", "densenet", "densenet169", 224),
    _tv("densenet201@224", "densenet", "densenet201", 224),
    _tv("googlenet@224", "inception", "googlenet", 224, aux_logits=False, init_weights=False),
    _tv("inception_v3@299", "inception", "inception_v3", 299, aux_logits=False, init_weights=False),
    _px("mobilenet_v1_1.0@224", "mobilenetv1", "mobilenet_v1", 224, "proxy: MobileNetV1 (paper)", width=1.0),
    _px("mobilenet_v1_0.5@224", "mobilenetv1", "mobilenet_v1", 224, "proxy: MobileNetV1 (paper)", width=0.5),
    _px("mobilenet_v1_0.25@128", "mobilenetv1", "mobilenet_v1", 128, "proxy: MobileNetV1 (paper)", width=0.25),
    _px("mobilenet_v1_ssd@300", "mobilenetv1", "mobilenet_v1_ssd", 300, "proxy: MobileNetV1 + SSD heads"),
    _tv("mobilenet_v2_1.0@224", "mobilenetv2", "mobilenet_v2", 224),
    _tv("mobilenet_v2_0.5@224", "mobilenetv2", "mobilenet_v2", 224, width_mult=0.5),
    _tv("mobilenet_v2_1.4@224", "mobilenetv2", "mobilenet_v2", 224, width_mult=1.4),
    _tv("mobilenet_v2_0.35@96", "mobilenetv2", "mobilenet_v2", 96, width_mult=0.35),
    _px("mobilenet_v2_110d@224", "mobilenetv2", "mobilenet_v2_110d", 224, "torchvision (width 1.1, deeper setting)"),
    _px("ssd_mobilenet_v2@320", "mobilenetv2", "ssd_mobilenet_v2", 320, "proxy: MobileNetV2 + SSDLite head"),
    _tv("mobilenet_v3_large@224", "mobilenetv3", "mobilenet_v3_large", 224),
    _tv("mobilenet_v3_small@224", "mobilenetv3", "mobilenet_v3_small", 224),
    _tv("mobilenet_v3_small_0.5@224", "mobilenetv3", "mobilenet_v3_small", 224, width_mult=0.5),
    _px("mobilenet_v3_large_min@224", "mobilenetv3", "mobilenet_v3_large_minimal", 224,
        "torchvision MobileNetV3 class, minimalistic setting"),
    _px("shufflenet_v1_g3@224", "shufflenet", "shufflenet_v1", 224, "proxy: ShuffleNet v1 g=3 (paper)"),
    _tv("shufflenet_v2_x1_0@224", "shufflenet", "shufflenet_v2_x1_0", 224),
    _px("nanodet_m@320", "shufflenet", "nanodet_m", 320, "proxy: torchvision ShuffleNetV2 0.5x + PAN + dw heads"),
    _px("fastestdet@352", "shufflenet", "fastestdet", 352, "proxy: torchvision ShuffleNetV2 0.5x + light head"),
    _tv("mnasnet1_0@224", "mnasnet", "mnasnet1_0", 224),
    _px("mnasnet_a1@224", "mnasnet", "mnasnet_a1", 224, "proxy: MnasNet-A1 (paper, SE)"),
    _px("proxylessnas_mobile@224", "proxylessnas", "proxylessnas_mobile", 224, "proxy: ProxylessNAS-Mobile (paper)"),
    _px("mixnet_s@224", "mixnet", "mixnet_s", 224, "proxy: MixNet-S (timm arch def)"),
    _tv("efficientnet_b0@224", "efficientnet", "efficientnet_b0", 224),
    _px("efficientnet_v2_b0@224", "efficientnet", "efficientnet_v2_b0", 224,
        "torchvision EfficientNet class, V2-B0 setting"),
    *(_px(f"efficientnet_lite{k}@{r}", "efficientnet", "efficientnet_lite", r, _LITE, k=k)
      for k, r in ((0, 224), (1, 240), (2, 260), (3, 280), (4, 300))),
    *(_px(f"efficientdet_lite{k}@{r}", "efficientnet", "efficientdet_lite", r, _DET, width=w, depth=d, head=h,
          head_layers=n)
      for k, r, w, d, h, n in (("0", 320, 1.0, 1.0, 64, 3), ("1", 384, 1.0, 1.1, 88, 4), ("2", 448, 1.1, 1.2, 112, 5),
                               ("3", 512, 1.2, 1.4, 160, 6), ("3x", 640, 1.2, 1.4, 200, 6),
                               ("4", 640, 1.4, 1.8, 224, 7))),
    _px("efficientdet_d0@512", "efficientnet", "efficientdet_d0", 512,
        "proxy: torchvision EfficientNet-B0 trunk + BiFPN-like separable head (64 ch, 3 rounds)"),
    _tv("regnet_y_400mf@224", "regnet", "regnet_y_400mf", 224),
    _px("ese_vovnet19b_dw@224", "vovnet", "ese_vovnet19b_dw", 224, "proxy: ESE-VoVNet19b-DW (timm config)"),
    _px("blazeface@128", "blazeface", "blazeface", 128, "proxy: BlazeFace (paper)"),
    _tv("vit_b_16@384", "vit", "vit_b_16", 384, image_size=384),
    _tv("vit_b_32@224", "vit", "vit_b_32", 224),
    _tv("vit_b_32@384", "vit", "vit_b_32", 384, image_size=384),  # ncnn benchmark vision_transformer: 145 tokens
    _px("deit_tiny@224", "vit", "deit_tiny", 224, "torchvision VisionTransformer, DeiT-Tiny setting"),
    _tv("convnext_base@224", "convnext", "convnext_base", 224),
)}
"""Suite key -> model. Families are the unit of leave-one-family-out validation."""

HOST_SUITE: tuple[SuiteModel, ...] = tuple(SUITE[k] for k in (
    "resnet18@224", "mobilenet_v2_1.0@224", "mobilenet_v3_small@224", "shufflenet_v2_x1_0@224",
    "squeezenet1_1@224", "efficientnet_lite0@224", "mnasnet1_0@224", "regnet_y_400mf@224", "googlenet@224",
    "densenet121@224", "mobilenet_v1_1.0@224", "deit_tiny@224", "blazeface@128", "ese_vovnet19b_dw@224",
    "mixnet_s@224", "proxylessnas_mobile@224", "alexnet@224", "repvgg_b0@224",
))
"""What ``edge-search calibrate --device host`` measures: one or two models of most families, none of
the 0.3-0.5 GB ones (VGG, ViT-B, ConvNeXt-Base), so the whole suite measures in minutes."""


def suite_model(key: str) -> SuiteModel:
    """The suite model of a key (InputError naming the known keys when there is none)."""
    try:
        return SUITE[key]
    except KeyError:
        raise InputError(f"no reference-suite model '{key}' (known: {', '.join(sorted(SUITE))})") from None


def for_published(name: str, input_text: str = "") -> SuiteModel | None:
    """The suite model a published model name (and input description) maps to, or None."""
    from edge_search.devices.emulation.published import suite_key

    key = suite_key(name, input_text)
    return SUITE.get(key) if key else None


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependency("torch", "torch") from None
    return torch


def export(m: SuiteModel, cache_dir: Path = DEFAULT_CACHE, precision: str = "fp32") -> Path:
    """The ONNX file of `m` at `precision` ('fp32' or 'int8'), exported into `cache_dir` on first use.

    fp32: ``torch.onnx.export`` (TorchScript exporter, opset 17, batch 1, random weights, seed 0).
    int8: ONNX Runtime's static QDQ quantisation of the fp32 file (uint8 activations, int8 per-channel
    weights, two random calibration inputs: latency does not depend on the ranges).
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision} is not built by the reference suite ({', '.join(PRECISIONS)})")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fp32 = cache_dir / f"{m.name}-{m.cache_key}-fp32.onnx"
    if not fp32.exists():
        torch = _torch()
        torch.manual_seed(0)
        torch.backends.mha.set_fastpath_enabled(False)  # the TorchScript exporter cannot export fused MHA
        net = m.build()
        tmp = fp32.with_suffix(".tmp.onnx")
        with torch.no_grad():
            torch.onnx.export(net, torch.randn(*m.input_shape), str(tmp), input_names=["input"], opset_version=17,
                              dynamo=False)
        tmp.replace(fp32)
    if precision == "fp32":
        return fp32
    q = cache_dir / f"{m.name}-{m.cache_key}-int8.onnx"
    if not q.exists():
        _quantize(fp32, q, m.input_shape)
    return q


def _quantize(src: Path, dst: Path, shape: tuple[int, ...]) -> None:
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.left = 2

        def get_next(self) -> dict[str, Any] | None:
            if self.left == 0:
                return None
            self.left -= 1
            return {"input": rng.standard_normal(shape).astype(np.float32)}

    tmp = dst.with_suffix(".tmp.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser warns about pre-processing on the root logger
    try:
        quantize_static(str(src), str(tmp), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)  # the process's logging is not ours to keep changed (it hid later warnings)
    tmp.replace(dst)


def build_all(
    models: Iterable[SuiteModel] = HOST_SUITE,
    cache_dir: Path = DEFAULT_CACHE,
    precisions: Iterable[str] = PRECISIONS,
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


# --- the work table ------------------------------------------------------------------------------


def qdq_activations(model_path: Path) -> tuple[int, float]:
    """QuantizeLinear nodes on activations of a QDQ graph and the GB they read (fp32 in).

    The int8 work of ``physics.model_work`` is the float skeleton (Q/DQ dropped); ONNX Runtime fuses
    most Q/DQ pairs into quantised kernels but keeps the ones around operators it has no int8 kernel
    for, so this count is an upper bound on the extra quantisation kernels of the int8 model.
    """
    from edge_search.devices.emulation.opclass import load_graph

    g = load_graph(Path(model_path))
    n, gb = 0, 0.0
    for node in g.nodes:
        if node.op_type == "QuantizeLinear" and node.input and node.input[0] not in g.init:
            n += 1
            gb += 4.0 * g.numel(node.input[0]) / 1e9
    return n, gb


def work_entry(m: SuiteModel, cache_dir: Path = DEFAULT_CACHE, precisions: Iterable[str] = PRECISIONS,
               exported: bool = True) -> dict[str, Any]:
    """One work-table entry: fp32 `ModelWork` JSON, with family, source and the int8 work in ``extra``.

    With `exported` False only models whose ONNX files are already in `cache_dir` are read (nothing is
    exported); a missing precision raises `FileNotFoundError`.
    """
    from edge_search.devices.emulation.physics import model_work

    paths = {}
    for p in precisions:
        path = cache_dir / f"{m.name}-{m.cache_key}-{p}.onnx"
        if not path.exists():
            if not exported:
                raise FileNotFoundError(path)
            path = export(m, cache_dir, p)
        paths[p] = path
    fp32 = model_work(paths["fp32"]).to_json()
    fp32["extra"] = {"family": m.family, "source": m.source, "input": list(m.input_shape)}
    if "int8" in paths:
        q = model_work(paths["int8"]).to_json()
        n, gb = qdq_activations(paths["int8"])
        q.pop("extra", None)
        fp32["extra"]["int8"] = {**q, "qdq_activation_nodes": n, "qdq_activation_gb": round(gb, 6)}
    return fp32


def write_work_table(
    path: Path,
    models: Iterable[SuiteModel] | None = None,
    cache_dir: Path = DEFAULT_CACHE,
    precisions: Iterable[str] = PRECISIONS,
    reuse: Path | None = None,
    progress: Callable[[str], None] | None = None,
    merge: bool = False,
) -> dict[str, Any]:
    """Regenerate the suite work table (``device_profiles/suite_work.json``) and return it.

    For each model (default: the whole `SUITE`), its exports are read from `cache_dir` (exported there
    when missing); with `reuse` (an earlier export folder, e.g. another machine's cache), files whose
    name and definition hash match are read from there instead and nothing is exported for them. The
    table keeps, per suite key, the fp32 work per class (what `physics.load_work_table` and the fit
    read), the family and source, and the int8 work with its activation Q/DQ count in ``extra``.
    With `merge`, entries of an existing table at `path` that are not regenerated are kept.
    """
    models = list(SUITE.values() if models is None else models)
    precisions = tuple(precisions)
    out: dict[str, Any] = {}
    if merge and Path(path).exists():
        out.update(json.loads(Path(path).read_text())["models"])
    for m in models:
        t0 = time.time()
        src = cache_dir
        if reuse is not None and all((reuse / f"{m.name}-{m.cache_key}-{p}.onnx").exists() for p in precisions):
            src = reuse
        elif reuse is not None and (reuse / f"{m.name}-{m.cache_key}-fp32.onnx").exists():
            src = reuse  # int8 is quantised from the reused fp32 file, into the reuse folder
        out[m.name] = work_entry(m, src, precisions)
        if progress:
            w = out[m.name]
            progress(f"{m.name}: {w['gflops']:.3f} GFLOP, {w['nodes']} kernels ({time.time() - t0:.1f} s)")
    table = {
        "source": "edge_search.devices.emulation.reference_suite.write_work_table: physics.model_work on the "
                  "reference suite's ONNX exports (reference_suite.SUITE; random weights, opset 17; int8 = ONNX "
                  "Runtime static QDQ)",
        "version": WORK_TABLE_VERSION,
        "generated": time.strftime("%Y-%m-%d"),
        "models": dict(sorted(out.items())),
    }
    Path(path).write_text(json.dumps(table, indent=0) + "\n")
    return table


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Regenerate the reference suite's work table (suite_work.json).")
    ap.add_argument("--out", type=Path, required=True, help="work table to write (device_profiles/suite_work.json)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="export folder (default: %(default)s)")
    ap.add_argument("--reuse", type=Path, default=None, help="earlier export folder to read matching files from")
    ap.add_argument("--only", nargs="*", default=None, help="suite keys (default: all); merged into --out")
    args = ap.parse_args(argv)
    models = [suite_model(k) for k in args.only] if args.only else None
    write_work_table(args.out, models, args.cache, reuse=args.reuse, merge=bool(args.only),
                     progress=lambda s: print(s, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())


__all__ = [
    "DEFAULT_CACHE",
    "HOST_SUITE",
    "PRECISIONS",
    "SUITE",
    "SuiteModel",
    "build_all",
    "export",
    "for_published",
    "import_torchvision",
    "qdq_activations",
    "suite_model",
    "work_entry",
    "write_work_table",
]
