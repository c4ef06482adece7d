"""Transforms: one deployment change to an ONNX model each (quantise, prune, fp16)."""

from __future__ import annotations

from edge_search.config import DeployConfig
from edge_search.errors import InvalidConfig
from edge_search.transforms.base import Transform
from edge_search.transforms.prune import MagnitudePruneTransform
from edge_search.transforms.quantize import QuantizeTransform

__all__ = ["MagnitudePruneTransform", "QuantizeTransform", "Transform", "deploy_transforms"]


def deploy_transforms(deploy: DeployConfig, *, task_prunes: bool = False) -> list[Transform]:
    """The transforms `deploy` asks for, in the order to apply them (prune before quantise).

    Called by the pipeline once per trial. Pass `task_prunes=True` when the pipeline prunes
    with `task.prune(...)` (a task with `can_train`); the ONNX magnitude pruning is then left out.
    """
    if deploy.precision == "fp16":
        raise InvalidConfig("precision fp16 has no transform yet")
    chain: list[Transform] = [MagnitudePruneTransform(), QuantizeTransform()]
    return [t for t in chain if t.applies(deploy) and not (task_prunes and t.name == "magnitude-prune")]
