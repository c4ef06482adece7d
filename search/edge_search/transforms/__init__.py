"""Transforms: one deployment change to an ONNX model each (quantise, prune, fp16)."""

from __future__ import annotations

from edge_search.cache import ArtifactCache
from edge_search.config import DeployConfig
from edge_search.transforms.base import Transform
from edge_search.transforms.precision import Fp16Transform
from edge_search.transforms.prune import MagnitudePruneTransform
from edge_search.transforms.quantize.int8 import QuantizeTransform, WeightOnlyQuantizeTransform

__all__ = ["Fp16Transform", "MagnitudePruneTransform", "QuantizeTransform", "Transform",
           "WeightOnlyQuantizeTransform", "deploy_transforms"]


def deploy_transforms(deploy: DeployConfig, *, task_prunes: bool = False,
                      cache: ArtifactCache | None = None) -> list[Transform]:
    """The transforms `deploy` asks for, in the order to apply them (prune, then change precision).

    Called by the pipeline once per trial. Pass `task_prunes=True` when the pipeline prunes
    with `task.prune(...)` (a task with `can_train`); the ONNX magnitude pruning is then left out.
    At most one precision transform applies (`precision` picks it). `cache` keeps the sensitivity
    rankings `keep_fp32_top_k`/`keep_fp32_fraction` use (the pipeline passes its own).
    """
    chain: list[Transform] = [MagnitudePruneTransform(), QuantizeTransform(cache), WeightOnlyQuantizeTransform(),
                              Fp16Transform()]
    return [t for t in chain if t.applies(deploy) and not (task_prunes and t.name == "magnitude-prune")]
