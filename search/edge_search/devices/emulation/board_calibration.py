"""Calibrating a board you own: the reference suite measured on the board through its agent.

`calibrate_through_device` (what ``edge-search calibrate --device my-board`` runs on an agent
profile) measures each suite model end to end on the board (`AgentDevice`: ONNX Runtime on the
board itself, so no cross-runtime factor) at 1..N intra-op threads, profiles the same models per
node at one thread on this host (`LocalDevice`), and fits the board's calibration the emulator
carries host profiles with:

- ``overhead_ms`` and one slow-down against the host per group (compute-bound, memory-bound) and
  precision: least squares in log space on the 1-thread figures (`fit_slowdowns`, with weak priors
  tying the two slow-downs and pulling the overhead to 0), ``T = O + Σ_g s_g · Σ_{c in g} t_host,c``; every
  host ``rate.<precision>.<class>`` is written scaled by its group's slow-down, so the board's classes
  are shaped like the host's (whole-model figures cannot tell classes of one group apart; a group rate
  alone would assume them equal, which is wrong even for the host itself: its element-wise and
  pooling rates differ twentyfold);
- ``thread_scaling_by["<precision>"]``: the median over models of T(1)/T(n) on the board;
- ``error_band``: the 90th percentile of |relative error| in leave-one-family-out prediction (every
  model of a family predicted from a fit on the other families, at every thread count), so the band
  says how well an architecture the fit has not seen is predicted, widened in quadrature by the
  spread between calibration rounds (`session_spread`: a fresh session's figure moves by itself);
  ``fit_stats`` holds its figures.

The written calibration then predicts the board's siblings (``--emulated-as``: an emulated copy of
the profile) and any model on it (`EmulatedDevice`). What it cannot do: per-op-class rates beyond
the compute/memory groups (only whole-model figures come back from the board), and the board's
GPU path (the suite is measured on the CPU provider).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from edge_search.devices.base import Device, MeasureRequest, SessionKnobs
from edge_search.devices.emulation.carry import HostBreakdown, breakdown_from_nodes, carry, net_host_ms
from edge_search.devices.emulation.opclass import class_group
from edge_search.devices.emulation.reference_suite import DEFAULT_CACHE, HOST_SUITE, SuiteModel, export
from edge_search.devices.profile import Calibration, DeviceProfile, Sourced
from edge_search.errors import InputError

TIE_WEIGHT = 0.5
"""Weight of the prior tying a precision's compute and memory slow-downs together (log units)."""
OVERHEAD_WEIGHT = 1.0
"""Weight of the prior pulling the fixed overhead towards 0, relative to the median figure."""
SESSION_Z = 1.645
"""Normal quantile of a two-sided 90 % interval: the session spread enters the band at the quantile the
held-out errors do."""
BOARD_BAND_FLOOR = 0.05
"""Smallest band written: fresh processes on one machine already differ by a few per cent."""


@dataclass(frozen=True)
class BoardRecord:
    """One suite model measured on the board: its host breakdown and the board's medians per thread count."""

    name: str
    family: str
    precision: str
    breakdown: HostBreakdown
    board_rounds: dict[int, tuple[float, ...]]
    """Every round's median on the board per thread count."""
    host_rounds: tuple[float, ...] = ()
    """Every round's single-thread host total (`breakdown` is the fastest round's)."""

    @property
    def board_ms(self) -> dict[int, float]:
        """The fastest round per thread count (interference only ever slows a run down)."""
        return {n: min(v) for n, v in self.board_rounds.items()}


def _group_ms(bd: HostBreakdown, host: DeviceProfile) -> tuple[float, float]:
    """Net single-thread host ms of the compute-bound and the memory-bound classes."""
    tc = tm = 0.0
    for c in bd.classes:
        if class_group(c.op_class) == "compute":
            tc += net_host_ms(c, host)
        else:
            tm += net_host_ms(c, host)
    return tc, tm


