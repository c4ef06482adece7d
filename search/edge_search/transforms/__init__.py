"""Transforms: one deployment change to an ONNX model each (quantise, prune, fp16).

`TRANSFORMS` lists every transform in the order they apply; `deploy_transforms` picks those a
trial's deploy knobs ask for and `deploy_key_knobs` gathers their part of the cache key.
"""

from __future__ import annotations

from typing import Any

from edge_search.cache import ArtifactCache
from edge_search.config import DeployConfig
from edge_search.transforms.base import Transform
from edge_search.transforms.fusion import TransformerFusionTransform
from edge_search.transforms.precision import Fp16Transform
from edge_search.transforms.prune import MagnitudePruneTransform
from edge_search.transforms.quantize.int8 import QuantizeTransform
from edge_search.transforms.quantize.weight_only import WeightOnlyQuantizeTransform

__all__ = ["TRANSFORMS", "Fp16Transform", "MagnitudePruneTransform", "QuantizeTransform", "Transform",
           "TransformerFusionTransform", "WeightOnlyQuantizeTransform", "deploy_key_knobs", "deploy_transforms"]

TRANSFORMS: tuple[type[Transform], ...] = (MagnitudePruneTransform, TransformerFusionTransform, QuantizeTransform,
                                           WeightOnlyQuantizeTransform, Fp16Transform)
"""Every transform, in the order they apply: prune, fuse (transformers), then change precision (at
most one precision transform applies: `precision` picks it). A new transform is one class here."""


def _chain(cache: ArtifactCache | None) -> list[Transform]:
    return [cls(cache) for cls in TRANSFORMS]


def deploy_transforms(deploy: DeployConfig, *, task_prunes: bool = False,
                      cache: ArtifactCache | None = None) -> list[Transform]:
    """The transforms `deploy` asks for, in the order to apply them (prune, then change precision).

    Called by the pipeline once per trial. Pass `task_prunes=True` when the pipeline prunes
    with `task.prune(...)` (a task with `can_train`); the ONNX magnitude pruning is then left out.
    `cache` keeps the sensitivity rankings `keep_fp32_top_k`/`keep_fp32_fraction` use (the
    pipeline passes its own).
    """
    return [t for t in _chain(cache) if t.applies(deploy) and not (task_prunes and t.name == "magnitude-prune")]


def deploy_key_knobs(deploy: DeployConfig) -> dict[str, Any]:
    """The deploy knobs in the transformed model's cache key: every registered transform's
    `Transform.key_knobs`, applied or not."""
    knobs: dict[str, Any] = {}
    for transform in _chain(None):
        knobs.update(transform.key_knobs(deploy))
    return knobs
