"""The reference suite: the torchvision import shim, building and exporting suite models, the work
table the physics fit reads, and the mapping of every used published row to a suite architecture.

Only tiny models are built and exported here (low resolutions); the big ones (VGG, ViT-B, ConvNeXt)
are checked by name, never exported.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from edge_search.devices.base import NodeTiming
from edge_search.devices.emulation import reference_suite as rs
from edge_search.devices.emulation.boards import WORK_TABLE, work_table
from edge_search.devices.emulation.calibration import median_breakdown
from edge_search.devices.emulation.carry import ClassTime, HostBreakdown, breakdown_from_nodes
from edge_search.devices.emulation.physics import WORK_CLASSES, ModelWork, load_work_table
from edge_search.devices.emulation.published import not_in_suite, read_all

torch = pytest.importorskip("torch")


# --- the torchvision import shim --------------------------------------------------------------


def test_shim_uses_a_plain_import_when_it_works(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("torchvision")
    calls: list[str] = []
    original = torch.library.register_fake

    def import_module(name: str) -> Any:
        calls.append(name)
        assert torch.library.register_fake is original  # untouched on the plain path
        return fake

    monkeypatch.setattr(importlib, "import_module", import_module)
    assert rs.import_torchvision() is fake
    assert calls == ["torchvision"]


def test_shim_falls_back_only_on_a_missing_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA torchvision beside a CPU torch: the first import fails while registering fake kernels;
    the second runs with a register_fake that skips the missing operator and is restored after."""
    fake = types.ModuleType("torchvision")
    sentinel = object()

    def original(op: str, *args: Any, **kwargs: Any) -> Any:
        if op == "torchvision::nms":
            raise RuntimeError("operator torchvision::nms does not exist")
        return lambda fn: sentinel

    monkeypatch.setattr(torch.library, "register_fake", original)
    attempts: list[Any] = []

    def import_module(name: str) -> Any:
        attempts.append(torch.library.register_fake)
        register = torch.library.register_fake
        def kernel() -> None:
            return None

        decorated = register("torchvision::nms")(kernel)  # raises on the first, plain attempt
        assert decorated is kernel  # skipped, the function is returned unchanged
        assert register("torchvision::roi_align")(kernel) is sentinel  # others register normally
        return fake

    monkeypatch.setattr(importlib, "import_module", import_module)
    assert rs.import_torchvision() is fake
    assert len(attempts) == 2 and attempts[0] is original and attempts[1] is not original
    assert torch.library.register_fake is original  # restored


def test_shim_does_not_hide_other_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def import_module(name: str) -> Any:
        raise RuntimeError("something else entirely")

    monkeypatch.setattr(importlib, "import_module", import_module)
    with pytest.raises(RuntimeError, match="something else"):
        rs.import_torchvision()


def test_real_torchvision_imports_and_has_every_suite_builder() -> None:
    tv = rs.import_torchvision()
    from edge_search.devices.emulation.suite_archs import BUILDERS

    for m in rs.SUITE.values():
        kind, fn = m.builder.split(":", 1)
        if kind == "torchvision":
            assert callable(getattr(tv.models, fn)), m.name
        else:
            assert kind == "proxy" and fn in BUILDERS, m.name