def fit_slowdowns(data: Sequence[tuple[str, tuple[float, float], float]],
                  ) -> tuple[float, dict[str, tuple[float, float]]]:
    """Fit ``T = O + s_compute · t_compute + s_memory · t_memory`` per precision in log space.

    `data`: (precision, host ms of the two groups, board ms) per model. Weak priors (in log units) tie
    each precision's two slow-downs together and pull the shared overhead O towards 0 (relative to the
    median figure): with a handful of whole-model figures, a free overhead and two free slow-downs
    fit noise (leave-one-family-out showed a free overhead swallowing small models). Returns
    (O in ms, {precision: (s_compute, s_memory)}).
    """
    precs = sorted({d[0] for d in data})
    ms = np.array([d[2] for d in data])
    scale = float(np.median(ms))
    start = [math.log(float(np.median([d[2] / max(d[1][0] + d[1][1], 1e-9) for d in data if d[0] == p])))
             for p in precs for _ in (0, 1)]

    def resid(theta: np.ndarray) -> np.ndarray:
        o = theta[0]
        pred = np.full(len(data), o)
        for i, p in enumerate(precs):
            sc, sm = math.exp(theta[1 + 2 * i]), math.exp(theta[2 + 2 * i])
            for j, d in enumerate(data):
                if d[0] == p:
                    pred[j] += sc * d[1][0] + sm * d[1][1]
        priors = [TIE_WEIGHT * (theta[1 + 2 * i] - theta[2 + 2 * i]) for i in range(len(precs))]
        return np.concatenate([np.log(np.maximum(pred, 1e-9) / ms), priors, [OVERHEAD_WEIGHT * o / scale]])

    res = least_squares(resid, np.array([0.0, *start]), bounds=([0.0] + [-np.inf] * 2 * len(precs),
                                                             [np.inf] * (1 + 2 * len(precs))))
    return float(res.x[0]), {p: (math.exp(res.x[1 + 2 * i]), math.exp(res.x[2 + 2 * i])) for i, p in enumerate(precs)}


