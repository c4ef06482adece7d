"""Validate the latency emulator: host hold-out by model family, and leave-one-model-out on published data.

Usage:
    python benchmarks/emulator_validation.py [--records FILE] [--measure] [--csv FILE]

Host hold-out: the reference suite's records (per-node single-thread profiles and end-to-end
medians at 1..2 threads, fp32 and int8, measured on this machine; by default the ones the last
`edge-search calibrate --device host` saved, or measured afresh with --measure) are split by model
family; for each family the host calibration is fitted on all the other families and the held-out
family's end-to-end latencies (every thread count and precision) are predicted. The same is done
for the graph-only estimate (rates from FLOPs/bytes, nothing executed) for comparison.

Published data: for each device in the CSV, each model is left out in turn, the board calibration is
fitted on the others and the left-out model's figures (every thread count and precision) are
predicted. Figures: MAPE, share within ±10 % and ±20 %, Spearman's rho. Writes
benchmarks/results/emulator_validation.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from edge_search.devices.emulation import calibration as cal
from edge_search.devices.emulation.opclass import class_group, graph_costs
from edge_search.devices.emulation.reference_suite import HOST_SUITE, export
from edge_search.devices.profile import get_profile

RESULTS = Path(__file__).resolve().parent / "results" / "emulator_validation.json"


def figures(pairs: list[tuple[float, float]]) -> dict[str, float]:
    """MAPE, share within ±10 % / ±20 % and Spearman's rho of (actual, predicted) pairs."""
    a = np.array([p[0] for p in pairs])
    p = np.array([p[1] for p in pairs])
    rel = np.abs(p / a - 1.0)
    rho = float(spearmanr(a, p).statistic) if len(pairs) > 2 else float("nan")
    return {
        "n": len(pairs),
        "mape_pct": 100 * float(rel.mean()),
        "within_10_pct": 100 * float((rel <= 0.1).mean()),
        "within_20_pct": 100 * float((rel <= 0.2).mean()),
        "spearman_rho": rho,
    }


def _line(label: str, f: dict[str, float]) -> str:
    return (
        f"  {label:38s} n={f['n']:3d}  MAPE {f['mape_pct']:6.1f} %  "
        f"within ±10 % {f['within_10_pct']:5.1f} %  "
        f"±20 % {f['within_20_pct']:5.1f} %  rho {f['spearman_rho']:.3f}"
    )


def _graph_pred(rec: cal.SuiteRecord, fitted: Any, threads: int) -> float:
    m = next(x for x in HOST_SUITE if x.name == rec.name)
    acc: dict[tuple[str, str], float] = {}
    for c in graph_costs(export(m, precision=rec.precision)):
        acc[(c.precision, c.op_class)] = acc.get((c.precision, c.op_class), 0.0) + c.work
    t = 0.0
    for (p, c), work in acc.items():
        r = fitted.rate(p, c, class_group(c)) or fitted.rate("fp32", c, class_group(c))
        if r:
            t += work / (r * 1e6) / fitted.speedup(threads, p, c)
    return t + fitted.overhead_ms()


def host_holdout(records: list[cal.SuiteRecord]) -> dict[str, Any]:
    """Leave-one-family-out over the suite records."""
    families = sorted({r.family for r in records})
    prof_pairs, graph_pairs, rows = [], [], []
    for fam in families:
        fit = cal.fit_host([r for r in records if r.family != fam], "validation")
        for r in records:
            if r.family != fam:
                continue
            for n, actual in sorted(r.e2e_ms.items()):
                pred = cal.host_predict(r, fit, n)
                gpred = _graph_pred(r, fit, n)
                prof_pairs.append((actual, pred))
                graph_pairs.append((actual, gpred))
                rows.append(
                    {
                        "family": fam,
                        "model": r.name,
                        "precision": r.precision,
                        "threads": n,
                        "measured_ms": actual,
                        "predicted_ms": pred,
                        "graph_ms": gpred,
                    }
                )
    return {
        "held_out": "each family in turn: " + ", ".join(families),
        "profile": figures(prof_pairs),
        "graph_only": figures(graph_pairs),
        "rows": rows,
    }


