"""The pipeline's stages on the real digits task and the real local device."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_search.cache import ArtifactCache
from edge_search.config import DeployConfig, TrialConfig
from edge_search.devices import create_device
from edge_search.devices.profile import get_profile
from edge_search.pipeline import EarlyStopRule, Pipeline, StoppedEarly
from edge_search.tasks import create_task


def _pipeline(tmp_path: Path, **kwargs: object) -> Pipeline:
    profile = get_profile("host")
    return Pipeline(create_task("digits-cnn"), create_device(profile), profile, ArtifactCache(tmp_path / "cache"),
                    precision_target=0.05, max_measure_s=1.0, **kwargs)  # type: ignore[arg-type]


def test_early_stop_ends_training_of_a_dominated_trial(workdir: Path, tmp_path: Path) -> None:
    # two finished trials that were far faster and near-perfect at every rung
    peers = [({e: 0.99 for e in range(1, 40)}, 1e-6)] * 2
    pipe = _pipeline(tmp_path, early_stop=EarlyStopRule(peers=lambda: peers))
    config = TrialConfig(train={"epochs": 12, "lr": 1e-5, "width": 0.5, "depth": 1}, deploy=DeployConfig())
    with pytest.raises(StoppedEarly, match="dominated at epoch 2") as info:
        pipe.evaluate(config)
    assert sorted(info.value.curve) == [1, 2]
    # the stopped training left no cache entry: a later unstopped run trains for real
    pipe.early_stop = None
    result = pipe.evaluate(config)
    assert result.cache_hits["train"] is False and sorted(result.val_curve) == list(range(1, 13))


def test_cache_reuses_training_across_deploy_knobs(workdir: Path, tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path)
    train = {"epochs": 3, "width": 0.5, "depth": 1}
    a = pipe.evaluate(TrialConfig(train=train, deploy=DeployConfig(precision="fp32")))
    b = pipe.evaluate(TrialConfig(train=train, deploy=DeployConfig(precision="int8-dynamic")))
    c = pipe.evaluate(TrialConfig(train=train, deploy=DeployConfig(precision="int8-dynamic")))
    assert (a.cache_hits["train"], b.cache_hits["train"]) == (False, True)
    assert b.cache_hits["transform"] is False and c.cache_hits == dict.fromkeys(c.cache_hits, True)
    assert b.metrics["size_mb"] < a.metrics["size_mb"]  # int8 weights
    assert a.latency.source == "measured" and a.latency.samples_ms
