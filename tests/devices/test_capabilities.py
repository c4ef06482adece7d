"""The `execution_provider` deploy knob: offered per device, refused with the reason, passed to ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from edge_search.config import DeployConfig, check_deploy
from edge_search.devices.agent import AgentDevice
from edge_search.devices.base import MeasureRequest
from edge_search.devices.capabilities import PROVIDERS, device_capabilities
from edge_search.devices.local import LocalDevice
from edge_search.devices.profile import DeviceProfile, get_profile, parse_profile
from edge_search.devices.worker.engine import _open_session
from edge_search.devices.worker.request import WorkerFailure, WorkerRequest
from edge_search.errors import InputError, InvalidConfig
from edge_search.space import load_space, resolve_space, suggest_config
from tests.devices.tiny_conv import tiny_conv


def check(profile: DeviceProfile, available: tuple[str, ...] | None = None, **knobs: object) -> None:
    check_deploy(DeployConfig(**knobs), device_cores=profile.cpu.cores, device_precisions=tuple(profile.precisions),
                 task_can_prune_channels=True, task_can_finetune=True,
                 capabilities=device_capabilities(profile, available))


def with_providers(profile: DeviceProfile, *providers: str) -> DeviceProfile:
    return profile.model_copy(update={"execution_providers": providers})


@pytest.mark.parametrize(("knob", "providers"), list(PROVIDERS.items()))
def test_session_sets_the_providers_of_the_knob(knob: str, providers: tuple[str, ...]) -> None:
    session = DeployConfig.model_validate({"execution_provider": knob}).session()
    assert session.providers == providers
    assert session.providers[-1] == "CPUExecutionProvider"


def test_jetson_nano_offers_its_gpu_with_fp16_and_without_int8() -> None:
    nano = get_profile("jetson-nano")
    caps = device_capabilities(nano)
    assert caps.providers == ("cpu", "cuda", "tensorrt")
    assert caps.paths["cuda"].gpu and not caps.paths["cpu"].gpu
    for provider in ("cuda", "tensorrt"):
        check(nano, execution_provider=provider, precision="fp16")
        check(nano, execution_provider=provider, precision="fp32")
        for int8 in ("int8-static", "int8-dynamic"):
            with pytest.raises(InvalidConfig, match=r"GPU path.*Maxwell GPU \(compute capability 5\.3\) has no int8"):
                check(nano, execution_provider=provider, precision=int8)
    check(nano, execution_provider="cpu", precision="int8-static", intra_op_threads=4)
    with pytest.raises(InvalidConfig, match=r"CPU path \(cpu\).*Cortex-A57 cores have no fp16 arithmetic"):
        check(nano, execution_provider="cpu", precision="fp16")


def test_a_provider_the_profile_does_not_list_is_refused_with_the_reason() -> None:
    pi4 = get_profile("raspberry-pi-4")
    with pytest.raises(InvalidConfig, match=r"execution_provider cuda is refused on device 'raspberry-pi-4': the "
                                            r"profile lists no CUDAExecutionProvider \(it has CPUExecutionProvider\)"):
        check(pi4, execution_provider="cuda")
    with pytest.raises(InvalidConfig, match="lists no TensorrtExecutionProvider"):
        check(pi4, execution_provider="tensorrt")
    check(pi4, execution_provider="cpu", precision="int8-static")


def test_on_a_local_device_only_what_onnx_runtime_offers_here() -> None:
    host = with_providers(get_profile("host"), "CUDAExecutionProvider", "CPUExecutionProvider")
    with pytest.raises(InvalidConfig, match=r"ONNX Runtime on this machine does not offer CUDAExecutionProvider "
                                            r"\(available: CPUExecutionProvider\)"):
        check(host, available=("CPUExecutionProvider",), execution_provider="cuda")
    # the same profile where ONNX Runtime has CUDA: offered (no accelerator block: the CPU precisions)
    check(host, available=("CUDAExecutionProvider", "CPUExecutionProvider"), execution_provider="cuda")
    # without `available`, a local profile asks this machine's ONNX Runtime
    here = device_capabilities(get_profile("host"))
    assert set(here.providers) == {k for k, v in PROVIDERS.items() if v[0] in ort.get_available_providers()}


def test_without_capabilities_only_the_cpu_provider_is_accepted() -> None:
    with pytest.raises(InvalidConfig, match="needs a device that offers it"):
        check_deploy(DeployConfig(execution_provider="cuda"), device_cores=2, device_precisions=("fp32",),
                     task_can_prune_channels=False, task_can_finetune=False)


def test_an_emulated_gpu_path_without_calibrated_int8_rates_refuses_int8() -> None:
    nano = get_profile("jetson-nano").model_dump(mode="json")
    nano["name"] = "ampere-board"
    nano["accelerator"].update({"precisions": ["fp32", "fp16", "int8"], "unsupported_precisions": {}})
    rate = {"value": 10.0, "source": "test"}
    nano["calibration"] = {"source": "test (host-carry rates, no physics block)", "params": {
        k: rate for k in ("rate.fp32.compute", "rate.int8.compute", "gpu.rate.fp32.compute", "gpu.rate.fp16.compute")}}
    board = parse_profile(nano, "test")
    with pytest.raises(InvalidConfig, match="no calibrated int8 rates on its GPU path"):
        check(board, execution_provider="cuda", precision="int8-static")


def test_the_space_offers_only_what_the_device_runs() -> None:
    space = load_space(None)
    on_host, notes = resolve_space(space, device_capabilities(get_profile("host"), ("CPUExecutionProvider",)))
    assert on_host.deploy["execution_provider"].choices == ("cpu",)
    assert on_host.deploy["precision"].choices == ("fp32", "int8-dynamic", "int8-static")
    assert any("cuda left out: the profile lists no CUDAExecutionProvider" in n for n in notes)
    assert any("precision: fp16 left out" in n for n in notes)
    on_nano, notes = resolve_space(space, device_capabilities(get_profile("jetson-nano")))
    assert on_nano.deploy["execution_provider"].choices == ("cpu", "cuda", "tensorrt")
    assert on_nano.deploy["precision"].choices == ("fp32", "fp16", "int8-dynamic", "int8-static")
    # each provider is offered only the precisions its path runs, and the notes say why
    assert on_nano.deploy["precision"].choices_by == {"execution_provider": {
        "cpu": ("fp32", "int8-dynamic", "int8-static"), "cuda": ("fp32", "fp16"), "tensorrt": ("fp32", "fp16")}}
    assert any(n.startswith("deploy.precision: int8-static not offered with execution_provider tensorrt: the "
                            "Maxwell GPU") for n in notes)
    assert any(n.startswith("deploy.precision: fp16 not offered with execution_provider cpu: the Cortex-A57 cores "
                            "have no fp16 arithmetic") for n in notes)
    # threads are searched on the CPU path only
    import optuna

    gpu = suggest_config(on_nano, optuna.trial.FixedTrial({
        "train.lr": 0.01, "train.weight_decay": 1e-4, "train.epochs": 5, "train.batch_size": 64,
        "train.width": 1.0, "train.depth": 2, "deploy.execution_provider": "cuda", "deploy.precision@cuda": "fp16",
        "deploy.sparsity": 0.0, "deploy.channel_prune": 0.0, "deploy.finetune_epochs": 0,
        "deploy.graph_optimization": "all"}), cores=4)
    assert gpu["deploy"]["execution_provider"] == "cuda" and "intra_op_threads" not in gpu["deploy"]


def test_the_sampler_never_proposes_a_pair_the_device_refuses() -> None:
    """Before the split, int8 with TensorRT on the Nano's Maxwell GPU and fp16 on its A57 cores were
    proposed, refused and told infeasible: 7 of 31 proposals of a digits search."""
    import optuna

    from edge_search.config import DEVICE_PRECISION
    from edge_search.space import enumerate_space

    caps = device_capabilities(get_profile("jetson-nano"))
    space, _ = resolve_space(load_space(None), caps)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.TPESampler(seed=1))
    pairs = set()
    for i in range(60):
        trial = study.ask()
        deploy = suggest_config(space, trial, 4)["deploy"]
        assert DEVICE_PRECISION[deploy["precision"]] in caps.path(deploy["execution_provider"]).precisions
        pairs.add((deploy["execution_provider"], deploy["precision"]))
        study.tell(trial, [0.9 + 0.001 * (i % 7), 1.0 + (i % 5)])
    assert {p for p in pairs if p[0] != "cpu"} <= {(g, f) for g in ("cuda", "tensorrt") for f in ("fp32", "fp16")}
    assert ("tensorrt", "fp16") in pairs and ("cpu", "int8-static") in pairs
    configs = enumerate_space(space.model_copy(update={"train": {}}), 4, limit=100_000)
    assert configs is not None
    assert {(c["deploy"]["execution_provider"], c["deploy"]["precision"]) for c in configs} == {
        ("cpu", "fp32"), ("cpu", "int8-dynamic"), ("cpu", "int8-static"), ("cuda", "fp32"), ("cuda", "fp16"),
        ("tensorrt", "fp32"), ("tensorrt", "fp16")}


def test_available_only_with_nothing_left_is_an_input_error(tmp_path: Path) -> None:
    space = load_space(None)
    deploy = dict(space.deploy)
    deploy["execution_provider"] = deploy["execution_provider"].model_copy(update={"choices": ("cuda",)})
    with pytest.raises(InputError, match=r"deploy.execution_provider: none of cuda can run on device 'raspberry-pi-4'"):
        resolve_space(space.model_copy(update={"deploy": deploy}), device_capabilities(get_profile("raspberry-pi-4")))


def test_local_device_refuses_a_provider_onnx_runtime_lacks(tmp_path: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    model = tiny_conv(tmp_path / "m.onnx", size=8, channels=4)
    dev = LocalDevice(with_providers(get_profile("host"), "CUDAExecutionProvider", "CPUExecutionProvider"))
    req = MeasureRequest(model_path=model, session=DeployConfig(execution_provider="cuda").session())
    with pytest.raises(InputError, match=r"not available in ONNX Runtime on this machine.*silent CPU fallback"):
        dev.measure(req)


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_worker_refuses_a_session_that_fell_back_to_the_cpu(tmp_path: Path) -> None:
    """ONNX Runtime given an unavailable provider only logs and runs on the CPU: the worker refuses."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    model = tiny_conv(tmp_path / "m.onnx", size=8, channels=4)
    wr = WorkerRequest(mode="measure", device="host", request=MeasureRequest(
        model_path=model, session=DeployConfig(execution_provider="cuda").session()), cores=(0,))
    so = ort.SessionOptions()
    so.log_severity_level = 4
    with pytest.raises(WorkerFailure, match=r"CUDAExecutionProvider could not be used here \(the session got "
                                            r"CPUExecutionProvider\)"):
        _open_session(wr, ort, so)


def test_agent_device_refuses_a_provider_its_pool_lacks(tmp_path: Path) -> None:
    pool = get_profile("raspberry-pi-4").model_copy(update={"latency": parse_profile({
        "name": "x", "cpu": {"architecture": "aarch64", "core_type": "A72", "cores": 4, "clock_ghz": 1.5},
        "memory": {"ram_mb": 4096, "bandwidth_gb_s": 4}, "latency": {"method": "agent", "agents": [
            {"url": "http://127.0.0.1:9"}]}}, "t").latency})
    model = tiny_conv(tmp_path / "m.onnx", size=8, channels=4)
    with AgentDevice(pool) as dev, pytest.raises(InputError, match="CUDAExecutionProvider not offered by device"):
        dev.measure(MeasureRequest(model_path=model, session=DeployConfig(execution_provider="cuda").session()))