def test_importing_the_suite_does_not_import_torch() -> None:
    code = ("import sys, edge_search.devices.emulation.reference_suite as r; "
            "print(len(r.SUITE), 'torch' in sys.modules, 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    n, has_torch, has_tv = out.stdout.split()
    assert int(n) > 50 and has_torch == "False" and has_tv == "False"


# --- the table --------------------------------------------------------------------------------


def test_suite_table_is_consistent() -> None:
    names = list(rs.SUITE)
    assert len(names) == len(set(names))
    for key, m in rs.SUITE.items():
        assert key == m.name and "@" in key and m.family and m.source
        assert m.hw[0] == int(key.split("@")[1])
        assert m.from_torchvision == (m.source == "torchvision")
    tv = {m.family for m in rs.SUITE.values() if m.from_torchvision}
    # the families of the new published data are real torchvision architectures
    assert {"vgg", "squeezenet", "shufflenet", "mnasnet", "regnet", "densenet", "inception", "vit", "convnext",
            "resnet", "alexnet", "mobilenetv2", "mobilenetv3", "efficientnet"} <= tv
    assert set(rs.HOST_SUITE) <= set(rs.SUITE.values())
    assert not {m.family for m in rs.HOST_SUITE} & {"vgg", "convnext"}  # nothing 0.3-0.5 GB in the host suite
    with pytest.raises(Exception, match="no reference-suite model 'nope'"):
        rs.suite_model("nope")


def _tiny(key: str, hw: int) -> rs.SuiteModel:
    m = rs.SUITE[key]
    return replace(m, name=f"{key.split('@')[0]}@{hw}", hw=(hw, hw))


def test_build_export_and_classify_a_torchvision_model(tmp_path: Path) -> None:
    from edge_search.devices.emulation.physics import model_work

    m = _tiny("squeezenet1_1@224", 64)
    fp32 = rs.export(m, tmp_path, "fp32")
    int8 = rs.export(m, tmp_path, "int8")
    assert fp32.name == f"squeezenet1_1@64-{m.cache_key}-fp32.onnx" and int8.exists()
    assert rs.export(m, tmp_path, "fp32").stat().st_mtime == fp32.stat().st_mtime  # cached, not re-exported
    w = model_work(fp32)
    # SqueezeNet: fire modules = 1x1 squeeze/expand + 3x3 expand; stem 3x3 stride 2
    assert w.work["pointwise"] > 0 and w.work["conv3"] > 0 and w.work["convk"] > 0
    assert w.work["depthwise"] == 0 and w.work["gemm"] == 0 and w.work["memory"] > 0
    q = model_work(int8)
    assert q.work["conv3"] == pytest.approx(w.work["conv3"])  # the int8 graph's float skeleton
    n, gb = rs.qdq_activations(int8)
    assert n > 0 and gb > 0
    assert rs.qdq_activations(fp32) == (0, 0.0)
    with pytest.raises(Exception, match="precision fp16"):
        rs.export(m, tmp_path, "fp16")


def test_build_and_export_a_proxy(tmp_path: Path) -> None:
    from edge_search.devices.emulation.physics import model_work

    m = _tiny("blazeface@128", 64)  # suite_archs: 5x5 depthwise blocks
    w = model_work(rs.export(m, tmp_path, "fp32"))
    assert w.work["depthwise"] > 0 and w.work["pointwise"] > 0 and w.work["conv3"] == 0


def test_work_table_written_is_what_the_fit_reads(tmp_path: Path) -> None:
    m = _tiny("shufflenet_v2_x1_0@224", 64)
    out = tmp_path / "suite_work.json"
    table = rs.write_work_table(out, [m], cache_dir=tmp_path / "cache")
    loaded = load_work_table(out)
    assert set(loaded) == {m.name} and json.loads(out.read_text()) == json.loads(json.dumps(table))
    w = loaded[m.name]
    assert isinstance(w, ModelWork) and set(w.work) == set(WORK_CLASSES) and w.nodes > 0 and w.gflops > 0
    assert w.extra["family"] == "shufflenet" and w.extra["source"] == "torchvision"
    q = w.extra["int8"]
    assert ModelWork.from_json(q).work["pointwise"] == pytest.approx(w.work["pointwise"])
    assert q["qdq_activation_nodes"] > 0
    # merge keeps entries not regenerated; nothing is exported from a reuse folder that lacks the files
    other = _tiny("squeezenet1_1@224", 48)
    rs.write_work_table(out, [other], cache_dir=tmp_path / "cache", precisions=("fp32",), merge=True)
    assert set(load_work_table(out)) == {m.name, other.name}
    with pytest.raises(FileNotFoundError):
        rs.work_entry(other, tmp_path / "empty", exported=False)


def test_shipped_work_table_covers_the_suite() -> None:
    path = Path(str(resources.files("edge_search.device_profiles").joinpath(WORK_TABLE)))
    data = json.loads(path.read_text())
    table = work_table()
    assert set(table) == set(rs.SUITE)
    for key, w in table.items():
        assert w.extra["family"] == rs.SUITE[key].family, key
        assert "int8" in w.extra, key
    assert "write_work_table" in data["source"]


def test_every_published_row_maps_to_a_suite_architecture() -> None:
    """Every row of both published CSVs, used or excluded for another reason, maps to a suite model in the
    shipped work table, except the named exceptions (task pipelines, language models), excluded with why."""
    rows = read_all()
    assert len(rows) > 1000 and len([r for r in rows if r.used]) > 700
    table = work_table()
    unmapped = []
    for r in rows:
        if r.model is not None:
            assert r.model in rs.SUITE and r.model in table, (r.rid, r.published, r.model)
        else:
            why = not_in_suite(r.published)
            assert why is not None, (r.rid, r.published)  # no silent stand-in, no silent drop
            assert r.excluded, r.rid
            unmapped.append(r.published.lower())
    # none of the vision families of the data is among the exceptions
    for fam in ("vgg", "squeezenet", "shufflenet", "mnasnet", "regnet", "densenet", "googlenet", "inception",
                "vit (", "deit", "resnet", "mobilenet", "efficientnet", "alexnet", "convnext"):
        assert not [u for u in unmapped if u.startswith(fam)], fam
    assert rs.for_published("ConvNeXt", "1x3x224x224") is rs.SUITE["convnext_base@224"]
    assert rs.for_published("DeiT-Tiny (patch16-224)") is rs.SUITE["deit_tiny@224"]
    assert rs.for_published("EfficientDet-D0", "512x512") is rs.SUITE["efficientdet_d0@512"]
    assert rs.for_published("BERT-base-cased") is None and not_in_suite("BERT-base-cased")
    assert not_in_suite("VGG-16") is None


def test_ncnn_vision_transformer_is_vit_b_32_at_384() -> None:
    """ncnn's benchmark/vision_transformer.param: 32x32 patches on a 384x384 input, 145 tokens."""
    m = rs.for_published("ViT (ncnn vision_transformer)")
    assert m is not None and m.name == "vit_b_32@384" and m.from_torchvision
    assert dict(m.kwargs) == {"image_size": 384} and m.builder == "torchvision:vit_b_32"
    w = work_table()["vit_b_32@384"]
    # 12 encoder layers on 145 tokens of width 768: ~2 x 145 x (4 x 768^2 + 2 x 768 x 3072) MACs per layer
    per_layer = 2 * 145 * (4 * 768**2 + 2 * 768 * 3072) / 1e9
    assert w.work["gemm"] == pytest.approx(12 * per_layer, rel=0.05)


# --- host measurement: processes as the unit ------------------------------------------------


def test_breakdown_uses_the_fastest_execution(tmp_path: Path) -> None:
    import onnx

    from tests.devices.tiny_conv import tiny_conv

    path = tiny_conv(tmp_path / "m.onnx")
    names = [(n.name, n.op_type) for n in onnx.load(str(path)).graph.node]
    nodes = [NodeTiming(name=n, op_type=op, mean_us=300.0, count=2, min_us=100.0) for n, op in names]
    fast = breakdown_from_nodes(path, nodes, runs=2)
    mean = breakdown_from_nodes(path, nodes, runs=2, statistic="mean")
    assert fast.host_ms == pytest.approx(len(names) * 0.1)
    assert mean.host_ms == pytest.approx(len(names) * 0.3)


def test_median_breakdown_over_processes() -> None:
    def bd(conv: float, dw: float | None) -> HostBreakdown:
        cts = [ClassTime("fp32", "conv_kxk", conv, 1.0, 3)]
        if dw is not None:
            cts.append(ClassTime("fp32", "depthwise", dw, 0.5, 2))
        return HostBreakdown(tuple(cts), 10.0)

    med = median_breakdown([bd(10.0, 2.0), bd(30.0, None), bd(11.0, 3.0)])  # a preempted process
    by = {c.op_class: c for c in med.classes}
    assert by["conv_kxk"].host_ms == 11.0 and by["depthwise"].host_ms == 2.0
    assert by["conv_kxk"].work == 1.0 and med.peak_memory_mb == 10.0


class FakeHostDevice:
    """Test fake of a `LocalDevice`: each call is one 'process'; the second process is preempted."""

    def __init__(self, names: list[tuple[str, str]]) -> None:
        self.names = names
        self.profiles = 0
        self.measures = 0

    def profile_nodes(self, req: Any, runs: int) -> list[NodeTiming]:
        self.profiles += 1
        slow = 3.0 if self.profiles == 2 else 1.0
        return [NodeTiming(name=n, op_type=op, mean_us=200.0 * slow, count=runs, min_us=100.0 * slow)
                for n, op in self.names]

    def measure(self, req: Any) -> Any:
        from edge_search.devices.stats import LatencyStats

        self.measures += 1
        samples = {1: (5.0, 9.0, 12.0), 2: (15.0, 20.0, 30.0), 3: (5.5, 7.0, 6.0)}[self.measures]
        return LatencyStats.from_samples(samples, device="fake")


def test_measure_suite_keeps_the_median_process_of_fastest_runs(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    from edge_search.devices.emulation import calibration
    from tests.devices.tiny_conv import tiny_conv

    path = tiny_conv(tmp_path / "m.onnx")
    names = [(n.name, n.op_type) for n in onnx.load(str(path)).graph.node]
    monkeypatch.setattr(calibration, "export", lambda m, cache_dir, p: path)
    fake = FakeHostDevice(names)
    device: Any = fake  # duck-typed stand-in for a LocalDevice
    (rec,) = calibration.measure_suite(device, [rs.SUITE["squeezenet1_1@224"]], ("fp32",), (1,), runs=4, repeats=3,
                                       cache_dir=tmp_path)
    assert fake.profiles == 3 and fake.measures == 3  # one profile and one measurement per process
    assert rec.e2e_ms == {1: 5.5}  # fastest run of each process (5, 15, 5.5), median over processes
    assert rec.breakdown.host_ms == pytest.approx(len(names) * 0.1)  # the preempted process is outvoted


def test_undisturbed_latency_is_bounded_by_cpu_time_at_one_thread() -> None:
    from edge_search.devices.emulation.calibration import _undisturbed_ms
    from edge_search.devices.stats import LatencyStats

    every_run_preempted = LatencyStats.from_samples((10.0, 12.0, 30.0), device="x")
    with_cpu = every_run_preempted.model_copy(update={"extra": {"cpu_ms_per_run": 7.0}})
    assert _undisturbed_ms(every_run_preempted, 1) == 10.0  # no CPU time reported: the fastest run
    assert _undisturbed_ms(with_cpu, 1) == 7.0
    assert _undisturbed_ms(with_cpu, 2) == 10.0  # two threads' CPU time is not a latency
    quiet = LatencyStats.from_samples((5.0, 5.1, 5.2), device="x").model_copy(update={"extra": {"cpu_ms_per_run": 5.3}})
    assert _undisturbed_ms(quiet, 1) == 5.0


def test_fit_host_recovers_the_profile_scale_and_predicts_a_held_out_model() -> None:
    """End to end = overhead + scale x (profiled sum - profiler cost x nodes): recovered from records of
    other models and applied by the carry to one that was not fitted."""
    from edge_search.devices.emulation.calibration import SuiteRecord, fit_host, host_predict

    def rec(name: str, conv_ms: float, dw_ms: float, nodes: int) -> SuiteRecord:
        bd = HostBreakdown((ClassTime("fp32", "conv_kxk", conv_ms, conv_ms * 5e7, nodes // 2),
                            ClassTime("fp32", "depthwise", dw_ms, dw_ms * 1e7, nodes - nodes // 2)))
        e2e = 0.3 + 1.15 * (bd.host_ms - nodes * 4.0 / 1000.0)
        return SuiteRecord(name, name, "fp32", bd, {1: bd}, {1: e2e})

    train = [rec("a", 10.0, 2.0, 60), rec("b", 40.0, 1.0, 300), rec("c", 3.0, 3.0, 40), rec("d", 90.0, 9.0, 900)]
    cal = fit_host(train, "test host")
    assert cal.params["profile_scale"].value == pytest.approx(1.15, rel=1e-3)
    assert cal.params["profile_overhead_us"].value == pytest.approx(4.0, rel=1e-2)
    assert cal.params["overhead_ms"].value == pytest.approx(0.3, abs=1e-3)
    held = rec("e", 25.0, 5.0, 200)
    assert host_predict(held, cal, 1) == pytest.approx(held.e2e_ms[1], rel=1e-3)
