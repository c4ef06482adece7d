"""One trial's configuration as plain typed objects: train params plus deploy knobs.

`DeployConfig` lists every deploy knob edge-search knows, with its default; `check_deploy` rejects
combinations that cannot be deployed, before any training or measuring is spent on them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_search.devices.base import SessionKnobs
from edge_search.errors import InvalidConfig

Precision = Literal["fp32", "fp16", "int8-dynamic", "int8-static"]


class DeployConfig(BaseModel):
    """Deployment knobs; field names are the names a space's `deploy:` section uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: Precision = "fp32"
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_size: int = Field(256, ge=1)
    per_channel: bool = False
    reduce_range: bool = False
    quant_format: Literal["qdq", "qoperator"] = "qdq"
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

    def session(self) -> SessionKnobs:
        return SessionKnobs(intra_op_threads=self.intra_op_threads, inter_op_threads=self.inter_op_threads,
                            graph_optimization=self.graph_optimization, execution_mode=self.execution_mode)

    @property
    def quantized(self) -> bool:
        return self.precision.startswith("int8")

    @property
    def pruned(self) -> bool:
        return self.sparsity > 0 or self.channel_prune > 0


DEPLOY_KNOBS: dict[str, Any] = {name: f.default for name, f in DeployConfig.model_fields.items()}


class TrialConfig(BaseModel):
    """What one trial evaluates: the task's train params and the deploy knobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: dict[str, Any]
    deploy: DeployConfig

    def flat_params(self) -> dict[str, Any]:
        """`train.lr`, `deploy.precision`, ... as logged to MLflow."""
        out = {f"train.{k}": v for k, v in sorted(self.train.items())}
        out.update({f"deploy.{k}": v for k, v in self.deploy.model_dump().items()})
        return out


def check_deploy(deploy: DeployConfig, *, device_cores: int, device_precisions: tuple[str, ...],
                 task_can_prune_channels: bool, task_can_finetune: bool) -> None:
    """Raise `InvalidConfig` with the reason when the knobs cannot be deployed as asked."""
    threads = deploy.intra_op_threads * (deploy.inter_op_threads if deploy.execution_mode == "parallel" else 1)
    if deploy.intra_op_threads > device_cores:
        raise InvalidConfig(f"intra_op_threads={deploy.intra_op_threads} exceeds the device's {device_cores} cores")
    if threads > device_cores:
        raise InvalidConfig(
            f"intra_op_threads × inter_op_threads = {threads} oversubscribes the device's {device_cores} cores")
    if deploy.execution_mode == "sequential" and deploy.inter_op_threads > 1:
        raise InvalidConfig("inter_op_threads > 1 has no effect in sequential execution mode")
    base_precision = deploy.precision.split("-")[0]
    if base_precision not in device_precisions:
        raise InvalidConfig(f"precision {deploy.precision} is not supported by the device "
                            f"(supported: {', '.join(device_precisions)})")
    if deploy.precision == "int8-static" and deploy.graph_optimization == "disable":
        raise InvalidConfig("int8-static QDQ models need graph optimisation to fuse QDQ pairs; "
                            "with 'disable' they run as fp32 plus overhead")
    if deploy.channel_prune > 0 and not task_can_prune_channels:
        raise InvalidConfig("channel_prune needs a task that can rebuild the network (a trainable task)")
    if deploy.finetune_epochs > 0 and not task_can_finetune:
        raise InvalidConfig("finetune_epochs needs a trainable task")