def _curves(records: Sequence[BoardRecord]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for prec in sorted({r.precision for r in records}):
        ratios: dict[int, list[float]] = {}
        for r in records:
            if r.precision == prec and 1 in r.board_ms:
                for n, ms in r.board_ms.items():
                    if n > 1:
                        ratios.setdefault(n, []).append(r.board_ms[1] / ms)
        if ratios:
            out[prec] = {n: float(np.median(v)) for n, v in sorted(ratios.items())}
    return out


def fit_board(records: Sequence[BoardRecord], host: DeviceProfile, source: str) -> Calibration:
    """The board calibration (rates, overhead, thread curves) from `records`, every number sourced."""
    data = [(r.precision, _group_ms(r.breakdown, host), r.board_ms[1]) for r in records if 1 in r.board_ms]
    if not data:
        raise InputError("no single-thread board measurements to fit")
    overhead, slowdowns = fit_slowdowns(data)

    def src(v: float) -> Sourced:
        return Sourced(value=round(float(v), 6), source=source)

    params = {"overhead_ms": src(overhead)}
    for prec, (s_c, s_m) in slowdowns.items():
        # every host class rate of this precision over its group's slow-down: the board's classes are
        # assumed shaped like the host's (whole-model figures cannot tell the classes of a group apart)
        slow = {"compute": s_c, "memory": s_m}
        for key, val in host.calibration.params.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "rate" and parts[1] == prec:
                group = parts[2] if parts[2] in slow else class_group(parts[2])
                params[key] = src(val.value / slow[group])
    curves = {p: {n: Sourced(value=round(s, 6), source=f"median T(1)/T({n}) of the suite on the board, {p}")
                  for n, s in c.items()} for p, c in _curves(records).items()}
    return Calibration(source=source, runtime_note="measured on the board with ONNX Runtime through its agent "
                       "(same runtime as the predictions)", fitted_at=time.strftime("%Y-%m-%d"),
                       reference_host=host.calibration.reference_host, params=params,
                       thread_scaling=curves.get("fp32", {}), thread_scaling_by=curves)


def _as_target(profile: DeviceProfile, cal: Calibration) -> DeviceProfile:
    return profile.model_copy(update={"calibration": cal})


def predict_record(r: BoardRecord, host: DeviceProfile, target: DeviceProfile, threads: int) -> float:
    """The emulator's prediction of `r` on `target` at `threads` (the carry `EmulatedDevice` uses)."""
    return carry(r.breakdown, host, target, threads).median_ms


def leave_one_family_out(records: Sequence[BoardRecord], host: DeviceProfile, board: DeviceProfile
                         ) -> list[tuple[str, str, int, float, float]]:
    """(model, family, threads, board ms, predicted ms) for every record, each family predicted from a
    fit on the others (empty with fewer than two families)."""
    families = sorted({r.family for r in records})
    out: list[tuple[str, str, int, float, float]] = []
    if len(families) < 2:
        return out
    for fam in families:
        cal = fit_board([r for r in records if r.family != fam], host, "leave-one-family-out fit")
        target = _as_target(board, cal)
        for r in records:
            if r.family == fam and r.precision in {k.split(".")[1] for k in cal.params if k.startswith("rate.")}:
                for n, ms in sorted(r.board_ms.items()):
                    out.append((r.name, fam, n, ms, predict_record(r, host, target, n)))
    return out


def _figures(errors: Sequence[float]) -> dict[str, float]:
    a = np.abs(np.asarray(errors, dtype=float))
    if a.size == 0:
        return {}
    return {"lofo_n": float(a.size), "lofo_median_abs_err": float(np.median(a)),
            "lofo_within_10": float((a <= 0.10).mean()), "lofo_within_25": float((a <= 0.25).mean())}


def measure_suite_on_board(
    device: Device,
    host_device: Device,
    models: Sequence[SuiteModel],
    precisions: Sequence[str],
    threads: Sequence[int],
    max_time_s: float,
    *,
    repeats: int = 1,
    host_runs: int = 10,
    cache_dir: Path = DEFAULT_CACHE,
    progress: Callable[[str], None] | None = None,
) -> list[BoardRecord]:
    """Each suite model/precision measured on the board (`device`) at every thread count and profiled
    per node at one thread on this host (`host_device`), model after model, so both sides of a record
    are taken close together; `repeats` interleaved rounds, the fastest of each kept (interference
    only ever slows a run down)."""
    rounds: dict[tuple[str, str], dict[int, list[float]]] = {}
    host: dict[tuple[str, str], HostBreakdown] = {}
    host_rounds: dict[tuple[str, str], list[float]] = {}
    jobs = [(m, prec, export(m, cache_dir, prec)) for m in models for prec in precisions]
    for rnd in range(repeats):
        for m, prec, path in jobs:
            key = (m.name, prec)
            if progress:
                progress(f"round {rnd + 1}/{repeats}: {m.name} {prec} on the board at {', '.join(map(str, threads))} "
                         "thread(s), then on this host per node")
            req = MeasureRequest(model_path=path, session=SessionKnobs(intra_op_threads=1), max_time_s=max_time_s,
                                 min_samples=10, precision_target=0.02, priority=0)
            slot = rounds.setdefault(key, {})
            for n in threads:
                ms = device.measure(req.model_copy(update={"session": SessionKnobs(intra_op_threads=n)})).median_ms
                slot.setdefault(n, []).append(ms)
            bd = breakdown_from_nodes(path, host_device.profile_nodes(req, runs=host_runs), host_runs)
            host_rounds.setdefault(key, []).append(bd.host_ms)
            if key not in host or bd.host_ms < host[key].host_ms:
                host[key] = bd
    return [BoardRecord(m.name, m.family, prec, host[(m.name, prec)],
                        {n: tuple(v) for n, v in rounds[(m.name, prec)].items()}, tuple(host_rounds[(m.name, prec)]))
            for m, prec, _ in jobs]


def session_spread(records: Sequence[BoardRecord]) -> float | None:
    """Pooled sd of log figures between rounds (separate sessions), board and host sides combined in
    quadrature: how far a fresh session's prediction or measurement moves by itself. None with one round.

    Processes, not iterations, are the unit of a latency interval (pyperf's lesson): a band made of
    held-out errors of the fastest rounds alone held 2 of 4 held-out figures under load."""
    def pooled(groups: Sequence[Sequence[float]]) -> float | None:
        ss, dof = 0.0, 0
        for g in groups:
            if len(g) >= 2:
                logs = np.log(np.asarray(g, dtype=float))
                ss += float(np.sum((logs - logs.mean()) ** 2))
                dof += len(g) - 1
        return math.sqrt(ss / dof) if dof else None

    board = pooled([v for r in records for v in r.board_rounds.values()])
    host = pooled([r.host_rounds for r in records])
    if board is None and host is None:
        return None
    return math.hypot(board or 0.0, host or 0.0)


def calibrate_through_device(
    board: DeviceProfile,
    device: Device,
    host_device: Device,
    host: DeviceProfile,
    *,
    families: Sequence[str] | None = None,
    precisions: Sequence[str] = ("fp32", "int8"),
    max_time_s: float = 1.5,
    host_runs: int = 10,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> tuple[Calibration, list[BoardRecord]]:
    """Measure the reference suite on `device` (the board) and on `host_device` (this host, per node),
    and fit `board`'s calibration (module docstring). `families` picks suite families (default: all);
    `repeats` interleaved rounds on both sides, the fastest kept."""
    models = [m for m in HOST_SUITE if families is None or m.family in families]
    if families is not None and {m.family for m in models} != set(families):
        known = sorted({m.family for m in HOST_SUITE})
        missing = sorted(set(families) - {m.family for m in models})
        raise InputError(f"unknown suite famil{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)} "
                         f"(known: {', '.join(known)})")
    threads = tuple(range(1, board.cpu.cores + 1))
    t0 = time.time()
    records = measure_suite_on_board(device, host_device, models, precisions, threads, max_time_s,
                                     repeats=repeats, host_runs=host_runs, progress=progress)
    agents = ", ".join(a.url for a in board.latency.agents) or board.name
    source = (f"edge-search calibrate --device {board.name}: {len(records)} suite model/precision pairs "
              f"({', '.join(sorted({r.family for r in records}))}) measured on the board through {agents} at "
              f"1..{board.cpu.cores} threads ({time.strftime('%Y-%m-%d', time.localtime(t0))}), host "
              f"per-node profiles on {host.calibration.reference_host or 'this host'}")
    cal = fit_board(records, host, source)
    lofo = leave_one_family_out(records, host, board)
    rel = [pred / ms - 1.0 for *_, ms, pred in lofo]
    spread = session_spread(records)
    if rel:
        q90 = float(np.percentile(np.abs(rel), 90))
        value, why = q90, ""
        if spread is not None:  # a fresh session moves by itself: add it at the same quantile
            value = math.exp(math.hypot(math.log1p(q90), SESSION_Z * spread)) - 1.0
            why = (f", widened by the spread between calibration rounds (log sd {spread:.3f}, board and host "
                   f"sessions) at the same quantile")
        band = Sourced(value=round(max(value, BOARD_BAND_FLOOR), 4),
                       source=f"max({BOARD_BAND_FLOOR}, 90th percentile of |relative error| in leave-one-family-"
                              f"out prediction of the board's own suite figures, {len(rel)} predictions{why})")
    else:
        fit_rel = [predict_record(r, host, _as_target(board, cal), n) / ms - 1.0
                   for r in records for n, ms in r.board_ms.items()]
        band = Sourced(value=round(max(2.0 * float(np.percentile(np.abs(fit_rel), 90)), 0.25), 4),
                       source="one suite family only: twice the 90th percentile of in-sample |relative error| "
                              "(at least 0.25); calibrate with more families for a tested band")
    stats = _figures(rel) if rel else {}
    stats["n"] = float(sum(len(r.board_ms) for r in records))
    if spread is not None:
        stats["session_log_sd"] = round(spread, 4)
    return cal.model_copy(update={"error_band": band, "fit_stats": stats}), records


__all__ = ["BoardRecord", "calibrate_through_device", "fit_board", "leave_one_family_out", "measure_suite_on_board",
           "predict_record", "session_spread"]