def published_lomo(csv_path: Path) -> dict[str, Any]:
    """Leave-one-model-out per device over the published CSV."""
    rows = cal.read_published(csv_path)
    host = get_profile("host").calibration
    keys = [(r.model, r.precision if r.precision != "fp16" else "fp32") for r in rows]
    proxies = cal.proxy_breakdowns(keys, progress=lambda s: print(f"  profiling proxy {s}", file=sys.stderr))
    out: dict[str, Any] = {}
    for dev in ("raspberry-pi-4", "raspberry-pi-5", "intel-n100"):
        fit = cal.fit_board_cpu(get_profile(dev), rows, proxies, host, csv_path.name)
        out[dev] = {
            "runtime": "tflite xnnpack (cross-runtime)",
            "figures": figures([(e[3], e[4]) for e in fit.lomo_errors]),
            "by_precision": {
                p: figures([(e[3], e[4]) for e in fit.lomo_errors if e[1] == p]) for p in ("fp32", "int8")
            },
            "rows": [
                dict(zip(("model", "precision", "threads", "published_ms", "predicted_ms"), e, strict=True))
                for e in fit.lomo_errors
            ],
        }
    gfit = cal.fit_board_gpu(
        get_profile("jetson-nano"), rows, proxies, host, csv_path.name, get_profile("jetson-nano").calibration
    )
    out["jetson-nano (gpu)"] = {
        "runtime": "tensorrt fp16 (cross-runtime)",
        "figures": figures([(e[3], e[4]) for e in gfit.lomo_errors]),
        "rows": [
            dict(zip(("model", "precision", "threads", "published_ms", "predicted_ms"), e, strict=True))
            for e in gfit.lomo_errors
        ],
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, default=cal.CALIBRATION_CACHE / "host-suite-last.json")
    ap.add_argument("--measure", action="store_true", help="measure the suite afresh (a few minutes)")
    ap.add_argument(
        "--csv",
        type=Path,
        default=Path(str(resources.files("edge_search.device_profiles") / "published_device_latency.csv")),
    )
    args = ap.parse_args()
    t0 = time.time()
    if args.measure or not args.records.exists():
        _, records = cal.calibrate_host(
            get_profile("host"), progress=lambda s: print(f"  {s}", file=sys.stderr)
        )
    else:
        records = cal.load_records(args.records)
    result: dict[str, Any] = {
        "host_id": cal.host_id(),
        "records": str(args.records),
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(f"host: {result['host_id']}")
    hold = host_holdout(records)
    result["host_holdout"] = hold
    print(f"host hold-out ({hold['held_out']}; all thread counts 1..2, fp32 + int8):")
    print(_line("profiled carry (EmulatedDevice)", hold["profile"]))
    for n in sorted({r["threads"] for r in hold["rows"]}):
        sub = [(r["measured_ms"], r["predicted_ms"]) for r in hold["rows"] if r["threads"] == n]
        hold[f"profile_threads_{n}"] = figures(sub)
        print(_line(f"    {n} thread(s)", hold[f"profile_threads_{n}"]))
    print(_line("graph-only estimate", hold["graph_only"]))
    ok = hold["profile"]["within_20_pct"] >= 80 and hold["profile"]["spearman_rho"] >= 0.9
    print(f"  target (>= 80 % within ±20 %, rho >= 0.9): {'met' if ok else 'NOT met'}")
    pub = published_lomo(args.csv)
    result["published_lomo"] = pub
    print("published data, leave-one-model-out per device:")
    for dev, d in pub.items():
        print(_line(f"{dev} [{d['runtime']}]", d["figures"]))
        for p, f in d.get("by_precision", {}).items():
            print(_line(f"    {p}", f))
    result["wall_s"] = time.time() - t0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
