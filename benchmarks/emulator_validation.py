"""Validate the latency emulator on architecture families it has never seen.

Usage:
    python benchmarks/emulator_validation.py [--write-profiles] [--no-png] [--skip-host] [--resnet-only]

1. Boards, leave-one-family-out (LOFO): every used row of the two published CSVs shipped in the
   package (`edge_search.devices.emulation.published`) becomes an observation; for each
   architecture family the joint physics model (`edge_search.devices.emulation.fit`) is refitted
   without any row of that family and the family's rows are predicted. Per device and path
   (CPU fp32, CPU int8, GPU): n, median |error|, share within ±25 % and ±30 %, coverage of the
   predicted interval (nested: each row's band comes from the other families' held-out errors),
   Spearman's rho, and the same for the ONNX Runtime rows alone. Rows whose runtime appears only in
   the held-out family are reported apart (an unseen runtime, not an unseen family).
2. ResNet-18 / ResNet-50 predictions on every board profile (fp32 and int8, all cores, ONNX
   Runtime; GPU paths through the TensorRT and CUDA providers), fitted on every family **except
   resnet**, with the shipped unseen-family bands as intervals (``--resnet-only``: this table alone,
   from one fit, with the bands of the shipped profiles).
3. Host, LOFO: the reference suite measured on this machine (`benchmarks/data/host_suite_e2e.json`:
   ONNX Runtime, 1 thread, fp32 and int8) fitted with the same model (host peaks as the prior);
   share of held-out families' latencies within ±10 % and ±20 %, rho.

Writes benchmarks/results/emulator_validation.json, emulator_validation.html (plotly, predicted vs
published per device, log-log, one colour per family; plotly.js embedded) and, unless --no-png,
docs/img/emulator_validation.png rendered with headless Chromium. --write-profiles also rewrites
the calibration blocks of the shipped board profiles from the full fit.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from edge_search.devices.emulation import fit as F
from edge_search.devices.emulation.boards import (
    board_calibration,
    calibrate_boards,
    held_table,
    obs_for,
    work_table,
)
from edge_search.devices.profile import DeviceProfile, load_profiles

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HOST_DATA = HERE / "data" / "host_suite_e2e.json"
PNG = HERE.parent / "docs" / "img" / "emulator_validation.png"
BOARDS = ("raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-orin-nano", "intel-n100")
CPU_TARGETS = {"median_abs_err": 0.25, "within_30": 0.70, "coverage": 0.80, "spearman_rho": 0.90}
GPU_TARGETS = {"within_30": 0.60, "coverage": 0.80}
CPU_TARGET_DEVICES = ("raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-orin-nano")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _verdict(key: str, f: dict[str, float]) -> str:
    dev, path = key.split("/")
    if path.startswith("cpu") and dev in CPU_TARGET_DEVICES:
        targets = CPU_TARGETS
    elif path == "gpu":
        targets = GPU_TARGETS
    else:
        return "no target"
    missed = []
    for m, t in targets.items():
        v = f[m]
        ok = v <= t if m == "median_abs_err" else v >= t
        if not ok or math.isnan(v):
            missed.append(f"{m} {v:.2f} (target {'<=' if m == 'median_abs_err' else '>='} {t:.2f})")
    return "met" if not missed else "MISSED: " + "; ".join(missed)


def ort_figures(held: list[F.Held]) -> dict[str, dict[str, float]]:
    """The same figures for the ONNX Runtime rows alone (the runtime the product predicts)."""
    ort = [h for h in held if h.obs.runtime in ("ort", "ort-trt", "ort-cuda")]
    return F.figures(ort, nested_bands=False) if ort else {}


def unseen_runtime_figures(held: list[F.Held]) -> dict[str, dict[str, Any]]:
    """n, median |error| and shares within ±25/30 % of the rows whose runtime no training row had."""
    by: dict[str, list[F.Held]] = {}
    for h in held:
        if not h.runtime_seen:
            by.setdefault(F.band_key(h.obs), []).append(h)
    out: dict[str, dict[str, Any]] = {}
    for k, hs in sorted(by.items()):
        rel = np.abs([h.predicted_ms / h.obs.latency_ms - 1.0 for h in hs])
        out[k] = {"n": float(len(hs)), "median_abs_err": float(np.median(rel)),
                  "within_25": float(np.mean(rel <= 0.25)), "within_30": float(np.mean(rel <= 0.30)),
                  "runtimes": ", ".join(sorted({h.obs.runtime for h in hs}))}
    return out


def resnet_table(rows: list[F.Obs], profiles: dict[str, DeviceProfile], bands: dict[str, dict[str, float]]
                 ) -> list[dict[str, Any]]:
    """ResNet-18/50 predictions from a fit that never saw the resnet family."""
    res = F.fit([o for o in rows if o.family != "resnet"])
    table = work_table()
    queries: list[tuple[F.Obs, str, float]] = []
    for name in BOARDS:
        p = profiles[name]
        for model in ("resnet18@224", "resnet50@224"):
            for prec in ("fp32", "int8"):
                o = obs_for(p, table[model], "cpu", prec, "ort", p.cpu.cores, model=model)
                queries.append((o, f"CPU ({p.cpu.cores} threads)", bands[name][f"cpu-{prec}"]))
            if p.accelerator is None:
                continue
            for rt in ("ort-trt", "ort-cuda"):
                for prec in ("fp32", "fp16", "int8"):
                    if prec == "int8" and "Maxwell" in p.accelerator.name:
                        continue  # refused: no int8 path on Maxwell
                    o = obs_for(p, table[model], "gpu", prec, rt, 1, model=model)
                    queries.append((o, f"GPU {rt}", bands[name]["gpu"]))
    preds = F.predict(res, [q[0] for q in queries], level="runtime")
    out = []
    for (o, path, band), t in zip(queries, preds, strict=True):
        out.append({"device": o.device, "model": o.model.split("@")[0], "path": path, "precision": o.precision,
                    "runtime": o.runtime, "predicted_ms": round(float(t), 2), "low_ms": round(float(t) / (1 + band), 2),
                    "high_ms": round(float(t) * (1 + band), 2), "band": round(band, 3),
                    "note": "prior only: no published int8 GPU figures" if o.path == "gpu" and o.precision == "int8"
                    else ""})
    return out


def print_resnet(resnet: list[dict[str, Any]]) -> None:
    print("\nResNet-18/50, ONNX Runtime, fit without any resnet row (interval: the profile's unseen-family band, "
          "from leave-one-family-out)")
    print(f"{'device':18s} {'model':9s} {'path':18s} {'prec':5s} {'predicted':>10s}  interval")
    for r in resnet:
        print(f"{r['device']:18s} {r['model']:9s} {r['path']:18s} {r['precision']:5s} {r['predicted_ms']:9.2f} ms  "
              f"[{r['low_ms']:.2f}, {r['high_ms']:.2f}] (±{r['band']:.0%}) {r['note']}")
    for dev in BOARDS:
        for model in ("resnet18", "resnet50"):
            cpu = {r["precision"]: r["predicted_ms"] for r in resnet
                   if r["device"] == dev and r["model"] == model and r["path"].startswith("CPU")}
            if "fp32" in cpu and "int8" in cpu:
                print(f"  {dev} {model}: CPU int8 speed-up over fp32 {cpu['fp32'] / cpu['int8']:.2f}x")


def shipped_bands(profiles: dict[str, DeviceProfile]) -> dict[str, dict[str, float]]:
    """The bands the shipped board profiles carry (leave-one-family-out, written by --write-profiles)."""
    out: dict[str, dict[str, float]] = {}
    for name in BOARDS:
        ph = profiles[name].calibration.physics
        if ph is None:
            raise SystemExit(f"error: profile {name} has no physics calibration; run with --write-profiles first")
        out[name] = {k: v.value for k, v in ph.bands.items()}
    return out


def host_validation(profiles: dict[str, DeviceProfile]) -> dict[str, Any]:
    """LOFO on this host's own suite measurements (ONNX Runtime, 1 thread)."""
    data = json.loads(HOST_DATA.read_text())
    table = work_table()
    host = profiles["host"]
    rows = []
    for key, d in data["models"].items():
        model, prec = key.split("|")
        if model not in table:
            continue
        rows.append(obs_for(host, table[model], "cpu", prec, "ort", 1, latency_ms=d["e2e_ms_1thread"], model=model,
                            rid=f"host:{key}"))
    held = F.lofo(rows)
    out: dict[str, Any] = {"source": data["source"], "n": len(held), "families": len({h.obs.family for h in held})}
    for prec in ("fp32", "int8", "all"):
        hs = [h for h in held if prec == "all" or h.obs.precision == prec]
        rel = np.array([h.predicted_ms / h.obs.latency_ms - 1 for h in hs])
        out[prec] = {
            "n": len(hs),
            "median_abs_err": float(np.median(np.abs(rel))),
            "within_10": float(np.mean(np.abs(rel) <= 0.10)),
            "within_20": float(np.mean(np.abs(rel) <= 0.20)),
            "spearman_rho": float(spearmanr([h.predicted_ms for h in hs], [h.obs.latency_ms for h in hs]).statistic),
        }
    out["rows"] = held_table(held)
    return out


