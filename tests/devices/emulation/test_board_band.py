"""The agent calibration's band includes how far a fresh session moves by itself (processes, not
iterations, are the unit of a latency interval)."""

from __future__ import annotations

import math

import pytest

from edge_search.devices.emulation.board_calibration import BoardRecord, session_spread
from edge_search.devices.emulation.carry import HostBreakdown


def _record(board: dict[int, tuple[float, ...]], host: tuple[float, ...]) -> BoardRecord:
    return BoardRecord("m", "f", "fp32", HostBreakdown(()), board, host)


def test_session_spread_pools_board_and_host_rounds() -> None:
    steady = [_record({1: (10.0, 10.0), 2: (6.0, 6.0)}, (5.0, 5.0))]
    assert session_spread(steady) == pytest.approx(0.0, abs=1e-12)
    # board rounds 10 and 12 at one thread (log sd of a pair: |log ratio| / sqrt 2), host steady
    moving = [_record({1: (10.0, 12.0), 2: (6.0, 6.0)}, (5.0, 5.0))]
    pair = abs(math.log(12 / 10)) / math.sqrt(2)
    # pooled over the board's two (model, threads) groups, one degree of freedom each
    assert session_spread(moving) == pytest.approx(math.sqrt(pair ** 2 / 2), rel=1e-9)
    # the host side adds in quadrature
    both = [_record({1: (10.0, 12.0)}, (5.0, 6.0))]
    assert session_spread(both) == pytest.approx(math.hypot(pair, abs(math.log(6 / 5)) / math.sqrt(2)), rel=1e-9)


def test_one_round_gives_no_spread() -> None:
    assert session_spread([_record({1: (10.0,)}, (5.0,))]) is None
