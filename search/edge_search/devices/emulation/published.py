"""Published board latencies, normalised: which device, path, runtime, precision, threads, clock and
suite architecture each row is, why a row is left out, and where it came from.

Two CSVs ship with the package (`device_profiles/`): ``published_latency_v2.csv`` (939 rows, 16+
families, many runtimes; its ``source`` column names each row's origin and ``note`` marks dubious
ones) and ``published_device_latency.csv`` (the earlier EfficientDet-Lite / TensorRT set). Every
`PublishedRow` keeps its file and line (``rid``), source and note. A row is **excluded, with the
reason**, when its note marks it dubious or approximate, when it does not measure the stated path
(ncnn Vulkan int8 falls back to the CPU), when the device is a different micro-architecture (the
Tremont N5105 proxy) or not identified, when its path has no profile provider (Pi 5 VideoCore, the
Intel iGPU), when no suite architecture matches the published model (OpenCV-zoo task models, timed
with pre/post-processing), or when it repeats a v2 row.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from edge_search.errors import InputError

V2_NAME = "published_latency_v2.csv"
V1_NAME = "published_device_latency.csv"
ALL_CORES = {"raspberry-pi-4": 4, "raspberry-pi-5": 4, "jetson-nano": 4, "jetson-orin-nano": 6, "intel-n100": 4}
"""Core count of each profile (the thread count of rows that say 'all cores' without a number)."""
DUBIOUS = ("DUBIOUS", "LOW TRUST", "APPROXIMATE")

CPU_REFERENCE_RUNTIME = "ort"
"""Runtime the fitted CPU efficiencies describe; every other runtime is carried by a fitted ratio."""
GPU_REFERENCE_RUNTIME = "ort-trt"
PROVIDER_RUNTIME = {
    "CPUExecutionProvider": "ort",
    "CUDAExecutionProvider": "ort-cuda",
    "TensorrtExecutionProvider": "ort-trt",
}
"""The runtime key of each ONNX Runtime execution provider (what a prediction is for)."""


@dataclass
class PublishedRow:
    """One published figure, normalised (see the module docstring)."""

    rid: str
    device: str
    path: str
    runtime: str
    precision: str
    threads: int
    clock_ghz: float | None
    model: str | None
    published: str
    latency_ms: float
    source: str
    note: str = ""
    excluded: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def used(self) -> bool:
        """True when the row is not excluded."""
        return not self.excluded


_MODELS: tuple[tuple[str, str], ...] = (
    ("squeezenet-ssd", "squeezenet_ssd@300"),
    ("mobilenetv1-ssd", "mobilenet_v1_ssd@300"),
    ("squeezenet v1.1", "squeezenet1_1@{r227}"),
    ("squeezenet 1.1", "squeezenet1_1@224"),
    ("squeezenet1_1", "squeezenet1_1@224"),
    ("squeezenet 1.0", "squeezenet1_0@224"),
    ("squeezenet1_0", "squeezenet1_0@224"),
    ("mobilenetv1 0.25x", "mobilenet_v1_0.25@128"),
    ("mobilenetv1 0.5x", "mobilenet_v1_0.5@224"),
    ("mobilenetv1", "mobilenet_v1_1.0@224"),
    ("mobilenetv2 0.35x", "mobilenet_v2_0.35@96"),
    ("mobilenetv2 0.5x", "mobilenet_v2_0.5@224"),
    ("mobilenetv2 1.1x-d", "mobilenet_v2_110d@224"),
    ("mobilenetv2 1.4x", "mobilenet_v2_1.4@224"),
    ("mobilenetv2", "mobilenet_v2_1.0@224"),
    ("mobilenetv3-large minimalistic", "mobilenet_v3_large_min@224"),
    ("mobilenetv3-small 0.5x", "mobilenet_v3_small_0.5@224"),
    ("mobilenetv3-small", "mobilenet_v3_small@224"),
    ("mobilenetv3", "mobilenet_v3_large@224"),
    ("shufflenetv1", "shufflenet_v1_g3@224"),
    ("shufflenetv2", "shufflenet_v2_x1_0@224"),
    ("mnasnet-a1", "mnasnet_a1@224"),
    ("mnasnet", "mnasnet1_0@224"),
    ("proxylessnas", "proxylessnas_mobile@224"),
    ("efficientnetv2-b0", "efficientnet_v2_b0@224"),
    ("efficientnet-b0", "efficientnet_b0@224"),
    ("efficientnet-lite0", "efficientnet_lite0@224"),
    ("efficientnet-lite1", "efficientnet_lite1@240"),
    ("efficientnet-lite2", "efficientnet_lite2@260"),
    ("efficientnet-lite3", "efficientnet_lite3@280"),
    ("efficientnet-lite4", "efficientnet_lite4@300"),
    ("regnety-400mf", "regnet_y_400mf@224"),
    ("blazeface", "blazeface@128"),
    ("googlenet", "googlenet@224"),
    ("inception v3", "inception_v3@299"),
    ("alexnet", "alexnet@{r227}"),
    ("repvgg-b0", "repvgg_b0@224"),
    ("vgg-11-bn", "vgg11_bn@224"),
    ("vgg-13-bn", "vgg13_bn@224"),
    ("vgg-16-bn", "vgg16_bn@224"),
    ("vgg-11", "vgg11@224"),
    ("vgg-13", "vgg13@224"),
    ("vgg-16", "vgg16@224"),
    ("densenet-121", "densenet121@224"),
    ("densenet-161", "densenet161@224"),
    ("densenet-169", "densenet169@224"),
    ("densenet-201", "densenet201@224"),
    ("nanodet-m", "nanodet_m@320"),
    ("vit (ncnn vision_transformer)", "vit_b_32@384"),  # benchmark/vision_transformer.param: 32x32 patches, 145 tokens
    ("fastestdet", "fastestdet@352"),
    ("ese-vovnet19b-dw", "ese_vovnet19b_dw@224"),
    ("mixnet-s", "mixnet_s@224"),
    ("deit-tiny", "deit_tiny@224"),
    ("convnext", "convnext_base@224"),
    ("clip vit-b/32", "vit_b_32@224"),
    ("ssd mobilenetv1 (coco)", "mobilenet_v1_ssd@300"),
    ("efficientdet-d0", "efficientdet_d0@512"),
    ("efficientdet-lite0", "efficientdet_lite0@320"),
    ("efficientdet-lite1", "efficientdet_lite1@384"),
    ("efficientdet-lite2", "efficientdet_lite2@448"),
    ("efficientdet-lite3x", "efficientdet_lite3x@640"),
    ("efficientdet-lite3", "efficientdet_lite3@512"),
    ("efficientdet-lite4", "efficientdet_lite4@640"),
    ("ssd-mobilenet-v2-320", "ssd_mobilenet_v2@320"),
    ("resnet18", "resnet18@224"),
    ("resnet34", "resnet34@224"),
    ("resnet50", "resnet50@224"),
    ("densenet121", "densenet121@224"),
    ("vgg16", "vgg16@224"),
)
"""Published model name prefix (lower case) -> suite key (`reference_suite.SUITE`; first match wins)."""

_ZOO = "an OpenCV-zoo task model timed with its pre/post-processing (resize, decoding, NMS or alignment)"
NOT_IN_SUITE: tuple[tuple[str, str], ...] = (
    ("crnn text recog", _ZOO),
    ("lpd-yunet", _ZOO),
    ("yunet", _ZOO),
    ("mediapipe", _ZOO),
    ("mobilefacenet", _ZOO),
    ("sface", _ZOO),
    ("pp-humanseg", _ZOO),
    ("pp-ocrv3", _ZOO),
    ("nanodet-plus", _ZOO + " at 416x416 (NanoDet-Plus, not the NanoDet-m of the suite)"),
    ("vittrack", _ZOO + " (a tracker: template + search branches)"),
    ("wechatqrcode", _ZOO + " (detector + super-resolution pipeline)"),
    ("youtureid", _ZOO),
    ("bert", "a language model (token sequences): the suite holds vision networks"),
    ("all-minilm", "a sentence-embedding language model: the suite holds vision networks"),
    ("all-mpnet", "a sentence-embedding language model: the suite holds vision networks"),
    ("u-net", "a segmentation network whose variant (depth, widths) the source does not state"),
    ("deeplabv3", "a segmentation network whose backbone and output stride the source does not state"),
    ("ultraface", "a face-detection pipeline (RFB-320 with its anchor decoding)"),
    ("nas-bench-201", "a CIFAR-10 NAS-Bench-201 cell network (32x32): no ImageNet-scale suite architecture"),
    ("ssdlite mobilenetv2 (frigate", "SSDLite MobileNetV2 at 300x300 (the suite's SSDLite is the 320 variant)"),
)
"""Published model name prefixes (lower case) that map to no suite architecture, each with the reason:
the rows are excluded with it (`read_v2`); everything else maps to a `reference_suite.SUITE` model."""


def not_in_suite(name: str) -> str | None:
    """Why a published model has no suite architecture, or None when it is not a named exception."""
    n = name.lower()
    return next((why for prefix, why in NOT_IN_SUITE if n.startswith(prefix)), None)


def suite_key(name: str, input_text: str = "") -> str | None:
    """The suite architecture of a published model name and input, or None when there is none."""
    n = name.lower()
    if n.startswith("nanodet-plus"):
        return None  # 416 input, OpenCV-zoo timing with pre/post-processing
    r227 = "227" if "227" in input_text else "224"
    for prefix, key in _MODELS:
        if n.startswith(prefix):
            return key.replace("{r227}", r227)
    return None


def runtime_key(runtime: str, path: str) -> str:
    """Normalised runtime key (``ort``, ``ort-cuda``, ``ort-trt``, ``ncnn``, ``xnnpack``, ...)."""
    r = runtime.lower()
    table = (
        ("ncnn", "ncnn-vulkan" if path == "gpu" else "ncnn"),
        ("opencv dnn cuda", "opencv-cuda"),
        ("opencv", "opencv"),
        ("onnx runtime (cuda", "ort-cuda"),
        ("onnx runtime (tensorrt", "ort-trt"),
        ("onnx runtime", "ort"),
        ("pytorch (eager, cuda", "pytorch-cuda"),
        ("pytorch-eager-fp16", "pytorch-cuda"),
        ("pytorch", "pytorch"),
        ("tensorrt", "tensorrt"),
        ("xnnpack", "xnnpack"),
        ("tflite-2.18-xnnpack", "tflite-xnnpack"),  # TFLite interpreter + XNNPACK delegate: not the bare XNNPACK bench
        ("tensorflow lite (ruy", "tflite-ruy"),
        ("arm nn", "armnn"),
        ("executorch", "executorch"),
        ("openvino", "openvino-gpu" if path == "gpu" else "openvino"),
    )
    for prefix, key in table:
        if r.startswith(prefix):
            return key
    if "torch2trt" in r or "trtexec" in r:
        return "tensorrt"
    return "other:" + runtime


def _device(text: str) -> tuple[str | None, float | None, str]:
    """(profile name, clock GHz when the row states one, exclusion reason)."""
    if text.startswith("Raspberry Pi 4"):
        m = re.search(r"@([\d.]+)GHz", text)
        return "raspberry-pi-4", float(m.group(1)) if m else None, ""
    if text.startswith("Raspberry Pi 5 OVERCLOCKED"):
        return "raspberry-pi-5", 2.9, ""
    if text.startswith("Raspberry Pi 5"):
        return "raspberry-pi-5", None, ""
    if text.startswith("Raspberry Pi (model not stated"):
        return None, None, "device identity not stated"
    if text.startswith("Jetson Orin Nano"):
        return "jetson-orin-nano", None, ""
    if text.startswith("Jetson Nano"):
        return "jetson-nano", None, ""
    if text.startswith("PROXY Intel Celeron N5105"):
        return None, None, "Tremont (Jasper Lake) proxy, not the N100's Gracemont: another micro-architecture"
    if text.startswith("Intel Atom x7425E"):
        return "intel-n100", 3.4, ""
    if text.startswith("Intel Processor N200"):
        return "intel-n100", 3.7, ""
    if text.startswith(("Intel N100", "Intel N150")):
        return "intel-n100", None, ""
    return None, None, f"unknown device '{text}'"


def _precision(text: str) -> str:
    t = text.lower()
    for p in ("int8", "fp16", "fp32"):
        if t.startswith(p):
            return p
    return "?"


def _lines(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror}") from None


def _data_file(name: str) -> Path:
    return Path(str(resources.files("edge_search.device_profiles").joinpath(name)))


def read_v2(path: Path | None = None) -> list[PublishedRow]:
    """Rows of ``published_latency_v2.csv`` (default: the packaged copy), with exclusions."""
    path = path or _data_file(V2_NAME)
    out = []
    first = 1 + sum(1 for ln in path.read_text().splitlines() if ln.startswith("#"))
    for i, d in enumerate(csv.DictReader(_lines(path)), start=first + 1):
        dev, clock, why = _device(d["device"])
        gpu = d["cpu_or_gpu"].startswith("GPU")
        pth = "gpu" if gpu else "cpu"
        prec = _precision(d["precision"])
        rt = runtime_key(d["runtime"], pth)
        note = d["note"]
        m = re.match(r"(\d+)", d["threads"])
        threads = 1 if gpu else int(m.group(1)) if m else ALL_CORES.get(dev or "", 4)
        model = suite_key(d["model"], d["input"])
        hm = re.search(r"header says ([\d.]+) ?GHz", note)
        if clock is None and hm:
            clock = float(hm.group(1))
        reasons = [
            (bool(why), why),
            (any(k in note for k in DUBIOUS), "note marks the row dubious: " + note[:90]),
            (gpu and "int8 layers likely run on CPU" in note,
             "ncnn Vulkan int8 falls back to the CPU: not a GPU figure"),
            (prec == "?", "precision not stated"),
            (model is None, f"no suite architecture for '{d['model']}' (input {d['input']}): "
                            f"{not_in_suite(d['model']) or 'not a named exception'}"),
            (rt.startswith("other:"), "runtime not stated"),
            (dev == "intel-n100" and gpu, "Intel iGPU: the intel-n100 profile has no GPU provider"),
            (dev == "raspberry-pi-5" and gpu, "Pi 5 VideoCore GPU: no ONNX Runtime provider in the profile"),
        ]
        excluded = next((text for cond, text in reasons if cond), "")
        out.append(PublishedRow(
            rid=f"{path.name}:{i}", device=dev or d["device"], path=pth, runtime=rt, precision=prec,
            threads=threads, clock_ghz=clock, model=model, published=d["model"],
            latency_ms=float(d["latency_ms"]), source=d["source"], note=note, excluded=excluded,
            extra={"runtime_text": d["runtime"], "input": d["input"], "stat": d["stat"], "threads_text": d["threads"]},
        ))
    return out


def read_v1(path: Path | None = None) -> list[PublishedRow]:
    """Rows of ``published_device_latency.csv`` (default: the packaged copy)."""
    path = path or _data_file(V1_NAME)
    out = []
    first = 1 + sum(1 for ln in path.read_text().splitlines() if ln.startswith("#"))
    for i, d in enumerate(csv.DictReader(_lines(path)), start=first + 1):
        gpu = d["device"] == "jetson-nano"
        pth = "gpu" if gpu else "cpu"
        model = suite_key(d["model"])
        out.append(PublishedRow(
            rid=f"{path.name}:{i}", device=d["device"], path=pth, runtime=runtime_key(d["runtime"], pth),
            precision=d["precision"], threads=int(d["threads"]) if d["threads"] else 1, clock_ghz=None,
            model=model, published=d["model"], latency_ms=float(d["latency_ms"]), source=d["source"],
            excluded="" if model else f"no suite architecture for '{d['model']}'",
            extra={"runtime_text": d["runtime"], "stat": d["stat"]},
        ))
    return out


def read_all(v2: Path | None = None, v1: Path | None = None) -> list[PublishedRow]:
    """Both CSVs; v1 rows that repeat a v2 row are excluded as duplicates."""
    rows2 = read_v2(v2)
    rows1 = read_v1(v1)
    seen = {(r.device, r.path, r.runtime, r.model, r.precision, r.threads) for r in rows2 if r.used}
    for r in rows1:
        if r.used and (r.device, r.path, r.runtime, r.model, r.precision, r.threads) in seen:
            r.excluded = "duplicate of a published_latency_v2.csv row"
    return rows2 + rows1


def exclusion_summary(rows: Iterable[PublishedRow]) -> dict[str, int]:
    """Count of excluded rows per reason (the reason's text up to its first colon)."""
    out: dict[str, int] = {}
    for r in rows:
        if r.excluded:
            k = r.excluded.split(":")[0]
            out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


__all__ = [
    "ALL_CORES",
    "CPU_REFERENCE_RUNTIME",
    "GPU_REFERENCE_RUNTIME",
    "NOT_IN_SUITE",
    "PROVIDER_RUNTIME",
    "PublishedRow",
    "exclusion_summary",
    "not_in_suite",
    "read_all",
    "read_v1",
    "read_v2",
    "runtime_key",
    "suite_key",
]
