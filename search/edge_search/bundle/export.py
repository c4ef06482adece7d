"""Deployable bundles: a trial's ONNX model with everything needed to run it as it was measured.

A bundle is a folder:

- `model.onnx`: the deployable model (from the artifact cache, else the trial's MLflow run);
- `bundle.json`: the exact ONNX Runtime session options, every input with the concrete shape its
  latency was measured at (`predict`, `measure` and `check` take the shapes from there), the
  latency with its source (measured/emulated) and device, the accuracy and every metric, the
  trial's knobs, and provenance (study, space hash, task and version, package versions);
- `latency_stats.json`: the full `LatencyStats` (raw samples) when the trial's MLflow run has it;
- `runtime.py`: `edge_search.bundle.runtime`, which runs the bundle with numpy + onnxruntime only.

`export_front` writes one bundle per front configuration under `trial-NNNN/` plus `front.json`,
which `edge_search.bundle.runtime.SwitchingRuntime` switches between.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from edge_search import __version__
from edge_search.bundle.runtime import BUNDLE_FILE, BUNDLE_KIND, BUNDLE_SCHEMA, FRONT_FILE, FRONT_KIND, MODEL_FILE
from edge_search.cache import file_sha256
from edge_search.devices.capabilities import PROVIDERS
from edge_search.devices.inputs import resolve_shapes, specs_from_onnx
from edge_search.errors import InputError
from edge_search.pareto import confirmed_front, current_front, is_feasible, objective_names, values_with
from edge_search.records import StudyRecord, TrialRecord
from edge_search.tracking import Tracker

log = logging.getLogger(__name__)

PACKAGES = ("onnxruntime", "onnx", "numpy", "optuna", "mlflow", "torch", "scikit-learn")


def get_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """The complete trial `number`, or an input error saying why it cannot be exported."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise InputError(f"study '{study.study_name}' has no trial {number} (trials 0..{len(trials) - 1})")
    t = trials[number]
    if t.state != TrialState.COMPLETE:
        raise InputError(f"trial {number} of study '{study.study_name}' is {t.state.name}, not COMPLETE")
    record = TrialRecord.of(t)
    if record.outcome == TrialRecord.DUPLICATE:
        raise InputError(f"trial {number} of study '{study.study_name}' is a duplicate of trial "
                         f"{record.get(TrialRecord.DUPLICATE_OF)}: export that one")
    if record.outcome == TrialRecord.FAILED:
        raise InputError(f"trial {number} of study '{study.study_name}' failed: "
                         f"{record.get(TrialRecord.FAIL_REASON, '')}")
    return t


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a model and its latency (absent ones left out)."""
    out = {"edge-search": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _task_version(study: optuna.Study) -> str | None:
    record = StudyRecord.of(study)
    task = record.space.get("task") or {}
    name = task.get("name") if isinstance(task, dict) else record.get(StudyRecord.TASK)
    try:
        from edge_search.tasks import TASKS

        module_name, _, attr = TASKS[str(name)].partition(":")
        import importlib

        return str(getattr(importlib.import_module(module_name), attr).version)
    except Exception as err:  # task not importable here (e.g. torch missing): recorded as unknown
        log.info("task version of %s unknown: %s", name, err)
        return None


def _mlflow_text(tracker: Tracker | None, run_id: str | None, path: str) -> str | None:
    if tracker is None or not run_id:
        return None
    try:
        return tracker.read_text(run_id, path)
    except Exception:
        return None


def _model_file(trial: FrozenTrial, tracker: Tracker | None, base_dir: Path, dst: Path) -> None:
    record = TrialRecord.of(trial)
    recorded = Path(record.deployable_path)
    path = recorded if recorded.is_absolute() else base_dir / recorded
    if path.is_file():
        shutil.copyfile(path, dst)
        return
    run_id = record.run_id
    if tracker is not None and run_id:
        try:
            got = tracker.download(run_id, "model/model.onnx", dst.parent)
            shutil.move(got, dst)
            return
        except Exception as err:
            log.info("no model artifact for trial %s: %s", trial.number, err)
    raise InputError(f"the deployable model of trial {trial.number} is neither in the cache ({path}) nor "
                     "in its MLflow run (only front trials carry it); rerun the study to rebuild the cache")


def _input_spec(model: Path, trial: FrozenTrial, stats: Mapping[str, Any] | None,
                batch_size: int) -> list[dict[str, Any]]:
    """Each input's name, type, declared dims and the concrete shape its latency was measured at.

    The shapes come from the trial's record (`TrialRecord.input_shapes`), else from the measurement
    itself (`latency_stats.json`'s ``extra.input_shapes``: trials recorded before the record kept
    them); only when neither has them is a symbolic batch axis taken as the trial's batch size.
    Raises `InputError` naming the input when a symbolic dimension is still unknown.
    """
    specs = specs_from_onnx(model)
    measured: dict[str, Any] = dict(((stats or {}).get("extra") or {}).get("input_shapes") or {})
    measured.update(TrialRecord.of(trial).input_shapes)
    measured = {k: v for k, v in measured.items() if k in {s.name for s in specs}}
    for spec in specs:
        if spec.name in measured or spec.is_static:
            continue
        dims = list(spec.dims)
        if dims and not (isinstance(dims[0], int) and dims[0] >= 0):
            dims[0] = batch_size
        open_dims = [str(spec.dims[i]) for i, d in enumerate(dims) if not (isinstance(d, int) and d >= 0)]
        if open_dims:
            raise InputError(f"trial {trial.number}: input '{spec.name}' has symbolic dimensions beyond the batch "
                             f"({', '.join(open_dims)}) and the trial does not record the shape it was measured "
                             "at; rerun the trial with this version of edge-search to record it")
        measured[spec.name] = dims
    concrete = resolve_shapes(specs, measured)
    return [{"name": s.name, "type": s.type, "dims": [str(d) for d in s.dims], "shape": list(concrete[s.name])}
            for s in specs]


def bundle_manifest(study: optuna.Study, trial: FrozenTrial, stats: dict[str, Any] | None,
                    model: Path) -> dict[str, Any]:
    """The `bundle.json` document for a trial whose model is at `model`."""
    record, srecord = TrialRecord.of(trial), StudyRecord.of(study)
    params = record.config_params
    deploy = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("deploy.")}
    train = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("train.")}
    metrics = record.metrics
    summary = record.latency
    knobs = dict((stats or {}).get("knobs") or {})
    session = {"intra_op_threads": int(deploy.get("intra_op_threads", 1)),
               "inter_op_threads": int(deploy.get("inter_op_threads", 1)),
               "graph_optimization": deploy.get("graph_optimization", "all"),
               "execution_mode": deploy.get("execution_mode", "sequential"),
               "providers": list(PROVIDERS.get(str(deploy.get("execution_provider", "cpu")), PROVIDERS["cpu"])),
               "allow_spinning": True, **knobs}
    device = str((stats or {}).get("device") or srecord.device)
    latency = {
        "median_ms": metrics.get("latency_ms", summary.get("median_ms")),
        **{k: metrics.get(f"latency_{k}") for k in ("p90_ms", "p95_ms", "p99_ms", "ci_low_ms", "ci_high_ms")},
        "source": record.get(TrialRecord.LATENCY_SOURCE, summary.get("source", "")),
        "device": device, "profile_version": srecord.get(StudyRecord.PROFILE_VERSION),
        "samples": summary.get("samples"), "stop_reason": summary.get("stop_reason"),
        "warnings": summary.get("warnings", []), "measured_at": summary.get("measured_at"),
        "cores_used": ((stats or {}).get("host") or {}).get("cores_used"),
        "figure": "search",
    }
    confirmation = confirmed_front(study)
    confirmed = confirmation[1].get(trial.number) if confirmation is not None else None
    if confirmed is not None:  # re-measured in interleaved rounds: the figure to trust (edge_search.confirm)
        latency.update({"median_ms": confirmed["median_ms"], "ci_low_ms": confirmed["ci_low_ms"],
                        "ci_high_ms": confirmed["ci_high_ms"], "figure": "confirmed",
                        "confirmed_rounds": confirmed.get("rounds"), "search_median_ms": summary.get("median_ms"),
                        "warnings": confirmed.get("warnings", [])})
    batch = int(deploy.get("batch_size", 1))
    names = objective_names(study)
    primary = "accuracy" if "accuracy" in metrics else next(iter(metrics), "accuracy")
    return {
        "schema_version": BUNDLE_SCHEMA, "kind": BUNDLE_KIND,
        "study": study.study_name, "trial": trial.number,
        "model": {"file": MODEL_FILE, "sha256": file_sha256(model), "size_bytes": model.stat().st_size},
        "session_options": session,
        "inputs": _input_spec(model, trial, stats, batch), "batch_size": batch,
        "latency": latency,
        "accuracy": metrics.get(primary), "accuracy_metric": primary, "metrics": metrics,
        "objectives": dict(zip(names, values_with(trial, names, confirmed), strict=True)),
        "feasible": is_feasible(trial),
        "config": {"train": train, "deploy": deploy},
        "provenance": {
            "space_hash": srecord.get(StudyRecord.SPACE_HASH), "task": srecord.get(StudyRecord.TASK),
            "task_version": _task_version(study), "device": srecord.get(StudyRecord.DEVICE),
            "profile_version": srecord.get(StudyRecord.PROFILE_VERSION),
            "mlflow_run_id": record.run_id,
            "mlflow_parent_run_id": srecord.parent_run_id,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "packages": package_versions(),
        },
    }


def export_trial(study: optuna.Study, number: int, out: Path, tracker: Tracker | None = None,
                 base_dir: Path = Path(), runtime: bool = True) -> Path:
    """Write the bundle of trial `number` into folder `out` (created; existing files replaced)."""
    trial = get_trial(study, number)
    out.mkdir(parents=True, exist_ok=True)
    model = out / MODEL_FILE
    _model_file(trial, tracker, base_dir, model)
    stats_text = _mlflow_text(tracker, TrialRecord.of(trial).run_id, "latency_stats.json")
    stats = json.loads(stats_text) if stats_text else None
    if stats_text:
        (out / "latency_stats.json").write_text(stats_text, encoding="utf-8")
    manifest = bundle_manifest(study, trial, stats, model)
    (out / BUNDLE_FILE).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    if runtime:
        _copy_runtime(out)
    return out


def export_front(study: optuna.Study, out: Path, tracker: Tracker | None = None,
                 base_dir: Path = Path()) -> list[Path]:
    """One bundle per front configuration under `out/trial-NNNN/`, and `out/front.json` listing them
    from the most accurate to the least."""
    trials = current_front(study)
    if not trials:
        raise InputError(f"study '{study.study_name}' has no feasible trial on its front")
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    paths = []
    for t in trials:
        folder = export_trial(study, t.number, out / f"trial-{t.number:04d}", tracker, base_dir,
                              runtime=False)
        manifest = json.loads((folder / BUNDLE_FILE).read_text(encoding="utf-8"))
        entries.append({"trial": t.number, "dir": folder.name, "accuracy": manifest["accuracy"],
                        "latency_ms": manifest["latency"]["median_ms"], "objectives": manifest["objectives"]})
        paths.append(folder)
    entries.sort(key=lambda e: (-(e["accuracy"] or 0.0), e["latency_ms"] or 0.0))
    front = {"schema_version": BUNDLE_SCHEMA, "kind": FRONT_KIND, "study": study.study_name,
             "device": StudyRecord.of(study).get(StudyRecord.DEVICE), "configurations": entries}
    (out / FRONT_FILE).write_text(json.dumps(front, indent=2) + "\n", encoding="utf-8")
    _copy_runtime(out)
    return paths


def _copy_runtime(out: Path) -> None:
    from edge_search.bundle import runtime

    shutil.copyfile(Path(runtime.__file__), out / "runtime.py")
