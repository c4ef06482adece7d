"""Device profiles: every shipped profile loads; bad files fail with one clear line naming file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_search.devices.profile import get_profile, load_profile_file, load_profiles, parse_profile
from edge_search.errors import InputError

SHIPPED = {"host", "jetson-nano", "jetson-orin-nano", "raspberry-pi-4", "raspberry-pi-5", "intel-n100"}


def _base() -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": "my-board",
        "cpu": {"architecture": "aarch64", "core_type": "Cortex-A53", "cores": 4, "clock_ghz": 1.2},
        "memory": {"ram_mb": 1024, "bandwidth_gb_s": 4},
        "latency": {"method": "emulated"},
    }


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    p = tmp_path / "my-board.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _error(tmp_path: Path, data: dict[str, Any]) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(InputError) as info:
        load_profile_file(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    return msg


def test_all_shipped_profiles_load_and_emulated_ones_are_calibrated_with_sources() -> None:
    profiles = load_profiles()
    assert set(profiles) >= SHIPPED
    assert profiles["host"].latency.method == "local"
    for name in SHIPPED - {"host"}:
        p = profiles[name]
        assert p.latency.method == "emulated"
        assert p.sources and p.power is not None and p.power.source
        assert p.calibration.source, name
        assert p.calibration.error_band is not None and p.calibration.error_band.source
        ph = p.calibration.physics
        assert ph is not None and ph.source and "cpu.overhead_ms" in ph.params
        assert all(v.source for v in [*ph.params.values(), *ph.bands.values()])
        assert {"cpu-fp32", "cpu-int8"} <= set(ph.bands)
    assert profiles["jetson-nano"].calibration.error_band_gpu is not None
    assert "gpu" in profiles["jetson-nano"].calibration.physics.bands  # type: ignore[union-attr]


def test_a_minimal_profile_is_valid(tmp_path: Path) -> None:
    prof = load_profile_file(_write(tmp_path, _base()))
    assert prof.usable_memory_mb == 1024 - 256


def test_unknown_field_names_file_and_field(tmp_path: Path) -> None:
    data = _base()
    data["cpu"]["clock_mhz"] = 1200
    msg = _error(tmp_path, data)
    assert "cpu.clock_mhz" in msg and "unknown field" in msg


def test_negative_clock_is_refused(tmp_path: Path) -> None:
    data = _base()
    data["cpu"]["clock_ghz"] = -1.5
    msg = _error(tmp_path, data)
    assert "cpu.clock_ghz" in msg and "greater than 0" in msg


def test_calibration_without_source_is_refused(tmp_path: Path) -> None:
    data = _base()
    data["calibration"] = {"params": {"overhead_ms": {"value": 1.0, "source": "fit"}}}
    msg = _error(tmp_path, data)
    assert "calibration" in msg and "calibration.source is required" in msg


def test_calibration_number_without_provenance_is_refused(tmp_path: Path) -> None:
    data = _base()
    data["calibration"] = {"source": "my fit", "params": {"overhead_ms": {"value": 1.0}}}
    msg = _error(tmp_path, data)
    assert "calibration.params.overhead_ms.source" in msg and "required" in msg.lower()


def test_unknown_calibration_parameter_is_refused(tmp_path: Path) -> None:
    data = _base()
    data["calibration"] = {"source": "x", "params": {"rate.fp32.convolution": {"value": 1.0, "source": "x"}}}
    msg = _error(tmp_path, data)
    assert "rate.fp32.convolution" in msg


def test_reserve_larger_than_ram_is_refused(tmp_path: Path) -> None:
    data = _base()
    data["memory"]["reserve_mb"] = 2048
    assert "reserve_mb" in _error(tmp_path, data)


def test_user_folder_overrides_and_unknown_device_lists_known(tmp_path: Path) -> None:
    _write(tmp_path, _base())
    assert get_profile("my-board", [tmp_path]).cpu.cores == 4
    with pytest.raises(InputError, match=r"unknown device .nope.*raspberry-pi-4"):
        get_profile("nope")


def test_thread_speedup_interpolates_and_saturates() -> None:
    cal = parse_profile(
        {
            **_base(),
            "calibration": {
                "source": "test",
                "thread_scaling": {2: {"value": 1.6, "source": "t"}, 4: {"value": 2.0, "source": "t"}},
                "thread_scaling_by": {"int8": {2: {"value": 1.8, "source": "t"}}},
            },
        },
        "test",
    ).calibration
    assert cal.speedup(1, "fp32", "conv_kxk") == 1.0
    assert cal.speedup(3, "fp32", "conv_kxk") == pytest.approx(1.8)
    assert cal.speedup(8, "fp32", "conv_kxk") == 2.0
    assert cal.speedup(2, "int8", "gemm") == 1.8
