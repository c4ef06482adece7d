"""How far apart fresh measurements land on this host: the noise model behind every latency interval.

A latency figure varies between worker processes, not only between the samples of one process
(memory layout, page placement, which neighbour runs on the sibling core), and it drifts with the
state of the host over minutes (another tenant, a training run). On the log scale of a process's
median, two terms (issue 14 study, 2-core VM, 6 models x 8 measurements x 4 processes):

* ``process_rsd`` (sigma_b): the spread between the processes of one measurement;
* ``regime_rsd`` (sigma_r): the spread between measurements taken at different times that the
  processes of one measurement share (measured: about as large as sigma_b; that is why adding
  processes to one measurement buys little once the regime term is counted).

`NoisePrior` holds both for one thread count (measured: the thread count matters far more than the
model: 1 thread sigma_b 3.5-4.9 %, sigma_r 3.6-6.0 %; 2 threads 12-17 % and 10-16 % on the shared
2-vCPU VM). `HostNoise` learns them per host and thread count from what this host measures:
every measurement of several processes adds its spread to sigma_b, and every configuration
measured again later (the `confirm` rounds, a repeated trial) adds to the total from which sigma_r
follows. Until a host has data, the defaults below (this VM under load, so conservative elsewhere)
apply. The store is a small JSON file per host (`noise_path`), updated under a file lock.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

NOISE_DIR_ENV = "EDGE_SEARCH_NOISE_DIR"

DEFAULT_PROCESS_RSD = {1: 0.04, 2: 0.12}
"""sigma_b by thread count (more threads: the largest key below it), measured on the 2-vCPU VM
under load 7-12 (issue 14 study, `benchmarks/measurement_intervals.py`)."""
DEFAULT_REGIME_RSD = {1: 0.05, 2: 0.12}
"""sigma_r by thread count, same source."""
DEFAULT_PRIOR_DF = 4.0
"""Degrees of freedom the defaults are worth: weak, so a host's own data takes over quickly."""
MAX_PRIOR_DF = 8.0
"""A calibrated prior counts as at most this many degrees of freedom against a measurement's own
process spread: enough to keep a two-process interval narrow, little enough that processes that
disagree widen it."""
MAX_STORE_DF = 200.0
"""Older data is forgotten beyond this many degrees of freedom per term (the host changes)."""
RSD_FLOOR = 0.005


@dataclass(frozen=True)
class NoisePrior:
    """The noise terms (relative standard deviations of log process medians) for one thread count."""

    process_rsd: float
    regime_rsd: float
    df: float
    """Degrees of freedom the terms are worth as a prior (at most `MAX_PRIOR_DF`)."""
    source: str
    """``default`` or ``host <name>: N measurements`` (what the figures rest on)."""


def _by_threads(table: dict[int, float], threads: int) -> float:
    return table[max(k for k in table if k <= max(threads, 1))]


def default_prior(threads: int) -> NoisePrior:
    return NoisePrior(_by_threads(DEFAULT_PROCESS_RSD, threads), _by_threads(DEFAULT_REGIME_RSD, threads),
                      DEFAULT_PRIOR_DF, "default (issue 14 study, shared 2-vCPU VM)")


def noise_path(hostname: str | None = None) -> Path:
    """``$EDGE_SEARCH_NOISE_DIR/<host>.json``, else next to the device leases (``.../edge-search/noise``)."""
    from edge_search.devices.lease import default_lock_dir

    folder = Path(os.environ[NOISE_DIR_ENV]).expanduser() if os.environ.get(NOISE_DIR_ENV) else (
        default_lock_dir().parent / "noise")
    return folder / f"{hostname or socket.gethostname()}.json"


def log_spread(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(sum of squares around the mean, degrees of freedom) of the logs of positive `values`."""
    y = np.log(np.asarray([v for v in values if v > 0], dtype=float))
    if y.size < 2:
        return 0.0, 0.0
    return float(((y - y.mean()) ** 2).sum()), float(y.size - 1)


@dataclass
class _Term:
    ss: float = 0.0
    df: float = 0.0

    def add(self, ss: float, df: float) -> None:
        if df <= 0:
            return
        if self.df + df > MAX_STORE_DF:  # forget the oldest share
            keep = max(MAX_STORE_DF - df, 0.0) / self.df if self.df > 0 else 0.0
            self.ss, self.df = self.ss * keep, self.df * keep
        self.ss += ss
        self.df += df

    @property
    def var(self) -> float | None:
        return self.ss / self.df if self.df > 0 else None


class HostNoise:
    """The noise model of one host, learned from its own measurements (see the module docstring).

    ``within`` accumulates the spread between the processes of one measurement (sigma_b^2);
    ``repeat`` the spread of one configuration's process medians measured at different times
    (sigma_b^2 + sigma_r^2). Thread counts are kept apart.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or noise_path()

    def _load(self) -> dict[str, dict[str, _Term]]:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        out: dict[str, dict[str, _Term]] = {}
        for threads, terms in (raw.get("threads") or {}).items():
            out[str(threads)] = {k: _Term(float(v["ss"]), float(v["df"])) for k, v in terms.items()
                                 if isinstance(v, dict) and {"ss", "df"} <= set(v)}
        return out

    def _save(self, data: dict[str, dict[str, _Term]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": 1, "host": self.path.stem, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "threads": {t: {k: asdict(v) for k, v in terms.items()} for t, terms in data.items()}}
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.path)

    def _update(self, threads: int, term: str, ss: float, df: float) -> None:
        if df <= 0:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock", timeout=10):
                data = self._load()
                data.setdefault(str(threads), {}).setdefault(term, _Term()).add(ss, df)
                self._save(data)
        except (OSError, TimeoutError):  # a read-only home or a stuck lock: keep measuring without learning
            return

    def record_processes(self, threads: int, medians: Sequence[float] | np.ndarray) -> None:
        """One measurement's process medians (sigma_b)."""
        self._update(threads, "within", *log_spread(medians))

    def record_repeat(self, threads: int, medians: Sequence[float] | np.ndarray) -> None:
        """Process medians of one configuration measured at different times (sigma_b^2 + sigma_r^2)."""
        self._update(threads, "repeat", *log_spread(medians))

    def prior(self, threads: int) -> NoisePrior:
        """The prior for `threads`: this host's data where it has some, the defaults otherwise."""
        base = default_prior(threads)
        terms = self._load().get(str(threads), {})
        within, repeat = terms.get("within", _Term()), terms.get("repeat", _Term())
        if within.df <= 0 and repeat.df <= 0:
            return base
        # Each term: the defaults worth DEFAULT_PRIOR_DF degrees of freedom, updated by the data.
        n0 = DEFAULT_PRIOR_DF
        sb2 = (n0 * base.process_rsd ** 2 + within.ss) / (n0 + within.df)
        st2 = (n0 * (base.process_rsd ** 2 + base.regime_rsd ** 2) + repeat.ss) / (n0 + repeat.df)
        sr2 = max(st2 - sb2, RSD_FLOOR ** 2)
        return NoisePrior(max(math.sqrt(sb2), RSD_FLOOR), math.sqrt(sr2), min(n0 + within.df, MAX_PRIOR_DF),
                          f"host {self.path.stem}: {within.df:.0f} process df, {repeat.df:.0f} repeat df")
