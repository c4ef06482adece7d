"""What a study has already seen, by configuration: the driver's memory between proposals.

Before any work is spent on a proposal the driver looks its configuration key up here
(`Pipeline.config_key`; after evaluation also the result key, `TrialResult.identity`): a
configuration the study has evaluated, failed on or is evaluating (in any process sharing the study)
is a duplicate, recorded as such and not counted. `SpaceGrid` enumerates a discrete space, so the
driver knows when every configuration has been seen (the run ends and says so) and can propose one
not seen yet when the sampler keeps repeating itself.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from edge_search.config import DeployConfig, TrialConfig
from edge_search.errors import InvalidConfig
from edge_search.pipeline import Pipeline
from edge_search.records import TrialRecord
from edge_search.space import SearchSpace, enumerate_space, sampled_params


@dataclass
class Tally:
    """Counts of one study's trials by what became of them (for progress and the run summary)."""

    evaluated: int = 0
    duplicates: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    """Failure cause (`TrialRecord.FAIL_CAUSE`, e.g. ``transform ValueError``, ``invalid``) -> count."""
    crashed: int = 0
    """FAIL trials (a transient error or a dead process: issue 17 retries those)."""

    def failures_text(self) -> str:
        """``7 (transform ValueError 5, invalid 2)``, or ``0``."""
        total = sum(self.failed.values())
        if not total:
            return "0"
        return f"{total} (" + ", ".join(f"{cause} {n}" for cause, n in self.failed.most_common()) + ")"

    def line(self) -> str:
        """``failed 7 (transform ValueError 5, invalid 2) · duplicates 12``."""
        parts = []
        if self.failed:
            parts.append(f"failed {self.failures_text()}")
        if self.duplicates:
            parts.append(f"duplicates {self.duplicates}")
        if self.crashed:
            parts.append(f"crashed {self.crashed}")
        return " · ".join(parts)


class StudyLedger:
    """Configuration keys of every trial of a study (complete, failed, running), read on `scan`."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.by_key: dict[str, FrozenTrial] = {}
        self.tally = Tally()

    def scan(self) -> None:
        """Re-read the study (other processes may share it)."""
        by_key: dict[str, FrozenTrial] = {}
        tally = Tally()
        states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL)
        for t in self.study.get_trials(deepcopy=False, states=states):
            record = TrialRecord.of(t)
            if t.state == TrialState.FAIL:
                tally.crashed += 1
                continue
            if t.state == TrialState.COMPLETE:
                if record.outcome == TrialRecord.DUPLICATE:
                    tally.duplicates += 1
                    continue
                if record.outcome == TrialRecord.FAILED:
                    tally.failed[str(record.get(TrialRecord.FAIL_CAUSE, "failed"))] += 1
                else:
                    tally.evaluated += 1
            for key in (record.config_key, record.result_key):
                if key and key not in by_key:
                    by_key[key] = t
        self.by_key, self.tally = by_key, tally

    def find(self, key: str | None) -> FrozenTrial | None:
        """The first trial with this configuration or result key, if any."""
        return self.by_key.get(key) if key else None

    def add(self, key: str | None, trial: FrozenTrial) -> None:
        if key and key not in self.by_key:
            self.by_key[key] = trial


class SpaceGrid:
    """Every valid configuration of a discrete space, by configuration key (None: not enumerable)."""

    def __init__(self, keys: dict[str, dict[str, Any]]) -> None:
        self.keys = keys
        """Configuration key -> the Optuna params that propose it."""

    @classmethod
    def of(cls, space: SearchSpace, pipeline: Pipeline, limit: int = 20_000) -> SpaceGrid | None:
        configs = enumerate_space(space, pipeline.device_cores, limit)
        if configs is None:
            return None
        keys: dict[str, dict[str, Any]] = {}
        for raw in configs:
            try:
                config = TrialConfig(train=raw["train"], deploy=DeployConfig(**raw["deploy"]))
                pipeline.check(config)
                key = pipeline.config_key(config)
            except (InvalidConfig, ValueError, KeyError):
                continue  # cannot be deployed (or the task rejects it): never a configuration to evaluate
            keys.setdefault(key, sampled_params(space, raw, pipeline.device_cores))
        return cls(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def unseen(self, ledger: StudyLedger) -> list[str]:
        return [k for k in self.keys if ledger.find(k) is None]

    def exhausted(self, ledger: StudyLedger) -> bool:
        return not self.unseen(ledger)

    def pick_unseen(self, ledger: StudyLedger, rng: random.Random) -> dict[str, Any] | None:
        """The params of a configuration the study has not seen (chosen at random), or None."""
        unseen = self.unseen(ledger)
        return self.keys[rng.choice(unseen)] if unseen else None
