"""One trial's configuration as plain typed objects: train params plus deploy knobs.

`DeployConfig` lists every deploy knob edge-search knows, with its default; `check_deploy` rejects
combinations that cannot be deployed, before any training or measuring is spent on them.
"""

from __future__ import annotations

import math
import types
import typing
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError

from edge_search.devices.base import SessionKnobs
from edge_search.devices.capabilities import PROVIDERS, DeviceCapabilities
from edge_search.errors import InvalidConfig
from edge_search.schema import StrictModel

Precision = Literal["fp32", "fp16", "int8-dynamic", "int8-static", "int8-weight", "int4-weight"]

#: The device precision (a device profile's `precisions`) each deploy precision needs. Weight-only
#: int4/int8 (ONNX Runtime's MatMulNBits) keeps activations in fp32 and dequantises weights in the
#: kernel, so it runs wherever fp32 does.
DEVICE_PRECISION: dict[str, str] = {
    "fp32": "fp32", "fp16": "fp16", "int8-dynamic": "int8", "int8-static": "int8",
    "int8-weight": "fp32", "int4-weight": "fp32",
}

ExecutionProvider = Literal["cpu", "cuda", "tensorrt"]
KeepFp32 = Literal["none", "first_last", "depthwise", "first_last_depthwise"]
QuantizeOpTypes = Literal["all", "conv", "matmul"]


class DeployConfig(StrictModel):
    """Deployment knobs; field names are the names a space's `deploy:` section uses."""

    precision: Precision = "fp32"
    execution_provider: ExecutionProvider = "cpu"
    """Where the model runs: ONNX Runtime's CPU, CUDA or TensorRT execution provider (`PROVIDERS`);
    refused on a device that does not offer it (`device_capabilities`), with the reason."""
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    """int8-static: how activation ranges are found: min/max, percentile (both tails cut at
    `calibration_percentile`), or entropy (KL; slow, and it clipped CNN activations too hard)."""
    calibration_size: int = Field(256, ge=1)
    """int8-static: calibration samples (the task may have fewer; all are used then)."""
    calibration_percentile: float = Field(99.999, ge=99.0, lt=100.0)
    """int8-static with `calibration_method: percentile`: the share of values inside the range."""
    per_channel: bool = True
    """int8: one weight scale per output channel (convolutions, MatMul columns); per-tensor loses
    most of a depthwise-heavy CNN's accuracy (EfficientNet-Lite0: 47 % vs 78 % agreement)."""
    activation_symmetric: bool = False
    """int8-static: activation ranges symmetric around zero (asymmetric keeps the grid on
    non-negative ReLU outputs)."""
    bias_correction: bool = True
    """int8-static: biases absorb the mean error of the rounded weights (DFQ / NNCF fast bias correction)."""
    cross_layer_equalization: bool = False
    """int8: equalise weight ranges of Conv pairs linked by ReLU or nothing (not through ReLU6/Clip)."""
    smooth_quant: bool = False
    """int8-static: SmoothQuant for MatMuls with constant weights (transformers)."""
    smooth_quant_alpha: float = Field(0.5, ge=0.0, le=1.0)
    """int8-static with `smooth_quant`: how much of the activation range moves into the weights."""
    transformer_fusion: Literal["none", "bert"] = "none"
    """ONNX Runtime's transformer optimiser (attention, LayerNorm, GELU fusions) for this model
    family, applied before any precision change (so fp32 is compared fused too)."""
    quantize_matmul_outputs: bool = False
    """int8-static: quantise the outputs of MatMul/Gemm too (logits, attention scores); float by
    default: int8 logits tie the top classes of low-margin inputs."""
    reduce_range: bool = False
    quant_format: Literal["qdq", "qoperator"] = "qdq"
    activation_type: Literal["int8", "uint8"] = "int8"
    """int8-static QDQ: activation data type (S8S8 is ORT's first choice; U8S8 measured faster on
    this project's x86 host with the same fidelity). QOperator always uses uint8 activations."""
    sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    """Unstructured magnitude pruning: share of weights set to zero."""
    channel_prune: float = Field(0.0, ge=0.0, lt=1.0)
    """Structured pruning: share of conv channels removed (the network really shrinks)."""
    finetune_epochs: int = Field(0, ge=0)
    """Epochs of fine-tuning after pruning; no effect (and not part of any cache key) when unpruned."""
    intra_op_threads: int = Field(1, ge=1)
    inter_op_threads: int = Field(1, ge=1)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    batch_size: int = Field(1, ge=1)
    input_resolution: int | None = Field(None, ge=8)
    """Square input side (height = width) for image models with dynamic spatial axes; None keeps
    the data's own resolution. Only tasks that can resize their data accept it (`onnx`, `torch`)."""
    keep_fp32: KeepFp32 = "none"
    """int8: nodes left unquantised: the first and last Conv/Gemm/MatMul, depthwise convs, or both."""
    quantize_op_types: QuantizeOpTypes = "all"
    """int8: which op types to quantise (`all`: ONNX Runtime's default set)."""
    weight_only_block_size: Literal[16, 32, 64, 128] = 32
    """int4-weight/int8-weight: weights per quantisation block along the reduction axis."""
    keep_fp32_top_k: int = Field(0, ge=0)
    """int8-static: keep the k nodes whose dequantisation gains the most fidelity in float32
    (ranked by `edge_search.transforms.quantize.sensitivity`, cached per model, data and quantisation settings)."""
    keep_fp32_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """int8-static: like `keep_fp32_top_k`, as a share of the quantisable nodes (rounded)."""

    def session(self) -> SessionKnobs:
        """The ONNX Runtime session knobs, providers included (`PROVIDERS[execution_provider]`)."""
        return SessionKnobs(intra_op_threads=self.intra_op_threads, inter_op_threads=self.inter_op_threads,
                            graph_optimization=self.graph_optimization, execution_mode=self.execution_mode,
                            providers=PROVIDERS[self.execution_provider])

    @property
    def quantized(self) -> bool:
        """int8 dynamic or static (activations and weights); weight-only precisions are not."""
        return self.precision in ("int8-dynamic", "int8-static")

    @property
    def weight_only_bits(self) -> int | None:
        """4 or 8 for the weight-only precisions, else None."""
        return {"int4-weight": 4, "int8-weight": 8}.get(self.precision)

    @property
    def pruned(self) -> bool:
        return self.sparsity > 0 or self.channel_prune > 0


