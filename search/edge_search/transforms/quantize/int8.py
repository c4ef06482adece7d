"""int8 quantisation with ONNX Runtime's quantisation tool (dynamic or static with calibration).

Data types follow ONNX Runtime's guidance for x86-64 CPUs:
- dynamic: activations are always uint8 (DynamicQuantizeLinear); weights QInt8 (U8S8), ORT's
  default and the fast path of its integer GEMM kernels. On AVX2/AVX-512 CPUs without VNNI the
  u8*s8 instruction can saturate; `reduce_range` (7-bit weights) is the documented remedy.
- static QDQ: S8S8 (activations and weights QInt8), "the default and first choice" in ORT's docs.
- static QOperator: U8S8 (activations QUInt8), because S8S8 QOperator kernels are slow on x86-64.

What is quantised: `quantize_op_types` (`conv`, `matmul` = MatMul+Gemm, or ORT's default set) and
`keep_fp32` (the first and last Conv/Gemm/MatMul, depthwise convs, or both left in float32; their
names are looked up on the model that is quantised, after ORT's pre-processing).

Mixed precision by measured sensitivity (int8-static): `keep_fp32_top_k` / `keep_fp32_fraction`
keep the nodes `edge_search.transforms.quantize.sensitivity` ranks most sensitive in float32 (the ranking is computed
once per model, data and quantisation settings, and cached; the quantisation reuses its calibration
ranges). Every quantised deployable records the nodes it left in float32 in its metadata_props
(`edge_search.fp32_nodes`), which the study logs as the MLflow tag `fp32_nodes`.

int8-static prepares the float model first (`static.prepare_static`: cross-layer equalisation,
SmoothQuant, calibration that holds on real networks, bias correction) and then quantises it with
ORT; the sensitivity ranking is made on the same prepared model, so the fp32 fallback comes on top
of those techniques. Outputs of MatMul/Gemm stay float unless `quantize_matmul_outputs`.

Weight-only int4/int8 is `weight_only.WeightOnlyQuantizeTransform`; the ORT primitives both use
are in `ort`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

from edge_search.config import DeployConfig
from edge_search.tasks.base import Task
from edge_search.transforms.base import Transform
from edge_search.transforms.quantize.ort import OP_TYPES, nodes_kept_fp32, record_fp32_nodes
from edge_search.transforms.quantize.sensitivity import (
    SENSITIVITY_ID,
    QuantSettings,
    analyse_sensitivity,
    kept_nodes,
)
from edge_search.transforms.quantize.static import prepare_dynamic, prepare_static, quantize_prepared

log = logging.getLogger(__name__)

INT8_METHOD = 4
"""Version of the int8 method (part of the cache key): 2 = own calibration, float MatMul outputs,
bias correction / CLE / SmoothQuant knobs (issue 14); 3 = layers kept in float32 get their
uncorrected biases back; 4 = and are shielded from ORT's load-time weight quantisation."""
INT8_KNOBS = ("calibration_percentile", "activation_symmetric", "bias_correction", "cross_layer_equalization",
              "smooth_quant", "smooth_quant_alpha", "quantize_matmul_outputs", "activation_type")
"""Knobs that change an int8 model (besides the older ones); in its cache key."""


class QuantizeTransform(Transform):
    """int8-dynamic or int8-static (QDQ or QOperator) quantisation per the deploy knobs."""

    name = "quantize"
    key_extras = ("sensitivity", "int8_method")

    def applies(self, deploy: DeployConfig) -> bool:
        """When `precision` is `int8-dynamic` or `int8-static`."""
        return deploy.quantized

    def key_knobs(self, deploy: DeployConfig) -> dict[str, Any]:
        """The int8 knobs, and `input_resolution` (calibration data is resized to it); the
        mixed-precision knobs (and the ranking method's version, `sensitivity`) only when set. The
        knobs of issue 14 (and the method's version, `int8_method`) only for int8 precisions, so the
        keys of other models stay as they were."""
        knobs = deploy.model_dump(include={"precision", "calibration_method", "calibration_size", "per_channel",
                                           "reduce_range", "quant_format", "keep_fp32", "quantize_op_types",
                                           "input_resolution"})
        if self.applies(deploy):
            knobs.update(deploy.model_dump(include=set(INT8_KNOBS)), int8_method=INT8_METHOD)
        mixed = {k: v for k, v in deploy.model_dump(include={"keep_fp32_top_k", "keep_fp32_fraction"}).items() if v}
        if mixed:
            knobs.update(mixed, sensitivity=SENSITIVITY_ID)
        return knobs

    def apply(self, src: Path, dst: Path, deploy: DeployConfig, task: Task) -> None:
        """Quantise `src` into `dst`; static quantisation calibrates on `task.calibration_batches`."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        if not self.applies(deploy):
            raise ValueError(f"precision {deploy.precision} is not an int8 precision")
        dst.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="edge-search-quant-") as tmp:
            if deploy.precision == "int8-dynamic":
                model_in = prepare_dynamic(src, Path(tmp), deploy)
                exclude = nodes_kept_fp32(onnx.load(str(model_in)), deploy.keep_fp32)
                quantize_dynamic(str(model_in), str(dst), per_channel=deploy.per_channel,
                                 reduce_range=deploy.reduce_range, weight_type=QuantType.QInt8,
                                 op_types_to_quantize=OP_TYPES[deploy.quantize_op_types],
                                 nodes_to_exclude=exclude)
            else:
                prepared = prepare_static(src, Path(tmp), deploy, task)
                named = onnx.load(str(prepared.path))
                exclude = nodes_kept_fp32(named, deploy.keep_fp32)
                if deploy.keep_fp32_top_k > 0 or deploy.keep_fp32_fraction > 0:
                    exclude = self._sensitive_nodes(src, named, deploy, task)
                quantize_prepared(prepared, dst, deploy, exclude)
                exclude = [*exclude, *(n for n in prepared.exclude if n not in exclude)]
                log.info("int8-static: %s", ", ".join(prepared.steps) or "no float techniques")
        record_fp32_nodes(dst, exclude)
        log.info("quantised %s -> %s (%s) in %.2f s", src, dst, deploy.precision, time.perf_counter() - start)

    def _sensitive_nodes(self, src: Path, named: onnx.ModelProto, deploy: DeployConfig, task: Task) -> list[str]:
        """The top-ranked nodes for `keep_fp32_top_k`/`_fraction` (ranked on the same prepared model)."""
        report = analyse_sensitivity(src, task, QuantSettings.from_deploy(deploy), cache=self.cache,
                                     resolution=deploy.input_resolution)
        names = {n.name for n in named.graph.node}
        kept = [n for n in kept_nodes(deploy, report) if n in names]
        if len(kept) < len(kept_nodes(deploy, report)):
            log.warning("sensitivity ranking names nodes this model lacks; kept %d of them", len(kept))
        return kept
