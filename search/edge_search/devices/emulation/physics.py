"""The physics behind a prediction: a model's work per op class, and a device's roofline peaks.

A model is reduced to its **work per class** (`model_work`, read off the ONNX graph with shape
inference; nothing is executed):

| class | nodes | work |
|---|---|---|
| ``conv3`` | dense 3x3 stride-1 convolutions (group 1): the Winograd-able kind | FLOPs |
| ``convk`` | other dense or grouped (not depthwise) k x k convolutions | FLOPs |
| ``pointwise`` | 1x1 convolutions | FLOPs |
| ``depthwise`` | one group per channel | FLOPs |
| ``gemm`` | Gemm / MatMul (attention included) | FLOPs |
| ``memory`` | element-wise, normalisation, pooling, concat, resize, softmax, layout | bytes moved |

plus the number of kernels a runtime launches (``nodes``: compute nodes and the memory nodes a
runtime cannot fuse into the preceding convolution; shape arithmetic and Q/DQ pairs excluded).
A QDQ int8 graph is read as its float skeleton: the same FLOPs, the Q/DQ nodes dropped.

A device's **peaks** (`cpu_peaks`, `gpu_peaks`) come from its datasheet: per-core FLOP/cycle of
the core type x clock (fp32; int8 x2 without a dot-product instruction, x4 with one), memory
bandwidth, and the accelerator's TFLOPS. They are the prior of the fit (`fit`): each class's rate
is ``peak x efficiency``, and the efficiencies are fitted in log space around a prior, so a class
with little data stays physically plausible.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_search.devices.profile import DeviceProfile

WORK_CLASSES: tuple[str, ...] = ("conv3", "convk", "pointwise", "depthwise", "gemm", "memory")
"""The classes a model's work is split into (see the module docstring)."""
COMPUTE_WORK = ("conv3", "convk", "pointwise", "gemm")
"""Classes whose threads scale like compute; ``depthwise`` and ``memory`` scale like bandwidth."""