def figure_html(held: list[F.Held], path: Path) -> None:
    """Predicted vs published per device (log-log, one colour per family), plotly.js embedded."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    keys = sorted({F.band_key(h.obs) for h in held})
    cols = 3
    nrows = math.ceil(len(keys) / cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=keys, horizontal_spacing=0.06, vertical_spacing=0.07)
    fams = sorted({h.obs.family for h in held})
    palette = qualitative.Dark24 + qualitative.Light24
    color = {f: palette[i % len(palette)] for i, f in enumerate(fams)}
    shown: set[str] = set()
    for i, k in enumerate(keys):
        r, c = i // cols + 1, i % cols + 1
        hs = [h for h in held if F.band_key(h.obs) == k]
        lo = min(min(h.obs.latency_ms, h.predicted_ms) for h in hs) / 1.5
        hi = max(max(h.obs.latency_ms, h.predicted_ms) for h in hs) * 1.5
        for fam in fams:
            sel = [h for h in hs if h.obs.family == fam]
            if not sel:
                continue
            fig.add_trace(go.Scatter(
                x=[h.obs.latency_ms for h in sel], y=[h.predicted_ms for h in sel], mode="markers",
                marker={"color": color[fam], "size": 6, "symbol": ["circle" if h.runtime_seen else "x" for h in sel]},
                name=fam, legendgroup=fam, showlegend=fam not in shown,
                text=[f"{h.obs.model} {h.obs.runtime} {h.obs.precision} {h.obs.threads}t ({h.obs.rid})" for h in sel],
                hovertemplate="%{text}<br>published %{x:.2f} ms<br>predicted %{y:.2f} ms<extra></extra>"), row=r, col=c)
            shown.add(fam)
        for f_, dash in ((1.0, "solid"), (1.3, "dot"), (1 / 1.3, "dot")):
            fig.add_trace(go.Scatter(x=[lo, hi], y=[lo * f_, hi * f_], mode="lines", showlegend=False,
                                     line={"color": "grey", "width": 1, "dash": dash}, hoverinfo="skip"), row=r, col=c)
        fig.update_xaxes(type="log", title_text="published ms", row=r, col=c)
        fig.update_yaxes(type="log", title_text="predicted ms", row=r, col=c)
    fig.update_layout(height=330 * nrows, width=1250, title=(
        "Emulator, leave-one-family-out: predicted vs published latency (each family predicted by a fit that "
        "never saw it; dotted: ±30 %; x: runtime unseen outside the family)"), legend={"font": {"size": 10}})
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)


def render_png(html: Path, png: Path) -> bool:
    """Screenshot the HTML with headless Chromium (no kaleido on this machine)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return False
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               f"--user-data-dir={tmp}", "--hide-scrollbars", "--window-size=1270,2020",
               "--virtual-time-budget=15000", f"--screenshot={png}", html.as_uri()]
        done = subprocess.run(cmd, capture_output=True, timeout=180, check=False)
    return done.returncode == 0 and png.exists()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-profiles", action="store_true", help="rewrite the shipped board profiles' calibration")
    ap.add_argument("--no-png", action="store_true", help="skip the Chromium PNG")
    ap.add_argument("--skip-host", action="store_true", help="skip the host leave-one-family-out")
    ap.add_argument("--resnet-only", action="store_true",
                    help="only the ResNet-18/50 table (fit without resnet; bands from the shipped profiles)")
    args = ap.parse_args(argv)
    t0 = time.time()
    profiles = load_profiles()
    if args.resnet_only:
        from edge_search.devices.emulation.boards import observations
        from edge_search.devices.emulation.published import read_all

        obs = observations(read_all(), profiles, work_table())
        resnet = resnet_table(obs, profiles, shipped_bands(profiles))
        print_resnet(resnet)
        saved = RESULTS / "emulator_validation.json"
        if saved.exists():  # keep the results file's ResNet table in step with the code
            out = json.loads(saved.read_text())
            out["resnet_predictions"] = resnet
            saved.write_text(json.dumps(out, indent=1))
            print(f"\nupdated the ResNet table of {saved}")
        return 0
    fit = calibrate_boards(profiles, progress=log)
    bands = {n: {k: v.value for k, v in ph.bands.items()} for n, ph in fit.physics.items()}
    rows = [h.obs for h in fit.held]
    log("ResNet predictions (fit without the resnet family)")
    resnet = resnet_table(rows, profiles, bands)
    host = {} if args.skip_host else host_validation(profiles)
    ort = ort_figures(fit.held)

    print("\nBoards, leave-one-family-out (all runtimes; ONNX Runtime rows alone in the second line). Primary: "
          "a held-out row's benchmark effect as learned from the other families of its benchmark; runtime level: "
          f"no benchmark effect (a new setup; its band is the one shipped). Between-benchmark spread tau = "
          f"{fit.result.tau:.3f} (log sd)")
    print(f"{'device/path':28s} {'n':>4s} {'med|err|':>8s} {'±25%':>6s} {'±30%':>6s} {'cover':>6s} {'band':>6s} "
          f"{'rho':>6s} | runtime level: {'med':>6s} {'±30%':>5s} {'cover':>5s} {'band':>6s}  verdict")
    for k, f in fit.figures.items():
        f["verdict"] = _verdict(k, f)  # type: ignore[assignment]
        print(f"{k:28s} {f['n']:4.0f} {f['median_abs_err']:8.1%} {f['within_25']:6.0%} {f['within_30']:6.0%} "
              f"{f['coverage']:6.0%} ±{f['band']:4.0%} {f['spearman_rho']:6.3f} | {'':15s}"
              f"{f['runtime_level_median_abs_err']:6.1%} {f['runtime_level_within_30']:5.0%} "
              f"{f['runtime_level_coverage']:5.0%} ±{f['runtime_level_band']:4.0%}  {f['verdict']}")
        if k in ort:
            o = ort[k]
            print(f"{'  ONNX Runtime rows':28s} {o['n']:4.0f} {o['median_abs_err']:8.1%} {o['within_25']:6.0%} "
                  f"{o['within_30']:6.0%} {o['coverage']:6.0%}        {o['spearman_rho']:6.3f}")
    unseen = unseen_runtime_figures(fit.held)
    if unseen:
        print("\nRows whose runtime occurs only in the held-out family (an unseen runtime, not an unseen family; "
              "not in the table above)")
        for k, f in unseen.items():
            print(f"{k:28s} {f['n']:4.0f} {f['median_abs_err']:8.1%} {f['within_25']:6.0%} {f['within_30']:6.0%}  "
                  f"runtimes {f['runtimes']}")
    print_resnet(resnet)
    if host:
        print(f"\nHost, leave-one-family-out ({host['n']} model/precision pairs, {host['families']} families)")
        for prec in ("fp32", "int8", "all"):
            h = host[prec]
            print(f"  {prec:5s} n={h['n']:3d} med|err| {h['median_abs_err']:.1%} within ±10% {h['within_10']:.0%} "
                  f"within ±20% {h['within_20']:.0%} (target 90%) rho {h['spearman_rho']:.3f}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "method": "physics model (edge_search.devices.emulation.fit), leave-one-family-out",
        "rows_used": len(rows),
        "boards": fit.figures,
        "boards_onnxruntime_rows": ort,
        "boards_unseen_runtime_rows": unseen,
        "between_benchmark_tau": fit.result.tau,
        "resnet_predictions": resnet,
        "host": host,
        "held_out_rows": held_table(fit.held),
        "seconds": round(time.time() - t0, 1),
    }
    (RESULTS / "emulator_validation.json").write_text(json.dumps(out, indent=1))
    html = RESULTS / "emulator_validation.html"
    figure_html(fit.held, html)
    print(f"\nwrote {RESULTS / 'emulator_validation.json'} and {html}")
    if not args.no_png and render_png(html, PNG):
        print(f"wrote {PNG}")
    if args.write_profiles:
        from edge_search.devices.emulation.calibration import write_calibration

        root = HERE.parent / "device_profiles"
        for name, ph in fit.physics.items():
            write_calibration(root / f"{name}.yaml", board_calibration(ph))
        print(f"rewrote the calibration of {', '.join(fit.physics)} in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
