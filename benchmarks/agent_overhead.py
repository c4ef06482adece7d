"""Benchmark: measuring through the board agent on loopback against `LocalDevice`, same model, same machine.

Run: ``python benchmarks/agent_overhead.py [--rounds 8] [--max-time 1.0]``. Starts one
``edge-search agent serve`` on 127.0.0.1 (host profile), builds a Gemm+Relu chain, and measures it
`rounds` times through each path, interleaved A/B then B/A, so drift hits both alike:

* wall: seconds one ``device.measure`` call takes, as the caller sees it (worker start, warm-up,
  repetitions, and for the agent HTTP, JSON and its queue); the model upload happens once, in an
  untimed first call;
* reported: the median latency each path's `LatencyStats` reports (does the agent disturb the
  figure itself?).

Prints the median ratio (agent / local) of both and writes ``benchmarks/results/agent_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_search.devices.agent import AgentDevice, probe
from edge_search.devices.base import Device, MeasureRequest
from edge_search.devices.local import LocalDevice
from edge_search.devices.profile import get_profile, parse_profile

RESULTS = Path(__file__).resolve().parent / "results" / "agent_overhead.json"
TOKEN = "benchmark-token-0123456789abcdef"


def gemm_chain(path: Path, layers: int = 4, width: int = 512, batch: int = 32) -> Path:
    """x[batch, width] -> (Gemm + Relu) x layers (about a millisecond on one core)."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        out = "y" if i == layers - 1 else f"h{i}"
        nodes += [helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}"]),
                  helper.make_node("Relu", [f"g{i}"], [out])]
        prev = out
    graph = helper.make_graph(nodes, "gemm_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   [batch, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_agent(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """An agent on a free loopback port (own process group), once it answers its heartbeat."""
    token = root / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edge_search", "agent", "serve", "--port", str(port),
                             "--token-file", str(token), "--cache", str(root / "cache")],
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            probe(url, TOKEN, 1.0)
            return proc, url
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the agent did not start") from None
            time.sleep(0.2)


def timed(device: Device, request: MeasureRequest) -> tuple[float, float]:
    """(wall seconds of one measure call, reported median ms)."""
    t0 = time.perf_counter()
    stats = device.measure(request)
    return time.perf_counter() - t0, stats.median_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=8, help="measurements per path (default 8)")
    parser.add_argument("--max-time", type=float, default=1.0, help="repetition-phase cap, s (default 1)")
    parser.add_argument("--precision-target", type=float, default=0.02)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="agent-overhead-") as tmp:
        root = Path(tmp)
        os.environ["EDGE_SEARCH_LOCK_DIR"] = str(root / "locks")
        model = gemm_chain(root / "gemm.onnx")
        proc, url = start_agent(root)
        try:
            local = LocalDevice(get_profile("host"))
            host = get_profile("host").model_dump(mode="json")
            pool = parse_profile({**host, "name": "host-agent", "calibration": {},
                                  "latency": {"method": "agent", "agents": [{"url": url}]}}, "benchmark")
            os.environ["EDGE_SEARCH_AGENT_TOKEN"] = TOKEN
            agent = AgentDevice(pool)
            request = MeasureRequest(model_path=model, precision_target=args.precision_target,
                                     max_time_s=args.max_time)
            t0 = time.perf_counter()
            agent.measure(request)  # uploads the model once; not timed as a round
            first_call_s = time.perf_counter() - t0
            walls: dict[str, list[float]] = {"local": [], "agent": []}
            medians: dict[str, list[float]] = {"local": [], "agent": []}
            for i in range(args.rounds):
                order = [("local", local), ("agent", agent)]
                for name, dev in order if i % 2 == 0 else order[::-1]:
                    wall, med = timed(dev, request)
                    walls[name].append(wall)
                    medians[name].append(med)
            agent.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    wall_ratios = [a / b for a, b in zip(walls["agent"], walls["local"], strict=True)]
    med_ratios = [a / b for a, b in zip(medians["agent"], medians["local"], strict=True)]
    result: dict[str, Any] = {
        "host": {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version(),
                 "cpus": os.cpu_count()},
        "model": "Gemm+Relu x4, 512 wide, batch 32",
        "rounds": args.rounds,
        "precision_target": args.precision_target,
        "max_time_s": args.max_time,
        "first_agent_call_with_upload_s": first_call_s,
        "wall_s": {k: {"median": statistics.median(v), "values": v} for k, v in walls.items()},
        "reported_median_ms": {k: {"median": statistics.median(v), "values": v} for k, v in medians.items()},
        "wall_ratio_agent_over_local": {"median": statistics.median(wall_ratios), "values": wall_ratios},
        "median_latency_ratio_agent_over_local": {"median": statistics.median(med_ratios), "values": med_ratios},
        "wall_overhead_ms_median": 1000 * (statistics.median(walls["agent"]) - statistics.median(walls["local"])),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"model: {result['model']}; {args.rounds} interleaved rounds per path; "
          f"precision target ±{args.precision_target:.0%}, cap {args.max_time:g} s")
    print(f"first agent call (uploads the model): {first_call_s:.2f} s")
    for name in ("local", "agent"):
        print(f"{name:>5}: wall per measure call median {statistics.median(walls[name]):.3f} s; "
              f"reported median latency median {statistics.median(medians[name]):.4f} ms")
    print(f"wall ratio agent/local: median {statistics.median(wall_ratios):.3f} "
          f"(range {min(wall_ratios):.3f}..{max(wall_ratios):.3f}); "
          f"overhead {result['wall_overhead_ms_median']:.0f} ms per call")
    print(f"reported-latency ratio agent/local: median {statistics.median(med_ratios):.3f} "
          f"(range {min(med_ratios):.3f}..{max(med_ratios):.3f})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
