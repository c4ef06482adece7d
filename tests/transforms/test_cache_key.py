"""Each transform owns its part of the deploy cache key, and together they give the keys of before."""

from __future__ import annotations

from typing import Any

import pytest

from edge_search.cache import content_key
from edge_search.config import DeployConfig
from edge_search.transforms import TRANSFORMS, deploy_key_knobs, deploy_transforms
from edge_search.transforms.quantize.int8 import INT8_KNOBS, INT8_METHOD
from edge_search.transforms.quantize.sensitivity import SENSITIVITY_ID


def legacy_knobs(deploy: DeployConfig) -> dict[str, Any]:
    """The hand-written knob list the pipeline used before transforms owned their keys (0.1.0)."""
    knobs = deploy.model_dump(include={"precision", "calibration_method", "calibration_size", "per_channel",
                                       "reduce_range", "quant_format", "sparsity", "keep_fp32",
                                       "quantize_op_types", "weight_only_block_size", "input_resolution"})
    mixed = {k: v for k, v in deploy.model_dump(include={"keep_fp32_top_k", "keep_fp32_fraction"}).items() if v}
    if mixed:
        knobs.update(mixed, sensitivity=SENSITIVITY_ID)
    if deploy.quantized:  # issue 14: int8 models carry the new knobs and the method's version
        knobs.update(deploy.model_dump(include=set(INT8_KNOBS)), int8_method=INT8_METHOD)
    return knobs


DEPLOYS = [
    {},
    {"precision": "int8-dynamic", "per_channel": True, "reduce_range": True},
    {"precision": "int8-static", "calibration_method": "entropy", "calibration_size": 64, "quant_format": "qoperator"},
    {"precision": "int8-static", "keep_fp32": "first_last_depthwise", "quantize_op_types": "conv"},
    {"precision": "int8-static", "keep_fp32_top_k": 3},
    {"precision": "int8-static", "keep_fp32_fraction": 0.25, "input_resolution": 96},
    {"precision": "int4-weight", "weight_only_block_size": 64},
    {"precision": "fp16", "sparsity": 0.5, "intra_op_threads": 2, "batch_size": 4},
]


@pytest.mark.parametrize("knobs", DEPLOYS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults")
def test_deploy_cache_keys_are_those_of_before(knobs: dict[str, Any]) -> None:
    deploy = DeployConfig(**knobs)
    names = [t.name for t in deploy_transforms(deploy)]
    assert deploy_key_knobs(deploy) == legacy_knobs(deploy)
    assert content_key("deploy", "m", names, deploy_key_knobs(deploy)) == \
        content_key("deploy", "m", names, legacy_knobs(deploy))


def test_session_knobs_do_not_enter_the_deploy_key() -> None:
    """Threads, graph optimisation and batch size change the measurement, not the deployable model."""
    a = deploy_key_knobs(DeployConfig(precision="int8-static"))
    b = deploy_key_knobs(DeployConfig(precision="int8-static", intra_op_threads=2, graph_optimization="basic",
                                      batch_size=8, finetune_epochs=3))
    assert a == b


def test_every_knob_a_transform_keys_on_changes_the_key() -> None:
    base = DeployConfig(precision="int8-static")
    other = {"precision": "int8-dynamic", "calibration_method": "entropy", "calibration_size": 7,
             "per_channel": False, "reduce_range": True, "quant_format": "qoperator", "sparsity": 0.3,
             "keep_fp32": "depthwise", "quantize_op_types": "matmul", "weight_only_block_size": 16,
             "input_resolution": 64, "calibration_percentile": 99.9, "activation_symmetric": True,
             "bias_correction": False, "cross_layer_equalization": True, "smooth_quant": True,
             "smooth_quant_alpha": 0.8, "quantize_matmul_outputs": True, "transformer_fusion": "bert",
             "activation_type": "uint8"}
    for transform in TRANSFORMS:
        for knob in transform().key_knobs(base):
            if knob in other:
                changed = base.model_copy(update={knob: other[knob]})
                assert deploy_key_knobs(changed) != deploy_key_knobs(base), knob