DEPLOY_KNOBS: dict[str, Any] = {name: f.default for name, f in DeployConfig.model_fields.items()}


# -- the values a deploy knob takes (what a search space may write) ------------------------------


@cache
def _adapter(name: str) -> TypeAdapter[Any]:
    field = DeployConfig.model_fields[name]
    annotation: Any = field.annotation
    return TypeAdapter(Annotated[annotation, *field.metadata] if field.metadata else annotation)


def _base_type(name: str) -> Any:
    """The knob's annotation without ``| None``."""
    ann = DeployConfig.model_fields[name].annotation
    if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union:
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        ann = args[0] if len(args) == 1 else ann
    return ann


def deploy_knob_kind(name: str) -> Literal["int", "float", "bool", "choice", "str"]:
    """What values the deploy knob `name` takes: a number range (``int``, ``float``) or a set."""
    base = _base_type(name)
    if typing.get_origin(base) is Literal:
        return "choice"
    return {int: "int", float: "float", bool: "bool"}.get(base, "str")  # type: ignore[return-value]


def deploy_allowed(name: str) -> str:
    """The values deploy knob `name` allows, in words (``fp32, fp16, ...``, ``an integer >= 1``)."""
    field = DeployConfig.model_fields[name]
    base = _base_type(name)
    if typing.get_origin(base) is Literal:
        text = ", ".join(str(a) for a in typing.get_args(base))
    elif base is bool:
        text = "true, false"
    else:
        noun = {int: "an integer", float: "a number"}.get(base, "a string")
        bounds = []
        for m in field.metadata:
            for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                bound = getattr(m, attr, None)
                if bound is not None:
                    bounds.append(f"{op} {bound:g}")
        text = noun + (" " + " and ".join(bounds) if bounds else "")
    if _base_type(name) is not field.annotation:
        text += ", or null"
    return text


def shown(value: Any) -> str:
    """A knob value as a search space's YAML writes it (``'int9-dynamic'``, ``true``, ``0.5``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(value)


def deploy_value_problem(name: str, value: Any) -> str | None:
    """Why `value` is not a value of deploy knob `name`, in words; None when it is one.

    Strict: a string is not a number, ``1`` is not ``true``, and ``2.5`` is not an integer.
    """
    if deploy_knob_kind(name) == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{shown(value)} is not allowed (allowed: {deploy_allowed(name)})"
    try:
        _adapter(name).validate_python(value, strict=True)
    except ValidationError:
        return f"{shown(value)} is not allowed (allowed: {deploy_allowed(name)})"
    return None


class TrialConfig(StrictModel):
    """What one trial evaluates: the task's train params and the deploy knobs."""

    train: dict[str, Any]
    deploy: DeployConfig

    def flat_params(self) -> dict[str, Any]:
        """`train.lr`, `deploy.precision`, ... as logged to MLflow."""
        out = {f"train.{k}": v for k, v in sorted(self.train.items())}
        out.update({f"deploy.{k}": v for k, v in self.deploy.model_dump().items()})
        return out