_SKIP = {"Constant", "Shape", "Identity", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Dropout"}
_FUSABLE = {"Relu", "Clip", "BatchNormalization", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Add"}
"""Ops a runtime fuses into the convolution before them (activation, folded BN, residual add)."""
_CONV = {"Conv", "QLinearConv", "ConvInteger", "ConvTranspose"}
_GEMM = {"Gemm", "MatMul", "QGemm", "QLinearMatMul", "MatMulInteger", "Einsum"}
_SMALL = 64
"""Nodes whose output has fewer elements are shape arithmetic, not kernels."""


@dataclass(frozen=True)
class ModelWork:
    """A model's work per class (GFLOP for compute classes, GB for ``memory``) and kernel count."""

    work: dict[str, float]
    nodes: int
    gflops: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelWork:
        return cls({k: float(v) for k, v in d["work"].items()}, int(d["nodes"]), float(d.get("gflops", 0.0)),
                   dict(d.get("extra", {})))


def model_work(model_path: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> ModelWork:
    """Work per class and kernel count of an ONNX model (see the module docstring)."""
    from edge_search.devices.emulation.opclass import _attr, load_graph

    g = load_graph(Path(model_path), shapes)
    work = dict.fromkeys(WORK_CLASSES, 0.0)
    nodes = 0

    def src(name: str) -> Any:
        """The producer of a tensor, looking through Q/DQ pairs."""
        p = g.producer.get(name)
        while p is not None and p.op_type in ("QuantizeLinear", "DequantizeLinear") and p.input:
            p = g.producer.get(p.input[0])
        return p

    for node in g.nodes:
        op = node.op_type
        if op in _SKIP:
            continue
        out = node.output[0] if node.output else ""
        if op in _CONV:
            w = g.weight_shape(node)
            k = int(np.prod(w[1:])) if w else 1
            flops = 2.0 * g.numel(out) * k / 1e9
            group_attr: Any = _attr(node, "group", 1)
            ks_attr: Any = _attr(node, "kernel_shape", w[2:] if w else ())
            st_attr: Any = _attr(node, "strides", (1,))
            group = int(group_attr)
            ks = tuple(int(x) for x in ks_attr)
            st = tuple(int(x) for x in st_attr)
            if group > 1 and (w is None or w[1] == 1):
                cls = "depthwise"
            elif ks and all(x == 1 for x in ks):
                cls = "pointwise"
            elif group == 1 and ks == (3, 3) and all(s == 1 for s in st):
                cls = "conv3"
            else:
                cls = "convk"
            work[cls] += flops
            nodes += 1
            continue
        if op in _GEMM:
            a = g.shape.get(node.input[0], ()) if node.input else ()
            kdim = a[-1] if a else 1
            trans_a: Any = _attr(node, "transA", 0)
            if op == "Gemm" and int(trans_a) and len(a) == 2:
                kdim = a[0]
            work["gemm"] += 2.0 * g.numel(out) * kdim / 1e9
            nodes += 1
            continue
        if op in _VIEWS or g.numel(out) < _SMALL:
            continue
        prev = src(node.input[0]) if node.input else None
        fused = op in _FUSABLE and prev is not None and prev.op_type in (_CONV | _GEMM)
        if fused:
            continue
        # bytes moved as float tensors (an int8 graph is read as its float skeleton)
        nbytes = 4.0 * (sum(g.numel(i) for i in node.input if i and i not in g.init) + g.numel(out))
        work["memory"] += nbytes / 1e9
        nodes += 1
    gflops = sum(v for k, v in work.items() if k != "memory")
    return ModelWork({k: round(v, 9) for k, v in work.items()}, nodes, round(gflops, 6))


# --- device peaks ------------------------------------------------------------------------------

CORE_FP32_FLOP_PER_CYCLE: dict[str, tuple[float, str]] = {
    "Cortex-A57": (8.0, "one 128-bit FMLA per cycle sustained (commonly quoted; not checked against Arm's guide)"),
    "Cortex-A72": (8.0, "one 128-bit FMLA per cycle sustained (commonly quoted; not checked against Arm's guide)"),
    "Cortex-A76": (16.0, "two 128-bit FMLA pipes (commonly quoted; not checked against Arm's guide)"),
    "Cortex-A78AE": (16.0, "two 128-bit FMLA pipes, as the A76/A78 (commonly quoted)"),
    "Gracemont": (16.0, "Alder Lake-N E-core: two 128-bit FMA ports, AVX2 split in halves (commonly quoted)"),
    "AMD EPYC": (32.0, "Zen 4, AVX-512 as 2x256: 2 FMA pipes x 8 lanes x 2; single-thread SGEMM measured "
                 "91 GFLOP/s on the development host"),
}
"""Per-core fp32 peak by core type (matched as a prefix of ``cpu.core_type``), with the source."""
INT8_FACTOR = {False: 2.0, True: 4.0}
"""int8 ops per fp32 FLOP slot: x2 with widening multiply-accumulate, x4 with SDOT/UDOT or VNNI."""


def _core_entry(profile: DeviceProfile) -> tuple[float, str]:
    for name, entry in CORE_FP32_FLOP_PER_CYCLE.items():
        if profile.cpu.core_type.startswith(name) or name in profile.cpu.core_type:
            return entry
    if profile.cpu.architecture == "x86_64":
        return 32.0 if "avx512" in profile.cpu.simd else 16.0, "assumed from the SIMD width (x86, no table entry)"
    return 8.0, "assumed (Arm core without a table entry: 2x 64-bit FMA)"


def cpu_peaks(profile: DeviceProfile, clock_ghz: float | None = None) -> dict[str, tuple[float, str]]:
    """Single-core peaks (GFLOP/s fp32 and int8, and the board's memory bandwidth GB/s), with sources."""
    fpc, why = _core_entry(profile)
    clock = clock_ghz or profile.cpu.clock_ghz
    dot = profile.cpu.int8_dot_product
    return {
        "fp32": (fpc * clock, f"{profile.cpu.core_type}: {fpc:g} FLOP/cycle x {clock:g} GHz ({why})"),
        "fp16": (fpc * clock * (2.0 if profile.cpu.fp16_arithmetic else 1.0),
                 "fp16 arithmetic: 2x fp32" if profile.cpu.fp16_arithmetic else "no fp16 arithmetic: fp32 peak"),
        "int8": (fpc * clock * INT8_FACTOR[dot],
                 f"fp32 peak x {INT8_FACTOR[dot]:g} ({'with' if dot else 'without'} an int8 dot-product instruction)"),
        "memory": (profile.memory.bandwidth_gb_s, "memory.bandwidth_gb_s (datasheet)"),
    }


def gpu_peaks(profile: DeviceProfile) -> dict[str, tuple[float, str]]:
    """Accelerator peaks (GFLOP/s per precision, GB/s) from the profile's accelerator block."""
    acc = profile.accelerator
    if acc is None:
        return {}
    fp16 = (acc.fp16_tflops or 2 * (acc.fp32_tflops or 0.0)) * 1e3
    fp32 = (acc.fp32_tflops or (acc.fp16_tflops or 0.0) / 2) * 1e3
    return {
        "fp32": (fp32, f"accelerator fp32 {fp32 / 1e3:g} TFLOPS"),
        "fp16": (fp16, f"accelerator fp16 {fp16 / 1e3:g} TFLOPS"),
        "int8": (2 * fp16, "accelerator int8 assumed 2x fp16 (no published int8 figures used)"),
        "memory": (profile.memory.bandwidth_gb_s, "memory.bandwidth_gb_s (shared with the CPU)"),
    }


def load_work_table(path: Path) -> dict[str, ModelWork]:
    """Suite work table (`reference_suite.write_work_table`): suite key -> `ModelWork`."""
    data = json.loads(Path(path).read_text())
    return {k: ModelWork.from_json(v) for k, v in data["models"].items()}


__all__ = [
    "COMPUTE_WORK",
    "CORE_FP32_FLOP_PER_CYCLE",
    "WORK_CLASSES",
    "ModelWork",
    "cpu_peaks",
    "gpu_peaks",
    "load_work_table",
    "model_work",
]
