"""Invalid deploy combinations are rejected with a reason before any work is spent."""

from __future__ import annotations

import pytest

from edge_search.config import DeployConfig, check_deploy
from edge_search.errors import InvalidConfig


def check(**knobs: object) -> None:
    check_deploy(DeployConfig(**knobs), device_cores=2, device_precisions=("fp32", "int8"),
                 task_can_prune_channels=False, task_can_finetune=False)


@pytest.mark.parametrize(("knobs", "reason"), [
    ({"intra_op_threads": 4}, "exceeds the device's 2 cores"),
    ({"execution_mode": "parallel", "intra_op_threads": 2, "inter_op_threads": 2}, "oversubscribes"),
    ({"inter_op_threads": 2}, "no effect in sequential"),
    ({"precision": "fp16"}, "not supported by the device"),
    ({"precision": "int8-static", "graph_optimization": "disable"}, "fuse QDQ"),
    ({"channel_prune": 0.5}, "rebuild the network"),
    ({"sparsity": 0.5, "finetune_epochs": 2}, "trainable task"),
])
def test_invalid_combinations(knobs: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidConfig, match=reason):
        check(**knobs)


def test_valid_combination_passes() -> None:
    check(precision="int8-static", execution_mode="parallel", intra_op_threads=1, inter_op_threads=2,
          sparsity=0.5)