def check_deploy(deploy: DeployConfig, *, device_cores: int, device_precisions: tuple[str, ...],
                 task_can_prune_channels: bool, task_can_finetune: bool,
                 task_can_resize_inputs: bool = False, capabilities: DeviceCapabilities | None = None) -> None:
    """Raise `InvalidConfig` with the reason when the knobs cannot be deployed as asked.

    `task_can_resize_inputs`: the task accepts `input_resolution` (bring-your-own-model tasks).
    `capabilities`: the device's execution providers and each one's precisions (then they, not
    `device_precisions`, decide); without them only the `cpu` provider is accepted.
    """
    threads = deploy.intra_op_threads * (deploy.inter_op_threads if deploy.execution_mode == "parallel" else 1)
    if deploy.intra_op_threads > device_cores:
        raise InvalidConfig(f"intra_op_threads={deploy.intra_op_threads} exceeds the device's {device_cores} cores")
    if threads > device_cores:
        raise InvalidConfig(
            f"intra_op_threads × inter_op_threads = {threads} oversubscribes the device's {device_cores} cores")
    if deploy.execution_mode == "sequential" and deploy.inter_op_threads > 1:
        raise InvalidConfig("inter_op_threads > 1 has no effect in sequential execution mode")
    needed = DEVICE_PRECISION[deploy.precision]
    if capabilities is not None:
        path = capabilities.path(deploy.execution_provider)
        if needed not in path.precisions:
            why = path.refused_precisions.get(needed)
            raise InvalidConfig(f"precision {deploy.precision} is not supported on {path.label} of device "
                                f"'{capabilities.device}' (supported there: {', '.join(path.precisions)})"
                                + (f": {why}" if why else ""))
    elif deploy.execution_provider != "cpu":
        raise InvalidConfig(f"execution_provider {deploy.execution_provider} needs a device that offers it "
                            "(no device capabilities were given)")
    elif needed not in device_precisions:
        why = " (CPU-only profile: ONNX Runtime's CPU provider has no fast fp16 kernels)" if (
            needed == "fp16") else ""
        raise InvalidConfig(f"precision {deploy.precision} is not supported by the device "
                            f"(supported: {', '.join(device_precisions)}){why}")
    if deploy.precision == "int8-static" and deploy.graph_optimization == "disable":
        raise InvalidConfig("int8-static QDQ models need graph optimisation to fuse QDQ pairs; "
                            "with 'disable' they run as fp32 plus overhead")
    if deploy.input_resolution is not None and not task_can_resize_inputs:
        raise InvalidConfig("input_resolution needs a task that can resize its inputs (onnx, torch)")
    if deploy.keep_fp32_top_k > 0 or deploy.keep_fp32_fraction > 0:
        if deploy.precision != "int8-static":
            raise InvalidConfig("keep_fp32_top_k/keep_fp32_fraction need precision int8-static "
                                f"(got {deploy.precision})")
        if deploy.keep_fp32_top_k > 0 and deploy.keep_fp32_fraction > 0:
            raise InvalidConfig("keep_fp32_top_k and keep_fp32_fraction are alternatives; set one")
        if deploy.keep_fp32 != "none":
            raise InvalidConfig(f"keep_fp32={deploy.keep_fp32} and the sensitivity-ranked "
                                "keep_fp32_top_k/keep_fp32_fraction are alternatives; set one")
    if deploy.precision != "int8-static":
        static_only = [k for k in ("smooth_quant", "quantize_matmul_outputs", "activation_symmetric")
                       if getattr(deploy, k)] + (["activation_type=uint8"] if deploy.activation_type == "uint8" else [])
        if static_only:
            raise InvalidConfig(f"{', '.join(static_only)} need precision int8-static (got {deploy.precision})")
    if deploy.activation_type == "uint8" and deploy.quant_format == "qoperator":
        raise InvalidConfig("activation_type applies to quant_format qdq (QOperator always uses uint8)")
    if deploy.cross_layer_equalization and not deploy.quantized:
        raise InvalidConfig(f"cross_layer_equalization needs an int8 precision (got {deploy.precision})")
    if deploy.channel_prune > 0 and not task_can_prune_channels:
        raise InvalidConfig("channel_prune needs a task that can rebuild the network (a trainable task)")
    if deploy.finetune_epochs > 0 and not task_can_finetune:
        raise InvalidConfig("finetune_epochs needs a trainable task")
