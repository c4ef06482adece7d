"""`edge-search sensitivity`: rank a model's Conv/MatMul/Gemm nodes by their int8 sensitivity.

    edge-search sensitivity model.onnx --data eval.npz [--json out.json] [--figure out.html]

Calibrates once, then quantises the model once per Conv/MatMul/Gemm candidate (alone int8, or alone
fp32 in the all-int8 model with `--method dequantise`) and prints the candidates ranked by the
fidelity keeping each in fp32 is worth (see `edge_search.transforms.quantize.sensitivity`). The
result is cached under `--cache-dir`, so the same model, data and settings are analysed once (a
search with `keep_fp32_top_k` sharing that cache reuses it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""
    p.add_argument("model", type=Path, help="fp32 ONNX model (weights inline)")
    p.add_argument("--data", type=Path, required=True,
                   help=".npz with one array per model input (samples on axis 0), or an image folder")
    p.add_argument("--json", type=Path, default=None, help="write the ranking as JSON")
    p.add_argument("--figure", type=Path, default=None,
                   help="write a plotly bar chart as one self-contained HTML file")
    p.add_argument("--metric", choices=("fidelity_top1", "fidelity_cosine"), default="fidelity_top1",
                   help="what a node's sensitivity is measured in (ties broken by fidelity_cosine)")
    p.add_argument("--method", choices=("quantise", "dequantise"), default="quantise",
                   help="quantise: each candidate alone int8 (default); dequantise: each alone fp32 in all-int8")
    p.add_argument("--calibration-size", type=int, default=32, help="calibration samples (the data's last N)")
    p.add_argument("--calibration-data", type=Path, default=None, help="separate calibration data")
    p.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile"), default="minmax")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="per-channel weight quantisation (default on)")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=True,
                   help="biases absorb the mean error of the int8 weights (default on)")
    p.add_argument("--quant-format", choices=("qdq", "qoperator"), default="qdq")
    p.add_argument("--quantize-op-types", choices=("all", "conv", "matmul"), default="all")
    p.add_argument("--eval-size", type=int, default=64, help="samples scored per variant (the data's first N)")
    p.add_argument("--output", default=None, help="model output that is scored (default the first)")
    p.add_argument("--no-latency", action="store_true",
                   help="skip the rough in-process latency of each variant")
    p.add_argument("--top", type=int, default=20, help="rows printed (0: all)")
    p.add_argument("--cache-dir", type=Path, default=Path(".edge-search/cache"), help="artifact cache")


def run(args: argparse.Namespace) -> int:
    """Analyse (or read the cached analysis), print the table, write JSON/figure; exit 2 on bad input."""
    from edge_search.cache import ArtifactCache
    from edge_search.errors import InputError
    from edge_search.tasks.onnx_model import OnnxModelTask
    from edge_search.transforms.quantize.sensitivity import (
        QuantSettings,
        analyse_sensitivity,
        format_table,
        write_figure,
    )

    for flag, value in (("--calibration-size", args.calibration_size), ("--eval-size", args.eval_size)):
        if value < 1:
            raise InputError(f"{flag} must be at least 1 (got {value})")
    if args.top < 0:
        raise InputError(f"--top must be 0 (all) or more (got {args.top})")
    if not args.data.exists():
        raise InputError(f"--data {args.data}: no such file or folder")
    opts: dict[str, object] = {"model": args.model, "data": args.data, "metric": args.metric,
                               "eval_size": args.eval_size}
    if args.calibration_data is not None:
        opts["calibration_data"] = args.calibration_data
    if args.output is not None:
        opts["output"] = args.output
    task = OnnxModelTask(**opts)
    settings = QuantSettings(calibration_method=args.calibration_method, calibration_size=args.calibration_size,
                             per_channel=args.per_channel, bias_correction=args.bias_correction,
                             quant_format=args.quant_format,
                             quantize_op_types=args.quantize_op_types)

    def progress(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    report = analyse_sensitivity(task.model_path, task, settings, metric=args.metric,
                                 cache=ArtifactCache(args.cache_dir), method=args.method,
                                 time_variants=not args.no_latency,
                                 progress=progress)
    print(format_table(report, args.top or None))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": str(args.model), "data": str(args.data), **report.to_json()},
                                        indent=1))
        print(f"wrote {args.json}")
    if args.figure is not None:
        write_figure(report, args.figure, title=f"int8 sensitivity of {args.model.name}: {report.metric} "
                     f"gained when one node stays fp32 (fp32 {report.fp32_score:.4f}, "
                     f"all-int8 {report.int8_score:.4f})")
        print(f"wrote {args.figure}")
    return 0
